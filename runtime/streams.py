"""Chunk streams: one producer, any number of consumers, none waiting for another.

The producer never blocks: chunks go into a list that every reader walks at its own pace (DESIGN.md
section 4: one stream feeds several consumers without delaying any of them). A reader that has caught
up parks on a future that the next push or close wakes. A stream lives for one run, so keeping all
of its chunks costs no more than the joined text the node outputs anyway.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator


class StreamSkipped(Exception):
    """The stream's producer was skipped: a consumer of it is skipped too."""


class StreamFailed(Exception):
    """The stream's producer failed; the run is ending."""


class ChunkStream:
    __slots__ = ("_chunks", "_closed", "_error", "_waiters", "outputs")

    def __init__(self) -> None:
        self.outputs: list[str] = []  # flow outputs streamed from here (kept here: no lookup per chunk)
        self._chunks: list[str] = []
        self._closed = False
        self._error: BaseException | None = None
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def count(self) -> int:
        return len(self._chunks)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def chunks(self) -> list[str]:
        """The chunks so far (do not modify)."""
        return self._chunks

    def text(self) -> str:
        return "".join(self._chunks)

    def push(self, text: str) -> None:
        self._chunks.append(text)
        if self._waiters:
            self._wake()

    def close(self, error: BaseException | None = None) -> None:
        if not self._closed:
            self._closed = True
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def reader(self) -> AsyncIterator[str]:
        """Every chunk from the first, then each new one as it is pushed, until the stream closes."""
        i = 0
        chunks = self._chunks
        while True:
            while i < len(chunks):
                yield chunks[i]
                i += 1
            if self._closed:
                if self._error is not None:
                    raise self._error
                return
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            await fut
