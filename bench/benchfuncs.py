"""Functions the benchmark flows call through python nodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


async def nap(seconds: float, label: str) -> str:
    await asyncio.sleep(seconds)
    return label


async def passthrough(text: AsyncIterator[str]) -> AsyncIterator[str]:
    async for chunk in text:
        yield chunk


def label(text: str) -> str:
    return text
