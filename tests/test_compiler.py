"""The compiler's contract on the flows in tests/flows/valid, plus the CLI around it (schema, graph, validate)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rillflow.runtime.compiler import load_flow, load_flow_text
from rillflow.runtime.errors import FlowError
from rillflow.runtime.plan import Plan
from rillflow.runtime.policies import MapPolicy, Respond, RetryPolicy, TimeoutPolicy
from rillflow.runtime.refs import Interp, Ref

ROOT = Path(__file__).resolve().parents[1]
VALID = ROOT / "tests" / "flows" / "valid"
CLI = [sys.executable, "-c", "from rillflow.runtime.cli import main; main()"]

#: What the valid flows need from the environment: the python allowlist and the ${env.*} values.
ENV = {
    "RILL_PYTHON_ALLOW": "tests.*",
    "RILL_TEST_BASE_URL": "http://127.0.0.1:8080/v1",
    "RILL_TEST_MODEL": "qwen-test-model",
    "RILL_TEST_API_KEY": "rk-test-9f8e7d6c5b4a",
    "RILL_TEST_QDRANT_URL": "http://qdrant.internal:6333",
}


@pytest.fixture
def flow_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    return ENV


def _load(name: str) -> Plan:
    return load_flow(VALID / name)


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, **ENV}


# -- the shape of every valid flow's plan ----------------------------------------------------------
# order: topological, smallest id first among ready nodes; a fallback comes before the node it stands in for.
EXPECTED: dict[str, dict[str, Any]] = {
    "prompt_chain.yaml": {
        "order": ("prompt", "answer"),
        "deps": {"prompt": (), "answer": ("prompt",)},
        "dependants": {"prompt": ("answer",), "answer": ()},
        "stream_edges": {("answer", "text", "outputs", "answer")},
        "output_streams": {"answer"},
        "fallback_only": set(),
    },
    "parallel_join.yaml": {
        "order": ("left", "right", "join"),
        "deps": {"left": (), "right": (), "join": ("left", "right")},
        "dependants": {"left": ("join",), "right": ("join",), "join": ()},
        "stream_edges": set(),  # static.value does not accept streams; `summary` interpolates
        "output_streams": set(),
        "fallback_only": set(),
    },
    "merge_when.yaml": {
        "order": ("long", "short", "footer"),
        "deps": {"long": (), "short": (), "footer": ("long", "short")},  # footer reads both in `when` and in a merge
        "dependants": {"long": ("footer",), "short": ("footer",), "footer": ()},
        "stream_edges": {("short", "text", "outputs", "answer"), ("long", "text", "outputs", "answer"), ("footer", "text", "outputs", "footer")},
        "output_streams": {"answer", "footer"},
        "fallback_only": set(),
    },
    "fallback_chain.yaml": {
        "order": ("canned", "secondary", "primary"),
        "deps": {"canned": (), "secondary": (), "primary": ()},
        "dependants": {"canned": (), "secondary": (), "primary": ()},
        "stream_edges": {("primary", "text", "outputs", "answer")},
        "output_streams": {"answer"},
        "fallback_only": {"secondary", "canned"},
    },
    "map_items.yaml": {
        "order": ("chunks", "summarise"),
        "deps": {"chunks": (), "summarise": ("chunks",)},  # the edge comes from map.over
        "dependants": {"chunks": ("summarise",), "summarise": ()},
        "stream_edges": set(),
        "output_streams": set(),
        "fallback_only": set(),
    },
    "python_stream.yaml": {
        "order": ("draft", "shout", "words"),
        "deps": {"draft": (), "shout": ("draft",), "words": ()},
        "dependants": {"draft": ("shout",), "shout": (), "words": ()},
        "stream_edges": {("draft", "text", "shout", "args.chunks"), ("shout", "text", "outputs", "answer")},
        "output_streams": {"answer"},
        "fallback_only": set(),
    },
    "route_models.yaml": {
        "order": ("prompt", "route", "large", "small"),
        "deps": {"prompt": (), "route": (), "large": ("prompt", "route"), "small": ("prompt", "route")},  # route.branch read in `when`
        "dependants": {"prompt": ("large", "small"), "route": ("large", "small"), "large": (), "small": ()},
        "stream_edges": {("small", "text", "outputs", "answer"), ("large", "text", "outputs", "answer")},
        "output_streams": {"answer"},
        "fallback_only": set(),
    },
    "env_models.yaml": {
        "order": ("answer",),
        "deps": {"answer": ()},
        "dependants": {"answer": ()},
        "stream_edges": {("answer", "text", "outputs", "answer")},
        "output_streams": {"answer"},
        "fallback_only": set(),
    },
}


def test_every_valid_flow_has_expectations() -> None:
    assert sorted(p.name for p in VALID.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_plan_shape(name: str, flow_env: dict[str, str]) -> None:
    want = EXPECTED[name]
    plan = _load(name)
    assert plan.warnings == ()
    assert plan.order == want["order"]
    assert tuple(plan.nodes) == want["order"]
    assert {n: pn.deps for n, pn in plan.nodes.items()} == want["deps"]
    assert {n: pn.dependants for n, pn in plan.nodes.items()} == want["dependants"]
    assert {(e.source, e.field, e.target, e.target_field) for e in plan.stream_edges} == want["stream_edges"]
    assert plan.output_streams == want["output_streams"]
    assert {n for n, pn in plan.nodes.items() if pn.fallback_only} == want["fallback_only"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_order_respects_every_dependency_and_fallback(name: str, flow_env: dict[str, str]) -> None:
    plan = _load(name)
    position = {n: i for i, n in enumerate(plan.order)}
    for pn in plan.nodes.values():
        assert all(position[d] < position[pn.id] for d in pn.deps)
        if pn.fallback:
            assert position[pn.fallback] < position[pn.id]


# -- policies ---------------------------------------------------------------------------------------
def test_defaults_fill_in_policies_and_a_node_policy_replaces_the_default_whole(flow_env: dict[str, str]) -> None:
    plan = _load("prompt_chain.yaml")
    prompt, answer = plan.nodes["prompt"], plan.nodes["answer"]
    # `defaults.timeout: 30s` is normalised to a TimeoutPolicy.
    assert prompt.timeout == TimeoutPolicy(total=30.0, first_chunk=None)
    assert prompt.retry == RetryPolicy(attempts=3, backoff=0.2, max_backoff=2.0, jitter=False)
    assert prompt.retry.on == ("timeout", "rate_limit", "server", "connection", "protocol")
    assert prompt.on_fail == Respond(respond="Sorry, something went wrong.")
    # The node's own timeout and retry win; its retry is not merged field by field with the default.
    assert answer.timeout == TimeoutPolicy(total=60.0, first_chunk=0.5)
    assert answer.retry == RetryPolicy(attempts=2, backoff=0.5, max_backoff=8.0, jitter=True, on=("timeout", "server"))
    assert answer.on_fail == Respond(respond="Sorry, something went wrong.")
    assert answer.config.delay == pytest.approx(0.01)


def test_policies_without_defaults(flow_env: dict[str, str]) -> None:
    plan = _load("fallback_chain.yaml")
    primary, secondary, canned = (plan.nodes[n] for n in ("primary", "secondary", "canned"))
    assert primary.retry == RetryPolicy(attempts=2, backoff=0.0)
    assert primary.timeout is None and primary.on_fail is None
    assert secondary.timeout == TimeoutPolicy(total=2.0)  # "2s", normalised
    assert secondary.retry is None
    assert (primary.fallback, secondary.fallback, canned.fallback) == ("secondary", "canned", None)
    assert primary.config.error == "rate_limit"
    assert primary.config.fail_attempts == [1, 2]


def test_map_policy_and_item_reference(flow_env: dict[str, str]) -> None:
    plan = _load("map_items.yaml")
    summarise = plan.nodes["summarise"]
    assert isinstance(summarise.map, MapPolicy)
    assert (summarise.map.concurrency, summarise.map.on_item_fail) == (2, "skip")
    assert isinstance(summarise.map.over, Ref) and str(summarise.map.over) == "${chunks.value}"
    assert "map" not in summarise.inputs  # policies are not node inputs
    item = summarise.inputs["vars"]["chunk"]
    assert isinstance(item, Ref) and item.alternatives[0].root == "item"
    assert summarise.wired == frozenset({"vars"})
    assert plan.nodes["chunks"].outputs["value"].type == "list"


def test_merges_and_conditions(flow_env: dict[str, str]) -> None:
    plan = _load("merge_when.yaml")
    answer = plan.outputs["answer"]
    assert isinstance(answer, Ref) and str(answer) == "${short.text ?? long.text}"
    assert [str(p) for p in answer.alternatives] == ["short.text", "long.text"]
    short, long_, footer = (plan.nodes[n] for n in ("short", "long", "footer"))
    assert short.when_source == "not inputs.detailed"
    assert short.when is not None and short.when(inputs={"detailed": False}) is True
    assert long_.when is not None and long_.when(inputs={"detailed": True}) is True
    assert footer.when_source == "short or long"  # reading a node in a condition makes it a dependency
    assert footer.when is not None and footer.when(short=None, long={"text": "x"}) == {"text": "x"}
    assert not footer.when(short=None, long=None)
    text = footer.inputs["text"]
    assert isinstance(text, Interp) and [str(r) for r in text.refs()] == ["${short.text ?? long.text}"]
    # a merge into a node field is awaited whole, never streamed
    assert footer.stream_inputs == frozenset()


def test_yaml_1_2_words_stay_text(flow_env: dict[str, str]) -> None:
    plan = _load("prompt_chain.yaml")
    assert plan.inputs["tone"].enum == ["plain", "yes", "on", "NO"]
    assert plan.inputs["tone"].is_required is False
    assert plan.inputs["question"].is_required is True


def test_python_stream_args_make_a_stream_input(flow_env: dict[str, str]) -> None:
    plan = _load("python_stream.yaml")
    shout, words = plan.nodes["shout"], plan.nodes["words"]
    assert shout.stream_inputs == frozenset({("args", "chunks")})
    assert shout.outputs["text"].stream is True
    assert words.outputs["value"].stream is False
    assert words.stream_inputs == frozenset()
    assert words.config.thread is False


def test_python_node_needs_the_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RILL_PYTHON_ALLOW", raising=False)
    with pytest.raises(FlowError) as info:
        _load("python_stream.yaml")
    assert {d.code for d in info.value.errors} == {"E074"}


# -- secrets ----------------------------------------------------------------------------------------
def test_env_references_resolve_at_load_and_are_secrets(flow_env: dict[str, str]) -> None:
    plan = _load("env_models.yaml")
    env_values = {v for k, v in flow_env.items() if k.startswith("RILL_TEST_")}
    assert plan.secrets == frozenset(env_values)
    remote = plan.spec.models["remote"]
    assert (remote.base_url, remote.model, remote.api_key) == (ENV["RILL_TEST_BASE_URL"], ENV["RILL_TEST_MODEL"], ENV["RILL_TEST_API_KEY"])
    assert remote.request_timeout == 20.0
    assert plan.spec.collections["shared"].qdrant.url == ENV["RILL_TEST_QDRANT_URL"]
    text = plan.nodes["answer"].inputs["text"]
    assert isinstance(text, Interp)
    assert str(text) == f"Model {ENV['RILL_TEST_MODEL']} says: ${{inputs.question}}"
    assert plan.concurrency == 8
    shown = repr(plan)
    assert not [v for v in env_values if v in shown]


def test_unset_env_is_an_error_naming_the_variable_only(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(FlowError) as info:
        _load("env_models.yaml")
    assert {d.code for d in info.value.diagnostics} == {"E091"}
    assert "environment variable 'RILL_TEST_API_KEY' is not set" in str(info.value)


def test_env_default_applies_only_when_the_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    flow = (
        "version: 1\nname: d\noutputs: {a: '${x.text}'}\nmodels:\n"
        "  far: {provider: openai, base_url: '${env.RILL_TEST_URL:-http://127.0.0.1:8080/v1}', model: m, api_key: '${env.RILL_TEST_KEY:-}'}\n"
        "nodes:\n  x: {type: scripted, text: 'at ${env.RILL_TEST_URL:-nowhere}'}\n"
    )
    monkeypatch.delenv("RILL_TEST_URL", raising=False)
    monkeypatch.delenv("RILL_TEST_KEY", raising=False)
    plan = load_flow_text(flow)
    assert plan.spec.models["far"].base_url == "http://127.0.0.1:8080/v1"
    assert plan.spec.models["far"].api_key == ""
    assert str(plan.nodes["x"].inputs["text"]) == "at nowhere"
    assert plan.secrets == frozenset()  # a default is written in the file: nothing to redact
    monkeypatch.setenv("RILL_TEST_URL", "http://10.0.0.5:9000/v1")
    monkeypatch.setenv("RILL_TEST_KEY", "")  # set but empty: empty, not the default
    plan = load_flow_text(flow)
    assert plan.spec.models["far"].base_url == "http://10.0.0.5:9000/v1"
    assert plan.spec.models["far"].api_key == ""
    assert plan.secrets == frozenset({"http://10.0.0.5:9000/v1"})


def test_unset_env_error_suggests_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RILL_TEST_URL", raising=False)
    with pytest.raises(FlowError) as info:
        load_flow_text("version: 1\nname: d\noutputs: {a: '${x.text}'}\nnodes:\n  x: {type: scripted, text: '${env.RILL_TEST_URL}'}\n")
    assert "${env.RILL_TEST_URL:-VALUE}" in str(info.value)


def test_literal_secret_is_refused_without_echoing_it() -> None:
    key = "sk-" + "A1b2C3d4E5f6G7h8J9k0"
    flow = f"version: 1\nname: s\noutputs: {{a: '${{x.text}}'}}\nnodes:\n  x: {{type: scripted, text: '{key}'}}\n"
    with pytest.raises(FlowError) as info:
        load_flow_text(flow)
    assert [d.code for d in info.value.diagnostics] == ["E090"]
    assert key not in str(info.value)


# BUG (reported): an ${env.NAME} value is echoed in diagnostics when it lands in a field whose
# message quotes the value: `fallback` (E021 "unknown fallback node '<value>'"), `type` (E010
# "unknown node type '<value>'") and `when` (E021 "condition reads unknown name '<value>'").
# runtime/errors.py promises messages never contain secret values. These cases fail until the
# compiler redacts the plan's secrets from messages (or refuses ${env.*} in those fields).
@pytest.mark.parametrize("field", ["fallback: '${env.RILL_TEST_TOKEN}'", "type: '${env.RILL_TEST_TOKEN}'", "when: '${env.RILL_TEST_TOKEN}'"])
def test_env_values_are_never_echoed_in_diagnostics(field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "tok_5f4e3d2c1b0a9f8e"
    monkeypatch.setenv("RILL_TEST_TOKEN", token)
    node = f"{{{field}, text: hi}}" if field.startswith("type") else f"{{type: scripted, text: hi, {field}}}"
    flow = f"version: 1\nname: s\noutputs: {{a: '${{x.text}}'}}\nnodes:\n  x: {node}\n"
    with pytest.raises(FlowError) as info:
        load_flow_text(flow)
    assert token not in str(info.value)


# -- unreachable nodes ------------------------------------------------------------------------------
def test_unreachable_node_warns_and_is_left_out_of_the_plan() -> None:
    flow = """\
