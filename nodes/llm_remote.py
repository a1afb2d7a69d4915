"""Any OpenAI-compatible chat API through the ``openai`` client, with the client's own retries off.

The runtime owns the one retry loop (reliability notes 1.5): the client's retries would multiply
attempts and hide them from the trace. What the client does not catch, we do: a stream that ends
without a finish reason (the client returns normally with truncated text) and a malformed chunk
(a raw ``json.JSONDecodeError``) both become ``protocol`` errors instead of a silently short answer.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from typing import Any

from rillflow.nodes.llm_types import Finish, GenerateParams
from rillflow.runtime.errors import NodeError

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


async def close_clients() -> None:
    """Close this event loop's pooled clients (their connections): at server shutdown, after a CLI run."""
    pool = _clients.pop(asyncio.get_running_loop(), {})
    for client in pool.values():
        await client.close()


class RemoteModel:
    """One OpenAI-compatible model endpoint. Cheap: clients are pooled per event loop."""

    def __init__(self, spec: Any, name: str) -> None:
        # The client library takes ~1 s to import: pay it here (prepare(), in a worker thread, before any
        # run), not inside the first call, where it ate a 1 s node deadline (tests/reliability/model_faults.py).
        import openai  # noqa: F401
        self.spec = spec
        self.name = name
        self.model = str(spec.model)
        self.n_ctx: int | None = None

    def _client(self) -> Any:
        from openai import AsyncOpenAI

        loop = asyncio.get_running_loop()
        pool = _clients.setdefault(loop, {})
        key = (self.spec.base_url, self.spec.api_key, self.spec.request_timeout)
        client = pool.get(key)
        if client is None:
            # An unset key is fine for local servers (llama.cpp, vLLM, Ollama); OpenAI itself answers 401.
            client = pool[key] = AsyncOpenAI(base_url=self.spec.base_url, api_key=self.spec.api_key or "not-needed",
                                             max_retries=0, timeout=self.spec.request_timeout)
        return client

    async def stream(self, messages: Sequence[dict[str, str]], params: GenerateParams) -> AsyncIterator[str | Finish]:
        """Text deltas as they arrive, then one ``Finish``; provider errors become ``NodeError``s."""
        request = self._request(messages, params)
        tally = _Tally(self.name)
        stream: Any = None
        try:
            stream = await self._client().chat.completions.create(**request)
            async for chunk in stream:
                for text in tally.take(chunk):
                    yield text
        except Exception as exc:
            raise map_error(exc, self.name, tally.pieces) from None
        finally:
            if stream is not None:
                await stream.close()  # releases the connection: the server sees the client leave and stops
        yield tally.finish(messages)

    def _request(self, messages: Sequence[dict[str, str]], params: GenerateParams) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model, "messages": list(messages), "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
        }
        if params.stop:
            request["stop"] = list(params.stop)
        if params.seed is not None:
            request["seed"] = params.seed
        if params.json_mode:
            request["response_format"] = response_format(self.spec.structured_output, params.json_schema)
        return request


def response_format(style: str, schema: dict[str, Any] | None) -> dict[str, Any]:
    """Ask the server to constrain decoding to the schema, in the dialect it understands: OpenAI's
    ``json_schema`` (OpenAI, vLLM, llama.cpp's llama-server), or JSON mode with a ``schema`` key
    (llama-cpp-python's server). The answer is validated and repaired either way."""
    if schema is None:
        return {"type": "json_object"}
    if style == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


class _Tally:
    """What a stream has said so far: pieces, usage, finish reason, time to first piece."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.perf_counter()
        self.first: float | None = None
        self.reason: str | None = None
        self.usage: Any = None
        self.pieces = 0

    def take(self, chunk: Any) -> list[str]:
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage
        texts = []
        for choice in chunk.choices or ():
            text = choice.delta.content if choice.delta is not None else None
            if text:
                texts.append(text)
            if choice.finish_reason:
                self.reason = choice.finish_reason
        if texts:
            self.first = self.first or time.perf_counter()
            self.pieces += len(texts)
        return texts

    def finish(self, messages: Sequence[dict[str, str]]) -> Finish:
        if self.reason is None:
            raise NodeError("protocol", f"model '{self.name}' ended its stream without a finish reason after {self.pieces} chunks: "
                                        "the answer is incomplete")
        ttft = ((self.first or time.perf_counter()) - self.started) * 1000
        usage = self.usage
        if usage is not None and getattr(usage, "completion_tokens", None) is not None:
            return Finish(self.reason, int(usage.prompt_tokens or 0), int(usage.completion_tokens), ttft_ms=ttft)
        prompt_chars = sum(len(m.get("content") or "") for m in messages)  # a server that ignores stream_options
        return Finish(self.reason, -(-prompt_chars // 4), self.pieces, ttft_ms=ttft, estimated=True)


def _retry_after(response: Any) -> float | None:
    headers = getattr(response, "headers", None) or {}
    try:
        if headers.get("retry-after-ms"):
            return float(headers["retry-after-ms"]) / 1000
        if headers.get("retry-after"):
            return float(headers["retry-after"])
    except (TypeError, ValueError):
        return None  # an HTTP date: rare from model servers; the retry policy's own backoff applies
    return None


def map_error(exc: BaseException, name: str, pieces: int = 0) -> NodeError:
    """A user-safe NodeError for anything the openai client raises (never the provider's raw text,
    which may echo request data)."""
    import openai

    after = f" after {pieces} chunks" if pieces else ""
    if isinstance(exc, NodeError):
        return exc
    if isinstance(exc, openai.APITimeoutError):
        return NodeError("timeout", f"model '{name}' did not answer in time{after}")
    if isinstance(exc, openai.APIConnectionError):
        return NodeError("connection", f"connection to model '{name}' failed{after}")
    if isinstance(exc, openai.APIStatusError):
        return _status_error(exc, name)
    if isinstance(exc, (json.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError)):
        return NodeError("protocol", f"model '{name}' sent a malformed stream chunk{after} ({type(exc).__name__})")
    if isinstance(exc, openai.OpenAIError):
        return NodeError("server", f"model '{name}' failed: {type(exc).__name__}")
    return NodeError("internal", f"calling model '{name}' failed: {type(exc).__name__}")


def _status_error(exc: Any, name: str) -> NodeError:
    status = int(exc.status_code)
    if status == 429:
        wait = _retry_after(exc.response)
        return NodeError("rate_limit", f"model '{name}' is rate limited (HTTP 429)", retry_after=wait)
    if status in (401, 403):
        return NodeError("auth", f"model '{name}' refused the credentials (HTTP {status}): check its api_key")
    if status == 408 or status >= 500:
        return NodeError("server", f"model '{name}' had a server error (HTTP {status})", retry_after=_retry_after(exc.response))
    return NodeError("bad_request", f"model '{name}' refused the request (HTTP {status})")
