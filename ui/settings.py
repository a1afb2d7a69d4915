"""What an operator can tune on `rill serve`: edge limits, admission, streaming, and where state lives."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rillflow.ui.limits import KeyLimits


@dataclass(frozen=True)
class ServeSettings:
    """Defaults suit one machine serving a local model; every field is a `rill serve` option."""

    #: Largest request body in bytes (413 before the body is parsed; Starlette's own default is no limit).
    max_body_bytes: int = 1_000_000
    #: Most characters across all text of one request's inputs and history (422 before any model call).
    max_input_chars: int = 32_000
    #: Deepest nesting of JSON inputs (422): a nesting bomb is refused before it reaches a node.
    max_input_depth: int = 32
    #: A stalled reader is dropped after this many seconds on one send (sse-starlette send_timeout).
    send_timeout: float = 30.0
    #: Comment pings keep idle proxies from closing a stream that waits on a slow model.
    ping: float = 15.0
    #: Runs at once in this process; more wait in a queue of ``max_queued`` for ``queue_timeout`` seconds, then 503.
    max_active: int = 16
    max_queued: int = 64
    queue_timeout: float = 10.0
    #: Streams open at shutdown get this long to finish before they get a final ``shutdown`` event.
    shutdown_grace: float = 2.0
    #: Origins allowed to call the API from a browser (CORS); empty: same origin only.
    cors_origins: tuple[str, ...] = ()
    #: API key file (`rill keys create`); None: no keys (the local demo), every caller is one anonymous key.
    api_keys: Path | None = None
    #: Limits of keys that do not set their own, and of the anonymous caller when keys are off.
    limits: KeyLimits = field(default_factory=KeyLimits)
    #: Where rate-limit state lives: None in memory (one worker), redis://... shared by several workers.
    limits_url: str | None = None
    #: Cache and traces (RILL_CACHE_URL, RILL_STATE_DIR); off for benchmarks that measure the bare path.
    cache: bool = True
    trace: bool = True
