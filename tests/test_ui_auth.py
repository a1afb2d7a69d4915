"""API keys: the key file's checks and their messages, who a Bearer header authenticates as (and every
way it does not), and `rill keys create | list | revoke` through a typer app of the test's own."""

from __future__ import annotations

import hashlib
import logging
import re
import stat
from datetime import datetime, timezone
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from rillflow.ui import auth
from rillflow.ui.auth import ApiKey, KeyFileError, KeyStore, generate_key, parse_expiry
from rillflow.ui.keys_cli import add_keys_commands
from rillflow.ui.limits import KeyLimits

DEFAULTS = KeyLimits(requests_per_minute=60, max_streams=4)
KEY_FORMAT = re.compile(r"rk_[0-9a-f]{8}_[A-Za-z0-9_-]{43}")


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    path.chmod(mode)
    return path


def one_key(tmp_path: Path, extra: str = "") -> tuple[Path, str, str]:
    """A key file with one key; returns (path, key id, the key)."""
    key_id, key, digest = generate_key()
    return write(tmp_path, f"keys:\n  - id: {key_id}\n    name: ci-bot\n    sha256: {digest}\n{extra}"), key_id, key


# -- keys -----------------------------------------------------------------------------------------

def test_generated_keys_have_the_documented_format_and_their_hash() -> None:
    keys = [generate_key() for _ in range(50)]
    for key_id, key, digest in keys:
        assert KEY_FORMAT.fullmatch(key) and key.startswith(f"{key_id}_")
        assert digest == hashlib.sha256(key.encode()).hexdigest()
    assert len({key for _, key, _ in keys}) == 50


def test_a_valid_key_authenticates_as_its_id_name_tenant_and_limits(tmp_path: Path) -> None:
    path, key_id, key = one_key(tmp_path, "    tenant: acme\n    limits: {tokens_per_minute: 20000, max_streams: 2}\n")
    store = KeyStore.load(path, DEFAULTS)
    assert store.authenticate(f"Bearer {key}") == ApiKey(
        key_id=key_id, name="ci-bot", tenant="acme",
        limits=KeyLimits(requests_per_minute=60, tokens_per_minute=20000, max_streams=2))
    assert len(store) == 1


def test_a_key_without_limits_gets_the_server_defaults_and_no_tenant(tmp_path: Path) -> None:
    path, _, key = one_key(tmp_path)
    found = KeyStore.load(path, DEFAULTS).authenticate(f"Bearer {key}")
    assert found is not None and found.limits == DEFAULTS and found.tenant is None


def test_the_bearer_scheme_is_case_insensitive_and_spaces_around_are_ignored(tmp_path: Path) -> None:
    path, key_id, key = one_key(tmp_path)
    store = KeyStore.load(path, DEFAULTS)
    for header in (f"bearer {key}", f"BEARER {key}", f"  Bearer   {key}  "):
        found = store.authenticate(header)
        assert found is not None and found.key_id == key_id


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "KEY", "Bearer rk_3f9a1c2b",
                                    "Bearer rk_3f9a1c2b_short", "Token KEY", "Bearer KEY extra", "BearerKEY"])
def test_a_missing_or_malformed_header_is_rejected(tmp_path: Path, header: str | None) -> None:
    path, _, key = one_key(tmp_path)
    store = KeyStore.load(path, DEFAULTS)
    assert store.authenticate(None if header is None else header.replace("KEY", key)) is None


def test_a_wrong_key_with_a_known_id_is_rejected(tmp_path: Path) -> None:
    path, key_id, key = one_key(tmp_path)
    wrong = f"{key_id}_{'A' * 43}"
    assert KEY_FORMAT.fullmatch(wrong) and wrong != key
    assert KeyStore.load(path, DEFAULTS).authenticate(f"Bearer {wrong}") is None


def test_an_unknown_id_still_costs_a_constant_time_compare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, _ = one_key(tmp_path)
    store = KeyStore.load(path, DEFAULTS)
    compared: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    _, stranger, _ = generate_key()
    assert store.authenticate(f"Bearer {stranger}") is None
    assert len(compared) == 1 and len(compared[0][1]) == 32  # against a dummy digest, so timing tells nothing


