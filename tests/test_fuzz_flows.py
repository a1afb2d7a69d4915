"""Property tests: whatever a flow file holds, loading it returns a Plan or raises FlowError.

A FlowError's diagnostics must all point inside the file (1-based line and column), no other
exception may escape (no KeyError, RecursionError, pydantic or ruamel error), and one load takes
well under a second. Flows are mutated at the data level (then dumped back to YAML) and at the text
and byte level.
"""

from __future__ import annotations

import copy
import io
import json
import re
import string
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from rillflow.runtime.compiler import compile_flow, load_flow_text
from rillflow.runtime.errors import FlowError
from rillflow.runtime.plan import Plan
from rillflow.runtime.yaml_source import load_yaml_bytes, split_lines

FLOW_STREAMING = """\
version: 1
name: fuzz-stream
description: a prompt feeding a scripted model, with a fallback and policies
inputs:
  question: {type: string, max_length: 2000}
  detailed: {type: boolean, default: false}
outputs:
  answer: ${answer.text}
  prompt: ${prompt.text}
defaults:
  timeout: 30s
  retry: {attempts: 2, backoff: 100ms}
nodes:
  prompt:
    type: prompt
    template: |
      Answer the question.
      {% if detailed %}Be thorough.{% endif %}
      Q: {{ question }}
    vars: {question: "${inputs.question}", detailed: "${inputs.detailed}"}
    max_chars: 5000
  answer:
    type: scripted
    text: "A: ${prompt.text}"
    delay: 5ms
    retry: {attempts: 3, on: [timeout, server]}
    timeout: {total: 10s, first_chunk: 500ms}
    fallback: canned
  canned:
    type: scripted
    tokens: ["Sorry, ", "try later."]
"""

FLOW_BRANCHES = """\
version: 1
name: fuzz-branches
inputs:
  question: {type: string}
  detailed: {type: boolean, default: false}
outputs:
  answer: ${short.text ?? long.text}
  meta: ${meta.value}
nodes:
  meta:
    type: static
    value: {source: static, tags: [a, b], count: 2}
  short:
    type: scripted
    when: "not inputs.detailed"
    text: "Short answer to ${inputs.question}"
    timeout: 2s
  long:
    type: scripted
    when: "{{ inputs.detailed and meta.value }}"
    text: "Long answer to ${inputs.question}"
    on_fail: {respond: "no long answer today"}
    fallback: short
"""

FLOW_MAP = """\
version: 1
name: fuzz-map
inputs:
  topic: {type: string, default: rivers}
outputs:
  summaries: ${summarise.text}
  chunks: ${chunks.value}
nodes:
  chunks:
    type: static
    value: [alpha, beta, gamma]
  summarise:
    type: prompt
    template: "{{ topic }}: {{ chunk }}"
    vars:
      topic: ${inputs.topic}
      chunk: ${item}
    map: {over: "${chunks.value}", concurrency: 2, on_item_fail: skip}
    retry: {attempts: 2}
    on_fail: skip
"""

VALID_TEXTS = (FLOW_STREAMING, FLOW_BRANCHES, FLOW_MAP)
ENV: dict[str, str] = {}  # loads never depend on the developer's environment
MAX_SECONDS = 1.0
REF = re.compile(r"\$\{([^{}]*)\}")


def _data(text: str) -> Any:
    data, _ = load_yaml_bytes(text.encode("utf-8"), "<flow>")
    return data


VALID_DATA = tuple(_data(t) for t in VALID_TEXTS)


def test_the_seed_flows_are_valid():
    for text in VALID_TEXTS:
        plan = load_flow_text(text, env=ENV)
        assert not plan.warnings, plan.warnings


# -- the property ---------------------------------------------------------------------------


