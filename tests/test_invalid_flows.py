"""The invalid-flow corpus: one malformed flow per file in tests/flows/invalid, each naming its diagnostic.

Every corpus file starts with ``# expect: LINE:COL CODE message fragment``. The loader must report a
diagnostic at exactly that position, with that code and a message containing the fragment, both
through ``load_flow`` and through the real ``rill validate`` command. Files whose expected code is a
warning (``W...``) are otherwise valid: they load, and ``rill validate`` exits 0 but prints the warning.

Inputs that must not be committed (over 1 MiB, invalid UTF-8, a NUL byte, 100000 nested brackets)
are generated in tmp_path.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from rillflow.runtime.compiler import load_flow, load_flow_text
from rillflow.runtime.errors import Diagnostic, FlowError
from rillflow.runtime.yaml_source import MAX_DEPTH, MAX_FILE_BYTES

ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = Path(__file__).resolve().parent / "flows" / "invalid"
CORPUS = sorted(CORPUS_DIR.glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+):(\d+) ([EW]\d{3}) (.+)$")
CODE_IN_SOURCE = re.compile(r"""["'](E\d{3})["']""")
#: Codes whose inputs are generated in tmp_path below instead of committed to the corpus.
GENERATED_CODES = {"E080", "E085"}
#: Environment variables a corpus file relies on being unset.
UNSET_VARS = ("RILL_PYTHON_ALLOW", "UNSET_VAR_FOR_TEST")
#: What a literal secret in the corpus looks like; it must never be echoed back.
SECRET = re.compile(r"sk-[A-Za-z0-9_-]{16,}|Bearer\s+[A-Za-z0-9._~+/=-]{12,}")

VALID_FLOW = """\
version: 1
name: demo
inputs:
  question: {type: string}
outputs:
  answer: ${answer.text}
nodes:
  prompt:
    type: prompt
    template: "Q: {{ q }}"
    vars: {q: "${inputs.question}"}
  answer:
    type: scripted
    text: "A: ${prompt.text}"
"""


@dataclass(frozen=True)
class Expect:
    line: int
    col: int
    code: str
    fragment: str

    @property
    def warning_only(self) -> bool:
        return self.code.startswith("W")

    def matches(self, diag: Diagnostic) -> bool:
        return (diag.line, diag.col, diag.code) == (self.line, self.col, self.code) and self.fragment in diag.message


def expectation(path: Path) -> Expect:
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    m = EXPECT.match(first)
    assert m, f"{path.name}: the first line must be '# expect: LINE:COL CODE message fragment', got {first!r}"
    return Expect(int(m.group(1)), int(m.group(2)), m.group(3), m.group(4).strip())


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in UNSET_VARS}


