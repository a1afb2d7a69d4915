"""uvicorn's h11 HTTP protocol with a bounded close: a client that stops reading cannot hold a connection.

When a stream is cut (sse-starlette's send timeout hit a client that stopped reading), uvicorn closes the
transport with ``close()``, which first flushes what is buffered. A client that never reads never lets it
flush, so the socket, its file descriptor and its buffers stay until that client leaves: the read-side
slowloris (tests/reliability/test_load.py). Here every close gets ``LINGER`` seconds to flush, then the
connection is aborted. A client that reads takes the tail of its answer well within that.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

LINGER = 5.0  # seconds a closing connection may take to flush what is buffered


class BoundedCloseH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_BoundedClose(transport))  # type: ignore[arg-type]


class _BoundedClose:
    """The transport, with a ``close`` that turns into ``abort`` when flushing takes longer than LINGER."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def close(self) -> None:
        self._transport.close()
        # abort() of a transport already gone is a no-op, so the timer needs no cancelling
        asyncio.get_running_loop().call_later(LINGER, self._transport.abort)

    def __getattr__(self, name: str) -> Any:  # everything else is the transport's own
        return getattr(self._transport, name)
