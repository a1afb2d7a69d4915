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


CALLS: dict[str, int] = {}
FAIL: set[str] = set()


def counted(name: str, value: str = "") -> str:
    """Count calls per name (a test reads CALLS to see whether the node really ran); fail when FAIL names it."""
    CALLS[name] = CALLS.get(name, 0) + 1
    if name in FAIL:
        raise RuntimeError(f"{name} was told to fail")
    return f"{name}:{value}"


def logged(name: str, value: str = "") -> str:
    """For CLI tests in a subprocess: append the name to $RILL_TEST_LOG; fail when $RILL_TEST_FAIL names it."""
    import os

    with open(os.environ["RILL_TEST_LOG"], "a", encoding="utf-8") as log:
        log.write(name + "\n")
    if name in os.environ.get("RILL_TEST_FAIL", "").split(","):
        raise RuntimeError(f"{name} was told to fail")
    return f"{name}:{value}"


TICKER = {"produced": 0, "running": 0}


async def ticker(question: str, count: int = 50, delay: float = 0.01, pad: int = 0) -> AsyncIterator[str]:
    """A model stand-in that counts what it produces and whether it is still running, so serving tests
    can assert that a client's disconnect really stopped generation (not just the HTTP response)."""
    import asyncio

    TICKER["running"] += 1
    try:
        for i in range(count):
            await asyncio.sleep(delay)
            TICKER["produced"] += 1
            yield f"t{i} " + "x" * pad
    finally:
        TICKER["running"] -= 1
