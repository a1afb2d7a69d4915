"""The one exception tree of rillflow.

    RillError                      base of everything rillflow raises on purpose
    ├── FlowError                  a flow (or test) file is invalid: carries every Diagnostic found
    └── NodeError                  a node attempt failed; `kind` drives retry / fallback policy
        └── NodeTimeout            a node ran past its total or first-chunk deadline

Diagnostics print as ``path:line:col: error: message [CODE]`` so editors and CI annotate them.
Messages never contain secret values: the loader replaces them before any message is built.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]

#: Error kinds shared by nodes, the retry policy and events. A kind is what a policy matches on;
#: the message is what a person reads.
ERROR_KINDS = (
    "timeout",  # total or first-chunk deadline passed
    "rate_limit",  # provider said 429
    "server",  # provider 5xx
    "connection",  # network or stream broke
    "bad_request",  # provider refused the request (4xx other than auth)
    "auth",  # credentials refused
    "invalid_output",  # output failed its schema or parse
    "guardrail",  # a guardrail blocked the value
    "empty",  # nothing found (retrieval with on_empty: fail), for on_fail/fallback to handle
    "protocol",  # the provider sent something malformed (bad chunk, stream cut without a finish reason)
    "config",  # the node cannot run as configured
    "internal",  # an unexpected exception inside a node
)

#: Kinds retried unless a node's retry policy names others (reliability notes, section 1.5).
RETRYABLE_KINDS = ("timeout", "rate_limit", "server", "connection", "protocol")

MAX_DIAGNOSTICS = 50


def suggest(name: object, candidates: Iterable[object]) -> str:
    """'; did you mean 'x'?' when a candidate is close to ``name``, else ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem in a file, pointing at the token that caused it (1-based line and column)."""

    path: str
    line: int
    col: int
    code: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.severity}: {self.message} [{self.code}]"

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "col": self.col,
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
        }


class RillError(Exception):
    """Base class of every error rillflow raises deliberately."""


class FlowError(RillError):
    """A flow file is invalid. ``diagnostics`` holds every problem found (errors first)."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.severity != "error", d.line, d.col))
        super().__init__("\n".join(str(d) for d in self.diagnostics))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]


class NodeError(RillError):
    """A node attempt failed in a way the flow's policies understand.

    Args:
        kind: one of ERROR_KINDS; retry and fallback policies match on it.
        message: safe to show an end user: no stack trace, no secret.
        retry_after: seconds the provider asked us to wait before retrying, if it said.
    """

    def __init__(self, kind: str, message: str, *, retry_after: float | None = None) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}; use one of {', '.join(ERROR_KINDS)}")
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        super().__init__(message)


class NodeTimeout(NodeError):
    def __init__(self, message: str) -> None:
        super().__init__("timeout", message)
