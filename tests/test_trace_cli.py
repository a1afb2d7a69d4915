"""`rill trace list | show | feedback | prune` against a real store file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rillflow.runtime.cli import app
from rillflow.runtime.trace_store import TraceStore
from tests.test_trace_store import sample_trace

runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RILL_TRACE_DB", "RILL_TRACE_RETENTION", "RILL_TRACE_MAX_RUNS", "RILL_TRACE_PII",
                 "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "traces.db"
    now = time.time()
    with TraceStore(path) as store:
        store.submit(sample_trace("0f1e2d3c4b5a69788796", started_at=now - 60))
        store.submit(sample_trace("0f1e2d3c4bffffffffff", started_at=now - 30, status="ok"))
        store.submit(sample_trace("a1b2c3d4e5f6a7b8c9d0", started_at=now, status="ok", tenant="acme"))
        assert store.flush()
    return path


def rill(db: Path, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["trace", "--db", str(db), *args])


def test_list_shows_runs_newest_first(db: Path) -> None:
    result = rill(db, "list")
    assert result.exit_code == 0, result.output
    ids = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert ids == ["a1b2c3d4e5f6", "0f1e2d3c4bff", "0f1e2d3c4b5a"]
    assert "timeout" in result.stdout and "qa" in result.stdout


def test_list_filters_and_prints_json(db: Path) -> None:
    result = rill(db, "list", "--status", "failed", "--json")
    assert result.exit_code == 0
    runs = json.loads(result.stdout)
    assert [r["run_id"] for r in runs] == ["0f1e2d3c4b5a69788796"]
    assert runs[0]["error_kind"] == "timeout"


def test_show_draws_the_waterfall(db: Path) -> None:
    result = rill(db, "show", "0f1e2d3c4b5a")
    assert result.exit_code == 0, result.output
    out = result.stdout
    with TraceStore(db) as store:
        run = store.get_run("0f1e2d3c4b5a69788796")
    assert run is not None and run["trace_id"] in out
    for text in ("retrieve", "answer", "retry 2/2", "attempt 1/2", "cache hit (semantic, similarity 0.97)", "gemma-3",
                 "TTFT 90 ms", "tokens 42/7", "retracted 5 chars", "guardrail pii→redact", "timeout: provider rejected [SECRET]",
                 "retract", "[EMAIL]"):
        assert text in out, text
    assert "█" in out


def test_show_json_parses(db: Path) -> None:
    result = rill(db, "show", "a1b2c3d4e5f6a7b8c9d0", "--json")
    assert result.exit_code == 0
    run = json.loads(result.stdout)
    assert run["tenant"] == "acme" and [s["node"] for s in run["spans"]] == ["retrieve", "answer", "answer"]


def test_an_unknown_run_is_one_line_and_exit_1(db: Path) -> None:
    result = rill(db, "show", "ffffffffffff")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: no run 'ffffffffffff'")


def test_an_ambiguous_prefix_says_so(db: Path) -> None:
    result = rill(db, "show", "0f1e2d3c")
    assert result.exit_code == 2
    assert "ambiguous" in result.stderr and "Traceback" not in result.output


def test_feedback_is_recorded_and_shown(db: Path) -> None:
    result = rill(db, "feedback", "a1b2c3d4e5f6", "--down", "--comment", "wrong city, mail bob@example.com")
    assert result.exit_code == 0, result.output
    shown = rill(db, "show", "a1b2c3d4e5f6").stdout
    assert "feedback -1" in shown and "wrong city, mail [EMAIL]" in shown
    assert rill(db, "feedback", "a1b2c3d4e5f6").exit_code == 2
    assert rill(db, "feedback", "a1b2c3d4e5f6", "--up", "--down").exit_code == 2
    assert rill(db, "feedback", "999999999999", "--up").exit_code == 1


def test_prune_applies_the_settings_now(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RILL_TRACE_MAX_RUNS", "1")
    result = rill(db, "prune")
    assert result.exit_code == 0 and result.stdout.strip() == "removed 2 runs"
    assert len(json.loads(rill(db, "list", "--json").stdout)) == 1


def test_a_missing_store_lists_nothing(tmp_path: Path) -> None:
    result = rill(tmp_path / "none.db", "list")
    assert result.exit_code == 0 and "no runs recorded" in result.stdout


def test_a_corrupt_store_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    db = tmp_path / "traces.db"
    db.write_bytes(b"garbage" * 1000)
    result = rill(db, "list")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_a_bad_setting_is_bad_usage(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RILL_TRACE_RETENTION", "forever")
    result = rill(db, "list")
    assert result.exit_code == 2 and "RILL_TRACE_RETENTION" in result.stderr