def rill(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a fresh interpreter, without the variables the corpus needs unset."""
    return subprocess.run(
        [sys.executable, "-c", "from rillflow.runtime.cli import main; main()", *args],
        capture_output=True, text=True, env=clean_env(), cwd=cwd or ROOT, timeout=120, check=False,
    )


@pytest.fixture(autouse=True)
def _unset_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in UNSET_VARS:
        monkeypatch.delenv(name, raising=False)


# -- the corpus -----------------------------------------------------------------------------


def test_corpus_is_large_enough_and_well_formed():
    assert len(CORPUS) >= 45, f"only {len(CORPUS)} files in {CORPUS_DIR}"
    for path in CORPUS:
        expectation(path)  # asserts the header


def test_corpus_covers_every_error_code():
    used: set[str] = set()
    for source in [*sorted((ROOT / "runtime").glob("*.py")), *sorted((ROOT / "nodes").glob("*.py"))]:
        used.update(CODE_IN_SOURCE.findall(source.read_text(encoding="utf-8")))
    used.discard("E000")  # unreadable file: an OS error, not a flow problem
    covered = {expectation(p).code for p in CORPUS} | GENERATED_CODES
    missing = sorted(used - covered)
    assert not missing, f"error codes without a corpus file in tests/flows/invalid: {', '.join(missing)}"


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_corpus_file_reports_expected_diagnostic(path: Path):
    want = expectation(path)
    if want.warning_only:
        plan = load_flow(path)
        diagnostics = list(plan.warnings)
    else:
        with pytest.raises(FlowError) as info:
            load_flow(path)
        diagnostics = info.value.diagnostics
        assert info.value.errors, "a FlowError must hold at least one error"
        secret = SECRET.search(path.read_text(encoding="utf-8"))
        if want.code == "E090":
            assert secret is not None
        if secret is not None:
            assert secret.group(0) not in str(info.value)
    shown = "\n".join(str(d) for d in diagnostics)
    assert any(want.matches(d) for d in diagnostics), f"expected {want}, got:\n{shown}"
    for diag in diagnostics:
        assert diag.line >= 1 and diag.col >= 1, str(diag)
        assert diag.path == str(path)


def _check_cli(path: Path) -> str | None:
    """Run `rill validate` on one corpus file; return a failure description or None."""
    want = expectation(path)
    proc = rill("validate", str(path))
    expected_rc = 0 if want.warning_only else 2
    location = f"{path}:{want.line}:{want.col}:"
    problems = []
    if proc.returncode != expected_rc:
        problems.append(f"exit {proc.returncode}, expected {expected_rc}")
    if location not in proc.stdout:
        problems.append(f"stdout lacks {location!r}")
    if f"[{want.code}]" not in proc.stdout or want.fragment not in proc.stdout:
        problems.append(f"stdout lacks [{want.code}] or {want.fragment!r}")
    if "Traceback" in proc.stderr:
        problems.append("a traceback on stderr")
    secret = SECRET.search(path.read_text(encoding="utf-8"))
    if secret is not None and secret.group(0) in proc.stdout + proc.stderr:
        problems.append("the secret was echoed")
    if problems:
        return f"{path.name}: {'; '.join(problems)}\nstdout: {proc.stdout}\nstderr: {proc.stderr[-2000:]}"
    return None


def test_cli_validate_reports_every_corpus_file():
    """The real `rill validate`, once per file (in parallel: each run starts an interpreter)."""
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 4)) as pool:
        failures = [f for f in pool.map(_check_cli, CORPUS) if f]
    assert not failures, "\n\n".join(failures)


def test_cli_validate_on_a_folder_reports_every_file(tmp_path: Path):
    folder = tmp_path / "flows"
    (folder / "sub").mkdir(parents=True)
    chosen = ["cycle_self.yaml", "ref_unknown_node.yaml", "yaml_tab_indent.yaml", "warn_unreachable_node.yaml"]
    for name in chosen:
        (folder / "sub" / name).write_bytes((CORPUS_DIR / name).read_bytes())
    (folder / "good.yaml").write_text(VALID_FLOW, encoding="utf-8")
    (folder / "good.tests.yaml").write_text("not: [a flow", encoding="utf-8")  # test files are skipped
    proc = rill("validate", str(folder))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for name in chosen:
        want = expectation(CORPUS_DIR / name)
        assert f"{folder / 'sub' / name}:{want.line}:{want.col}:" in proc.stdout, proc.stdout
    assert f"{folder / 'good.yaml'}: ok" in proc.stderr
    assert "good.tests.yaml" not in proc.stdout + proc.stderr


def test_cli_validate_json_lists_diagnostics(tmp_path: Path):
    (tmp_path / "good.yaml").write_text(VALID_FLOW, encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID_FLOW.replace("${prompt.text}", "${promt.text}"), encoding="utf-8")
    proc = rill("validate", "--format", "json", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    results = json.loads(proc.stdout)
    by_path = {r["path"]: r for r in results}
    assert set(by_path) == {str(tmp_path / "good.yaml"), str(bad)}
    assert by_path[str(tmp_path / "good.yaml")] == {"path": str(tmp_path / "good.yaml"), "valid": True, "diagnostics": []}
    entry = by_path[str(bad)]
    assert entry["valid"] is False
    assert entry["diagnostics"] == [{
        "path": str(bad), "line": 14, "col": 15, "severity": "error", "code": "E021",
        "message": "unknown node 'promt'; did you mean 'prompt'?",
    }]


def test_cli_validate_json_on_corpus_lists_every_file():
    proc = rill("validate", "--format", "json", str(CORPUS_DIR))
    assert proc.returncode == 2
    results = json.loads(proc.stdout)
    assert len(results) == len(CORPUS)
    for result in results:
        want = expectation(Path(result["path"]))
        assert result["valid"] is want.warning_only
        assert any(
            (d["line"], d["col"], d["code"]) == (want.line, want.col, want.code) and want.fragment in d["message"]
            for d in result["diagnostics"]
        ), result


# -- inputs generated in tmp_path -----------------------------------------------------------


def _single(exc: FlowError) -> Diagnostic:
    assert len(exc.diagnostics) == 1, str(exc)
    return exc.diagnostics[0]


def test_file_over_1_mib_is_refused_fast(tmp_path: Path):
    big = tmp_path / "big.yaml"
    filler = "# " + "x" * 98 + "\n"
    big.write_text(VALID_FLOW + filler * (MAX_FILE_BYTES // len(filler) + 1), encoding="utf-8")
    assert big.stat().st_size > MAX_FILE_BYTES
    start = time.perf_counter()
    with pytest.raises(FlowError) as info:
        load_flow(big)
    assert time.perf_counter() - start < 0.5
    diag = _single(info.value)
    assert (diag.line, diag.col, diag.code) == (1, 1, "E080")
    assert "limit is 1048576" in diag.message
    with pytest.raises(FlowError, match=r"\[E080\]"):
        load_flow_text(big.read_text(encoding="utf-8"))
    proc = rill("validate", str(big))
    assert proc.returncode == 2 and f"{big}:1:1:" in proc.stdout and "[E080]" in proc.stdout


def test_file_of_exactly_1_mib_is_read(tmp_path: Path):
    path = tmp_path / "edge.yaml"
    text = VALID_FLOW + "#" * (MAX_FILE_BYTES - len(VALID_FLOW) - 1) + "\n"
    path.write_text(text, encoding="utf-8")
    assert path.stat().st_size == MAX_FILE_BYTES
    assert load_flow(path).name == "demo"


@pytest.mark.parametrize(
    ("raw", "line", "col"),
    [
        (b"version: 1\nname: d\xffemo\n", 2, 8),
        (b"\xc3\x28version: 1\n", 1, 1),
        (VALID_FLOW.encode() + b"# caf\xe9\n", 15, 6),
    ],
    ids=["mid-line", "first-byte", "latin-1-comment"],
)
def test_invalid_utf8_is_refused_at_its_position(tmp_path: Path, raw: bytes, line: int, col: int):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(raw)
    with pytest.raises(FlowError) as info:
        load_flow(path)
    diag = _single(info.value)
    assert (diag.line, diag.col, diag.code) == (line, col, "E085")
    assert "UTF-8" in diag.message
    proc = rill("validate", str(path))
    assert proc.returncode == 2 and f"{path}:{line}:{col}:" in proc.stdout and "Traceback" not in proc.stderr


def test_nul_byte_is_refused_at_its_position(tmp_path: Path):
    path = tmp_path / "nul.yaml"
    path.write_bytes(b"version: 1\nname: de\x00mo\n")
    with pytest.raises(FlowError) as info:
        load_flow(path)
    diag = _single(info.value)
    assert (diag.line, diag.col, diag.code) == (2, 9, "E085")
    assert "NUL" in diag.message
    proc = rill("validate", str(path))
    assert proc.returncode == 2 and f"{path}:2:9:" in proc.stdout


@pytest.mark.parametrize(
    ("text", "col"),
    [
        ("[" * 100_000, MAX_DEPTH + 1),  # the 65th '['
        ("x: " + "[" * 100_000 + "]" * 100_000, 4 + MAX_DEPTH - 1),  # the mapping is level 1
        ("{a: " * 100_000, 4 * MAX_DEPTH + 1),
    ],
    ids=["brackets", "closed-brackets-under-a-key", "flow-mappings"],
)
def test_deep_nesting_is_refused_without_recursion(tmp_path: Path, text: str, col: int):
    path = tmp_path / "deep.yaml"
    path.write_text(text + "\n", encoding="utf-8")
    start = time.perf_counter()
    with pytest.raises(FlowError) as info:
        load_flow(path)
    assert time.perf_counter() - start < 2.0
    diag = _single(info.value)
    assert (diag.line, diag.col, diag.code) == (1, col, "E081")
    proc = rill("validate", str(path))
    assert proc.returncode == 2 and f"{path}:1:{col}:" in proc.stdout
    assert "RecursionError" not in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("newline", "extra"),
    [("\r\n", ""), ("\r", ""), ("\n", "\u2028"), ("\n", "\x85"), ("\n", "\u2029")],
    ids=["crlf", "cr", "line-separator", "next-line", "paragraph-separator"],
)
def test_positions_count_lines_as_editors_do(tmp_path: Path, newline: str, extra: str):
    """\\r\\n, \\r and \\n end a line; U+2028, U+2029 and U+0085 inside text do not (ruamel's marks count them)."""
    text = VALID_FLOW.replace('template: "Q: {{ q }}"', f'template: "Q:{extra} {{{{ q }}}}"')
    text = text.replace("${prompt.text}", "${promt.text}").replace("\n", newline)
    path = tmp_path / "breaks.yaml"
    path.write_bytes(text.encode("utf-8"))
    with pytest.raises(FlowError) as info:
        load_flow(path)
    diag = _single(info.value)
    assert (diag.line, diag.col, diag.code) == (14, 15, "E021")


def test_control_character_is_refused_at_its_position(tmp_path: Path):
    path = tmp_path / "bell.yaml"
    path.write_text(VALID_FLOW.replace("name: demo", "name: de\x07mo"), encoding="utf-8")
    with pytest.raises(FlowError) as info:
        load_flow(path)
    diag = _single(info.value)
    assert (diag.line, diag.col, diag.code) == (2, 9, "E001")
    assert "U+0007" in diag.message


def test_unclosed_quote_at_the_end_of_the_file_points_at_the_quote():
    with pytest.raises(FlowError) as info:
        load_flow_text(VALID_FLOW + '  late:\n    type: scripted\n    text: "never closed\n')
    diag = _single(info.value)
    assert (diag.line, diag.col, diag.code) == (17, 11, "E001")


def test_env_values_are_redacted_from_messages():
    flow = VALID_FLOW.replace('    text: "A: ${prompt.text}"\n', '    text: "A: ${prompt.text}"\n    fallback: "${env.RILL_FUZZ_TOKEN}"\n')
    with pytest.raises(FlowError) as info:
        load_flow_text(flow, env={"RILL_FUZZ_TOKEN": "tok-secret-value"})
    assert "tok-secret-value" not in str(info.value)
    assert "unknown fallback node '***'" in str(info.value)


def test_long_fallback_loop_is_checked_in_linear_time():
    n = 2000
    nodes = "".join(f"  n{i}:\n    type: scripted\n    text: x\n    fallback: n{(i + 1) % n}\n" for i in range(n))
    flow = f"version: 1\nname: loop\noutputs:\n  answer: ${{n0.text}}\nnodes:\n{nodes}"
    start = time.perf_counter()
    with pytest.raises(FlowError) as info:
        load_flow_text(flow)
    assert time.perf_counter() - start < 10
    [diag] = info.value.diagnostics
    assert (diag.line, diag.col, diag.code) == (9, 15, "E041")
    assert diag.message.startswith("fallback chain loops: n0 -> n1 -> ") and f"({n} nodes)" in diag.message


# Regression: the prompt node's load-time check let a RecursionError (deeply nested template) and a
# ValueError (a NUL in template_file) escape instead of reporting them; a path outside the flow's
# folder was read.
@pytest.mark.parametrize(
    ("prompt", "code", "fragment"),
    [
        ('    template: "{{ ' + "(" * 3000 + "q" + ")" * 3000 + ' }}"\n', "E070", "nests too deeply"),
        ('    template_file: "prompts/a\\0b.j2"\n', "E084", "is not a valid path"),
        ('    template_file: "../../../../../../etc/passwd"\n', "E084", "outside the flow's folder"),
        ('    template_file: "/etc/passwd"\n', "E084", "outside the flow's folder"),
    ],
    ids=["template-nested-too-deeply", "template-file-with-nul", "template-file-climbs-out", "template-file-absolute"],
)
def test_prompt_check_problems_are_flow_errors(prompt: str, code: str, fragment: str):
    flow = VALID_FLOW.replace('    template: "Q: {{ q }}"\n', prompt)
    with pytest.raises(FlowError) as info:
        load_flow_text(flow, flow_dir=str(Path(__file__).parent))
    [diag] = [d for d in info.value.diagnostics if d.code != "E020"]
    assert diag.code == code and fragment in diag.message


def test_block_nesting_just_under_the_limit_loads():
    # root mapping, nodes, answer, value and 60 lists: 64 levels, the most allowed
    text = VALID_FLOW + "  deep:\n    type: static\n    value: " + "[" * 61 + "]" * 61 + "\n"
    text = text.replace("  answer: ${answer.text}\n", "  answer: ${answer.text}\n  deep: ${deep.value}\n")
    plan = load_flow_text(text)
    assert "deep" in plan.nodes
    with pytest.raises(FlowError, match=r"\[E081\]"):
        load_flow_text(text.replace("[" * 61 + "]" * 61, "[" * 62 + "]" * 62))
