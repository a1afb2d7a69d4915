"""rillflow's own API: flows, runs (SSE or JSON), traces and feedback, health and metrics.

``POST /api/flows/{name}/runs`` streams the runtime's events unchanged (``event: <type>``,
``id: <seq>``, ``data: <event JSON>``) when the client accepts ``text/event-stream`` or sends
``"stream": true``; otherwise it answers once with the outputs. Every stream ends with exactly one
``run_finished`` or ``run_failed``. docs/serving.md describes every route.
"""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
from sse_starlette import ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rillflow.runtime.events import Event
from rillflow.ui.admission import Pass
from rillflow.ui.errors import RUN_ERROR_STATUS, ApiError
from rillflow.ui.server import Server, read_json
from rillflow.ui.streaming import collect_until_disconnect, until_shutdown, usage_of


def server_of(request: Request) -> Server:
    return request.app.state.rill  # type: ignore[no-any-return]


async def list_flows(request: Request) -> Response:
    server = server_of(request)
    server.gate.identify(request)
    return JSONResponse({"flows": [flow.describe() for flow in server.flows.values()]})


async def start_run(request: Request) -> Response:
    server = server_of(request)
    flow = server.flow(request.path_params["name"])
    key = server.gate.identify(request)
    body = await read_json(request)
    unknown = sorted(set(body) - {"inputs", "stream"})
    if unknown:
        raise ApiError(422, "input", f"unknown field(s) {', '.join(unknown)}: a run takes 'inputs' and 'stream'")
    inputs = server.check_inputs(flow, body.get("inputs", {}))
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):  # "no" or {} would be truthy: refuse, do not guess
        raise ApiError(422, "input", f"'stream' must be true or false, not {type(stream).__name__}")
    if stream is None:
        stream = "text/event-stream" in request.headers.get("accept", "")
    admitted, run_id, events = await server.begin(flow, inputs, key)
    if stream:
        return _stream(server, events, admitted, run_id)
    try:
        return _json_answer(await collect_until_disconnect(request, events, anyio.Event()), run_id)
    finally:
        await server.gate.settle(admitted)


def _stream(server: Server, events: Any, admitted: Pass, run_id: str) -> Response:
    async def messages(shutdown: anyio.Event) -> Any:
        server.metrics.stream_opened("runs")
        try:
            async with contextlib.aclosing(until_shutdown(events, shutdown)) as stream:  # closed with us, not by the GC
                async for event in stream:
                    yield ServerSentEvent(data=event.to_json(), event=event.type, id=str(event.seq))
        finally:
            server.metrics.stream_closed("runs")

    return server.sse(messages, admitted, run_id)  # type: ignore[no-any-return]


def _json_answer(events: list[Event], run_id: str) -> Response:
    if not events or not events[-1].terminal:
        raise ApiError(499, "cancelled", "the run was cancelled")
    last = events[-1]
    usage = usage_of(events)
    if last.type == "run_finished":
        body = {"run_id": run_id, "status": last.data["status"], "outputs": last.data["outputs"], "usage": usage}
        if "cached_answer" in last.data:
            body["cached_answer"] = last.data["cached_answer"]
        return JSONResponse(body, headers={"X-Rill-Run-Id": run_id})
    error = last.data["error"]
    status = RUN_ERROR_STATUS.get(error["kind"], 502)
    return JSONResponse({"run_id": run_id, "status": "failed", "error": error, "usage": usage}, status_code=status,
                        headers={"X-Rill-Run-Id": run_id})


async def get_run(request: Request) -> Response:
    server = server_of(request)
    key = server.gate.identify(request)
    return JSONResponse(await server.trace_of(request.path_params["run_id"], key.tenant))


async def post_feedback(request: Request) -> Response:
    server = server_of(request)
    key = server.gate.identify(request)
    body = await read_json(request)
    score, comment = body.get("score"), body.get("comment")
    if isinstance(score, bool) or score not in (1, -1):
        raise ApiError(422, "input", "'score' must be 1 (thumbs up) or -1 (thumbs down)")
    if comment is not None and not isinstance(comment, str):
        raise ApiError(422, "input", "'comment' must be text")
    if comment is not None and len(comment) > 4000:
        raise ApiError(422, "input", "'comment' is over 4000 characters")
    await server.feedback(request.path_params["run_id"], key.tenant, score, comment)
    return JSONResponse({"ok": True})


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    server = server_of(request)
    if not server.ready:
        return JSONResponse({"status": "starting or stopping"}, status_code=503, headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "flows": sorted(server.flows)})


async def metrics(request: Request) -> Response:
    server = server_of(request)
    if server.gate.keys is not None:
        server.gate.identify(request)
    body, content_type = server.metrics.render()
    return Response(body, media_type=content_type)
