"""Generate the reference tables of docs/flow-spec.md from the code, so the document cannot drift.

Each generated block of the document sits between ``<!-- generated:NAME -->`` and
``<!-- /generated:NAME -->``. ``render_generated_sections()`` renders every block from the pydantic
models, the node-type registry and the diagnostic codes found in ``runtime/*.py`` and ``nodes/*.py``;
``tests/test_docs_sync.py`` fails when the document and the code disagree. The same goes for
docs/testing.md (the test-file models), docs/events.md (``render_events_sections``: the event
vocabulary of ``runtime/events.py`` and where each type is emitted) and docs/cli.md
(``render_cli_sections``: every command of the live typer app, so new commands appear on the next run).

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
EVENTS_DOC = ROOT / "docs" / "events.md"
CLI_DOC = ROOT / "docs" / "cli.md"
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
    # Built-in types only: a node package installed beside rillflow (examples/02_custom_node) documents itself.
    builtin = {name: cls for name, cls in node_types().items() if cls.__module__.startswith("rillflow.")}
    for name, node_cls in sorted(builtin.items()):
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


# -- events (docs/events.md) -------------------------------------------------------------------
#: What every event carries, whatever its type. tests/test_docs_sync.py checks the keys are exactly
#: Event's fields, so a new field cannot ship undocumented.
EVENT_FIELDS: dict[str, str] = {
    "type": "The event type: one of the table below.",
    "run_id": "The run's id: 32 hex digits (a uuid4); `rill trace show` and `GET /api/runs/{run_id}` take it.",
    "seq": "0, 1, 2, ... within the run, without gaps: the order to apply events in (the SSE `id:` too).",
    "ts": "Seconds since the run started, from a monotonic clock (rounded to microseconds in JSON).",
    "node": "The node the event is about; `null` for run-level events (and for the canned answer of `on_fail: {respond: ...}`).",
    "data": "The type's payload (below): a JSON object.",
}

#: Where event types are emitted: ``run.emit("x", ...)``, ``Signal("x", ...)`` (a node's own events,
#: emitted for it by runtime/attempts.py) and ``yield Event("x", ...)`` (the server's closing event).
EMITS = re.compile(r'(?:\bemit\(|\bSignal\(|yield Event\()\s*"([a-z_]+)"')


def event_data_notes() -> dict[str, str]:
    """Event type -> its ``data``, as the table in runtime/events.py's module docstring gives it."""
    from rillflow.runtime import events

    lines = (events.__doc__ or "").splitlines()
    borders = [i for i, line in enumerate(lines) if line.startswith("=")]
    first = re.match(r"(=+\s+)=+", lines[borders[0]])
    assert first is not None, "runtime/events.py: the data table lost its ===== borders"
    column = len(first.group(1))
    notes: dict[str, str] = {}
    last = ""
    for line in lines[borders[0] + 1 : borders[-1]]:
        name, text = line[:column].strip(), line[column:].strip()
        if name:
            last = name
            notes[name] = text
        elif last and text:  # a continuation line
            notes[last] += " " + text
    return notes


