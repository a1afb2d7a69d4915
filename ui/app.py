"""The Starlette app `rill serve` runs: routes, edge middleware, the web chat's static files, the lifespan."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rillflow.ui import api, openai_api
from rillflow.ui.errors import EXCEPTION_HANDLERS, ApiError, error_response
from rillflow.ui.flows import ServedFlow
from rillflow.ui.metrics import Metrics
from rillflow.ui.server import Server
from rillflow.ui.settings import ServeSettings

STATIC = Path(__file__).resolve().parent / "static"

#: Model output is untrusted: nothing but the app's own files may load or run, in no frame, and
#: nothing may be sent anywhere else (a Markdown image to an attacker's server would leak the chat).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
                    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()")]


def build_app(flows: Mapping[str, ServedFlow], settings: ServeSettings | None = None, *, say: Callable[[str], None] | None = None) -> Starlette:
    """The app for ``flows`` (see rillflow.ui.flows.load_flows); models open when its lifespan starts."""
    settings = settings or ServeSettings()
    server = Server(flows, settings, say=say)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.open()
        try:
            yield
        finally:
            await server.close()

    routes = [
        Route("/", index),
        Route("/api/flows", api.list_flows),
        Route("/api/flows/{name}/runs", api.start_run, methods=["POST"]),
        Route("/api/runs/{run_id}", api.get_run),
        Route("/api/runs/{run_id}/feedback", api.post_feedback, methods=["POST"]),
        Route("/v1/models", openai_api.list_models),
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/healthz", api.healthz),
        Route("/readyz", api.readyz),
        Route("/metrics", api.metrics),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    # The body limit sits inside the edge, not as Starlette's own max_body_size (outermost): that one answers
    # a declared Content-Length over the limit in plain text, replacing the JSON error clients parse.
    middleware = [Middleware(EdgeMiddleware, metrics=server.metrics, max_body=settings.max_body_bytes),
                  Middleware(RequestBodyLimitMiddleware, max_body_size=settings.max_body_bytes)]
    if settings.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                                     allow_headers=["Authorization", "Content-Type", "Accept"], expose_headers=["Retry-After", "X-Rill-Run-Id"],
                                     allow_credentials=False, max_age=600))
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=EXCEPTION_HANDLERS, lifespan=lifespan)
    app.state.rill = server
    return app


async def index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


class EdgeMiddleware:
    """Security headers on every answer, request metrics by route template (not raw path: cardinality), and
    a JSON 413 for a declared Content-Length over ``max_body`` (a streamed body meets the limit middleware)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, max_body: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        try:
            declared = _content_length(scope)
            if declared is not None and declared > self.max_body:
                too_large = ApiError(413, "too_large", f"the request body is {declared} bytes, over the server's limit of "
                                                       f"{self.max_body}; send less text")
                await error_response(Request(scope), too_large)(scope, receive, send_with_headers)
                return
            await self.app(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request(template, scope["method"], status, time.perf_counter() - started)


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # h11 refuses a malformed Content-Length before the app sees it
