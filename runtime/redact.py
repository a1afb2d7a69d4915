"""Scrub secrets and personal data from values before they are stored or exported.

A trace holds what users asked and what models answered, so everything a store writes goes
through a ``Redactor`` first. Three kinds of secret are always removed:

- the strings the caller names (the flow's resolved ``${env.*}`` values), replaced by ``[redacted]``;
- the values of environment variables whose name looks secret (``*KEY*``, ``*TOKEN*``, ``*SECRET*``,
  ``*PASSWORD*``, ``*PASSWD*``, ``*CREDENTIAL*``, ``*AUTH*``; values of 8 characters or more), also
  ``[redacted]``;
- credentials the guardrail's detector recognises (API keys, tokens, private keys, passwords in
  URLs), replaced by ``[SECRET]``.

With ``pii=True`` (the default) e-mail addresses, phone numbers, card numbers, IBANs, IP addresses
and US SSNs become ``[EMAIL]``, ``[PHONE]``, ``[CARD]``... (the guardrail's labels). Long strings are
cut to ``max_chars`` with a ``…[truncated N chars]`` mark, lists to ``max_items``, nesting to
``max_depth``. Redaction never raises: a value it cannot handle becomes a placeholder, never the raw
value.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from rillflow.nodes.guard_checks import LABELS, find_pii, find_secrets, redact

#: Environment variable names whose values are treated as secrets wherever they appear.
SECRET_ENV_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH")
MIN_ENV_SECRET = 8  # shorter values ("1", "true") would redact ordinary words
MIN_SECRET = 4  # a named secret shorter than this would shred ordinary text
MIN_DETECT = 6  # no detector matches fewer characters: skip them on short strings (most values)
#: Characters scanned past the cut, so a secret straddling it is still recognised and removed whole.
SCAN_MARGIN = 1000
REDACTED = "[redacted]"


def secret_env_values(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """Values of environment variables whose name looks secret (see SECRET_ENV_NAME)."""
    env = os.environ if environ is None else environ
    return frozenset(v for k, v in env.items() if SECRET_ENV_NAME.search(k.upper()) and len(v) >= MIN_ENV_SECRET)


class Redactor:
    """Removes secrets (always) and PII (by default) from text and from nested JSON-like values.

    Args:
        secrets: Literal strings to remove wherever they appear.
        pii: Also replace personal data with placeholders.
        max_chars: Longest string kept; longer ones are cut with a ``…[truncated N chars]`` mark.
        max_items: Most items kept of a list (or keys of a dict).
        max_depth: Deepest nesting kept; deeper values become ``[nested too deep]``.
    """

    def __init__(self, secrets: Iterable[str] = (), *, pii: bool = True, max_chars: int = 4000,
                 max_items: int = 50, max_depth: int = 8, _env: frozenset[str] | None = None) -> None:
        self.pii = pii
        self.max_chars = max_chars
        self.max_items = max_items
        self.max_depth = max_depth
        self._env = secret_env_values() if _env is None else _env
        self._named = frozenset(s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET)
        literals = sorted(self._env | self._named, key=len, reverse=True)  # longest first: a secret containing another
        self._literal = re.compile("|".join(map(re.escape, literals))) if literals else None

    def with_secrets(self, secrets: Iterable[str]) -> Redactor:
        """A redactor with the same settings and environment values plus ``secrets`` (no rescan of the environment)."""
        extra = frozenset(secrets)
        if not extra - self._named:
            return self
        return Redactor(self._named | extra, pii=self.pii, max_chars=self.max_chars, max_items=self.max_items,
                        max_depth=self.max_depth, _env=self._env)

    def redact_text(self, text: str) -> str:
        """``text`` without secrets (and PII), cut to ``max_chars``."""
        try:
            return self._redact_text(text if isinstance(text, str) else str(text))
        except Exception:  # a detector bug must not leak the value: drop it instead
            return "[unredactable]"

    def _redact_text(self, text: str) -> str:
        original = len(text)
        window = text[: self.max_chars + SCAN_MARGIN] if original > self.max_chars else text
        if self._literal is not None:
            window = self._literal.sub(REDACTED, window)
        if len(window) >= MIN_DETECT:
            spans = [(f.start, f.end, LABELS["secret"]) for f in find_secrets(window)] if may_hold_secret(window) else []
            entities = pii_candidates(window) if self.pii else ()
            if entities:
                spans += [(f.start, f.end, LABELS.get(f.kind, "[PII]")) for f in find_pii(window, entities)]
            if spans:
                window = redact(window, spans)
        if original > self.max_chars:
            return self.truncate(window, original)
        return window

    def truncate(self, text: str, original: int | None = None) -> str:
        """Cut ``text`` to ``max_chars``; the mark counts the characters dropped from ``original`` (default: len(text))."""
        if len(text) <= self.max_chars:
            return text
        dropped = (len(text) if original is None else original) - self.max_chars
        return f"{text[: self.max_chars]}…[truncated {max(dropped, 1)} chars]"

    def redact_value(self, value: Any) -> Any:
        """A JSON-able copy of ``value`` with every string redacted; never raises."""
        try:
            return self._value(value, 0)
        except Exception:
            return "[unredactable]"

    def _value(self, value: Any, depth: int) -> Any:
        if value is None or isinstance(value, (bool, int)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)  # NaN is not JSON
        if isinstance(value, str):
            return self.redact_text(value)
        if depth >= self.max_depth:
            return "[nested too deep]"
        if isinstance(value, Mapping):
            return self._mapping(value, depth)
        if isinstance(value, (list, tuple, set, frozenset)):
            return self._sequence(list(value), depth)
        if isinstance(value, (bytes, bytearray)):
            return f"[{len(value)} bytes]"
        return self._value(_plain(value), depth + 1)

    def _mapping(self, value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, (key, item) in enumerate(value.items()):
            if i == self.max_items:
                out["…"] = f"[{len(value) - i} more keys]"
                break
            out[self.redact_text(key if isinstance(key, str) else str(key))] = self._value(item, depth + 1)
        return out

    def _sequence(self, items: list[Any], depth: int) -> list[Any]:
        out = [self._value(item, depth + 1) for item in items[: self.max_items]]
        if len(items) > self.max_items:
            out.append(f"…[{len(items) - self.max_items} more items]")
        return out


# The detectors run ~25 regexes over every character (2 ms for 4 KB); most trace text holds none of
# the fixed strings every pattern needs, so a cheap look for those decides whether to run them.
# Each hint is implied by a pattern of guard_checks.SECRET_PATTERNS (casefolded, so a case-insensitive
# pattern cannot match text the hints miss); tests/test_trace_store.py checks one sample of each.
_SECRET_HINTS = (
    "-----begin", "eyj", "akia", "asia", "abia", "acca", "aws", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
    "glpat-", "sk-", "k_live_", "k_test_", "xox", "hooks.slack.com", "aiza", "hf_", "npm_", "sg.", "bearer",
    "passw", "pwd", "secret", "apikey", "api_key", "api-key", "accesstoken", "access_token", "access-token",
    "authtoken", "auth_token", "auth-token",
)
_DIGIT = re.compile(r"\d")
#: After casefold, the only characters a case-insensitive ASCII pattern matches that do not fold to
#: that letter: U+0130 (dotted capital I) folds to "i" + U+0307, U+0131 (dotless i) stays itself.
_FOLD_FIXES = str.maketrans({"\u0307": "", "\u0131": "i"})


def may_hold_secret(text: str) -> bool:
    """False only when no pattern of guard_checks.find_secrets can match ``text``."""
    folded = text.casefold() if text.isascii() else text.casefold().translate(_FOLD_FIXES)
    if any(hint in folded for hint in _SECRET_HINTS):
        return True
    if "://" in text and "@" in text:  # a password in a URL
        return True
    return "SK" in text  # Twilio keys: SK + 32 hex digits, case-sensitive


def pii_candidates(text: str) -> tuple[str, ...]:
    """The PII entities ``text`` could hold: e-mail needs an @; the others need a digit (IPv6: two colons)."""
    digit = _DIGIT.search(text) is not None
    entities: tuple[str, ...] = ("email",) if "@" in text else ()
    if digit:
        entities += ("card", "iban", "ssn", "phone")
    if digit or text.count(":") >= 2:
        entities += ("ip",)
    return entities


def _plain(value: Any) -> Any:
    """A pydantic model or dataclass as a dict; anything else as its text (redacted by the caller)."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    try:
        return str(value)
    except Exception:
        return f"[unprintable {type(value).__name__}]"
