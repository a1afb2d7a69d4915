"""Generate the reference tables of docs/flow-spec.md from the code, so the document cannot drift.

Each generated block of the document sits between ``<!-- generated:NAME -->`` and
``<!-- /generated:NAME -->``. ``render_generated_sections()`` renders every block from the pydantic
models, the node-type registry and the diagnostic codes found in ``runtime/*.py`` and ``nodes/*.py``;
``tests/test_docs_sync.py`` fails when the document and the code disagree.

Run ``python3 tests/docgen.py`` to rewrite the blocks in place (``--check`` only reports drift).
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from rillflow.nodes.base import AcceptsRef, NodeConfig, node_types
from rillflow.runtime import errors, policies, spec
from rillflow.runtime.policies import parse_duration

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "flow-spec.md"
TESTING_DOC = ROOT / "docs" / "testing.md"
BLOCK = re.compile(r"(<!-- generated:(?P<name>[a-z0-9_-]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S)
CODE = re.compile(r"[\"']([EW]\d{3})[\"']")

#: What triggers each diagnostic code. Every code raised in runtime/*.py or nodes/*.py must be here
#: (tests/test_docs_sync.py checks both directions), so a new code cannot ship undocumented.
DIAGNOSTICS: dict[str, str] = {
    "E000": "The file cannot be read (missing, a folder, no permission).",
    "E001": "YAML syntax error. A reference inside a flow mapping or sequence (`{...}`, `[...]`) that is not quoted is the usual cause; the message adds a hint.",
    "E002": "The document is empty or is not a mapping.",
    "E003": "More than one YAML document in the file (a second `---`).",
    "E004": "A mapping key that is not text (a number, `null`, a list): quote it.",
    "E005": "A node id that does not match `[a-z][a-z0-9_]{0,63}`, or is a reserved word (`inputs`, `env`, `item`, `outputs`).",
    "E006": "`nodes` is not a mapping with at least one node, or a node is not a mapping.",
    "E010": "Unknown node `type` (with the closest known type and the list of types).",
    "E011": "Unknown field (top-level, in a section, or in a node config), or a `python` node's `stream_args` entry that is not one of its `args`.",
    "E012": "A required field is missing: `version`, `name`, `outputs`, `nodes`, a node's `type`, or a required config field.",
    "E020": "A `prompt` template reads a variable that `vars` does not give.",
    "E021": "Reference to an unknown node (in a reference, a `when` condition or a `fallback`).",
    "E022": "Reference to an output field the node does not produce (the message lists its outputs).",
    "E023": "Reference to an undeclared flow input (`${inputs.x}` or `inputs.x` in a condition).",
    "E024": "Malformed reference: unclosed `${`, empty `${}`, a bad path segment, `${node}` or `${inputs}` without a field, a bad `${env.NAME}`, or `env` merged with `??`.",
    "E025": "`${item}` used in a node that has no `map`.",
    "E026": "A reference to a node or input inside `models` or `collections`: they are opened before any node runs, so only `${env.NAME}` can reach them.",
    "E027": "A node names a model or collection (`model: small`, `collection: docs`) that the flow does not declare under `models:` or `collections:`.",
    "E100": "An `llm` node's `json_schema` is not a valid JSON Schema (draft 2020-12); the message names the first problem.",
    "E030": "Duplicate mapping key (the message gives the first one's position).",
    "E040": "The graph has a cycle (the message names it, e.g. `a -> b -> a`); fallback links count as edges.",
    "E041": "A node is its own fallback, or a fallback chain loops back to its start.",
    "E042": "A fallback node does not produce every output field of the node it stands in for.",
    "E051": "The flow has no outputs, or an output references no node.",
    "E060": "A value has the wrong type or is out of range (pydantic's message), a boolean is written as `yes`/`no`/`on`/`off`, or a reference is given to a field that takes only literals.",
    "E061": "Type mismatch along an edge: a referenced value's type does not fit the field, a list or object is interpolated into text, or a path indexes into a scalar.",
    "E070": "Jinja2 syntax error in a `prompt` template (at the template's line).",
    "E072": "A `prompt` node's `template_file` cannot be read.",
    "E073": "A `python` node's `function` is not written `module:function`.",
    "E074": "A `python` node's `function` is not allowed by `RILL_PYTHON_ALLOW`.",
    "E075": "Syntax error in a `when` condition.",
    "E080": "The file is larger than 1 MiB.",
    "E081": "Nesting deeper than 64 levels.",
    "E082": "An anchor (`&name`) or alias (`*name`).",
    "E083": "A tag (`!!str`, `!custom`).",
    "E084": "A `template_file` outside the flow's folder (`../`, an absolute path) or not a valid path: templates live beside the flow.",
    "E085": "The file is not valid UTF-8, or contains a NUL byte.",
    "E090": "A string that looks like a literal credential (`sk-...`, `Bearer ...`, `ghp_...`, `AKIA...`, `xoxb-...`, `AIza...`, a PEM private key). The value is never echoed.",
    "E091": "`${env.NAME}` names an environment variable that is not set.",
    "E110": "A `guardrail` regex check's pattern does not compile (the message gives the position in the pattern).",
    "E111": "A `guardrail` json_schema check's `schema` is not a valid JSON Schema for its draft (2020-12 unless `$schema` says otherwise).",
    "E112": "A `guardrail` with `stream: retract` has a check that rewrites text (`pii_redact`, `secrets_redact`, action `redact` or `truncate`, `bidi: redact`): streamed text cannot be rewritten after the fact.",
    "E113": "A `guardrail` python check's `function` is not written `module:function`, or is not allowed by `RILL_PYTHON_ALLOW`.",
    "E120": "A `retrieve` node's `filter` names `tenant`: the tenant comes from the run's caller (API key, server), never from the flow, and every search is scoped by it already.",
    "E130": "Syntax error in a `route` node's condition (`conditions[].when`).",
    "E131": "A `route` condition reads a name its `vars` do not give.",
    "E132": "A `route` classifier's `examples` name fewer than two branches, a branch with no examples, an empty example, or one example in two branches.",
    "E133": "A `route` classifier's `default` is not one of the branches in `examples`.",
    "E134": "A `route` node's `embedder` is neither a packaged model nor a folder beside the flow.",
    "E140": "A `prompt` node's `budget.trim` names no entry of its `vars`.",
    "E141": "A `prompt` budget names an `openai` model, which declares no context size, without `budget.max_tokens`.",
    "E142": "A `prompt` budget's `reserve` is as large as the context size, leaving no room for the prompt.",
    "E150": "`cache.semantic` or `cache.offline` on a node that is not `llm`: both tiers match questions by meaning and serve model answers.",
    "W151": "A node with `cache:` reads a chunk stream as it arrives, so its inputs are only known after it ran: it is not cached (cache its producer).",
    "W152": "A node with `cache:` also has `map`: map items are not cached yet.",
    "W050": "A node is used by no output (directly, through other nodes, or as a fallback): it is left out of the plan.",
}

#: Descriptions for fields whose model gives none (kept here so every table row says something).
FIELD_NOTES: dict[tuple[str, str], str] = {
    ("InputSpec", "description"): "What the input is for.",
    ("InputSpec", "min_length"): "Shortest string, or fewest list items / chat messages.",
    ("InputSpec", "minimum"): "Smallest number allowed.",
    ("InputSpec", "maximum"): "Largest number allowed.",
    ("LlamaCppModel", "provider"): "Selects this provider.",
    ("LlamaCppModel", "n_ctx"): "Context window in tokens.",
    ("LlamaCppModel", "n_threads"): "CPU threads; default: llama.cpp's choice.",
    ("LlamaCppModel", "temperature"): "Sampling temperature.",
    ("LlamaCppModel", "seed"): "Sampling seed, for repeatable output.",
    ("LlamaCppModel", "price_per_mtok"): "Prices used to report cost.",
    ("OpenAIModel", "provider"): "Selects this provider.",
    ("OpenAIModel", "model"): "The model name the API expects.",
    ("OpenAIModel", "temperature"): "Sampling temperature.",
    ("OpenAIModel", "seed"): "Sampling seed, where the server supports it.",
    ("OpenAIModel", "price_per_mtok"): "Prices used to report cost.",
    ("CollectionResource", "qdrant"): "Where Qdrant keeps the collection: `{path: ...}` (local folder) or `{url: ..., api_key: ...}` (a server).",
    ("QdrantServer", "url"): "URL of a Qdrant server, e.g. http://127.0.0.1:6333.",
    ("QdrantServer", "api_key"): "Always ${env.NAME}.",
    ("FlowSpec", "description"): "What the flow does.",
    ("FlowSpec", "inputs"): "Input name -> input spec.",
    ("FlowSpec", "models"): "Model name -> model resource.",
    ("FlowSpec", "collections"): "Collection name -> collection resource.",
    ("FlowSpec", "defaults"): "Policies every node gets unless it sets its own.",
    ("Defaults", "timeout"): "Default `timeout` of every node.",
    ("Defaults", "retry"): "Default `retry` of every node.",
    ("Defaults", "on_fail"): "Default `on_fail` of every node.",
    ("Message", "role"): "Who speaks.",
    ("NodeConfig", "retry"): "Retry failed attempts.",
}

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null", Any: "any", dict: "object", list: "list"}
_MODEL_LINKS = {
    "TimeoutPolicy": "#timeout", "RetryPolicy": "#retry", "MapPolicy": "#map", "Respond": "#on_fail", "Defaults": "#defaults",
    "InputSpec": "#inputs", "Price": "#models", "QdrantLocal": "#collections", "QdrantServer": "#collections",
    "CollectionResource": "#collections", "LlamaCppModel": "#models", "OpenAIModel": "#models", "Message": "#prompt",
}


# -- type and value rendering -------------------------------------------------------------------
def _is_duration(meta: tuple[Any, ...]) -> bool:
    return any(getattr(m, "func", None) is parse_duration for m in meta)


def _constraints(meta: tuple[Any, ...]) -> str:
    bits = []
    for m in meta:
        for attr, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                bits.append(f"{sym} {getattr(m, attr)}")
        if getattr(m, "pattern", None):
            bits.append(f"matching `{m.pattern}`")
    return f" ({', '.join(bits)})" if bits else ""


def render_type(tp: Any, meta: tuple[Any, ...] = ()) -> str:
    """A short, readable type: 'duration or TimeoutPolicy', 'map of any or reference', ..."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return render_type(args[0], (*meta, *args[1:]))
    refs = [m for m in meta if isinstance(m, AcceptsRef)]
    suffix = (" or reference (stream)" if refs[0].stream else " or reference") if refs else ""
    if _is_duration(meta):
        return "duration" + suffix
    if origin in (Union, types.UnionType):
        parts = [render_type(a) for a in args if a is not type(None)]
        return " or ".join(parts) + _constraints(meta) + suffix
    if origin is Literal:
        if set(args) == set(errors.ERROR_KINDS):
            return "[error kind](#error-kinds)" + suffix
        return " or ".join(f"`{json.dumps(a)}`" for a in args) + suffix
    if origin in (list, tuple):
        return f"list of {render_type(args[0])}" + _constraints(meta) + suffix
    if origin is dict:
        return f"map of {render_type(args[1])}" + suffix
    if inspect.isclass(tp) and issubclass(tp, BaseModel):
        name = tp.__name__
        return (f"[{name}]({_MODEL_LINKS[name]})" if name in _MODEL_LINKS else name) + suffix
    if inspect.isclass(tp) and issubclass(tp, enum.Enum):
        return " or ".join(f"`{m.value}`" for m in tp) + suffix
    return _SCALARS.get(tp, getattr(tp, "__name__", str(tp))) + _constraints(meta) + suffix


