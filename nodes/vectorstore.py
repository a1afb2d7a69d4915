"""Qdrant collections: open (local folder or server), check against the embedder, write, search.

Local mode (``QdrantClient(path=...)``, the default) is an embedded database in a folder that one
process at a time may open: the client takes an exclusive lock on ``<folder>/.lock``, and a second
client fails even in the same process (reliability notes, section 1.8). So each folder has exactly
one client per process, shared through ``RESOURCES``; a folder another process holds is reported at
start-up as a config error naming the lock, never as a per-request failure. Several processes (a
server and an ingest job, or several workers) need a Qdrant server: ``qdrant: {url: ...}``.

Local storage persists points with ``pickle``: opening a folder from someone else runs their code.
So rillflow opens only folders it created (marked by ``MARKER``; empty folders are adopted), owned by
this user and writable by nobody else, and creates them 0700.

Every point carries a ``tenant`` payload: a tenant name, or ``SHARED`` for documents every run may
see. A collection's version (``rillflow.version`` in the collection's metadata) is a hash of all its
point ids; ids are derived from the content, so the version changes exactly when content does.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rillflow.runtime.context import RESOURCES
from rillflow.runtime.errors import NodeError

T = TypeVar("T")

#: The ``tenant`` payload of documents that every run may read (ingested without ``--tenant``).
SHARED = "*"
#: Written into each storage folder rillflow creates; folders without it are never opened.
MARKER = ".rillflow-storage"
#: Who holds a storage folder (pid and command), so a second process's error can name it.
HOLDER = ".rillflow-holder"
_PICKLE_NOTE = "Qdrant local storage unpickles what it finds"
SERVER_TIMEOUT_S = 5  # reliability notes FT-11: fail fast when a server is down
SCROLL_PAGE = 1024


def content_version(ids: Sequence[str]) -> str:
    """The version of a collection holding exactly these point ids (order does not matter)."""
    digest = hashlib.sha256("\n".join(sorted(ids)).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Hit:
    id: str
    score: float
    payload: dict[str, Any]


@dataclass
class FileState:
    """What a collection holds of one source file: its content hashes (one, unless an ingest was cut
    short) and its point ids."""

    hashes: set[str] = field(default_factory=set)
    ids: list[str] = field(default_factory=list)


# -- clients -----------------------------------------------------------------------------------
class _LocalSlot:
    """The one client of a local storage folder in this process; reopened after ``close``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.lock = threading.RLock()  # QdrantLocal is plain dicts and one SQLite connection
        self._client: Any = None

    def client(self) -> Any:
        with self.lock:
            if self._client is None:
                self._client = _open_local(self.folder)
                # Close before interpreter shutdown: the client's __del__ then fails to import portalocker.
                atexit.register(self.close)
            return self._client

    def close(self) -> None:
        with self.lock:
            client, self._client = self._client, None
            if client is not None:
                atexit.unregister(self.close)
                (self.folder / HOLDER).unlink(missing_ok=True)
                client.close()


class _ServerSlot:
    def __init__(self, url: str, api_key: str | None, timeout: int) -> None:
        self.url = url
        self._api_key = api_key
        self._timeout = timeout
        self.lock = None
        self._client: Any = None
        self._guard = threading.Lock()

    def client(self) -> Any:
        with self._guard:
            if self._client is None:
                from qdrant_client import QdrantClient

                # No version probe at construction: it runs in a thread and only warns when the server is down.
                self._client = QdrantClient(url=self.url, api_key=self._api_key, timeout=self._timeout, check_compatibility=False)
            return self._client

    def close(self) -> None:
        with self._guard:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __repr__(self) -> str:  # never print the API key
        return f"_ServerSlot({self.url!r})"


def prepare_folder(folder: Path) -> None:
    """Create ``folder`` (0700, marked as ours), or check that an existing one is ours and private."""
    if not folder.exists():
        folder.mkdir(parents=True, mode=0o700)
        folder.chmod(0o700)  # mkdir's mode is filtered by the umask
        (folder / MARKER).write_text("Qdrant local storage created by rillflow. Open only folders you created: points are pickled.\n")
        return
    if not folder.is_dir():
        raise NodeError("config", f"Qdrant storage path {folder} is not a folder: give 'path:' a folder of its own")
    if not (folder / MARKER).exists():
        if any(folder.iterdir()):
            raise NodeError("config", f"Qdrant storage folder {folder} was not created by rillflow (no {MARKER} file); {_PICKLE_NOTE} "
                                      "(pickle), so rillflow opens only folders it created: give 'path:' a new folder")
        folder.chmod(0o700)
        (folder / MARKER).write_text("Qdrant local storage created by rillflow.\n")
    if hasattr(os, "getuid"):
        st = folder.stat()
        if st.st_uid != os.getuid():
            raise NodeError("config", f"Qdrant storage folder {folder} belongs to another user: {_PICKLE_NOTE}, so rillflow opens only its own")
        if st.st_mode & 0o022:
            raise NodeError("config", f"Qdrant storage folder {folder} is writable by other users (mode {st.st_mode & 0o777:o}): run chmod 700 {folder}")


