"""Open the cache a URL names, once per process: ``sqlite:///path`` (or a plain path) or ``redis://``."""

from __future__ import annotations

import threading
from pathlib import Path

from rillflow.runtime.cache_store import CacheStore

ACCEPTED = ("sqlite:///relative/path.db, sqlite:////absolute/path.db or a plain file path (SQLite); "
            "redis://[:password@]host:port/db, rediss://... (TLS) or unix:///path/redis.sock (Redis)")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

_stores: dict[str, CacheStore] = {}
_lock = threading.Lock()


def sqlite_path(url: str) -> Path | None:
    """The file a SQLite cache URL names; None for a Redis URL. Raises ValueError for anything else."""
    if url.startswith(REDIS_SCHEMES):
        return None
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
    elif "://" in url or url.startswith("sqlite:"):
        raise ValueError(f"cache URL {url!r} is not one of the accepted forms: {ACCEPTED}")
    else:
        path = url
    if not path or path == ":memory:":
        raise ValueError(f"cache URL {url!r} names no file; accepted forms: {ACCEPTED}")
    return Path(path).expanduser()


def open_cache(url: str | None = None) -> CacheStore:
    """The cache store for ``url`` (default: ``RILL_CACHE_URL``, else SQLite in the state folder),
    shared by every caller in this process; a closed one is reopened."""
    if url is None:
        from rillflow.runtime.state import cache_url

        url = cache_url()
    path = sqlite_path(url)
    ident = url if path is None else f"sqlite:{path.resolve()}"
    with _lock:
        store = _stores.get(ident)
        if store is None or getattr(store, "closed", False):
            store = _stores[ident] = _open(url, path)
        return store


def _open(url: str, path: Path | None) -> CacheStore:
    if path is not None:
        from rillflow.runtime.cache_sqlite import SqliteCache

        return SqliteCache(path)
    from rillflow.runtime.cache_redis import RedisCache

    return RedisCache(url)
