"""Every example in examples/ runs for real: the event-stream script and the custom node package as
subprocesses, the embedded chat app on uvicorn (and in chromium), and the CI workflow's `rill test`
commands against the real CLI's options."""

from __future__ import annotations

import codecs
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urljoin, urlparse

import httpx
import pytest
from ruamel.yaml import YAML

from tests.live_server import free_port
from tests.sse_client import events as sse_events

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HELLO = EXAMPLES / "hello.yaml"
HELLO_ANSWER = "rillflow streams this answer through the graph, one chunk at a time. You asked: What is rillflow?"
RILL = [sys.executable, "-c", "from rillflow.runtime.cli import main; main()"]


@pytest.fixture
def state_env(tmp_path: Path) -> dict[str, str]:
    """The environment of an example's process: traces and cache in a temporary folder, not the repo's .rill/."""
    return {**os.environ, "RILL_STATE_DIR": str(tmp_path / "state")}


# ---- 01: the event stream from Python -------------------------------------------------------------

class TimedOutput:
    """A process's stdout as it arrived: the text, and when each piece came (seconds since start)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        started = time.monotonic()
        decoder = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.arrivals: list[tuple[float, int]] = []  # (time, length of the text so far)
        with subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            while data := os.read(proc.stdout.fileno(), 65536):  # raw reads: each piece as soon as it is written
                self.text += decoder.decode(data)
                self.arrivals.append((time.monotonic() - started, len(self.text)))
            self.stderr = proc.stderr.read().decode()
            self.returncode = proc.wait(timeout=60)

    def time_of(self, needle: str) -> float:
        """When the end of the first ``needle`` had arrived."""
        end = self.text.index(needle) + len(needle)
        return next(t for t, length in self.arrivals if length >= end)


def run_events_example(env: dict[str, str], *args: str) -> TimedOutput:
    return TimedOutput([sys.executable, str(EXAMPLES / "01_run_flow_events.py"), *args], env)


def test_run_flow_events_streams_chunks_as_they_arrive_then_prints_a_summary(state_env: dict[str, str]) -> None:
    out = run_events_example(state_env, "--question", "What is rillflow?")
    assert out.returncode == 0, out.stderr
    assert "run " in out.text and "of flow 'hello' (inputs: question)" in out.text
    assert re.search(r"^\s+\d+\.\d\ds  answer\s+started \(scripted\)$", out.text, re.M)
    # hello.yaml's scripted model waits 40 ms between its 17 words: streamed, the first word is on stdout
    # well before the last; printed at the end, both would arrive together.
    assert out.time_of("[answer] rillflow ") + 0.3 < out.time_of("You asked: What is rillflow?")
    assert out.time_of("You asked: What is rillflow?") < out.time_of("run ok in")
    summary = out.text[out.text.index("\nrun ok in"):]
    assert f"  answer: {HELLO_ANSWER}\n" in summary
    assert "  prompt: Question: What is rillflow?\n" in summary
    assert re.search(r"^answer\s+ok\s+1\s+\d+ ms\s+\d+ ms\s+0/17\s+scripted$", summary, re.M), summary
    assert re.search(r"^prompt\s+ok\s+1\s+\d+ ms\s+-\s+-$", summary, re.M), summary
    assert summary.rstrip().endswith("tokens: 0 in, 17 out")


FLAKY = """\
version: 1
name: flaky
inputs: {question: {type: string}}
outputs:
  draft: ${draft.text}
  answer: ${answer.text}
nodes:
  draft:
    type: scripted
    text: second time lucky
    fail_attempts: [1]
    retry: {attempts: 2, backoff: 10ms}
  answer:
    type: scripted
    text: never shown
    fail_attempts: [1]
    error: timeout
    fallback: backup
  backup: {type: scripted, text: the backup answers}
