"""Small functions that the test flows call through `python` nodes (allowed with RILL_PYTHON_ALLOW=tests.*)."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def shout(chunks: AsyncIterator[str], suffix: str = "") -> AsyncIterator[str]:
    """Upper-case a chunk stream as it arrives, then add ``suffix``."""
    async for chunk in chunks:
        yield chunk.upper()
    if suffix:
        yield suffix


def split_words(text: str) -> list[str]:
    """Split text on whitespace."""
    return text.split()