def locked_message(folder: Path) -> str:
    holder = ""
    try:
        info = json.loads((folder / HOLDER).read_text(encoding="utf-8"))
        pid = int(info["pid"])
        if os.name == "posix":  # (on Windows signal 0 is CTRL_C_EVENT: never send it)
            os.kill(pid, 0)  # a holder file left by a killed process names nobody
        holder = f" (held by pid {pid}: {str(info['command'])[:200]})"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return (f"Qdrant storage folder {folder} is locked by another process{holder}: its lock file {folder / '.lock'} is held, "
            "e.g. by `rill serve` or another `rill ingest`. Local mode allows one process at a time: stop the other process, or run "
            "a Qdrant server and give the collection `qdrant: {url: ...}` (`rill ingest --url`) so several processes can share it")


def _open_local(folder: Path) -> Any:
    prepare_folder(folder)
    _check_unlocked(folder)
    from qdrant_client import QdrantClient

    try:
        # Safe: every call goes through _LocalSlot.lock, so the connection is never used by two threads at once.
        client = QdrantClient(path=str(folder), force_disable_check_same_thread=True)
    except RuntimeError as exc:  # lost a race with another process after _check_unlocked
        if "already accessed" in str(exc):
            raise NodeError("config", locked_message(folder)) from None
        raise NodeError("config", f"Qdrant storage folder {folder} cannot be opened: {exc}") from None
    except (OSError, ValueError) as exc:
        raise NodeError("config", f"Qdrant storage folder {folder} cannot be opened: {exc}") from None
    holder = {"pid": os.getpid(), "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"}
    (folder / HOLDER).write_text(json.dumps(holder), encoding="utf-8")
    return client


