"""docs/flow-spec.md stays true to the code: generated blocks match, examples load, codes are documented."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from rillflow.runtime.compiler import load_flow_text
from rillflow.runtime.errors import FlowError
from rillflow.runtime.yaml_source import load_yaml_bytes

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "flow-spec.md"
YAML_BLOCK = re.compile(r"^ *```yaml\n(.*?)^ *```", re.S | re.M)


def _docgen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rill_docgen", Path(__file__).with_name("docgen.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docgen = _docgen()


def _doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def _yaml_blocks() -> list[str]:
    import textwrap

    return [textwrap.dedent(m.group(1)) for m in YAML_BLOCK.finditer(_doc_text())]


def test_every_generated_block_is_in_the_doc() -> None:
    rendered = docgen.render_generated_sections()
    in_doc = docgen.doc_blocks(_doc_text())
    assert sorted(in_doc) == sorted(rendered), "run: python3 tests/docgen.py (and add markers for new blocks)"


@pytest.mark.parametrize("name", sorted(docgen.render_generated_sections()))
def test_generated_block_matches_the_code(name: str) -> None:
    body = docgen.doc_blocks(_doc_text()).get(name)
    assert body == docgen.render_generated_sections()[name], f"block '{name}' of docs/flow-spec.md is stale: run python3 tests/docgen.py"


def test_testing_doc_blocks_match_the_test_file_models() -> None:
    text = docgen.TESTING_DOC.read_text(encoding="utf-8")
    rendered = docgen.render_testing_sections()
    assert docgen.doc_blocks(text) == rendered, "docs/testing.md is stale: run python3 tests/docgen.py"


def test_every_diagnostic_code_in_the_source_is_described_and_no_other() -> None:
    in_source = set(docgen.diagnostic_codes())
    described = set(docgen.DIAGNOSTICS)
    assert in_source - described == set(), "describe new codes in DIAGNOSTICS (tests/docgen.py), then run python3 tests/docgen.py"
    assert described - in_source == set(), "these documented codes are no longer raised anywhere"


def test_every_error_kind_has_a_meaning() -> None:
    from rillflow.runtime.errors import ERROR_KINDS

    notes = docgen.error_kind_notes()
    assert set(notes) == set(ERROR_KINDS)
    assert all(notes.values())


def test_rewrite_restores_a_stale_block_and_keeps_the_rest(tmp_path: Path) -> None:
    text = _doc_text()
    stale = text.replace("| `E030` | error |", "| `E030` | warning |", 1)
    assert stale != text
    assert docgen.rewrite(stale, docgen.render_generated_sections()) == text


def test_docgen_script_check_mode_passes() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "docgen.py"), "--check"], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr


def test_every_yaml_example_parses() -> None:
    blocks = _yaml_blocks()
    assert len(blocks) >= 5
    for block in blocks:
        load_yaml_bytes(block.encode(), "<doc>")  # raises FlowError on a YAML problem


def test_every_complete_example_is_a_valid_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    from jsonschema import Draft202012Validator
    from ruamel.yaml import YAML

    from rillflow.runtime.schema import flow_json_schema

    monkeypatch.setenv("RILL_PYTHON_ALLOW", "tests.*")
    validator = Draft202012Validator(flow_json_schema())
    flows = [b for b in _yaml_blocks() if re.search(r"^version: 1$", b, re.M)]
    assert len(flows) >= 2
    for text in flows:
        try:
            plan = load_flow_text(text, "<doc example>")
        except FlowError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"example in docs/flow-spec.md is invalid:\n{exc}\n{text}")
        assert plan.warnings == (), text
        errors = [e.message for e in validator.iter_errors(YAML(typ="safe", pure=True).load(text))]
        assert errors == [], text


def test_documented_cli_json_shape_matches_the_cli(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\noutputs: {a: '${x.text}'}\nnodes:\n  y: {type: scripted, text: hi}\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", "from rillflow.runtime.cli import main; main()", "validate", "--format", "json", str(bad)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2
    result = json.loads(done.stdout)
    assert [sorted(r) for r in result] == [["diagnostics", "path", "valid"]]
    assert sorted(result[0]["diagnostics"][0]) == ["code", "col", "line", "message", "path", "severity"]


# -- docs/events.md and docs/cli.md ---------------------------------------------------------------
def test_events_doc_blocks_match_the_event_vocabulary() -> None:
    text = docgen.EVENTS_DOC.read_text(encoding="utf-8")
    assert docgen.doc_blocks(text) == docgen.render_events_sections(), "docs/events.md is stale: run python3 tests/docgen.py"


def test_every_event_field_is_described_and_no_other() -> None:
    from rillflow.runtime.events import Event

    assert list(docgen.EVENT_FIELDS) == list(Event._fields), "describe Event's fields in EVENT_FIELDS (tests/docgen.py)"


def test_every_event_type_has_a_row_in_the_events_module_table_and_no_other() -> None:
    import typing

    from rillflow.runtime.events import EventType

    assert set(docgen.event_data_notes()) == set(typing.get_args(EventType)), "runtime/events.py: the docstring table and EventType disagree"


def test_every_emitted_event_type_is_in_the_vocabulary_and_every_type_is_emitted() -> None:
    import typing

    from rillflow.runtime.events import EventType

    emitted = set(docgen.emitted_event_types())
    declared = set(typing.get_args(EventType))
    assert emitted - declared == set(), "these types are emitted but not declared in EventType (runtime/events.py)"
    assert declared - emitted == set(), "these declared types are emitted nowhere"


def test_cli_doc_blocks_match_the_live_app() -> None:
    text = docgen.CLI_DOC.read_text(encoding="utf-8")
    assert docgen.doc_blocks(text) == docgen.render_cli_sections(), "docs/cli.md is stale: run python3 tests/docgen.py"


def test_documented_exit_codes_name_only_commands_the_app_has() -> None:
    commands = {path for path, _ in docgen.cli_commands()}
    assert set(docgen.CLI_EXIT_CODES) - commands == set(), "CLI_EXIT_CODES (tests/docgen.py) names commands the app no longer has"


def test_cli_reference_lists_every_option_of_every_command() -> None:
    block = docgen.render_cli_commands()
    for path, command in docgen.cli_commands():
        section = block.split(f"### {path}\n", 1)[1].split("\n### ", 1)[0]
        for param in (p for p in command.params if not getattr(p, "hidden", False)):
            for opt in (*param.opts, *param.secondary_opts):
                name = f"`{param.name.upper()}`" if param.param_type_name == "argument" else f"`{opt}`"
                assert name in section, f"{path}: {opt} is missing from docs/cli.md"
