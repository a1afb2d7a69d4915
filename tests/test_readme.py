"""The README's promises, run as written: three sentences, exactly two set-up commands, and a tour
whose commands work. The install half of the first command is what set this environment up
(scripts/test runs the same `pip install -e`); its serve half runs here on a real port."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.live_server import free_port

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SHIPPED = {"docs_qa", "support_bot", "summarize", "structured_extract"}


def bash_blocks(text: str) -> list[list[str]]:
    """The command lines of each ```bash block: comments and blank lines dropped."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines = [re.sub(r"\s+#.*$", "", line).strip() for line in body.splitlines()]
        blocks.append([line for line in lines if line and not line.startswith("#")])
    return blocks


def rill_exe() -> str:
    return str(Path(sys.executable).with_name("rill"))


def test_intro_is_three_sentences_then_exactly_two_setup_commands() -> None:
    intro = README.split("```bash", 1)[0].split("\n", 1)[1].strip()
    assert len(re.findall(r"[.!?](?:\s|$)", intro)) == 3, intro
    setup = bash_blocks(README)[0]
    assert setup == ['CMAKE_ARGS="-DGGML_NATIVE=OFF" python3 -m pip install -e . && rill serve flows/', "bash scripts/test"]
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert ci[-1] == "exec bash scripts/test", "CI runs the README's test command and nothing else"
    assert [c for c in ci if not c.startswith(("set ", "cd "))] == ["exec bash scripts/test"]


def test_the_tour_commands_run_as_shown(tmp_path: Path) -> None:
    tour = next(block for block in bash_blocks(README) if any(line.startswith("rill trace show") for line in block))
    assert [shlex.split(line)[:2] for line in tour] == [
        ["rill", "validate"], ["rill", "run"], ["rill", "test"], ["rill", "serve"], ["rill", "trace"], ["rill", "trace"]]
    for name in ("flows", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "RILL_STATE_DIR": str(tmp_path / ".rill"), "NO_COLOR": "1"}
    outputs: dict[str, str] = {}
    for line in tour:
        argv = shlex.split(line)
        if argv[1] == "serve":
            continue  # a server does not exit: test_the_first_command_serves_every_shipped_flow runs it
        if "RUN_ID" in argv:
            run_id = re.search(r"^\s*([0-9a-f]{12})\s", outputs["rill trace list"], flags=re.M)
            assert run_id, outputs["rill trace list"]
            argv[argv.index("RUN_ID")] = run_id.group(1)
        done = subprocess.run([rill_exe(), *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        outputs[line] = done.stdout + done.stderr
        assert "Traceback" not in outputs[line]
    run = next(text for line, text in outputs.items() if line.startswith("rill run"))
    assert "You asked: What is rillflow?" in run
    assert all(f"flows/{name}.yaml: ok" in outputs[tour[0]] for name in SHIPPED)
    assert "passed" in outputs[next(line for line in outputs if line.startswith("rill test"))]
    assert "hello" in outputs["rill trace list"] and "answer" in outputs[tour[-1]]


@pytest.mark.timeout(600)
def test_the_first_command_serves_every_shipped_flow(tmp_path: Path) -> None:
    command = bash_blocks(README)[0][0].split(" && ", 1)[1]
    port = free_port()
    argv = [rill_exe(), *shlex.split(command)[1:], "--port", str(port)]
    env = {**os.environ, "RILL_STATE_DIR": str(tmp_path / ".rill")}
    log = tmp_path / "serve.log"  # a file, not a pipe: a chatty server never blocks on a full pipe
    with log.open("w") as sink:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 400
        while True:
            assert proc.poll() is None, f"rill serve exited: {log.read_text()}"
            assert time.monotonic() < deadline, "rill serve was not ready within 400 s"
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        page = httpx.get(base + "/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
        flows = {f["name"] for f in httpx.get(base + "/api/flows", timeout=10).json()["flows"]}
        assert flows >= SHIPPED
        answer = httpx.post(base + "/api/flows/docs_qa/runs", json={"inputs": {"question": "How do I run the tests?"}, "stream": False}, timeout=300)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["status"] == "ok" and body["outputs"]["answer"].strip()
        assert body["outputs"]["sources"], "the demo answers with sources from the ingested docs"
        json.dumps(body)  # plain JSON all the way down
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
