"""API keys of `rill serve`: the key file, and which key an ``Authorization: Bearer`` header carries.

Security choices (reliability notes AU-01), DO NOT weaken without reading them:

- A key is ``rk_<8 hex>_<43 chars of urlsafe base64>``. The id part is public (logs, metrics,
  ``rill keys list``); the secret part is 32 random bytes from ``secrets``.
- The file stores only the sha256 of the whole key. No salt and no slow hash (bcrypt, argon2): those
  slow down guessing of *human* passwords; 256 random bits cannot be guessed, salted or not, and a
  fast hash keeps each request's check at microseconds.
- The digest is compared with ``hmac.compare_digest``; an unknown id is still compared, against a
  dummy digest, so response timing does not tell which ids exist.
- Every failure (missing, malformed, unknown, wrong, disabled, expired) returns the same None: the app
  answers one 401 body for all of them. Nothing here logs key material, and errors about the file
  never echo a ``sha256`` value (someone may have pasted the key itself there).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError

from rillflow.ui.limits import KeyLimits

log = logging.getLogger("rillflow.serve")

KEY_ID = re.compile(r"rk_[0-9a-f]{8}")
TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_KEY = re.compile(r"(rk_[0-9a-f]{8})_[A-Za-z0-9_-]{43}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
FIELDS = ("id", "name", "sha256", "tenant", "expires", "disabled", "limits")
_DUMMY = hashlib.sha256(b"rillflow: no key has this id").digest()


@dataclass(frozen=True)
class ApiKey:
    """Who a request is: safe to log (``key_id``, ``name``, ``tenant``), never the key itself."""

    key_id: str  # public id, e.g. "rk_3f9a1c2b"
    name: str
    tenant: str | None  # scopes caches, retrieval and traces; None = no tenant
    limits: KeyLimits  # the key's own limits merged over the server defaults


@dataclass(frozen=True)
class KeyEntry:
    """One entry of the key file as loaded: the ApiKey plus what decides whether it may be used."""

    key: ApiKey
    digest: bytes = field(repr=False)
    expires: datetime | None  # aware, UTC
    disabled: bool
    line: int

    def usable(self, now: datetime) -> bool:
        return not self.disabled and (self.expires is None or now < self.expires)


class KeyFileError(Exception):
    """The key file cannot be used; the message is ``PATH:LINE: what is wrong and how to fix it``."""


class KeyStore:
    """The keys of one key file, looked up by id. Immutable: load the file again to see edits."""

    def __init__(self, entries: Iterable[KeyEntry]) -> None:
        self._entries = tuple(entries)
        self._by_id = {entry.key.key_id: entry for entry in self._entries}

    @classmethod
    def load(cls, path: Path, defaults: KeyLimits) -> KeyStore:
        """Read and check ``path``; each key's ``limits`` merge over ``defaults``.

        Raises:
            KeyFileError: the file is unreadable, not valid YAML, or has an entry that is wrong.
        """
        _warn_if_shared(path)
        return cls(parse_entries(path, read_document(path, key_yaml()), defaults))

    @property
    def entries(self) -> tuple[KeyEntry, ...]:
        return self._entries

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The key an ``Authorization`` header value (``Bearer <key>``) carries, or None for any failure."""
        key = _bearer(authorization)
        if key is None:
            return None
        entry = self._by_id.get(key[:11])
        given = hashlib.sha256(key.encode()).digest()
        # Compare even for an unknown id, against a dummy: the time taken must not say whether the id exists.
        matches = hmac.compare_digest(given, _DUMMY if entry is None else entry.digest)
        if entry is None or not matches or not entry.usable(datetime.now(timezone.utc)):
            return None
        return entry.key

    def __len__(self) -> int:
        return len(self._entries)


def generate_key() -> tuple[str, str, str]:
    """A new key: (key_id, the key to show once, sha256 hex of the key for the key file)."""
    key_id = f"rk_{secrets.token_hex(4)}"
    key = f"{key_id}_{secrets.token_urlsafe(32)}"
    return key_id, key, hash_key(key)