def test_a_disabled_key_is_rejected(tmp_path: Path) -> None:
    path, _, key = one_key(tmp_path, "    disabled: true\n")
    assert KeyStore.load(path, DEFAULTS).authenticate(f"Bearer {key}") is None


@pytest.mark.parametrize(("expires", "works"), [("2001-01-01", False), ("'2001-01-01T00:00:00Z'", False),
                                                ("2999-01-01", True), ("2999-01-01T10:00:00+02:00", True)])
def test_an_expired_key_is_rejected_and_an_unexpired_one_works(tmp_path: Path, expires: str, works: bool) -> None:
    path, _, key = one_key(tmp_path, f"    expires: {expires}\n")
    assert (KeyStore.load(path, DEFAULTS).authenticate(f"Bearer {key}") is not None) is works


def test_expiry_dates_mean_midnight_utc_and_offsets_are_converted() -> None:
    utc = timezone.utc
    assert parse_expiry(datetime(2027, 1, 1).date()) == datetime(2027, 1, 1, tzinfo=utc)
    assert parse_expiry("2027-01-01T10:00:00+02:00") == datetime(2027, 1, 1, 8, tzinfo=utc)
    assert parse_expiry("2027-01-01T10:00:00Z") == datetime(2027, 1, 1, 10, tzinfo=utc)
    assert parse_expiry(datetime(2027, 1, 1, 10)) == datetime(2027, 1, 1, 10, tzinfo=utc)  # no offset: UTC
    with pytest.raises(ValueError, match=r"'expires' must be a date \(2027-01-01\) or an ISO datetime"):
        parse_expiry("next year")


# -- the key file -------------------------------------------------------------------------------

DIGEST = "a" * 64


def entry(*lines: str, key_id: str = "rk_3f9a1c2b") -> str:
    return "\n".join([f"  - id: {key_id}", "    name: ci-bot", f"    sha256: {DIGEST}", *(f"    {line}" for line in lines)]) + "\n"


@pytest.mark.parametrize(("text", "message"), [
    ("keys:\n" + entry("tennant: acme"), r":5: unknown field 'tennant' in a key entry; did you mean 'tenant'\? valid fields: id, name"),
    ("key:\n" + entry(), r":1: unknown field 'key' at the top level; did you mean 'keys'\?"),
    ("keys:\n" + entry() + entry(key_id="rk_3f9a1c2b"), r":5: duplicate id 'rk_3f9a1c2b' \(first at line 2\); each key needs its own id"),
    ("keys:\n" + entry().replace(DIGEST, "xyz"), r":4: 'sha256' must be 64 hex digits; it is the sha256 of the whole key"),
    ("keys:\n" + entry().replace("id: rk_3f9a1c2b", "id: ci"), r":2: 'id' must be rk_ and 8 lowercase hex digits \(like rk_3f9a1c2b\), not 'ci'"),
    ("keys:\n" + entry("limits:", "  requests_per_minute: 60", "  max_streams: 0"), r":7: 'max_streams' must be a positive whole number or null"),
    ("keys:\n" + entry("limits: {rpm: 5}"), r":5: unknown limit 'rpm'; valid limits: requests_per_minute"),
    ("keys:\n" + entry("limits: 60"), r":5: 'limits' must be a mapping like \{requests_per_minute: 60\}"),
    ("keys:\n  - id: rk_3f9a1c2b\n    sha256: " + DIGEST + "\n", r":2: the key entry has no 'name'; add it"),
    ("keys:\n" + entry("tenant: 'acme corp'"), r":5: 'tenant' must be 1-64 letters, digits, '\.', '_' or '-'"),
    ("keys:\n" + entry("expires: soon"), r":5: 'expires' must be a date \(2027-01-01\) or an ISO datetime"),
    ("keys:\n" + entry("disabled: yes"), r":5: 'disabled' must be true or false, not 'yes'"),
    ("keys:\n" + entry("name: again"), r":5: not valid YAML: found duplicate key \"name\""),
    ("keys:\n  - id: [unclosed\n", r":3: not valid YAML"),
    ("keys: rk_3f9a1c2b\n", r":1: 'keys' must be a list of entries"),
    ("keys:\n  - rk_3f9a1c2b\n", r":2: each key entry must be a mapping with id, name and sha256"),
    ("- rk_3f9a1c2b\n", r":1: the key file must be a mapping with a 'keys:' list; create one with `rill keys create`"),
    ("", r":1: the key file must be a mapping"),
])
def test_key_file_error_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(KeyFileError, match=f"^{re.escape(str(path))}{message}"):
        KeyStore.load(path, DEFAULTS)


