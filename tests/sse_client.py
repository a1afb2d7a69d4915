"""A small SSE reader over httpx for tests: the messages of a `text/event-stream` response, as dicts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx


def parse_lines(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    message: dict[str, Any] = {}
    for line in lines:
        if not line:
            if message:
                yield _finish(message)
                message = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        message[field] = message.get(field, "") + ("\n" if field == "data" and field in message else "") + value
    if message:
        yield _finish(message)


def _finish(message: dict[str, Any]) -> dict[str, Any]:
    data = message.get("data", "")
    try:
        message["json"] = json.loads(data)
    except ValueError:
        message["json"] = None
    return message


def events(response: httpx.Response) -> list[dict[str, Any]]:
    """Every event of a finished streaming response (the runtime's event dicts)."""
    return [m["json"] for m in parse_lines(response.iter_lines()) if m.get("json") is not None]


async def aevents(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The events of a streaming response as they arrive."""
    message: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if not line:
            if message.get("data"):
                done = _finish(message)
                if done["json"] is not None:
                    yield done["json"]
            message = {}
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        message[field] = value[1:] if value.startswith(" ") else value