version: 1
name: unused
outputs:
  answer: ${answer.text}
nodes:
  answer: {type: scripted, text: hello}
  extra:
    type: scripted
    text: ${answer.text}
"""
    plan = load_flow_text(flow)
    assert [(d.code, d.severity, d.line, d.col) for d in plan.warnings] == [("W050", "warning", 7, 3)]
    assert "'extra'" in plan.warnings[0].message
    assert "extra" not in plan.nodes and plan.order == ("answer",)
    assert plan.nodes["answer"].dependants == ()  # the unused reader is not a dependant either


# BUG (reported): a node may be called `outputs`, which collides with the pseudo-target "outputs" of
# stream edges: its stream input shows up in plan.output_streams and `rill graph` draws a self-loop.
# Expected: `outputs` reserved like `inputs` (E005). This test fails until that is fixed.
def test_a_node_cannot_be_named_outputs(flow_env: dict[str, str]) -> None:
    flow = """\
version: 1
name: clash
outputs:
  answer: ${outputs.text}
nodes:
  draft: {type: scripted, text: hi}
  outputs:
    type: python
    function: tests.flowfuncs:shout
    stream: true
    args: {chunks: "${draft.text}"}
    stream_args: [chunks]
"""
    with pytest.raises(FlowError) as info:
        load_flow_text(flow)
    assert [d.code for d in info.value.errors] == ["E005"]


# BUG (reported): a mapped node produces one value per item (a list), but the compiler types its
# outputs as a single item's, so `${summarise.text.0}` is refused with E061 ("is a string; it has no
# part '0'"). This test fails until mapped outputs are typed as lists.
def test_a_mapped_node_output_is_a_list() -> None:
    flow = """\