"""


def test_run_flow_events_shows_retries_and_fallbacks(tmp_path: Path, state_env: dict[str, str]) -> None:
    flow = tmp_path / "flaky.yaml"
    flow.write_text(FLAKY, encoding="utf-8")
    out = run_events_example(state_env, "--flow", str(flow), "--question", "hi")
    assert out.returncode == 0, out.stderr
    assert re.search(r"draft\s+retry: attempt 1 failed \(server: scripted failure on attempt 1\), next attempt in 0\.\d\ds", out.text)
    assert re.search(r"draft\s+started \(scripted, attempt 2\)", out.text)
    assert re.search(r"answer\s+fallback: failed \(timeout: scripted failure on attempt 1\), 'backup' stands in", out.text)
    assert "[answer] the backup answers" in out.text
    assert "  draft: second time lucky\n" in out.text and "  answer: the backup answers\n" in out.text
    assert re.search(r"^draft\s+ok\s+2\s", out.text, re.M)
    assert re.search(r"^answer\s+.*fell back to backup$", out.text, re.M)


def test_run_flow_events_exits_1_and_says_why_when_the_run_fails(tmp_path: Path, state_env: dict[str, str]) -> None:
    flow = tmp_path / "down.yaml"
    flow.write_text("version: 1\nname: down\ninputs: {question: {type: string}}\noutputs: {answer: \"${answer.text}\"}\n"
                    "nodes:\n  answer: {type: scripted, text: no, fail_attempts: [1], error: rate_limit}\n", encoding="utf-8")
    out = run_events_example(state_env, "--flow", str(flow))
    assert out.returncode == 1
    assert "answer       failed after 1 attempt(s): rate_limit: scripted failure on attempt 1" in out.text
    assert "run failed in" in out.text and "rate_limit: scripted failure on attempt 1 (node 'answer')" in out.text


def test_run_flow_events_exits_2_naming_a_bad_input(state_env: dict[str, str]) -> None:
    out = run_events_example(state_env, "-i", "questio=hi")
    assert out.returncode == 2
    assert "unknown input 'questio'; did you mean 'question'?" in out.stderr
    assert "Traceback" not in out.stderr


# ---- 02: a node type in its own package ----------------------------------------------------------

CUSTOM = EXAMPLES / "02_custom_node"
KEYWORDS_QUESTION = "How do I cache node results, and how long do cached results live?"


@pytest.fixture(scope="module")
def keywords_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example package installed into a folder of its own (its dist-info carries the entry point)."""
    tmp = tmp_path_factory.mktemp("custom-node")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds.
    source = shutil.copytree(CUSTOM, tmp / "src", ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--disable-pip-version-check", "--quiet", "--target", str(site), str(source)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert list(site.glob("rill_keywords-*.dist-info/entry_points.txt"))
    return site


def rill(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RILL, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


def test_installed_node_package_validates_and_runs_its_flow(keywords_site: Path, state_env: dict[str, str]) -> None:
    env = {**state_env, "PYTHONPATH": str(keywords_site)}
    valid = rill("validate", str(CUSTOM / "flow.yaml"), env=env)
    assert valid.returncode == 0, valid.stderr
    assert "flow.yaml: ok (2 nodes)" in valid.stdout + valid.stderr
    done = rill("run", str(CUSTOM / "flow.yaml"), "-i", f"question={KEYWORDS_QUESTION}", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"keywords": ["results", "cache", "node", "long"], "search": "results OR cache OR node OR long"}


def test_installed_node_package_passes_its_flow_tests(keywords_site: Path, state_env: dict[str, str]) -> None:
    done = rill("test", str(CUSTOM), env={**state_env, "PYTHONPATH": str(keywords_site)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


HIDE_KEYWORDS = """
import importlib.metadata as md, sys
real = md.entry_points
def entry_points(**params):
    found = real(**params)
    return md.EntryPoints(ep for ep in found if not ep.value.startswith("rill_keywords")) if params.get("group") == "rillflow.nodes" else found
md.entry_points = entry_points
from rillflow.runtime.cli import main
sys.argv = ["rill", *sys.argv[1:]]
main()
"""


def test_without_the_package_the_flow_names_the_unknown_type(state_env: dict[str, str]) -> None:
    # scripts/test installs the example package (rill test examples/ runs its flow): hide its entry
    # point, so this is what a user who has not installed it sees.
    done = subprocess.run([sys.executable, "-c", HIDE_KEYWORDS, "validate", str(CUSTOM / "flow.yaml")],
                          env=state_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "flow.yaml:15:11: error: unknown node type 'keyword_extract' (known types:" in done.stdout + done.stderr


# ---- 03: the chat mounted in another Starlette app ------------------------------------------------

APP = EXAMPLES / "03_embed_chat" / "app.py"


class EmbeddedApp:
    """examples/03_embed_chat/app.py serving examples/hello.yaml on a free loopback port, in a subprocess."""

    def __init__(self, env: dict[str, str]) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, str(APP), "--flows", str(HELLO), "--port", str(port), "--log-level", "warning"],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"the app exited with {self.proc.returncode}: {self.proc.stderr.read() if self.proc.stderr else ''}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the app did not answer /api/health within 60 s")
            time.sleep(0.1)

    def stop(self) -> tuple[int, str]:
        """Ctrl+C, as a person would; the exit status and what it wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedApp]:
    env = {**os.environ, "RILL_STATE_DIR": str(tmp_path_factory.mktemp("embed-state"))}
    app = EmbeddedApp(env)
    try:
        yield app
    finally:
        app.stop()


def test_host_app_keeps_its_own_routes(embedded: EmbeddedApp) -> None:
    home = httpx.get(f"{embedded.url}/")
    assert home.status_code == 200 and "<h1>Acme docs</h1>" in home.text and 'href="/assistant/"' in home.text
    assert httpx.get(f"{embedded.url}/api/health").json() == {"status": "ok", "assistant": {"ready": True, "flows": ["hello"]}}


def test_mounted_chat_page_loads_its_files_under_the_prefix(embedded: EmbeddedApp) -> None:
    page = httpx.get(f"{embedded.url}/assistant", follow_redirects=True)
    assert page.status_code == 200 and str(page.url) == f"{embedded.url}/assistant/"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'<(?:link rel="stylesheet" href|script type="module" src)="([^"]+)"', page.text)
    assert len(assets) == 2
    for asset in assets:
        url = urljoin(str(page.url), asset)
        assert urlparse(url).path.startswith("/assistant/static/"), f"{asset} escapes the mount: {url}"
        assert httpx.get(url).status_code == 200
    chat_js = httpx.get(f"{embedded.url}/assistant/static/chat.js").text
    assert not re.search(r"""api\(\s*[`"']/""", chat_js), "an absolute API path would reach the host app, not the assistant"


def test_mounted_api_streams_a_run(embedded: EmbeddedApp) -> None:
    assert httpx.get(f"{embedded.url}/assistant/readyz").json() == {"status": "ready", "flows": ["hello"]}
    assert [f["name"] for f in httpx.get(f"{embedded.url}/assistant/api/flows").json()["flows"]] == ["hello"]
    with httpx.stream("POST", f"{embedded.url}/assistant/api/flows/hello/runs", json={"inputs": {"question": "What is rillflow?"}},
                      headers={"Accept": "text/event-stream"}, timeout=30) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        run = sse_events(response)
    chunks = [e["data"]["text"] for e in run if e["type"] == "chunk" and e["data"]["output"] == "answer"]
    assert len(chunks) == 17 and "".join(chunks) == HELLO_ANSWER
    assert run[-1]["type"] == "run_finished" and run[-1]["data"]["outputs"]["answer"] == HELLO_ANSWER
    assert response.headers["x-rill-run-id"] == run[-1]["run_id"]


def test_mounted_chat_answers_in_a_real_browser(embedded: EmbeddedApp) -> None:
    from playwright.sync_api import sync_playwright

    from tests.browser import ChatPage, launch

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            chat = ChatPage(browser, f"{embedded.url}/assistant/")
            requested: list[str] = []
            chat.page.on("request", lambda request: requested.append(urlparse(request.url).path))
            turn = chat.ask("What is rillflow?")
            chat.wait_ended(turn)
            assert "You asked: What is rillflow?" in turn.locator(".answer").inner_text()
            assert "/assistant/api/flows/hello/runs" in requested
            assert all(path.startswith("/assistant/") for path in requested), requested
            assert chat.console_errors() == [] and chat.page_errors == [] and chat.csp_violations() == []
            chat.close()
        finally:
            browser.close()


def load_app_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_embed_chat_app", APP)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_host_lifespan_opens_and_closes_the_mounted_assistant(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Starlette runs the outermost app's lifespan only: the host must run the assistant's, or nothing loads."""
    from starlette.testclient import TestClient

    from rillflow.ui.settings import ServeSettings

    monkeypatch.setenv("RILL_STATE_DIR", str(tmp_path))
    app = load_app_module().create_app(HELLO, ServeSettings(cache=False, trace=False))
    rill = app.state.assistant.state.rill
    assert not rill.ready
    with TestClient(app) as client:
        assert rill.ready
        assert client.get("/assistant/readyz").status_code == 200
    assert not rill.ready


def test_embedded_app_stops_cleanly_on_ctrl_c(state_env: dict[str, str]) -> None:
    app = EmbeddedApp(state_env)
    code, err = app.stop()
    assert code == 130, err  # interrupted, as `rill serve` exits
    assert "Traceback" not in err


def test_embedded_app_with_an_invalid_flow_exits_2_with_its_position(tmp_path: Path, state_env: dict[str, str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\noutputs: {a: \"${nope.text}\"}\nnodes:\n  x: {type: static, value: 1}\n", encoding="utf-8")
    done = subprocess.run([sys.executable, str(APP), "--flows", str(bad)], capture_output=True, text=True, timeout=60, cwd=ROOT, env=state_env)
    assert done.returncode == 2
    assert f"{bad}:3:15: error: unknown node 'nope'" in done.stderr and "Traceback" not in done.stderr


# ---- 04: the CI workflow --------------------------------------------------------------------------

WORKFLOW = EXAMPLES / "04_ci_flow_tests.yml"


def workflow_steps() -> list[dict[str, Any]]:
    workflow = YAML(typ="safe").load(WORKFLOW.read_text(encoding="utf-8"))
    assert workflow["permissions"]["checks"] == "write", "the JUnit report action publishes a check run"
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def rill_test_commands() -> tuple[list[list[str]], list[list[str]]]:
    """The arguments of each `rill test` the workflow runs, and of each its comments tell a person to run."""
    ran = [shlex.split(step["run"]) for step in workflow_steps() if "rill test" in step.get("run", "")]
    told = [shlex.split(line.lstrip("# ")) for line in WORKFLOW.read_text(encoding="utf-8").splitlines()
            if line.startswith("#") and line.lstrip("# ").startswith("rill test")]
    return [cmd[2:] for cmd in ran], [cmd[2:] for cmd in told]


def parse_rill_test(args: list[str]) -> dict[str, Any]:
    """What the real `rill test` makes of ``args`` (click raises on an unknown option or a bad value)."""
    from typer.main import get_command

    from rillflow.runtime.cli import app

    command = get_command(app).commands["test"]  # type: ignore[attr-defined]
    return dict(command.make_context("test", list(args)).params)


def test_ci_workflow_replays_offline_and_publishes_junit() -> None:
    ran, told = rill_test_commands()
    assert ran and told
    options = {arg for args in ran + told for arg in args if arg.startswith("-")}
    help_text = subprocess.run([*RILL, "test", "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                               env={**os.environ, "COLUMNS": "200"}).stdout
    assert options and all(option in help_text for option in options), f"not options of `rill test`: {options}"
    for args in ran:
        params = parse_rill_test(args)
        assert not params["record"] and not params["live"], "CI replays cassettes; it never records"
        junit = params["junit_xml"]
        assert junit is not None
        report = next(step for step in workflow_steps() if step.get("uses", "").startswith("mikepenz/action-junit-report@"))
        assert report["with"]["report_paths"] == str(junit) and report["if"] == "always()"
    assert any(parse_rill_test(args)["record"] for args in told), "the comments say how to re-record locally"
