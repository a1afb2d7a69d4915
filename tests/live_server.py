"""`rill serve`'s app on a real uvicorn on loopback, in a thread with its own event loop, for tests.

A real server, real sockets and real HTTP clients: only the process is shared, so tests can look at
the server's asyncio tasks and at the stand-in model's counters (tests/flowfuncs.py).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from rillflow.ui.app import build_app
from rillflow.ui.flows import load_flows
from rillflow.ui.serve_cli import HTTP_PROTOCOL
from rillflow.ui.settings import ServeSettings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    def __init__(self, app: Any, port: int, graceful: float) -> None:
        self.app = app
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=graceful,
                                     http=HTTP_PROTOCOL)  # the protocol `rill serve` runs
        self.server = uvicorn.Server(self.config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # not the main thread
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def rill(self) -> Any:
        return self.app.state.rill

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())
        # sse-starlette's shutdown watcher (one per loop) only ends on a signal, which a thread never gets.
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` on the server's loop and return its result (e.g. to count its tasks)."""
        assert self.loop is not None

        async def wrapped() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(timeout=10)

    def task_count(self) -> int:
        return int(self.call(lambda: len(asyncio.all_tasks())))

    def warm(self, path: str, body: dict[str, Any]) -> None:
        """One streamed request, so per-loop helpers (sse-starlette's shutdown watcher) exist before a task baseline."""
        import httpx

        with httpx.stream("POST", self.url + path, json=body, timeout=60) as response:
            response.read()


@contextmanager
def serving(flows: Mapping[str, str] | Path, settings: ServeSettings | None = None, *, tmp: Path | None = None,
            graceful: float = 10) -> Iterator[LiveServer]:
    """Serve ``flows`` (a folder, or {file name: YAML text} written to ``tmp``) until the block ends."""
    if not isinstance(flows, Path):
        assert tmp is not None, "give tmp to write flow texts into"
        folder = tmp / "served-flows"
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in flows.items():
            (folder / name).write_text(text, encoding="utf-8")
        flows = folder
    settings = settings or ServeSettings(cache=False, trace=False)
    live = LiveServer(build_app(load_flows(flows), settings, say=lambda _: None), free_port(), graceful)
    live.start()
    try:
        yield live
    finally:
        live.stop()
