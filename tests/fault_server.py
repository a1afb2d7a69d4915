"""A real OpenAI-compatible HTTP server on loopback that misbehaves on request, per model name.

It speaks the wire format (SSE chat completion chunks) over a real socket, so the openai client and
our error mapping are exercised end to end. The model name picks the behaviour, e.g. ``ok``,
``500``, ``401``, ``429:1`` (Retry-After 1 s), ``fail2:500`` (the first two requests fail with 500,
then ok), ``malformed:3`` (a non-JSON chunk after 3 good ones), ``nofinish:3`` (the stream ends after
3 chunks without a finish reason or [DONE]), ``die:3`` (the connection drops after 3 chunks),
``length`` (finish_reason length), ``hang``, ``json`` (answers ``{"city": "Paris"}``). ``counts`` says
how many requests each model got.

A script of steps separated by ``>`` picks the behaviour by request number, the last step repeating:
``ok>500>500>json`` answers the first request, fails the next two with 500, then answers in JSON.
Anything after ``#`` is a tag that only names the counter (``500#run7`` behaves as ``500`` and is
counted on its own), so concurrent or repeated cases never share a count.

``echo:401`` (or any status) answers that status with an error message quoting the request's
Authorization header and messages, as careless providers do (litellm #7516); each such message is
kept in ``echoed``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = ["Paris", " is", " the", " capital", " of", " France", "."]
JSON_WORDS = ['{"city"', ': "Par', 'is"}']


class FaultServer:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.echoed: list[str] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                model = str(body.get("model", "ok"))
                with outer._lock:
                    outer.counts[model] += 1
                    n = outer.counts[model]
                self.request_body = body
                outer.respond(self, model, n)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- behaviours ---------------------------------------------------------------------------
    def respond(self, h: BaseHTTPRequestHandler, model: str, n: int) -> None:
        script = model.partition("#")[0].split(">")
        step = script[min(n, len(script)) - 1]
        mode, _, arg = step.partition(":")
        if mode.startswith("fail") and n <= int(mode[4:] or 1):
            mode, _, arg = arg.partition(":")
        elif mode.startswith("fail"):
            mode, arg = "ok", ""
        if mode == "echo":
            sent = getattr(h, "request_body", {}).get("messages")
            quoted = f"Incorrect API key provided: {h.headers.get('authorization')}; messages: {json.dumps(sent)}"
            with self._lock:
                self.echoed.append(quoted)
            return self._status(h, int(arg or 401), {}, quoted)
        if mode == "429":
            return self._status(h, 429, {"retry-after": arg or "1"})
        if mode.isdigit():
            return self._status(h, int(mode), {})
        if mode == "hang":
            time.sleep(30)
            return None
        return self._stream(h, model, mode, int(arg or 3))

    def _status(self, h: BaseHTTPRequestHandler, status: int, headers: dict[str, str], message: str | None = None) -> None:
        payload = json.dumps({"error": {"message": message or f"injected {status}", "type": "fault"}}).encode()
        h.send_response(status)
        for k, v in {"content-type": "application/json", "content-length": str(len(payload)), "x-should-retry": "false", **headers}.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(payload)

    def _stream(self, h: BaseHTTPRequestHandler, model: str, mode: str, k: int) -> None:
        h.send_response(200)
        h.send_header("content-type", "text/event-stream")
        h.send_header("connection", "close")
        h.end_headers()
        words = JSON_WORDS if mode == "json" else WORDS if mode not in ("malformed", "nofinish", "die") else WORDS[:k]
        for word in words:
            self._event(h, {"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}, model)
        if mode == "malformed":
            h.wfile.write(b"data: {not json\n\n")
        elif mode == "die":
            h.wfile.flush()
            h.connection.shutdown(2)
            return
        elif mode != "nofinish":
            reason = "length" if mode == "length" else "stop"
            self._event(h, {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}, model)
            self._event(h, {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": len(words), "total_tokens": 11 + len(words)}}, model)
            h.wfile.write(b"data: [DONE]\n\n")
        h.wfile.flush()

    @staticmethod
    def _event(h: BaseHTTPRequestHandler, data: dict[str, Any], model: str) -> None:
        chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": model, **data}
        h.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        h.wfile.flush()