def _json(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_none=True)
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, ensure_ascii=False)


def render_default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True)
    return f"`{_json(value)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _doc(text: str | None) -> str:
    """A docstring's text as Markdown (``x`` -> `x`)."""
    return _cell(inspect.cleandoc(text or "").replace("``", "`"))


def describe(model: type[BaseModel], name: str, info: FieldInfo) -> str:
    if info.description:
        return _cell(info.description)
    for owner in model.__mro__:
        note = FIELD_NOTES.get((owner.__name__, name))
        if note:
            return _cell(note)
    inner = [a for a in typing.get_args(info.annotation) if inspect.isclass(a) and issubclass(a, BaseModel)] or [info.annotation]
    if inspect.isclass(inner[0]) and issubclass(inner[0], BaseModel) and inner[0].__doc__:
        return _doc(inner[0].__doc__)
    return ""


def fields_table(model: type[BaseModel], *, exclude: typing.Iterable[str] = ()) -> str:
    skip = set(exclude)
    rows = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        typ = render_type(info.annotation, tuple(info.metadata))
        rows.append(f"| `{info.alias or name}` | {typ} | {render_default(info)} | {describe(model, name, info)} |")  # the name YAML uses
    return "\n".join(rows) + "\n"


# -- node types ------------------------------------------------------------------------------
def _probe_config(config_cls: type[NodeConfig], type_name: str, **overrides: Any) -> Any:
    required = {n: None for n, f in config_cls.model_fields.items() if f.is_required()}
    return config_cls.model_construct(**{**required, "type": type_name, **overrides})