def test_a_key_pasted_as_its_hash_is_named_but_never_echoed(tmp_path: Path) -> None:
    _, key, _ = generate_key()
    path = write(tmp_path, "keys:\n" + entry().replace(DIGEST, key))
    with pytest.raises(KeyFileError, match="that looks like the key itself: store its sha256 instead") as caught:
        KeyStore.load(path, DEFAULTS)
    assert key not in str(caught.value) and key.split("_")[-1] not in str(caught.value)


def test_an_unreadable_key_file_is_a_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"missing\.yaml:1: cannot read the key file: .*; check the path"):
        KeyStore.load(tmp_path / "missing.yaml", DEFAULTS)


def test_an_empty_keys_list_loads_no_keys(tmp_path: Path) -> None:
    for text in ("keys: []\n", "keys:\n"):
        store = KeyStore.load(write(tmp_path, text), DEFAULTS)
        assert len(store) == 0 and store.authenticate(f"Bearer {generate_key()[1]}") is None


def test_a_key_file_others_can_read_loads_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rillflow.serve")
    path, _, key = one_key(tmp_path)
    path.chmod(0o644)
    assert KeyStore.load(path, DEFAULTS).authenticate(f"Bearer {key}") is not None
    assert [r.getMessage() for r in caplog.records] == [f"key file {path} can be read or written by other users (mode 0o644); run `chmod 600 {path}`"]


def test_a_private_key_file_loads_without_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rillflow.serve")
    path, _, _ = one_key(tmp_path)
    KeyStore.load(path, DEFAULTS)
    assert caplog.records == []


# -- rill keys ------------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """The test's own `rill`."""

    add_keys_commands(app)
    return app


