"""`rill serve` as a user runs it: a bad flow or key file stops start-up with exact errors, SIGTERM ends
open streams with one final event each, and `--workers 2` serves from two processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.live_server import free_port
from tests.sse_client import parse_lines

SLOW = """\
version: 1
name: slow
inputs:
  question: {type: string}
outputs:
  answer: ${model.text}
nodes:
  model: {type: scripted, text: "one two three four five six seven eight nine ten eleven twelve", delay: 1s}
"""


def rill(*args: str, cwd: Path, **popen: object) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RILL_STATE_DIR": str(cwd / "state")}
    return subprocess.Popen([sys.executable, "-m", "rillflow.runtime.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)  # type: ignore[call-overload]


def wait_ready(url: str, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"rill serve exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("rill serve did not become ready")


def test_a_bad_flow_stops_start_up_with_file_line_col_errors(tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "ok.yaml").write_text(SLOW)
    (flows / "bad.yaml").write_text(SLOW.replace("name: slow", "name: bad").replace("${model.text}", "${modle.text}"))
    proc = rill("serve", str(flows), "--port", str(free_port()), cwd=tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"{flows / 'bad.yaml'}:6:" in err and "modle" in err and "model" in err
    assert "Traceback" not in err + out


def test_two_flows_with_one_name_and_a_bad_key_file_are_start_up_errors(tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "a.yaml").write_text(SLOW)
    (flows / "b.yaml").write_text(SLOW)
    proc = rill("serve", str(flows), "--port", str(free_port()), cwd=tmp_path)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 2 and "flow name 'slow' is already used by" in err
    (flows / "b.yaml").unlink()
    (tmp_path / "keys.yaml").write_text("keys:\n  - id: nope\n")
    proc = rill("serve", str(flows), "--api-keys", str(tmp_path / "keys.yaml"), "--port", str(free_port()), cwd=tmp_path)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 2 and "keys.yaml:2" in err and "Traceback" not in err


def test_sigterm_ends_every_open_stream_with_one_final_event(tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "slow.yaml").write_text(SLOW)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = rill("serve", str(flows), "--port", str(port), "--no-cache", "--max-streams", "10", cwd=tmp_path)
    try:
        wait_ready(url, proc)
        streams: list[list[dict[str, object]]] = []
        opened = threading.Semaphore(0)

        def listen() -> None:
            got: list[dict[str, object]] = []
            streams.append(got)
            with httpx.stream("POST", f"{url}/api/flows/slow/runs", json={"inputs": {"question": "x"}, "stream": True}, timeout=60) as r:
                lines = r.iter_lines()
                for message in parse_lines(lines):
                    if message.get("json"):
                        got.append(message["json"])
                        if message["json"]["type"] == "chunk" and len([e for e in got if e["type"] == "chunk"]) == 1:
                            opened.release()

        threads = [threading.Thread(target=listen) for _ in range(5)]
        for t in threads:
            t.start()
        for _ in threads:
            assert opened.acquire(timeout=30)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        err = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, -signal.SIGTERM), err  # uvicorn re-raises the signal it drained on, for process managers
    assert "Application shutdown complete" in err
    assert len(streams) == 5
    for got in streams:
        terminal = [e for e in got if e["type"] in ("run_finished", "run_failed")]
        assert len(terminal) == 1, [e["type"] for e in got]
        assert terminal[0]["type"] == "run_failed" and terminal[0]["data"]["error"]["kind"] == "shutdown"  # type: ignore[index]
    assert "Task was destroyed" not in err and "Traceback" not in err


def test_two_workers_serve_the_same_flows(tmp_path: Path) -> None:
    flows = tmp_path / "flows"
    flows.mkdir()
    (flows / "slow.yaml").write_text(SLOW.replace("delay: 1s", "delay: 1ms"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = rill("serve", str(flows), "--port", str(port), "--workers", "2", "--no-cache", "--no-trace", cwd=tmp_path)
    try:
        wait_ready(url, proc, seconds=90)
        answers = [httpx.post(f"{url}/api/flows/slow/runs", json={"inputs": {"question": "x"}}, timeout=30) for _ in range(4)]
        assert all(a.status_code == 200 and a.json()["outputs"]["answer"].startswith("one two") for a in answers)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (0, -signal.SIGTERM)
