"""docs/cli.md, docs/events.md and docs/operations.md stay true to the code.

The command lines in docs/cli.md run (offline, against the scripted flows) and give the exit code
written after them; every command's --help works; the event streams shown in docs/events.md are what
a run emits; every `RILL_*` variable, `rill` option and `rill_*` metric the docs name exists; every
flow in docs/operations.md compiles. The generated blocks themselves are checked in test_docs_sync.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CLI_DOC = DOCS / "cli.md"
EVENTS_DOC = DOCS / "events.md"
OPS_DOC = DOCS / "operations.md"
FENCE = re.compile(r"^```(?P<lang>[a-z]*)\n(?P<body>.*?)^```", re.S | re.M)
EXIT = re.compile(r"#\s*exit\s+(\d+)\s*$")
RILL_CALL = re.compile(r"(?:^|[\s;&|(])rill\s")

#: Example lines of docs/cli.md that are not run, by a piece of the line, and why.
SKIP: dict[str, str] = {
    "rill run flows/docs_qa.yaml": "runs the local Gemma model and opens the demo's Qdrant folder (slow; one process at a time)",
    "--resume 3f2a9c": "needs the id of an earlier failed run",
    "rill ingest docs README.md": "loads the embedding model and writes into the flow's Qdrant folder",
    "rill ingest ./handbook": "needs a ./handbook folder and loads the embedding model",
    "rill serve flows/": "starts a server that runs until it is stopped",
    "rill test flows/": "replays the demo flow with its real embedder and Qdrant folder (tens of seconds)",
    "--record": "runs the real models and rewrites cassettes",
    "rill eval": "runs the real models",
    "rill trace show 7c2e91": "needs the id of a recorded run",
    "rill trace feedback 7c2e91": "needs the id of a recorded run",
}

#: Options of other programs that docs/operations.md shows (pip, docker, vLLM, llama.cpp's servers).
EXTERNAL_OPTIONS = {
    "--force-reinstall", "--no-cache-dir",  # pip
    "--name",  # docker run
    "--port", "--api-key", "--served-model-name",  # vllm serve (and llama-server)
    "--model", "--host", "--n_gpu_layers", "--n_ctx", "--api_key",  # python -m llama_cpp.server
    "--parallel",  # llama-server
}


def _docgen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rill_docgen_reference", Path(__file__).with_name("docgen.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docgen = _docgen()


# -- reading the docs ----------------------------------------------------------------------------
def _fences(path: Path, lang: str) -> list[tuple[str, str]]:
    """(the heading above it, the body) of every ```lang fence in ``path``."""
    text = path.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        if m.group("lang") == lang:
            headings = re.findall(r"^#+ (.+)$", text[: m.start()], re.M)
            found.append((headings[-1] if headings else path.name, m.group("body")))
    return found


def _lines(body: str) -> list[str]:
    """The logical lines of a shell snippet: continuations joined, blanks and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _inline_code(path: Path) -> list[str]:
    """Every `inline code` span outside fences."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return re.findall(r"`([^`\n]+)`", text)


def _skip_reason(line: str) -> str | None:
    return next((why for piece, why in SKIP.items() if piece in line), None)


def _cli_lines() -> list[str]:
    return [line for _, body in _fences(CLI_DOC, "bash") for line in _lines(body)]


# -- docs/cli.md: the examples run -----------------------------------------------------------------
@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A working folder that sees the repository's examples, a `rill` on PATH, and no inherited settings."""
    for name in ("examples", "tests", "flows", "docs"):
        (tmp_path / name).symlink_to(ROOT / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    rill = bin_dir / "rill"
    rill.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m rillflow.runtime.cli "$@"\n', encoding="utf-8")
    rill.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RILL_", "OTEL_"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return tmp_path, env


CLI_FENCES = _fences(CLI_DOC, "bash")


@pytest.mark.parametrize("body", [body for _, body in CLI_FENCES], ids=[heading for heading, _ in CLI_FENCES])
def test_cli_examples_give_their_documented_exit_codes(body: str, sandbox: tuple[Path, dict[str, str]]) -> None:
    cwd, env = sandbox
    for line in _lines(body):
        if _skip_reason(line):
            continue
        expected = EXIT.search(line)
        done = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
                              check=False)
        assert "Traceback" not in done.stderr, f"{line}\n{done.stderr}"
        want = int(expected.group(1)) if expected else 0
        assert done.returncode == want, f"docs/cli.md says exit {want}, got {done.returncode}: {line}\n{done.stderr[-2000:]}"


def test_every_cli_example_command_states_its_exit_code() -> None:
    missing = [line for line in _cli_lines() if RILL_CALL.search(line) and not EXIT.search(line)]
    assert missing == [], "end these lines of docs/cli.md with '# exit N'"


def test_every_skipped_example_exists() -> None:
    lines = _cli_lines()
    stale = [piece for piece in SKIP if not any(piece in line for line in lines)]
    assert stale == [], "SKIP names example lines docs/cli.md no longer has"


def test_every_documented_command_has_an_example() -> None:
    """Every leaf command with documented exit codes is shown at least once in docs/cli.md's examples."""
    lines = _cli_lines()
    leaves = [path for path, command in docgen.cli_commands() if not getattr(command, "commands", None) and path in docgen.CLI_EXIT_CODES]
    unshown = [path for path in leaves if not any(re.search(rf"(?:^|[\s;&|(=]){re.escape(path)}(?:\s|$)", line) for line in lines)]
    assert unshown == [], "add an example for these commands to docs/cli.md"


@pytest.mark.parametrize("path", [path for path, _ in docgen.cli_commands()])
def test_help_of_every_command_exits_0(path: str) -> None:
    from typer.testing import CliRunner

    from rillflow.runtime.cli import app

    result = CliRunner().invoke(app, [*path.split()[1:], "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


# -- docs/events.md: the streams shown are what runs emit ---------------------------------------------
def _json_lines(body: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def _documented_stream(index: int) -> list[dict[str, Any]]:
    return _json_lines([body for _, body in _fences(EVENTS_DOC, "json")][index])


def test_the_hello_stream_in_events_doc_keeps_the_ordering_guarantees() -> None:
    import typing

    from rillflow.runtime.events import TERMINAL, EventType

    events = _documented_stream(0)
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "run_started"
    assert [e["type"] for e in events if e["type"] in TERMINAL] == [events[-1]["type"]] == ["run_finished"]
    assert {e["type"] for e in events} <= set(typing.get_args(EventType))
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)


def test_the_hello_stream_in_events_doc_is_what_a_run_emits() -> None:
    from rillflow.runtime import load_flow, run_sync

    documented = _documented_stream(0)
    result = run_sync(load_flow(ROOT / "examples" / "hello.yaml"), {"question": "hi"})
    actual = [e.to_dict() for e in result.events]

    def per_node(events: list[dict[str, Any]]) -> dict[str | None, list[tuple[str, list[str]]]]:
        out: dict[str | None, list[tuple[str, list[str]]]] = {}
        for e in events:
            out.setdefault(e["node"], []).append((e["type"], sorted(e["data"])))
        return out

    assert per_node(actual) == per_node(documented)  # independent nodes may interleave differently
    assert actual[-1]["data"]["outputs"] == documented[-1]["data"]["outputs"]


def test_the_fallback_stream_in_events_doc_is_what_a_run_emits() -> None:
    from rillflow.runtime.compiler import load_flow_text
    from rillflow.runtime.sync import run_sync

    flow = textwrap.dedent("""\
        version: 1
        name: fb
        inputs:
          question: {type: string}
        outputs:
          answer: ${answer.text}
        nodes:
          answer: {type: scripted, text: "partial words from the primary model", fail_attempts: [1], fail_after: 2, fallback: spare}
          spare: {type: scripted, text: "the stand-in answer"}
        """)
    documented = _documented_stream(1)
    result = run_sync(load_flow_text(flow, "<events.md>"), {"question": "hi"})
    actual = [e.to_dict() for e in result.events if e.seq >= documented[0]["seq"]]
    assert [(e["seq"], e["type"], e["node"]) for e in actual] == [(e["seq"], e["type"], e["node"]) for e in documented]
    for want, got in zip(documented, actual, strict=True):
        if want["type"] in ("chunk", "node_fallback", "retract", "run_finished"):
            assert got["data"] == want["data"]


# -- names the docs mention exist ------------------------------------------------------------------
def _code_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for folder in ("runtime", "nodes", "ui") for p in sorted((ROOT / folder).glob("*.py")))


@pytest.mark.parametrize("doc", [OPS_DOC, CLI_DOC, EVENTS_DOC], ids=lambda p: p.name)
def test_every_rill_environment_variable_in_the_doc_exists_in_the_code(doc: Path) -> None:
    code = _code_text()
    named = set(re.findall(r"RILL_[A-Z_]+", doc.read_text(encoding="utf-8")))
    assert named, f"{doc.name} names no RILL_ variable"
    unknown = sorted(n for n in named if (n.endswith("_") and n not in code) or (not n.endswith("_") and not re.search(rf"\b{n}\b", code)))
    assert unknown == [], f"{doc.name} names variables the code never reads"


def _command_and_options(tokens: list[str]) -> tuple[str, Any, list[str]] | None:
    """(`rill serve`, its click command, the --options given) of a tokenised `rill ...` call, or None."""
    if "rill" not in tokens:
        return None
    command = docgen.cli_command()
    path = ["rill"]
    rest = tokens[tokens.index("rill") + 1 :]
    while rest and rest[0] in getattr(command, "commands", {}):
        command = command.commands[rest[0]]
        path.append(rest.pop(0))
    return " ".join(path), command, [t.split("=", 1)[0] for t in rest if t.startswith("--")]


def _options_of(command: Any) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}


def _ops_option_problems() -> list[str]:
    serve = docgen.cli_command().commands["serve"]
    problems = []
    snippets = [line for _, body in _fences(OPS_DOC, "bash") for line in _lines(body)] + _inline_code(OPS_DOC)
    for snippet in snippets:
        try:
            tokens = shlex.split(snippet, comments=True)
        except ValueError:
            tokens = snippet.split()
        found = _command_and_options(tokens)
        if found is not None:
            path, command, options = found
            problems += [f"{path} has no option {opt}: {snippet}" for opt in options if opt not in _options_of(command)]
            continue
        for opt in (t.split("=", 1)[0] for t in tokens if t.startswith("--")):
            if opt not in _options_of(serve) and opt not in EXTERNAL_OPTIONS:
                problems.append(f"{opt} is no option of rill serve (nor a listed option of another program): {snippet}")
    return problems


def test_every_option_in_operations_doc_exists() -> None:
    assert _ops_option_problems() == []


def test_operations_doc_names_rill_serve_options() -> None:
    """The check above is not vacuous: the guide does name serve's options, in commands and in text."""
    text = OPS_DOC.read_text(encoding="utf-8")
    for opt in ("--workers", "--limits-url", "--api-keys", "--max-active", "--max-queued", "--no-trace"):
        assert f"{opt}" in text


def test_every_metric_in_operations_doc_exists() -> None:
    from rillflow.ui.gpu import NvmlCollector
    from rillflow.ui.metrics import Metrics

    families = [f.name for f in Metrics(gpu=False).registry.collect()] + [f.name for f in NvmlCollector._families()]
    known = {name + suffix for name in families for suffix in ("", "_total", "_bucket", "_sum", "_count", "_created")}
    named = set(re.findall(r"\brill_[a-z0-9_]+", OPS_DOC.read_text(encoding="utf-8")))
    assert named and named - known == set()


# -- docs/operations.md: its flows compile -------------------------------------------------------------
def _yaml_blocks(path: Path) -> list[str]:
    return [body for _, body in _fences(path, "yaml")]


def test_every_yaml_block_in_operations_doc_parses() -> None:
    from rillflow.runtime.yaml_source import load_yaml_bytes

    blocks = _yaml_blocks(OPS_DOC)
    assert len(blocks) >= 4
    for block in blocks:
        load_yaml_bytes(block.encode(), "<operations.md>")


def test_every_flow_in_operations_doc_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    from rillflow.runtime.compiler import load_flow_text
    from rillflow.runtime.errors import FlowError

    flows = [b for b in _yaml_blocks(OPS_DOC) if re.search(r"^version: 1$", b, re.M)]
    assert len(flows) >= 2
    for text in flows:
        for name in re.findall(r"\$\{env\.([A-Z_][A-Z0-9_]*)\}", text):
            monkeypatch.setenv(name, "http://placeholder.invalid" if name.endswith("URL") else "placeholder")
        try:
            plan = load_flow_text(text, "<operations.md>")
        except FlowError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"a flow in docs/operations.md is invalid:\n{exc}\n{text}")
        assert plan.warnings == (), text


# -- links between the docs resolve ----------------------------------------------------------------
def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", path.read_text(encoding="utf-8")), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("doc", [OPS_DOC, CLI_DOC, EVENTS_DOC], ids=lambda p: p.name)
def test_every_relative_link_resolves(doc: Path) -> None:
    text = FENCE.sub("", doc.read_text(encoding="utf-8"))
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in _anchors(path)):
            broken.append(target)
    assert broken == [], f"{doc.name}: broken links"
