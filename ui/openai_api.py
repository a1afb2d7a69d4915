"""OpenAI-compatible ``/v1/chat/completions`` and ``/v1/models``: the model is a flow's name.

So existing clients (the ``openai`` SDKs, chat UIs, LangChain) call flows unchanged. The last
message must be the user's: it becomes the flow's chat message input; earlier user and assistant
messages become its ``chat_history`` input (system messages are dropped: the flow owns its prompt).
Sampling fields (temperature, max_tokens...) are accepted and ignored: the flow's nodes set them.
The answer is the flow's answer output; chunks of it stream as ``delta.content``. A guardrail that
retracts streamed text ends the stream with ``finish_reason: content_filter``; a run that fails
mid-stream sends one ``{"error": ...}`` message, which OpenAI clients raise as an APIError.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rillflow.runtime.events import Event
from rillflow.ui.admission import Pass
from rillflow.ui.api import server_of
from rillflow.ui.errors import RUN_ERROR_STATUS, ApiError
from rillflow.ui.flows import ChatMapping, ServedFlow
from rillflow.ui.server import Server, read_json
from rillflow.ui.streaming import collect_until_disconnect, now, until_shutdown, usage_of


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send many sampling fields; the flow decides those
    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None


async def list_models(request: Request) -> Response:
    server = server_of(request)
    server.gate.identify(request)
    models = [{"id": flow.name, "object": "model", "created": 0, "owned_by": "rillflow"}
              for flow in server.flows.values() if flow.chat is not None]
    return JSONResponse({"object": "list", "data": models})


async def chat_completions(request: Request) -> Response:
    server = server_of(request)
    key = server.gate.identify(request)
    try:
        chat = ChatRequest.model_validate(await read_json(request))
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False, include_input=False)]
        raise ApiError(422, "invalid_request_error", "; ".join(problems)) from None
    flow = server.flow(chat.model)
    if flow.chat is None:
        raise ApiError(400, "invalid_request_error", f"flow '{flow.name}' takes no text input, so it cannot be chatted with; "
                                                     f"use POST /api/flows/{flow.name}/runs")
    inputs = server.check_inputs(flow, _inputs(flow.chat, chat.messages))
    admitted, run_id, events = await server.begin(flow, inputs, key)
    if chat.stream:
        include_usage = bool((chat.stream_options or {}).get("include_usage"))
        return _stream(server, flow, events, admitted, run_id, include_usage)
    try:
        collected = await collect_until_disconnect(request, events, anyio.Event())
    finally:
        await server.gate.settle(admitted)
    return _completion(flow, collected, run_id)


def _inputs(chat: ChatMapping, messages: list[Message]) -> dict[str, Any]:
    last = messages[-1]
    if last.role != "user":
        raise ApiError(422, "invalid_request_error", "the last message must be the user's (role 'user')")
    inputs: dict[str, Any] = {chat.message: _text(last)}
    earlier = [{"role": m.role, "content": _text(m)} for m in messages[:-1] if m.role in ("user", "assistant")]
    if chat.history is not None and earlier:
        inputs[chat.history] = earlier
    return inputs


def _text(message: Message) -> str:
    if isinstance(message.content, list):  # content parts: the text ones (images are not supported by flows' chat input)
        texts = [part.get("text", "") for part in message.content if part.get("type") == "text"]
        if not all(isinstance(text, str) for text in texts):  # str() would turn an object into Python's repr of it
            raise ApiError(422, "invalid_request_error", "a text content part's 'text' must be a string")
        return "".join(texts)
    return message.content or ""


def _completion(flow: ServedFlow, events: list[Event], run_id: str) -> Response:
    if not events or not events[-1].terminal:
        raise ApiError(499, "cancelled", "the run was cancelled")
    last = events[-1]
    if last.type == "run_failed":
        error = last.data["error"]
        raise ApiError(RUN_ERROR_STATUS.get(error["kind"], 502), error["kind"], error["message"])
    usage = usage_of(events)
    answer = _answer(flow, last)
    retracted = any(e.type == "retract" and e.data.get("reason") not in STAND_IN_REASONS for e in events)
    return JSONResponse({
        "id": f"chatcmpl-{run_id}", "object": "chat.completion", "created": now(), "model": flow.name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                     "finish_reason": "content_filter" if retracted and not answer else "stop"}],
        "usage": _usage(usage),
    }, headers={"X-Rill-Run-Id": run_id})


def _answer(flow: ServedFlow, finished: Event) -> str:
    assert flow.chat is not None
    value = finished.data["outputs"].get(flow.chat.answer) if flow.chat.answer else None
    return value if isinstance(value, str) else "" if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _usage(usage: dict[str, Any]) -> dict[str, int]:
    return {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"],
            "total_tokens": usage["input_tokens"] + usage["output_tokens"]}


def _stream(server: Server, flow: ServedFlow, events: Any, admitted: Pass, run_id: str, include_usage: bool) -> Response:
    translate = _Translator(flow, run_id, include_usage)

    async def messages(shutdown: anyio.Event) -> Any:
        server.metrics.stream_opened("openai")
        try:
            yield {"data": translate.chunk({"role": "assistant", "content": ""})}
            async with contextlib.aclosing(until_shutdown(events, shutdown)) as stream:  # closed with us, not by the GC
                async for event in stream:
                    for data in translate(event):
                        yield {"data": data}
        finally:
            server.metrics.stream_closed("openai")

    return server.sse(messages, admitted, run_id)  # type: ignore[no-any-return]


STAND_IN_REASONS = frozenset({"fallback", "offline"})  # retracts that are not a guardrail's verdict


class _Translator:
    """Runtime events in, OpenAI ``chat.completion.chunk`` messages out (``data:`` payloads)."""

    def __init__(self, flow: ServedFlow, run_id: str, include_usage: bool) -> None:
        assert flow.chat is not None
        self.flow = flow
        self.answer = flow.chat.answer
        self.id = f"chatcmpl-{run_id}"
        self.created = now()
        self.include_usage = include_usage
        self.streamed: list[str] = []
        self.retracted = False
        self.paid: list[Event] = []

    def __call__(self, event: Event) -> list[str]:
        if event.type == "chunk":
            if event.data["output"] != self.answer or self.retracted:
                return []
            self.streamed.append(event.data["text"])
            return [self.chunk({"content": event.data["text"]})]
        if event.type == "retract":
            if event.data.get("reason") in STAND_IN_REASONS:
                # A stand-in (fallback, offline answer) takes over: OpenAI's stream cannot take text
                # back, so its answer follows what was sent, and the run did finish normally.
                self.streamed = []
            else:
                self.retracted = True
        elif event.type in ("node_finished", "node_retry"):
            self.paid.append(event)
        elif event.type == "run_failed":
            error = event.data["error"]
            return [json.dumps({"error": {"message": error["message"], "type": error["kind"], "code": error["kind"]}})]
        elif event.type == "run_finished":
            return self._finish(event)
        return []

    def _finish(self, event: Event) -> list[str]:
        out = []
        rest = _remainder(_answer(self.flow, event), "".join(self.streamed))
        if rest and not self.retracted:
            out.append(self.chunk({"content": rest}))
        out.append(self.chunk({}, "content_filter" if self.retracted else "stop"))
        if self.include_usage:
            out.append(self.chunk({}, usage=_usage(usage_of(self.paid))))
        out.append("[DONE]")
        return out

    def chunk(self, delta: dict[str, Any], finish: str | None = None, usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.flow.name,
                                "choices": [] if usage is not None else [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage is not None:
            body["usage"] = usage
        return json.dumps(body, ensure_ascii=False)


def _remainder(final: str, streamed: str) -> str:
    """What the final answer adds to what already streamed (all of it when nothing streamed, e.g. a cached reply)."""
    return final[len(streamed):] if final.startswith(streamed) else ""
