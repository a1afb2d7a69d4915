"""`rill run` records traces and checkpoints; `rill trace` shows them; `--resume` re-runs only what failed
or changed; `rill cache stats` counts. Real subprocesses, real stores under a temporary state folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLOW = """\
version: 1
name: two-steps
inputs:
  q: {type: string}
outputs:
  answer: ${second.value}
nodes:
  first: {type: python, function: "tests.flowfuncs:logged", args: {name: first, value: "${inputs.q}"}}
  second: {type: python, function: "tests.flowfuncs:logged", args: {name: second, value: "${first.value}"}}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "flow.yaml").write_text(FLOW)
    return tmp_path


def rill(project: Path, *args: str, fail: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RILL_STATE_DIR": str(project / ".rill"), "RILL_PYTHON_ALLOW": "tests.flowfuncs.*",
           "RILL_TEST_LOG": str(project / "calls.log"), "RILL_TEST_FAIL": fail, "PYTHONPATH": str(ROOT),
           "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "rillflow.runtime.cli", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def calls(project: Path) -> list[str]:
    return (project / "calls.log").read_text().split()


def test_a_failed_run_is_resumed_running_only_the_failed_part_and_traces_show_both(project: Path) -> None:
    failed = rill(project, "run", "flow.yaml", "-i", "q=hello", fail="second")
    assert failed.returncode == 1, failed.stderr
    hint = re.search(r"--resume ([0-9a-f]{32})", failed.stderr)
    assert hint, failed.stderr
    run_id = hint.group(1)
    assert calls(project) == ["first", "second"]

    resumed = rill(project, "run", "flow.yaml", "--resume", run_id[:10])  # a prefix, inputs from the checkpoint
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "second:first:hello"
    assert calls(project) == ["first", "second", "second"]  # first was replayed, not run

    listed = json.loads(rill(project, "trace", "list", "--json").stdout)
    assert [r["status"] for r in listed] == ["ok", "failed"]
    shown = rill(project, "trace", "show", run_id)
    assert shown.returncode == 0 and "first" in shown.stdout and "second" in shown.stdout
    resumed_trace = json.loads(rill(project, "trace", "show", listed[0]["run_id"], "--json").stdout)
    by_node = {s["node"]: s for s in resumed_trace["spans"]}
    assert by_node["first"]["attributes"]["rill.cache.tier"] == "resume"
    assert "rill.cache.hit" not in by_node["second"]["attributes"]


def test_an_edited_flow_resumes_reusing_the_unchanged_nodes(project: Path) -> None:
    first = rill(project, "run", "flow.yaml", "-i", "q=hi", "--events")
    run_id = json.loads(first.stdout.splitlines()[0])["run_id"]
    (project / "flow.yaml").write_text(FLOW.replace("{name: second, value:", "{name: second_v2, value:"))
    again = rill(project, "run", "flow.yaml", "--resume", run_id)
    assert again.returncode == 0 and again.stdout.strip() == "second_v2:first:hi"
    assert calls(project) == ["first", "second", "second_v2"]


def test_checkpoints_are_listed_apart_from_node_entries_in_cache_stats(project: Path) -> None:
    assert rill(project, "run", "flow.yaml", "-i", "q=s").returncode == 0
    rows = json.loads(rill(project, "cache", "stats", "--json").stdout)
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert {r["node"] for r in rows} == {"(checkpoints)"}  # the flow declares no cache: only resume checkpoints
    assert sum(r["entries"] for r in rows) == 3  # the run's inputs and both nodes' results


def test_resume_of_an_unknown_run_is_a_clear_error(project: Path) -> None:
    result = rill(project, "run", "flow.yaml", "--resume", "0" * 32)
    assert result.returncode == 2 and "no checkpoint for run" in result.stderr and "Traceback" not in result.stderr


def test_no_trace_and_no_cache_leave_no_record(project: Path) -> None:
    result = rill(project, "run", "flow.yaml", "-i", "q=x", "--no-trace", "--no-cache")
    assert result.returncode == 0
    assert json.loads(rill(project, "trace", "list", "--json").stdout) == []


def test_an_unusable_state_folder_degrades_to_warnings_and_the_run_still_answers(project: Path) -> None:
    (project / ".rill").write_text("a file where the state folder should be")
    result = rill(project, "run", "flow.yaml", "-i", "q=x")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "second:first:x"
    assert "warning" in result.stderr and "Traceback" not in result.stderr