def hash_key(key: str) -> str:
    """What the key file stores of ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


def _bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    key = value.strip()
    return key if scheme.lower() == "bearer" and _KEY.fullmatch(key) else None


def _warn_if_shared(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # reading it says what is wrong
    if os.name != "nt" and mode & 0o066:
        log.warning("key file %s can be read or written by other users (mode %s); run `chmod 600 %s`", path, oct(mode & 0o777), path)


def key_yaml() -> YAML:
    """The round-trip YAML of key files: positions for errors, comments kept when `rill keys` edits one."""
    yaml = YAML(typ="rt")
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def read_document(path: Path, yaml: YAML) -> Any:
    """The parsed key file (ruamel's commented containers), or a KeyFileError saying where it breaks."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}:1: cannot read the key file: {exc}; check the path and its permissions") from exc
    try:
        return yaml.load(text)
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else 1
        raise KeyFileError(f"{path}:{line}: not valid YAML: {exc.problem}; fix the syntax") from exc


def parse_entries(path: Path, document: Any, defaults: KeyLimits) -> list[KeyEntry]:
    """Every entry of a loaded key file, checked: the first problem raises KeyFileError with its line."""
    if not isinstance(document, CommentedMap):
        raise KeyFileError(f"{path}:1: the key file must be a mapping with a 'keys:' list; create one with `rill keys create`")
    _no_unknown(path, document, ("keys",), "at the top level")
    items = document.get("keys")
    if items is None:
        return []
    if not isinstance(items, CommentedSeq):
        raise KeyFileError(f"{path}:{_line(document, 'keys')}: 'keys' must be a list of entries (- id: ...)")
    entries: list[KeyEntry] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        line = items.lc.item(index)[0] + 1
        if not isinstance(item, CommentedMap):
            raise KeyFileError(f"{path}:{line}: each key entry must be a mapping with id, name and sha256")
        entry = _entry(path, item, line, defaults)
        if entry.key.key_id in seen:
            raise KeyFileError(f"{path}:{line}: duplicate id '{entry.key.key_id}' (first at line {seen[entry.key.key_id]}); "
                               "each key needs its own id: remove one or create a new key")
        seen[entry.key.key_id] = line
        entries.append(entry)
    return entries


def _entry(path: Path, item: CommentedMap, line: int, defaults: KeyLimits) -> KeyEntry:
    _no_unknown(path, item, FIELDS, "in a key entry")
    for name in ("id", "name", "sha256"):
        if name not in item:
            raise KeyFileError(f"{path}:{line}: the key entry has no '{name}'; add it (`rill keys create` writes complete entries)")
    key_id, name, digest = item["id"], item["name"], item["sha256"]
    if not (isinstance(key_id, str) and KEY_ID.fullmatch(key_id)):
        raise KeyFileError(f"{path}:{_line(item, 'id')}: 'id' must be rk_ and 8 lowercase hex digits (like rk_3f9a1c2b), not {key_id!r}")
    if not (isinstance(name, str) and name.strip()):
        raise KeyFileError(f"{path}:{_line(item, 'name')}: 'name' must be a non-empty text saying who uses the key")
    if not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
        hint = "that looks like the key itself: store its sha256 instead" if isinstance(digest, str) and _KEY.fullmatch(digest) else \
            "it is the sha256 of the whole key, as `rill keys create` writes it"
        raise KeyFileError(f"{path}:{_line(item, 'sha256')}: 'sha256' must be 64 hex digits; {hint}")
    key = ApiKey(key_id, name, _tenant(path, item), _limits(path, item, defaults))
    return KeyEntry(key, bytes.fromhex(digest), _expires(path, item), _disabled(path, item), line)


def _tenant(path: Path, item: CommentedMap) -> str | None:
    tenant = item.get("tenant")
    if tenant is None or (isinstance(tenant, str) and TENANT.fullmatch(tenant)):
        return tenant
    raise KeyFileError(f"{path}:{_line(item, 'tenant')}: 'tenant' must be 1-64 letters, digits, '.', '_' or '-', "
                       f"starting with a letter or digit, not {tenant!r}")


def _expires(path: Path, item: CommentedMap) -> datetime | None:
    value = item.get("expires")
    try:
        return None if value is None else parse_expiry(value)
    except ValueError as exc:
        raise KeyFileError(f"{path}:{_line(item, 'expires')}: {exc}") from exc


def parse_expiry(value: object) -> datetime:
    """An expiry (a date means 00:00 UTC that day; a datetime without offset is UTC) as an aware UTC datetime."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # not ISO: the message below says what is
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    raise ValueError(f"'expires' must be a date (2027-01-01) or an ISO datetime (2027-01-01T12:00:00Z), not {value!r}")


def _disabled(path: Path, item: CommentedMap) -> bool:
    value = item.get("disabled", False)
    if isinstance(value, bool):
        return value
    raise KeyFileError(f"{path}:{_line(item, 'disabled')}: 'disabled' must be true or false, not {value!r}")


def _limits(path: Path, item: CommentedMap, defaults: KeyLimits) -> KeyLimits:
    overrides = item.get("limits")
    if overrides is None:
        return defaults
    if not isinstance(overrides, CommentedMap):
        raise KeyFileError(f"{path}:{_line(item, 'limits')}: 'limits' must be a mapping like {{requests_per_minute: 60}}")
    limits = defaults
    for name, value in overrides.items():  # one at a time, so an error names the line of the bad one
        try:
            limits = limits.merged({name: value})
        except ValueError as exc:
            raise KeyFileError(f"{path}:{_line(overrides, name)}: {exc}") from exc
    return limits


def _no_unknown(path: Path, mapping: CommentedMap, valid: tuple[str, ...], where: str) -> None:
    for name in mapping:
        if name not in valid:
            close = difflib.get_close_matches(str(name), valid, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise KeyFileError(f"{path}:{_line(mapping, name)}: unknown field '{name}' {where}; {hint}valid fields: {', '.join(valid)}")


def _line(mapping: CommentedMap, name: Any) -> int:
    return int(mapping.lc.key(name)[0]) + 1