def outputs_table(type_name: str, node_cls: Any) -> str:
    """Outputs with the default config, plus any that change when a boolean field is flipped."""
    config_cls = node_cls.Config
    try:
        variants = [("", node_cls.outputs(_probe_config(config_cls, type_name)))]
        for name, info in config_cls.model_fields.items():
            if name in NodeConfig.model_fields or info.annotation is not bool:
                continue
            flipped = not info.get_default()
            other = node_cls.outputs(_probe_config(config_cls, type_name, **{name: flipped}))
            if other != variants[0][1]:
                variants = [(f"`{name}: {json.dumps(not flipped)}`", variants[0][1]), (f"`{name}: {json.dumps(flipped)}`", other)]
                break
    except Exception:  # a type whose outputs need a real config
        return "Outputs depend on the config.\n"
    rows = ["| output | type | streams | when | description |", "|---|---|---|---|---|"]
    for when, outputs in variants:
        for field, out in outputs.items():
            rows.append(f"| `{field}` | {out.type} | {'yes' if out.stream else 'no'} | {when or 'always'} | {_cell(out.description)} |")
    return "\n".join(rows) + "\n"


def render_node_types() -> str:
    parts = []
    for name, node_cls in sorted(node_types().items()):
        config_cls = node_cls.Config
        parts.append(f"### `{name}`\n\n{_doc(node_cls.__doc__)}\n\n")
        parts.append(fields_table(config_cls, exclude=NodeConfig.model_fields))
        parts.append("\nOutputs:\n\n" + outputs_table(name, node_cls) + "\n")
    return "".join(parts).rstrip("\n") + "\n"