def test_keys_create_prints_the_key_once_and_stores_only_its_hash(cli: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    result = runner.invoke(cli, ["keys", "create", "ci-bot", "--file", str(path)])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert KEY_FORMAT.fullmatch(key)
    assert "cannot be shown again" in result.stderr and key not in result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert key not in path.read_text() and hashlib.sha256(key.encode()).hexdigest() in path.read_text()
    found = KeyStore.load(path, DEFAULTS).authenticate(f"Bearer {key}")
    assert found is not None and found.name == "ci-bot" and found.key_id == key[:11]


def test_keys_create_writes_tenant_limits_and_expiry_the_loader_reads(cli: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    result = runner.invoke(cli, ["keys", "create", "acme-app", "--file", str(path), "--tenant", "acme", "--rpm", "10", "--tpm", "500",
                                 "--daily-tokens", "9000", "--daily-cost", "2.5", "--max-streams", "1", "--expires", "2999-06-01"])
    assert result.exit_code == 0, result.output
    (loaded,) = KeyStore.load(path, DEFAULTS).entries
    assert loaded.key.tenant == "acme" and loaded.expires == datetime(2999, 6, 1, tzinfo=timezone.utc)
    assert loaded.key.limits == KeyLimits(requests_per_minute=10, tokens_per_minute=500, daily_tokens=9000, daily_cost_usd=2.5, max_streams=1)
    assert "limits: {requests_per_minute: 10, tokens_per_minute: 500" in path.read_text()


def test_keys_create_keeps_the_comments_and_mode_of_an_existing_file(cli: typer.Typer, tmp_path: Path) -> None:
    path, _, key = one_key(tmp_path)
    path.write_text("# owned by the platform team\n" + path.read_text().replace("name: ci-bot", "name: ci-bot   # rotated 2026-01"))
    path.chmod(0o640)
    result = runner.invoke(cli, ["keys", "create", "second", "--file", str(path)])
    assert result.exit_code == 0, result.output
    text = path.read_text()
    assert text.startswith("# owned by the platform team\n") and "name: ci-bot   # rotated 2026-01" in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    store = KeyStore.load(path, DEFAULTS)
    assert len(store) == 2 and store.authenticate(f"Bearer {key}") is not None
    assert store.authenticate(f"Bearer {result.stdout.strip()}") is not None


@pytest.mark.parametrize(("args", "message"), [
    (["--rpm", "0"], "error: --rpm: 'requests_per_minute' must be a positive whole number or null for no limit, not 0\n"),
    (["--daily-cost", "-1"], "error: --daily-cost: 'daily_cost_usd' must be a positive number of US dollars"),
    (["--tenant", "a b"], "error: --tenant must be 1-64 letters"),
    (["--expires", "2001-01-01"], "error: --expires 2001-01-01 is in the past: the key would never work\n"),
    (["--expires", "soon"], "error: --expires must be a date (2027-01-01) or an ISO datetime"),
])
def test_keys_create_refuses_bad_options_in_one_line(cli: typer.Typer, tmp_path: Path, args: list[str], message: str) -> None:
    path = tmp_path / "keys.yaml"
    result = runner.invoke(cli, ["keys", "create", "x", "--file", str(path), *args])
    assert result.exit_code == 2 and result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert result.stdout == "" and not path.exists()


def test_keys_create_refuses_to_add_to_a_broken_file(cli: typer.Typer, tmp_path: Path) -> None:
    path = write(tmp_path, "keys:\n" + entry("tennant: acme"))
    before = path.read_text()
    result = runner.invoke(cli, ["keys", "create", "x", "--file", str(path)])
    assert result.exit_code == 2 and result.stderr == f"error: {path}:5: unknown field 'tennant' in a key entry; did you mean 'tenant'? " \
                                                      "valid fields: id, name, sha256, tenant, expires, disabled, limits\n"
    assert result.stdout == "" and path.read_text() == before


def test_keys_list_shows_ids_names_tenants_expiry_and_status_never_hashes(cli: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    for args in (["one", "--tenant", "acme"], ["two", "--expires", "2999-01-01T12:30:00Z"]):
        assert runner.invoke(cli, ["keys", "create", *args, "--file", str(path)]).exit_code == 0
    ids = [entry.key.key_id for entry in KeyStore.load(path, DEFAULTS).entries]
    result = runner.invoke(cli, ["keys", "list", "--file", str(path)])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows == [["ID", "NAME", "TENANT", "EXPIRES", "STATUS"], [ids[0], "one", "acme", "never", "active"],
                    [ids[1], "two", "-", "2999-01-01", "12:30", "UTC", "active"]]
    assert not re.search(r"[0-9a-f]{64}", result.output)


def test_keys_revoke_disables_the_key(cli: typer.Typer, tmp_path: Path) -> None:
    path, key_id, key = one_key(tmp_path)
    result = runner.invoke(cli, ["keys", "revoke", key_id, "--file", str(path)])
    assert result.exit_code == 0 and f"revoked {key_id} 'ci-bot'" in result.stderr
    assert KeyStore.load(path, DEFAULTS).authenticate(f"Bearer {key}") is None
    listed = runner.invoke(cli, ["keys", "list", "--file", str(path)])
    assert listed.stdout.splitlines()[1].split()[-1] == "disabled"
    again = runner.invoke(cli, ["keys", "revoke", key_id, "--file", str(path)])
    assert again.exit_code == 0 and "already revoked" in again.stderr


def test_keys_revoke_of_an_unknown_id_is_one_line_and_exit_2(cli: typer.Typer, tmp_path: Path) -> None:
    path, key_id, _ = one_key(tmp_path)
    result = runner.invoke(cli, ["keys", "revoke", "rk_00000000", "--file", str(path)])
    assert result.exit_code == 2 and result.stderr == f"error: {path} has no key with id 'rk_00000000'; ids in it: {key_id}\n"


def test_keys_list_of_a_missing_file_is_one_line_and_exit_2(cli: typer.Typer, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["keys", "list", "--file", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_the_key_file_example_in_the_docs_loads(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "api-keys.md").read_text(encoding="utf-8")
    example = next(block for block in re.findall(r"```yaml\n(.*?)```", doc, re.S) if block.startswith("keys:"))
    (loaded,) = KeyStore.load(write(tmp_path, example), DEFAULTS).entries
    assert loaded.key == ApiKey("rk_3f9a1c2b", "ci-bot", "acme", KeyLimits(60, 20000, 1000000, 5.0, 4))
    assert loaded.expires == datetime(2027, 1, 1, tzinfo=timezone.utc) and not loaded.disabled
