"""`rill run` end to end, in a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "examples" / "hello.yaml"


def rill(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from rillflow.runtime.cli import main; main()", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, **(env or {})},
    )


def test_run_streams_the_answer_and_exits_0():
    done = rill("run", str(HELLO), "--input", "question=What is rillflow?")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("rillflow streams this answer through the graph")
    assert "You asked: What is rillflow?" in done.stdout
    assert '"prompt": "Question: What is rillflow?"' in done.stdout


def test_run_events_prints_json_lines_with_one_terminal_event():
    done = rill("run", str(HELLO), "-i", "question=hi", "--events")
    assert done.returncode == 0
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[0]["type"] == "run_started" and events[-1]["type"] == "run_finished"
    assert sum(e["type"] in ("run_finished", "run_failed") for e in events) == 1
    assert sum(e["type"] == "chunk" for e in events) > 5


def test_run_with_bad_inputs_exits_2_and_names_the_input():
    done = rill("run", str(HELLO), "--input", "questio=hi")
    assert done.returncode == 2
    assert "unknown input 'questio'; did you mean 'question'?" in done.stderr
    assert "missing required input 'question'" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_of_invalid_flow_exits_2_with_position(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\noutputs: {a: \"${nope.text}\"}\nnodes:\n  x: {type: static, value: 1}\n")
    done = rill("run", str(bad))
    assert done.returncode == 2
    assert f"{bad}:3:15: error: unknown node 'nope'" in done.stderr


def test_run_failure_exits_1_with_a_friendly_message(tmp_path: Path):
    flow = tmp_path / "fails.yaml"
    flow.write_text("version: 1\nname: fails\noutputs: {a: \"${x.text}\"}\nnodes:\n  x: {type: scripted, text: boom, fail_attempts: [1], error: server}\n")
    done = rill("run", str(flow))
    assert done.returncode == 1
    assert "error: scripted failure on attempt 1 [server]" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_takes_inputs_from_a_json_file(tmp_path: Path):
    inputs = tmp_path / "in.json"
    inputs.write_text(json.dumps({"question": "from a file"}))
    done = rill("run", str(HELLO), "--inputs", str(inputs))
    assert done.returncode == 0 and "You asked: from a file" in done.stdout
    inputs.write_text("[1, 2]")
    done = rill("run", str(HELLO), "--inputs", str(inputs))
    assert done.returncode == 2 and "inputs must be a JSON object" in done.stderr
