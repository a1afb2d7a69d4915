"""`rill keys create | list | revoke`: the API key file that `rill serve --api-keys FILE` reads.

``create`` prints the new key once, alone on stdout (so ``KEY=$(rill keys create ...)`` captures just
the key); the file keeps only its sha256 (see rillflow.ui.auth), so it can never be shown again.
Edits keep the file's comments (ruamel round-trip) and go to a temporary file renamed over the old
one: a crash never leaves half a key file. A new file is created with mode 0600; an existing file
keeps its mode. Errors are one line on stderr and exit 2.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from rillflow.ui.auth import TENANT, KeyEntry, KeyFileError, KeyStore, generate_key, key_yaml, parse_entries, parse_expiry, read_document
from rillflow.ui.limits import KeyLimits

EXIT_USAGE = 2
HEADER = "API keys of `rill serve --api-keys`; written by `rill keys create`. Only sha256 of each key is stored."

keys_app = typer.Typer(name="keys", help="Create, list and revoke the API keys of `rill serve`.", no_args_is_help=True)

OPTIONS = {"requests_per_minute": "--rpm", "tokens_per_minute": "--tpm", "daily_tokens": "--daily-tokens",
           "daily_cost_usd": "--daily-cost", "max_streams": "--max-streams"}

FileOption = Annotated[Path, typer.Option("--file", "-f", help="The key file (the one `rill serve --api-keys` reads).")]


def add_keys_commands(app: typer.Typer) -> None:
    """Register the `keys` command group on the CLI."""
    app.add_typer(keys_app)


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Who uses the key, e.g. ci-bot.")],
    file: FileOption,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Tenant the key's caches, retrieval and traces are scoped to.")] = None,
    rpm: Annotated[int | None, typer.Option("--rpm", help="Requests per minute (default: the server's).")] = None,
    tpm: Annotated[int | None, typer.Option("--tpm", help="Model tokens per minute.")] = None,
    daily_tokens: Annotated[int | None, typer.Option("--daily-tokens", help="Model tokens per UTC day.")] = None,
    daily_cost: Annotated[float | None, typer.Option("--daily-cost", help="US dollars per UTC day.")] = None,
    max_streams: Annotated[int | None, typer.Option("--max-streams", help="Runs at once.")] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="Last moment of use: 2027-01-01 (00:00 UTC) or 2027-01-01T12:00:00Z.")] = None,
) -> None:
    """Add a key to FILE (created if missing) and print it once."""
    with _errors():
        entry = _new_entry(name, tenant, expires, {"requests_per_minute": rpm, "tokens_per_minute": tpm, "daily_tokens": daily_tokens,
                                                    "daily_cost_usd": daily_cost, "max_streams": max_streams})
        yaml, document = _load(file, create=True)
        taken = {item.get("id") for item in document["keys"]}
        key_id, key, digest = generate_key()
        while key_id in taken:  # 2^32 ids: a clash is unlikely, never impossible
            key_id, key, digest = generate_key()
        entry.insert(0, "id", key_id)
        entry.insert(2, "sha256", digest)
        document["keys"].append(entry)
        _write(file, yaml, document)
    typer.echo(key)
    typer.echo(f"created key {key_id} '{name}' in {file}. Store the key above now: it cannot be shown again.", err=True)


def _new_entry(name: str, tenant: str | None, expires: str | None, limits: dict[str, Any]) -> CommentedMap:
    """The entry's fields other than id and sha256, checked as the key file's loader would."""
    if not name.strip():
        raise ValueError("NAME must say who uses the key, e.g. ci-bot")
    if tenant is not None and not TENANT.fullmatch(tenant):
        raise ValueError(f"--tenant must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, not {tenant!r}")
    overrides = {limit: value for limit, value in limits.items() if value is not None}
    for limit, value in overrides.items():
        try:
            KeyLimits().merged({limit: value})
        except ValueError as exc:
            raise ValueError(f"{OPTIONS[limit]}: {exc}") from None
    entry = CommentedMap(name=name)
    if tenant is not None:
        entry["tenant"] = tenant
    if expires is not None:
        entry["expires"] = _expiry(expires)
    if overrides:
        flow = CommentedMap(overrides)
        flow.fa.set_flow_style()
        entry["limits"] = flow
    return entry


def _expiry(text: str) -> date | str:
    """A date stays a YAML date; a datetime is written as ISO text in UTC."""
    try:
        moment = parse_expiry(text)
    except ValueError:
        raise ValueError(f"--expires must be a date (2027-01-01) or an ISO datetime (2027-01-01T12:00:00Z), not {text!r}") from None
    if moment <= datetime.now(timezone.utc):
        raise ValueError(f"--expires {text} is in the past: the key would never work")
    with contextlib.suppress(ValueError):
        return date.fromisoformat(text.strip())
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@keys_app.command("list")
def list_keys(file: FileOption) -> None:
    """Each key's id, name, tenant, expiry and status (never a hash)."""
    with _errors():
        entries = KeyStore.load(file, KeyLimits()).entries
    now = datetime.now(timezone.utc)
    rows = [("ID", "NAME", "TENANT", "EXPIRES", "STATUS"), *(_row(entry, now) for entry in entries)]
    widths = [max(len(row[col]) for row in rows) for col in range(4)]
    for row in rows:
        typer.echo("  ".join([*(row[col].ljust(widths[col]) for col in range(4)), row[4]]))


def _row(entry: KeyEntry, now: datetime) -> tuple[str, str, str, str, str]:
    expires = "never" if entry.expires is None else entry.expires.strftime("%Y-%m-%d %H:%M UTC")
    status = "disabled" if entry.disabled else "expired" if not entry.usable(now) else "active"
    return entry.key.key_id, entry.key.name, entry.key.tenant or "-", expires, status


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key's id (rk_...), as `rill keys list` shows it.")], file: FileOption) -> None:
    """Disable a key (it stays in FILE, marked disabled: true)."""
    with _errors():
        yaml, document = _load(file, create=False)
        entry = next((item for item in document["keys"] if item.get("id") == key_id), None)
        if entry is None:
            known = ", ".join(str(item.get("id")) for item in document["keys"]) or "none"
            raise ValueError(f"{file} has no key with id '{key_id}'; ids in it: {known}")
        if entry.get("disabled") is True:
            typer.echo(f"{key_id} '{entry['name']}' was already revoked", err=True)
            return
        entry["disabled"] = True
        _write(file, yaml, document)
    typer.echo(f"revoked {key_id} '{entry['name']}'; a running `rill serve` sees it once it loads {file} again (restart it)", err=True)


def _load(path: Path, *, create: bool) -> tuple[YAML, CommentedMap]:
    """The key file for editing; the whole file must be valid before anything is added to it."""
    yaml = key_yaml()
    document: Any = read_document(path, yaml) if path.exists() or not create else None
    if document is None and create:  # a new or empty file
        document = CommentedMap(keys=CommentedSeq())
        document.yaml_set_start_comment(HEADER)
    parse_entries(path, document, KeyLimits())  # raises unless a mapping with a valid (or null) keys: list
    if document.get("keys") is None:
        document["keys"] = CommentedSeq()
    return yaml, document


def _write(path: Path, yaml: YAML, document: CommentedMap) -> None:
    """Replace ``path`` atomically; mkstemp creates the temporary file with mode 0600."""
    target = path.resolve()  # through a symlink, keep the link
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o600
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            yaml.dump(document, out)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Every failure as one line on stderr and exit 2, never a traceback."""
    try:
        yield
    except (KeyFileError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