# -- diagnostics and error kinds ---------------------------------------------------------------
def diagnostic_codes() -> dict[str, list[str]]:
    """Code -> the source files (relative to the repository) that report it."""
    found: dict[str, set[str]] = {}
    for folder in ("runtime", "nodes"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for code in CODE.findall(path.read_text(encoding="utf-8")):
                found.setdefault(code, set()).add(f"{folder}/{path.name}")
    return {code: sorted(files) for code, files in sorted(found.items())}


def render_diagnostics() -> str:
    rows = ["| code | severity | reported by | triggered by |", "|---|---|---|---|"]
    for code, files in diagnostic_codes().items():
        severity = "warning" if code.startswith("W") else "error"
        what = DIAGNOSTICS.get(code, "(undocumented: describe it in DIAGNOSTICS in tests/docgen.py)")
        rows.append(f"| `{code}` | {severity} | {', '.join(f'`{f}`' for f in files)} | {_cell(what)} |")
    return "\n".join(rows) + "\n"


def error_kind_notes() -> dict[str, str]:
    """The comment next to each kind in runtime/errors.py's ERROR_KINDS."""
    source = inspect.getsource(errors)
    start = source.index("ERROR_KINDS = (")
    block = source[start : source.index("\n)", start)]
    return {m.group(1): m.group(2).strip() for m in re.finditer(r'"(\w+)",\s*#\s*(.*)', block)}


def render_error_kinds() -> str:
    notes = error_kind_notes()
    rows = ["| kind | retried by default | meaning |", "|---|---|---|"]
    for kind in errors.ERROR_KINDS:
        retried = "yes" if kind in errors.RETRYABLE_KINDS else "no"
        rows.append(f"| `{kind}` | {retried} | {_cell(notes.get(kind, ''))} |")
    return "\n".join(rows) + "\n"


def _prompt_message() -> type[BaseModel]:
    from rillflow.nodes.prompt import Message

    return Message


# -- all blocks ----------------------------------------------------------------------------------
def render_generated_sections() -> dict[str, str]:
    """Block name -> the Markdown that belongs between its markers (ends with a newline)."""
    return {
        "flow-fields": fields_table(spec.FlowSpec),
        "input-fields": fields_table(spec.InputSpec),
        "model-llama-cpp": fields_table(spec.LlamaCppModel),
        "model-openai": fields_table(spec.OpenAIModel),
        "model-price": fields_table(spec.Price),
        "collection-fields": fields_table(spec.CollectionResource),
        "qdrant-local": fields_table(spec.QdrantLocal),
        "qdrant-server": fields_table(spec.QdrantServer),
        "defaults-fields": fields_table(policies.Defaults),
        "common-fields": fields_table(NodeConfig),
        "timeout-fields": fields_table(policies.TimeoutPolicy),
        "retry-fields": fields_table(policies.RetryPolicy),
        "map-fields": fields_table(policies.MapPolicy),
        "error-kinds": render_error_kinds(),
        "node-types": render_node_types(),
        "prompt-message": fields_table(_prompt_message()),
        "diagnostics": render_diagnostics(),
    }


def render_testing_sections() -> dict[str, str]:
    """The blocks of docs/testing.md: the test-file models of runtime/testfile.py."""
    from rillflow.runtime import testfile

    return {
        "test-file-fields": fields_table(testfile.TestSpec),
        "case-fields": fields_table(testfile.Case),
        "override-fields": fields_table(testfile.Override),
        "fail-fields": fields_table(testfile.Fail),
        "expectation-fields": fields_table(testfile.Expectation),
        "judge-fields": fields_table(testfile.JudgeConfig),
    }


def doc_blocks(text: str) -> dict[str, str]:
    """Block name -> its current body in the document."""
    return {m.group("name"): m.group("body") for m in BLOCK.finditer(text)}


def rewrite(text: str, sections: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group("name")
        body = sections.get(name, m.group("body"))
        return f"{m.group(1)}{body}{m.group(4)}"

    return BLOCK.sub(sub, text)


def main(argv: list[str]) -> int:
    return max(_sync(DOC, render_generated_sections(), argv), _sync(TESTING_DOC, render_testing_sections(), argv))


def _sync(doc: Path, sections: dict[str, str], argv: list[str]) -> int:
    text = doc.read_text(encoding="utf-8")
    missing = sorted(set(sections) - set(doc_blocks(text)))
    new = rewrite(text, sections)
    if "--check" in argv:
        stale = [n for n, body in doc_blocks(text).items() if sections.get(n) != body]
        for name in stale + missing:
            print(f"{doc}: block '{name}' is out of date", file=sys.stderr)
        return 1 if stale or missing else 0
    if new != text:
        doc.write_text(new, encoding="utf-8")
        print(f"rewrote {doc}")
    for name in missing:
        print(f"{doc}: no markers for block '{name}': add <!-- generated:{name} --> ... <!-- /generated:{name} -->", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