def check_diagnostics(exc: FlowError, text: str | None) -> None:
    assert exc.diagnostics, "a FlowError without diagnostics"
    lines = split_lines(text) if text is not None else None
    for diag in exc.diagnostics:
        assert diag.line >= 1 and diag.col >= 1, str(diag)
        assert diag.code and diag.message, str(diag)
        if lines is not None:
            assert diag.line <= len(lines), f"{diag} points past the last line ({len(lines)})"
            assert diag.col <= len(lines[diag.line - 1]) + 1, f"{diag} points past the end of its line {lines[diag.line - 1]!r}"


def load_text(text: str) -> Plan | None:
    """Load a flow from text; only a Plan or a FlowError with in-file positions is acceptable."""
    start = time.perf_counter()
    try:
        plan = load_flow_text(text, env=ENV)
    except FlowError as exc:
        elapsed = time.perf_counter() - start
        check_diagnostics(exc, text)
        plan = None
    else:
        elapsed = time.perf_counter() - start
        for warning in plan.warnings:
            assert warning.line >= 1 and warning.col >= 1, str(warning)
    assert elapsed < MAX_SECONDS, f"loading took {elapsed:.2f}s"
    return plan


def load_raw(raw: bytes) -> None:
    """The same property for raw bytes (invalid UTF-8 and NUL included)."""
    start = time.perf_counter()
    try:
        data, smap = load_yaml_bytes(raw, "<flow>")
        compile_flow(data, smap, env=ENV)
    except FlowError as exc:
        try:
            text: str | None = raw.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError:
            text = None
        check_diagnostics(exc, text)
    assert time.perf_counter() - start < MAX_SECONDS


# -- data-level mutations -------------------------------------------------------------------

identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True) | st.sampled_from(
    ["type", "text", "value", "inputs", "item", "env", "nodes", "outputs", "fallback", "when", "retry", "Prompt", "2x", "a" * 70]
)
ref_texts = st.sampled_from([
    "${inputs.question}", "${inputs.nope}", "${answer.text}", "${prompt.text}", "${prompt.messages}", "${meta.value.tags.0}",
    "${item}", "${item.x}", "${", "${}", "${a}", "${a ?? b.c}", "${env.A ?? x.y}", "${env.HOME}", "x ${chunks.value} y",
    "$${literal}", "{{ x }}", "{% if %}", "{{ question }", "not inputs.detailed", "inputs.detailed and", "sk-abcdefghijklmnopqrstuv",
    "1fortnight", "500ms", "yes", "on", "NO", "~", "",
])
scalars = st.one_of(
    st.integers(min_value=-3, max_value=10**6), st.booleans(), st.none(), st.text(max_size=20), ref_texts,
    st.floats(allow_nan=False, allow_infinity=False),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(identifiers, scalars, max_size=3),
)


def paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every location in the tree, the root included."""
    found = [prefix]
    if isinstance(tree, dict):
        for k, v in tree.items():
            found.extend(paths(v, (*prefix, k)))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            found.extend(paths(v, (*prefix, i)))
    return found


def at(tree: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def strings_with_refs(tree: Any) -> list[tuple[Any, ...]]:
    return [p for p in paths(tree) if isinstance(at(tree, p), str) and "${" in at(tree, p)]


def mutate(tree: Any, draw: Any) -> Any:
    """Apply one random mutation; returns the (possibly replaced) tree."""
    op = draw(st.sampled_from(["delete", "duplicate", "retype", "rename", "swap_ref", "swap_ref"]))
    path = draw(st.sampled_from(paths(tree)))
    if op == "swap_ref":
        candidates = strings_with_refs(tree)
        if not candidates:
            return tree
        path = draw(st.sampled_from(candidates))
        names = [k for k in (tree.get("nodes") or {}) if isinstance(k, str)] if isinstance(tree, dict) and isinstance(tree.get("nodes"), dict) else []
        root = draw(st.sampled_from([*names, "inputs", "item", "env"]) | identifiers)
        field = draw(st.sampled_from(["text", "value", "messages", "question", "detailed", "topic", ""]) | identifiers)
        replacement = "${" + (f"{root}.{field}" if field else root) + "}"
        new = REF.sub(lambda m: replacement if draw(st.booleans()) else m.group(0), at(tree, path))
        if new == at(tree, path):
            new = REF.sub(replacement.replace("\\", "\\\\"), new, count=1)
        return _set(tree, path, new)
    if op == "retype":
        return _set(tree, path, draw(values))
    if not path:
        return tree
    parent, key = at(tree, path[:-1]), path[-1]
    if op == "delete":
        del parent[key]
    elif op == "duplicate" and isinstance(parent, dict):
        parent[draw(identifiers)] = copy.deepcopy(parent[key])
    elif op == "rename" and isinstance(parent, dict):
        new_key = draw(identifiers)
        items = [(new_key if k == key else k, v) for k, v in parent.items() if k != new_key or k == key]
        parent.clear()
        parent.update(items)
    return tree


def _set(tree: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    at(tree, path[:-1])[path[-1]] = value
    return tree


def dump(tree: Any, block: bool) -> str:
    if not block:
        return json.dumps(tree)  # JSON is YAML 1.2 flow style: everything on one line
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(tree, out)
    return out.getvalue()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(VALID_DATA), data=st.data())
def test_mutated_flow_data_loads_or_fails_cleanly(base: Any, data: st.DataObject):
    tree = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="mutations")):
        tree = mutate(tree, data.draw)
    text = dump(tree, block=data.draw(st.booleans(), label="block style"))
    load_text(text)


# -- text and byte fuzzing ------------------------------------------------------------------

YAML_CHARS = string.printable + "\t\u00a0\u2028\ufeff\u00e9\U0001f600"
yamlish = st.text(alphabet=st.sampled_from(list(YAML_CHARS)), max_size=400)
tokens = st.lists(
    st.sampled_from(["version: 1\n", "name: x\n", "nodes:\n", "  a:\n", "    type: static\n", "    value: ", "outputs:\n",
                     "  o: ${a.value}\n", "- ", ": ", "? ", "[", "]", "{", "}", ",", "&a ", "*a", "!t ", "!!str ", "---\n", "...\n",
                     "|\n", ">-\n", "'", '"', "#", "%YAML 1.2\n", "\t", "  ", "\n", "${", "}", "{{", "{%", "\\", "~", "@", "`"]),
    max_size=60,
).map("".join)


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(max_size=300), yamlish, tokens))
def test_random_text_loads_or_fails_cleanly(text: str):
    load_text(text)


@settings(max_examples=200, deadline=None)
@given(base=st.sampled_from(VALID_TEXTS), where=st.floats(min_value=0, max_value=1), insert=st.one_of(yamlish, tokens))
def test_text_spliced_into_a_valid_flow_loads_or_fails_cleanly(base: str, where: float, insert: str):
    cut = int(where * len(base))
    load_text(base[:cut] + insert + base[cut:])


@settings(max_examples=200, deadline=None)
@given(base=st.sampled_from(VALID_TEXTS), data=st.data())
def test_byte_mutations_of_a_valid_flow_load_or_fail_cleanly(base: str, data: st.DataObject):
    raw = bytearray(base.encode("utf-8"))
    for _ in range(data.draw(st.integers(min_value=1, max_value=8), label="mutations")):
        pos = data.draw(st.integers(min_value=0, max_value=max(len(raw) - 1, 0)), label="position")
        op = data.draw(st.sampled_from(["replace", "insert", "delete", "duplicate"]), label="op")
        byte = data.draw(st.integers(min_value=0, max_value=255) | st.sampled_from(list(b":-[]{}\"'\n\t #&*!|>%$")), label="byte")
        if op == "replace" and raw:
            raw[pos] = byte
        elif op == "insert":
            raw.insert(pos, byte)
        elif op == "delete" and raw:
            del raw[pos]
        elif op == "duplicate":
            end = data.draw(st.integers(min_value=pos, max_value=min(len(raw), pos + 80)), label="end")
            raw[pos:pos] = raw[pos:end]
    load_raw(bytes(raw))
