"""An existing Starlette app with rillflow inside: its own routes, and rillflow's web chat and API under /assistant.

    python examples/03_embed_chat/app.py --port 8001                               # flows/: the demo on the local model
    python examples/03_embed_chat/app.py --flows examples/hello.yaml --port 8001   # a scripted flow: no model needed

Then http://127.0.0.1:8001/ is this app's home page, /api/health its own API, and
http://127.0.0.1:8001/assistant/ the chat; the run API is /assistant/api/flows/NAME/runs and the
OpenAI-compatible one /assistant/v1/chat/completions (docs/serving.md describes both).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route

from rillflow.ui.app import build_app
from rillflow.ui.flows import FlowsError, load_flows
from rillflow.ui.settings import ServeSettings

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "/assistant"

HOME = f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Acme docs</title></head>
<body>
  <h1>Acme docs</h1>
  <p>Our own pages live here. Questions? <a href="{PREFIX}/">Ask the assistant</a>.</p>
  <p>Health: <a href="/api/health">/api/health</a></p>
</body>
</html>
"""


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def home(request: Request) -> Response:
    return HTMLResponse(HOME)


async def health(request: Request) -> Response:
    """This app's own health check, which also reports whether the assistant has loaded its models."""
    rill = request.app.state.assistant.state.rill
    return JSONResponse({"status": "ok", "assistant": {"ready": rill.ready, "flows": sorted(rill.flows)}})


def create_app(flows: Path, settings: ServeSettings | None = None) -> Starlette:
    """The host app, with the flows in ``flows`` (a folder or one flow file) served under /assistant.

    Raises FlowsError when a flow is invalid (its ``file:line:col`` lines say what to fix).
    """
    assistant = build_app(load_flows(flows), settings, say=say)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Starlette runs the lifespan of the outermost app only, never of a mounted one. Without this the
        # assistant would never load its models (/assistant/readyz stays 503, runs load them on the first
        # request) nor close them, the cache or the trace store at shutdown.
        async with assistant.router.lifespan_context(assistant):
            yield

    routes = [
        Route("/", home),
        Route("/api/health", health),
        # The chat page requests its files and API relative to its own URL, so it works under any prefix.
        Mount(PREFIX, app=assistant, name="assistant"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.assistant = assistant
    return app


async def serve(app: Starlette, host: str, port: int, log_level: str) -> int:
    rill = app.state.assistant.state.rill
    try:
        # Open before listening, as `rill serve` does: a flow that cannot start prints what to fix instead
        # of a lifespan traceback, and no request waits for a model load. The lifespan then finds it open.
        await rill.open()
    except FlowsError as exc:
        say("\n".join(exc.lines))
        return 2
    say(f"serving http://{host}:{port}/ with the assistant ({', '.join(sorted(rill.flows))}) at http://{host}:{port}{PREFIX}/ (Ctrl+C stops)")
    grace = int(rill.settings.shutdown_grace) + 5  # open streams get shutdown_grace to finish, then a final event
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace)
    await uvicorn.Server(config).serve()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", type=Path, default=ROOT / "flows", help="A folder of flows, or one flow file (default: the repo's flows/).")
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on.")
    parser.add_argument("--port", type=int, default=8001, help="TCP port.")
    parser.add_argument("--log-level", default="info", help="uvicorn log level.")
    args = parser.parse_args(argv)
    try:
        app = create_app(args.flows)
    except FlowsError as exc:
        say("\n".join(exc.lines))
        return 2
    try:
        return asyncio.run(serve(app, args.host, args.port, args.log_level))
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C once it has shut down gracefully: all is closed by now
        return 130


if __name__ == "__main__":
    sys.exit(main())
