"""Every error a client sees: a status, a kind, a message that says what to do; never a stack trace.

``ApiError`` is raised anywhere in a request and rendered by ``error_response``: ``{"error": {"kind",
"message"}}`` on the rillflow API, OpenAI's ``{"error": {"message", "type", "code"}}`` under ``/v1``
(so OpenAI clients show the message and honour ``Retry-After``). Unexpected exceptions are logged
with a request id, and the client gets that id, not the exception (OWASP API8).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger("rillflow.serve")

#: Run error kinds as HTTP statuses, for answers that are not streamed (a stream has already sent 200).
RUN_ERROR_STATUS = {"rate_limit": 429, "timeout": 504, "deadline": 504, "cancelled": 499, "bad_request": 400, "input": 422,
                    "guardrail": 400, "shutdown": 503, "config": 500}


class ApiError(Exception):
    """An answer other than 2xx: ``status``, a machine-readable ``kind`` and a user-safe ``message``."""

    def __init__(self, status: int, kind: str, message: str, *, retry_after: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        self.detail = detail


def error_response(request: Request, error: ApiError) -> Response:
    headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else None
    if request.url.path.startswith("/v1/"):
        body: dict[str, Any] = {"error": {"message": error.message, "type": error.kind, "code": error.kind, "param": None}}
    else:
        body = {"error": {"kind": error.kind, "message": error.message}}
        if error.detail is not None:
            body["error"]["detail"] = error.detail
    if error.status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="rillflow"'}
    return JSONResponse(body, status_code=error.status, headers=headers)


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request, exc)


_HTTP_KINDS = {404: ("not_found", "no such endpoint; see /api/flows, /v1/models and /healthz"),
               405: ("method_not_allowed", "this endpoint does not take that method"),
               413: ("too_large", "the request body is over the server's limit; send less text")}


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind, message = _HTTP_KINDS.get(exc.status_code, ("http", str(exc.detail)))
    return error_response(request, ApiError(exc.status_code, kind, message))


async def on_unexpected(request: Request, exc: Exception) -> Response:
    request_id = uuid.uuid4().hex[:12]
    log.error("request %s %s failed (request id %s)", request.method, request.url.path, request_id, exc_info=exc)
    return error_response(request, ApiError(500, "internal", f"the server failed to handle this request (request id {request_id}); "
                                                             "it is logged, please retry or report the id"))


EXCEPTION_HANDLERS: dict[Any, Any] = {ApiError: on_api_error, HTTPException: on_http_error, Exception: on_unexpected}