def _check_unlocked(folder: Path) -> None:
    """Fail before QdrantClient does: its own failure leaks the lock file's handle (qdrant-client#1264)."""
    lock_path = folder / ".lock"
    if not lock_path.exists():
        return
    import portalocker

    with open(lock_path, "r+") as handle:
        try:
            portalocker.lock(handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException:
            raise NodeError("config", locked_message(folder)) from None
        portalocker.unlock(handle)


# -- errors ------------------------------------------------------------------------------------
@contextmanager
def qdrant_errors(where: str) -> Iterator[None]:
    """Turn the client's exceptions into NodeErrors of the kind the retry policy understands."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    try:
        yield
    except NodeError:
        raise
    except UnexpectedResponse as exc:
        status = exc.status_code or 0
        kind = "server" if status >= 500 else "rate_limit" if status == 429 else "bad_request"
        raise NodeError(kind, f"Qdrant at {where} answered {exc.status_code}: {exc.reason_phrase}") from exc
    except (ResponseHandlingException, ConnectionError, TimeoutError) as exc:
        raise NodeError("connection", f"Qdrant at {where} is unreachable: {exc}") from exc
    except RuntimeError as exc:  # local mode: a closed client
        raise NodeError("config", f"Qdrant storage {where}: {exc}") from exc


# -- a collection ------------------------------------------------------------------------------
class VectorStore:
    """One Qdrant collection. Methods are blocking: call them through ``ctx.to_thread``."""

    def __init__(self, slot: _LocalSlot | _ServerSlot, name: str, label: str, where: str) -> None:
        self._slot = slot
        self.name = name  # the Qdrant collection name
        self.label = label  # the flow's key for it, for messages
        self.where = where  # the folder or URL, for messages
        self.local = isinstance(slot, _LocalSlot)

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        client = self._slot.client()
        with qdrant_errors(self.where):
            if self._slot.lock is None:
                return fn(client, *args, **kwargs)
            with self._slot.lock:
                return fn(client, *args, **kwargs)

    # -- schema --------------------------------------------------------------------------------
    def exists(self) -> bool:
        return bool(self._call(lambda c: c.collection_exists(self.name)))

    def ensure(self, *, dim: int, embedder: str, create: bool) -> None:
        """Create the collection (cosine distance, ``dim``-sized vectors) or check the existing one."""
        from qdrant_client import models

        if not self.exists():
            if not create:
                raise NodeError("config", f"collection '{self.label}' does not exist in Qdrant at {self.where}: fill it first with "
                                          f"`rill ingest PATH... --collection {self.label} --flow FLOW.yaml`")
            meta = {"rillflow": {"embedder": embedder, "dim": dim, "version": content_version([])}}
            self._call(lambda c: c.create_collection(self.name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                                                     metadata=meta))
            if not self.local:  # payload indexes do nothing in local mode, and there it warns
                for key in ("tenant", "source"):
                    self._call(lambda c, k=key: c.create_payload_index(self.name, k, models.PayloadSchemaType.KEYWORD))
            return
        self._check(dim, embedder)

    def _check(self, dim: int, embedder: str) -> None:
        info = self._call(lambda c: c.get_collection(self.name))
        vectors = info.config.params.vectors
        if not hasattr(vectors, "size"):
            raise NodeError("config", f"collection '{self.label}' in {self.where} uses named vectors; rillflow needs one unnamed vector per point")
        if vectors.size != dim:
            raise NodeError("config", f"collection '{self.label}' in {self.where} holds {vectors.size}-dimensional vectors but embedder "
                                      f"'{embedder}' makes {dim}: use the embedder it was filled with, or ingest into a new collection")
        if str(getattr(vectors.distance, "value", vectors.distance)).lower() != "cosine":
            raise NodeError("config", f"collection '{self.label}' in {self.where} uses {vectors.distance} distance; rillflow needs Cosine")
        stored = (info.config.metadata or {}).get("rillflow", {}).get("embedder")
        if isinstance(stored, str) and embedder_id(stored) != embedder_id(embedder):
            raise NodeError("config", f"collection '{self.label}' was filled with embedder '{stored}' but this uses '{embedder}': vectors "
                                      "of different models do not compare; use the same embedder, or ingest into a new collection")

    # -- reading -------------------------------------------------------------------------------
    def search(self, vector: Sequence[float], *, limit: int, score_threshold: float | None = None,
               filters: Mapping[str, Any] | None = None, tenant: str | None = None) -> list[Hit]:
        """The ``limit`` nearest points that ``tenant`` may see (its own and shared ones) and that
        match ``filters`` (field -> value, or field -> list of values for any-of)."""
        query_filter = build_filter(filters or {}, tenant)
        points = self._local_search(list(vector), limit, score_threshold, query_filter) if self.local else None
        if points is None:
            response = self._call(lambda c: c.query_points(self.name, query=list(vector), query_filter=query_filter, limit=limit,
                                                           score_threshold=score_threshold, with_payload=True))
            points = response.points
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in points]

    def _local_search(self, vector: list[float], limit: int, score_threshold: float | None, query_filter: Any) -> list[Any] | None:
        """Local mode checks a filter in Python on every point: 10,000 points take ~140 ms filtered
        against ~7 ms unfiltered (bench/retrieval.py), and every search carries the tenant filter.
        So search unfiltered for a few times ``limit`` candidates and filter those with Qdrant's own
        matcher. Exact: the best ``limit`` allowed points come first among allowed points in the
        unfiltered ranking, so when the candidates hold ``limit`` allowed ones (or are every point
        above the threshold) they are the answer; otherwise None, and the caller runs the filtered
        search. DO NOT drop this without re-running bench/retrieval.py."""
        from qdrant_client.local.payload_filters import check_filter

        wanted = max(limit * 8, 64)
        response = self._call(lambda c: c.query_points(self.name, query=vector, limit=wanted, score_threshold=score_threshold,
                                                       with_payload=True))
        kept = [p for p in response.points if check_filter(query_filter, p.payload or {}, p.id, {})]
        if len(kept) >= limit or len(response.points) < wanted:
            return kept[:limit]
        return None

    def files(self, tenant: str | None) -> dict[str, FileState]:
        """Source -> what the collection holds of it, for one tenant (``None``: shared documents)."""
        from qdrant_client import models

        only = models.Filter(must=[models.FieldCondition(key="tenant", match=models.MatchValue(value=tenant or SHARED))])
        state: dict[str, FileState] = {}
        for point in self._scroll(only, ["source", "file_hash"]):
            payload = point.payload or {}
            entry = state.setdefault(str(payload.get("source")), FileState())
            entry.hashes.add(str(payload.get("file_hash")))
            entry.ids.append(str(point.id))
        return state

    def ids(self) -> list[str]:
        return [str(p.id) for p in self._scroll(None, False)]

    def count(self) -> int:
        return int(self._call(lambda c: c.count(self.name, exact=True)).count)

    def _scroll(self, scroll_filter: Any, payload: Any) -> Iterator[Any]:
        offset = None
        while True:
            points, offset = self._call(lambda c, o=offset: c.scroll(self.name, scroll_filter=scroll_filter, limit=SCROLL_PAGE, offset=o,
                                                                     with_payload=payload, with_vectors=False))
            yield from points
            if offset is None:
                return

    def metadata(self) -> dict[str, Any]:
        info = self._call(lambda c: c.get_collection(self.name))
        meta = (info.config.metadata or {}).get("rillflow")
        return dict(meta) if isinstance(meta, dict) else {}

    def version(self) -> str | None:
        """The content version recorded by the last ingest (None for a collection rillflow did not fill)."""
        version = self.metadata().get("version")
        return version if isinstance(version, str) else None

    # -- writing -------------------------------------------------------------------------------
    def upsert(self, points: Sequence[tuple[str, Sequence[float], dict[str, Any]]]) -> None:
        from qdrant_client import models

        structs = [models.PointStruct(id=pid, vector=list(vec), payload=payload) for pid, vec, payload in points]
        if structs:
            self._call(lambda c: c.upsert(self.name, points=structs, wait=True))

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_client import models

        for start in range(0, len(ids), SCROLL_PAGE):
            batch = list(ids[start : start + SCROLL_PAGE])
            self._call(lambda c, b=batch: c.delete(self.name, points_selector=models.PointIdsList(points=b), wait=True))

    def record_version(self, **info: Any) -> str:
        """Recompute the content version from the points and store it (with ``info``) in the metadata."""
        version = content_version(self.ids())
        meta = {**self.metadata(), **info, "version": version}
        self._call(lambda c: c.update_collection(self.name, metadata={"rillflow": meta}))
        return version

    def close(self) -> None:
        """Close the client (for a local folder: release its lock). The next call opens it again."""
        self._slot.close()


def build_filter(filters: Mapping[str, Any], tenant: str | None) -> Any:
    """A Qdrant filter: every field condition, and the tenant scope, which a caller cannot widen."""
    from qdrant_client import models

    scope = [tenant, SHARED] if tenant is not None else [SHARED]
    must: list[Any] = [models.FieldCondition(key="tenant", match=models.MatchAny(any=scope))]
    for key, value in filters.items():
        if isinstance(value, (list, tuple)):
            must.append(models.FieldCondition(key=key, match=models.MatchAny(any=list(value))))
        else:
            must.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
    return models.Filter(must=must)


def embedder_id(name: str) -> str:
    """Names of one model compare equal ('all-MiniLM-L6-v2', 'sentence-transformers/all-MiniLM-L6-v2')."""
    from rillflow.nodes.model_files import PACKAGED_EMBEDDERS

    return PACKAGED_EMBEDDERS[name][0] if name in PACKAGED_EMBEDDERS else Path(name).name


def open_collection(spec: Any, *, label: str, flow_dir: str, dim: int, create: bool = False, timeout: int = SERVER_TIMEOUT_S) -> VectorStore:
    """Open the collection a ``runtime.spec.CollectionResource`` describes, checked against an embedder
    of ``dim`` dimensions (created when missing if ``create``). Raises NodeError("config") with a fix."""
    store = connect(spec, label=label, flow_dir=flow_dir, timeout=timeout)
    store.ensure(dim=dim, embedder=spec.embedder, create=create)
    return store


def connect(spec: Any, *, label: str, flow_dir: str, timeout: int = SERVER_TIMEOUT_S) -> VectorStore:
    """The collection's store with its client open (a local folder locked by another process fails
    here, before anything slow), not yet checked: call ``ensure`` next."""
    name = spec.name or label
    qdrant = spec.qdrant
    slot: _LocalSlot | _ServerSlot
    if hasattr(qdrant, "path"):
        folder = Path(flow_dir, os.path.expanduser(qdrant.path)).resolve()
        slot = RESOURCES.get(("qdrant-local", str(folder)), lambda: _LocalSlot(folder))
        where = str(folder)
    else:
        url, api_key = qdrant.url, qdrant.api_key
        if not isinstance(url, str) or not (api_key is None or isinstance(api_key, str)):
            raise NodeError("config", f"collection '{label}': qdrant url and api_key must be text or ${{env.NAME}}")
        key_hash = hashlib.sha256((api_key or "").encode()).hexdigest()[:16]
        slot = RESOURCES.get(("qdrant-server", url, key_hash, timeout), lambda: _ServerSlot(url, api_key, timeout))
        where = url
    slot.client()
    return VectorStore(slot, name, label, where)