def emitted_event_types() -> dict[str, list[str]]:
    """Event type -> the source files (relative to the repository) that emit it."""
    found: dict[str, set[str]] = {}
    for folder in ("runtime", "nodes", "ui"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for kind in EMITS.findall(path.read_text(encoding="utf-8")):
                found.setdefault(kind, set()).add(f"{folder}/{path.name}")
    return {kind: sorted(files) for kind, files in sorted(found.items())}


def render_event_envelope() -> str:
    from rillflow.runtime.events import Event

    rows = ["| field | type | meaning |", "|---|---|---|"]
    for name in Event._fields:
        annotation = Event.__annotations__[name]
        annotation = getattr(annotation, "__forward_arg__", annotation)  # a string: events.py has postponed annotations
        rows.append(f"| `{name}` | `{_cell(str(annotation))}` | {_cell(EVENT_FIELDS.get(name, '(undocumented: describe it in EVENT_FIELDS in tests/docgen.py)'))} |")
    return "\n".join(rows) + "\n"


def render_event_types() -> str:
    from rillflow.runtime.events import TERMINAL, EventType

    notes = event_data_notes()
    emitted = emitted_event_types()
    rows = ["| event | `data` | emitted in |", "|---|---|---|"]
    for kind in typing.get_args(EventType):
        label = f"[`{kind}`](#{kind})" + (" (terminal)" if kind in TERMINAL else "")
        where = ", ".join(f"`{f}`" for f in emitted.get(kind, [])) or "(nowhere)"
        rows.append(f"| {label} | {_cell(notes.get(kind, '(undocumented: add it to the table in runtime/events.py)'))} | {where} |")
    return "\n".join(rows) + "\n"


def render_events_sections() -> dict[str, str]:
    """The blocks of docs/events.md."""
    return {"event-envelope": render_event_envelope(), "event-types": render_event_types()}


# -- the CLI (docs/cli.md) ---------------------------------------------------------------------
#: Exit codes per command, read from each command's code (a usage error, which typer reports before
#: the command runs, is 2 for every command). A command missing here (a new one) gets CLI_EXIT_DEFAULT;
#: tests/test_docs_sync.py checks no entry names a command the app no longer has.
CLI_EXIT_CODES: dict[str, str] = {
    "rill": "2 without a command (prints the help)",
    "rill validate": "0 every file valid (warnings allowed) · 2 a file invalid, a path missing, or no flow file found",
    "rill schema": "0",
    "rill graph": "0 · 2 the flow is invalid",
    "rill run": "0 `run_finished` · 1 `run_failed` · 2 invalid flow or inputs, a model or collection that cannot open, "
                "an unusable `--resume` · 130 interrupted (Ctrl+C)",
    "rill ingest": "0 ingested · 1 failed (a locked folder, Qdrant down, an unreadable file) · 2 bad usage "
                   "(no such path, invalid flow, unknown collection) · 130 interrupted",
    "rill serve": "0 stopped (SIGTERM, Ctrl+C) · 2 a bad flow or key file, or a model or collection that cannot open",
    "rill test": "0 every case passed · 1 a case failed or errored · 2 a test or flow file is invalid, or none was found",
    "rill eval": "0 every row passed · 1 a row failed · 2 the flow, dataset, expectations or baseline cannot be used",
    "rill trace": "2 without a subcommand (prints the help)",
    "rill trace list": "0 · 1 an unreadable store · 2 a bad `RILL_TRACE_*` setting",
    "rill trace show": "0 · 1 no such run (or an unreadable store) · 2 an ambiguous id prefix, a bad setting",
    "rill trace feedback": "0 · 1 no such run · 2 not exactly one of `--up` / `--down`, an ambiguous prefix",
    "rill trace prune": "0 · 1 an unreadable store · 2 a bad setting",
    "rill cache": "2 without a subcommand (prints the help)",
    "rill cache stats": "0 · 1 the cache is unreachable or unreadable · 2 a URL of no accepted form",
    "rill cache clear": "0 · 1 the cache failed, or clearing everything was declined · 2 a URL of no accepted form",
    "rill keys": "2 without a subcommand (prints the help)",
    "rill keys create": "0 · 2 any problem (one line on stderr: a bad file, limit or date)",
    "rill keys list": "0 · 2 a missing or broken key file",
    "rill keys revoke": "0 (also when already revoked) · 2 an unknown id, a missing or broken key file",
    "rill init": "0 created · 2 bad usage (an invalid NAME, a non-empty folder without `--force`, a folder that cannot be written)",
    "rill import": "2 without a subcommand (prints the help)",
    "rill import promptflow": "0 converted (even with notes: read the report) · 1 nothing written (the output exists without "
                              "`--force`, or cannot be written) · 2 the input is not a readable promptflow flow",
}
CLI_EXIT_DEFAULT = "0 on success · 2 on a usage error; see `--help` for others"


def cli_command() -> Any:
    """The click command tree of the live ``rill`` app (whatever commands it has when this runs)."""
    import typer

    from rillflow.runtime.cli import app

    return typer.main.get_command(app)


def cli_commands(command: Any = None, path: str = "rill") -> list[tuple[str, Any]]:
    """(``rill trace show``, its click command) for the app and every visible subcommand, by name."""
    command = command if command is not None else cli_command()
    found = [(path, command)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if not getattr(sub, "hidden", False):
            found += cli_commands(sub, f"{path} {name}")
    return found


def _cli_type(param: Any) -> str:
    """A parameter's value as the user types it: PATH, INTEGER (≥ 1), `text` or `json`, a flag."""
    if getattr(param, "is_flag", False):
        return "flag"
    descriptor = getattr(param, "type_descriptor", None)
    annotation = descriptor.annotation if descriptor is not None else None
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (list, Union, types.UnionType) and args:
        annotation = args[0]
    if inspect.isclass(annotation) and issubclass(annotation, enum.Enum):
        text = " or ".join(f"`{m.value}`" for m in annotation)
    elif annotation is not None:
        text = {str: "TEXT", int: "INTEGER", float: "NUMBER", bool: "BOOLEAN"}.get(annotation, getattr(annotation, "__name__", "TEXT").upper())
    else:  # a plain click parameter
        text = str(getattr(getattr(param, "type", None), "name", "text")).upper()
    bounds = [f"{sym} {_number(value)}" for sym, value in (("≥", getattr(param, "min", None)), ("≤", getattr(param, "max", None)))
              if value is not None]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _number(value: float) -> str:
    """0.000001, not 1e-06."""
    return f"{value:.10f}".rstrip("0").rstrip(".")


def _cli_default(param: Any) -> str:
    if param.required:
        return "**required**"
    default = param.default
    if default is None or (getattr(param, "is_flag", False) and default is False) or default == ():
        return ""
    if isinstance(default, enum.Enum):
        default = default.value
    return f"`{default}`"


def _cli_name(param: Any) -> str:
    if param.param_type_name == "argument":
        return f"`{param.name.upper()}`" + ("..." if param.nargs == -1 else "")
    return ", ".join(f"`{opt}`" for opt in (*param.opts, *param.secondary_opts))


def _cli_help(param: Any) -> str:
    text = getattr(param, "help", None) or ""
    extra = []
    if getattr(param, "multiple", False) and "repeat" not in text:
        extra.append("repeatable")
    if getattr(param, "envvar", None):
        extra.append(f"env `{param.envvar}`")
    return _cell(text.replace("``", "`") + (f" ({'; '.join(extra)})" if extra else ""))


def _cli_usage(path: str, command: Any) -> str:
    pieces = [path]
    if any(p.param_type_name == "option" and not getattr(p, "hidden", False) for p in command.params):
        pieces.append("[OPTIONS]")
    for p in command.params:
        if p.param_type_name == "argument":
            name = p.name.upper() + ("..." if p.nargs == -1 else "")
            pieces.append(name if p.required else f"[{name}]")
    if getattr(command, "commands", None):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def _cli_paragraphs(text: str | None) -> str:
    """A command's help as Markdown paragraphs (typer keeps the docstring's line breaks)."""
    paragraphs = [" ".join(p.split()) for p in inspect.cleandoc(text or "").replace("\b", "").split("\n\n")]
    return "\n\n".join(p.replace("``", "`") for p in paragraphs if p)


def render_cli_summary() -> str:
    rows = ["| command | what it does |", "|---|---|"]
    for path, command in cli_commands()[1:]:
        first = _cli_paragraphs(command.help).split("\n\n")[0] if command.help else ""
        rows.append(f"| [`{path}`](#{path.replace(' ', '-')}) | {_cell(first)} |")
    return "\n".join(rows) + "\n"


def render_cli_commands() -> str:
    parts = []
    for path, command in cli_commands():
        parts.append(f"### {path}\n\n```text\n{_cli_usage(path, command)}\n```\n\n")
        if command.help:
            parts.append(_cli_paragraphs(command.help) + "\n\n")
        params = [p for p in command.params if not getattr(p, "hidden", False)]
        if params:
            rows = ["| argument / option | value | default | what it does |", "|---|---|---|---|"]
            rows += [f"| {_cli_name(p)} | {_cli_type(p)} | {_cli_default(p)} | {_cli_help(p)} |" for p in params]
            parts.append("\n".join(rows) + "\n\n")
        parts.append(f"Exit codes: {CLI_EXIT_CODES.get(path, CLI_EXIT_DEFAULT)}.\n\n")
    return "".join(parts).rstrip("\n") + "\n"


def render_cli_sections() -> dict[str, str]:
    """The blocks of docs/cli.md."""
    return {"cli-summary": render_cli_summary(), "cli-commands": render_cli_commands()}


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
    return max(_sync(DOC, render_generated_sections(), argv), _sync(TESTING_DOC, render_testing_sections(), argv),
               _sync(EVENTS_DOC, render_events_sections(), argv), _sync(CLI_DOC, render_cli_sections(), argv))


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
