"""Functions that python nodes in the runtime tests call (allowlisted per test)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from rillflow.runtime.errors import NodeError

CALLS: dict[str, int] = {}


def upper(text: str) -> str:
    return text.upper()


def identity(value: object) -> object:
    return value


def add(a: int, b: int) -> int:
    return a + b


def block(seconds: float) -> str:
    time.sleep(seconds)  # blocking on purpose: must run in a worker thread
    return "slept"


async def nap(seconds: float, label: str) -> str:
    await asyncio.sleep(seconds)
    return label


async def shout(text: AsyncIterator[str]) -> AsyncIterator[str]:
    async for chunk in text:
        yield chunk.upper()


async def bracket(text: AsyncIterator[str]) -> AsyncIterator[str]:
    async for chunk in text:
        yield f"[{chunk}]"


def square_or_fail(n: int) -> int:
    if n == 3:
        raise NodeError("invalid_output", "three is not allowed")
    return n * n


def rate_limited(key: str, retry_after: float) -> str:
    CALLS[key] = CALLS.get(key, 0) + 1
    if CALLS[key] == 1:
        raise NodeError("rate_limit", "slow down", retry_after=retry_after)
    return f"ok after {CALLS[key]} calls"


def leak_secret(secret: str) -> str:
    raise RuntimeError(f"connection to https://user:{secret}@api.example failed")


def chunks(n: int) -> list[str]:
    return [f"c{i} " for i in range(n)]