version: 1
name: mapped
outputs:
  first: ${summarise.text.0}
nodes:
  chunks: {type: static, value: [a, b]}
  summarise:
    type: scripted
    text: ${item}
    map: {over: "${chunks.value}"}
"""
    plan = load_flow_text(flow)
    assert plan.order == ("chunks", "summarise")


# BUG (reported): references inside `models` and `collections` are never checked: a reference to an
# unknown node or input there loads without any diagnostic. This test fails until they are reported
# (or until only ${env.NAME} is accepted there).
def test_references_in_resources_are_checked() -> None:
    flow = """\
version: 1
name: resources
outputs:
  a: ${x.text}
models:
  m: {provider: openai, model: "${nosuch.field}"}
nodes:
  x: {type: scripted, text: hi}
"""
    with pytest.raises(FlowError):
        load_flow_text(flow)


# -- rill schema ------------------------------------------------------------------------------------
def _schema() -> dict[str, Any]:
    done = subprocess.run([*CLI, "schema"], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def _flow_files() -> list[Path]:
    files = sorted(VALID.glob("*.yaml")) + sorted((ROOT / "flows").rglob("*.y*ml"))
    return [p for p in files if p.suffix in (".yaml", ".yml") and not p.name.endswith((".tests.yaml", ".tests.yml"))]


def test_schema_is_valid_json_schema_and_accepts_every_flow() -> None:
    from jsonschema import Draft202012Validator
    from ruamel.yaml import YAML

    schema = _schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    validator = Draft202012Validator(schema)
    yaml = YAML(typ="safe", pure=True)
    files = _flow_files()
    assert len(files) >= len(EXPECTED)
    for path in files:
        data = yaml.load(path.read_text(encoding="utf-8"))
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(data)]
        assert errors == [], f"{path}: {errors}"


def test_schema_rejects_what_the_loader_rejects() -> None:
    from jsonschema import Draft202012Validator
    from ruamel.yaml import YAML

    validator = Draft202012Validator(_schema())
    yaml = YAML(typ="safe", pure=True)
    good = yaml.load((VALID / "prompt_chain.yaml").read_text(encoding="utf-8"))
    assert validator.is_valid(good)
    for bad_node in ({"type": "statik", "value": 1}, {"type": "scripted", "text": "hi", "bogus": 1}, {"type": "static"}):
        assert not validator.is_valid({**good, "nodes": {"x": bad_node}}), bad_node
    assert not validator.is_valid({**good, "version": 2})
    assert not validator.is_valid({**good, "extra": 1})


# -- rill graph -------------------------------------------------------------------------------------
def test_graph_mermaid_draws_stream_and_fallback_edges() -> None:
    done = subprocess.run([*CLI, "graph", str(VALID / "fallback_chain.yaml")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "flowchart TD"
    assert "    primary ==>|stream| outputs" in lines
    assert "    primary -.->|fallback| secondary" in lines
    assert "    secondary -.->|fallback| canned" in lines
    assert "    inputs --> primary" in lines


def test_graph_mermaid_stream_edge_between_nodes() -> None:
    done = subprocess.run([*CLI, "graph", str(VALID / "python_stream.yaml")], capture_output=True, text=True, check=False, env=_subprocess_env())
    assert done.returncode == 0, done.stderr
    assert "    draft ==>|stream| shout" in done.stdout.splitlines()


def test_graph_dot() -> None:
    done = subprocess.run([*CLI, "graph", "--format", "dot", str(VALID / "fallback_chain.yaml")], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('digraph "fallback-chain" {\n')
    assert done.stdout.endswith("}\n")
    assert '    primary -> outputs [penwidth=3, label="stream"];' in done.stdout
    assert '    primary -> secondary [style=dashed, label="fallback"];' in done.stdout


def test_graph_of_an_invalid_flow_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\noutputs: {a: '${nope.text}'}\nnodes:\n  x: {type: scripted, text: hi}\n", encoding="utf-8")
    done = subprocess.run([*CLI, "graph", str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert "[E021]" in done.stderr and done.stdout == ""


# -- rill validate ----------------------------------------------------------------------------------
def test_validate_exit_codes_and_text_format(tmp_path: Path) -> None:
    ok = subprocess.run([*CLI, "validate", str(VALID)], capture_output=True, text=True, check=False, env=_subprocess_env())
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"{VALID / 'prompt_chain.yaml'}: ok (2 nodes)" in ok.stderr.splitlines()
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: bad\noutputs:\n  a: ${answer.txt}\nnodes:\n  answer: {type: scripted, text: hi}\n", encoding="utf-8")
    done = subprocess.run([*CLI, "validate", str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode == 2
    assert done.stdout == f"{bad}:4:6: error: node 'answer' has no output 'txt'; did you mean 'text'? (its outputs: text) [E022]\n"
    missing = subprocess.run([*CLI, "validate", str(tmp_path / "nope.yaml")], capture_output=True, text=True, check=False)
    assert missing.returncode == 2


HEAVY = ("torch", "llama_cpp", "qdrant_client", "networkx", "rillflow.runtime.scheduler")
PROBE = """
import json, sys
from rillflow.runtime.compiler import load_flow
for path in sys.argv[1:]:
    load_flow(path)
heavy = %r
print(json.dumps(sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))))
"""


def test_loading_a_flow_stays_import_light() -> None:
    files = [str(p) for p in sorted(VALID.glob("*.yaml"))]
    done = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,), *files], capture_output=True, text=True, check=False, env=_subprocess_env())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("30s", 30.0), ("1.5m", 90.0), ("2h", 7200.0), ("1d", 86400.0), ("7", 7.0), (12, 12.0)])
def test_durations_take_units_up_to_days(text: object, seconds: float) -> None:
    from rillflow.runtime.policies import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["1w", "1fortnight", "-1s", "d", True])
def test_durations_refuse_other_units(text: object) -> None:
    from rillflow.runtime.policies import parse_duration

    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
