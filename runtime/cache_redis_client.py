"""How the Redis cache talks to redis-py: its clients, the errors they raise and the replies they give.

``blocking_client`` opens a client with one timeout for connecting and for each call, and no retries
(redis-py retries 10 times with backoff by default, which would stall every call on a down server).
A LoopClient holds the async client of one event loop together with the async generator that closes
it when that loop shuts down. ``admin_errors`` turns the redis-py errors of a blocking admin call into
one-line messages, ``redact`` keeps a URL's password out of every message, and ``as_text`` /
``as_bytes`` take a reply as it comes (bytes, or str from a client that decodes responses).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{netloc}"))


class LoopClient:
    """The async client of one event loop and the async generator whose ``finally`` closes it.

    DO NOT replace the generator with a plain callback: asyncio has no hook before a loop closes,
    but ``asyncio.run`` (and pytest-asyncio's Runner, and uvicorn) finalize live async generators
    first, so this one closes the client's connections while the loop can still run the close."""

    def __init__(self, client: aioredis.Redis, closer: AsyncIterator[None]) -> None:
        self.client = client
        self.closer = closer


def blocking_client(url: str, timeout: float) -> redis.Redis:
    """A blocking client of ``url`` that gives up after ``timeout`` seconds, without retrying."""
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))


@contextlib.contextmanager
def admin_errors(url: str) -> Iterator[None]:
    """Turn redis-py errors of a blocking admin call into one-line messages naming the (redacted) URL."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise ConnectionError(f"cannot reach the cache at {redact(url)}: {exc}") from None
    except redis.RedisError as exc:
        raise RuntimeError(f"the cache at {redact(url)} failed: {exc}") from None


def as_text(value: bytes | str) -> str:
    """A reply as str."""
    return value.decode() if isinstance(value, bytes) else value


def as_bytes(value: bytes | str) -> bytes:
    """A reply as bytes."""
    return value.encode() if isinstance(value, str) else value
