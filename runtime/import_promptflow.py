"""Convert a promptflow DAG flow (``flow.dag.yaml``) into a rillflow flow: ``rill import promptflow``.

What maps to what (the table for users is docs/import-promptflow.md):

- ``inputs``/``outputs`` keep their names; promptflow's types map to rillflow's, a chat history
  becomes ``type: chat_history``; ``${node.output}`` becomes ``${node.text}`` or ``${node.value}``.
- An ``llm`` node ``n`` becomes a ``prompt`` node ``n_prompt`` (the ``# system:`` / ``# user:`` /
  ``# assistant:`` lines split into ``messages``) and an ``llm`` node ``n``: the node that produces
  the answer keeps the name, so references, outputs and traces read as before. Its connection becomes
  a ``models:`` entry whose endpoint and key are ``${env.CONNECTION_BASE_URL}`` /
  ``${env.CONNECTION_API_KEY}``: never a literal key.
- ``prompt`` nodes stay ``prompt`` nodes; ``python`` nodes call the ``@tool`` function of their file
  (found with ``ast``: the user's code is never imported here).
- ``activate`` becomes ``when``. promptflow's bypass rules differ from rillflow's skip rules: an input
  that reads a bypassed node gets the parameter's default (or None), and a node is bypassed only when
  *every* node it reads was. So when a node reads several nodes that may be bypassed, each such
  reference becomes a merge with a ``bypassed`` static stand-in holding those defaults, and the node
  gets ``when: a or b``. A node reading one such node keeps a plain reference: rillflow skips it with
  its source, exactly as promptflow does.

Nothing is dropped silently: what cannot be converted is listed in the :class:`Report` and in the
comment at the top of the written flow, each with what to do instead.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import LiteralScalarString

from rillflow.runtime.templating import TemplateSyntaxError, environment, undeclared_variables

# promptflow.tools.common.parse_chat splits the *rendered* chat prompt with this separator ('#' optional,
# any case); function and tool messages are matched here only to be reported.
_ROLE_SPLIT = re.compile(r"(?i)\n+\s*#?\s*(system|user|assistant|function|tool)\s*:\s*\n")
_ROLE_LINE = re.compile(r"(?im)^\s*#?\s*(?:user|assistant)\s*:\s*$")
# promptflow renders with trim_blocks=True (the first newline after a block or comment tag is dropped);
# rillflow's environment does not. Where text follows on the next line, `-%}` strips exactly that newline
# and keeps the layout; before a blank or indented line the newline itself is deleted.
_TRIM_BEFORE_TEXT = re.compile(r"(?<![-+])([%#]\})(?=(?:\r\n|\n|\r)\S)")
_TRIM_BLOCKS = re.compile(r"(?<![-+])([%#]\})(?:\r\n|\n|\r)")
_HISTORY_LOOP = re.compile(r"\{%-?\s*for\s+(\w+)\s+in\s+(\w+)\s*-?%\}(.*?)\{%-?\s*endfor\s*-?%\}", re.S)
_WHOLE_REF = re.compile(r"^\$\{([^{}]+)\}$")
_NODE_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_IDENT = re.compile(r"^[A-Za-z_]\w*$")
_RESERVED = {"inputs", "env", "item", "outputs"}

INPUT_TYPES = {"string": "string", "int": "integer", "double": "number", "bool": "boolean", "list": "list", "object": "object"}
#: llm node inputs that configure the call; every other input is a template variable.
MODEL_PARAMS = {"deployment_name", "model", "temperature", "max_tokens", "top_p", "stop", "seed", "connection", "api",
                "presence_penalty", "frequency_penalty", "logit_bias", "user", "response_format", "functions", "function_call",
                "tools", "tool_choice", "n", "stream", "echo", "suffix", "logprobs", "best_of", "detail"}
_KNOWN_NODE_KEYS = {"name", "type", "source", "inputs", "connection", "api", "provider", "module", "use_variants", "activate",
                    "aggregation", "comment", "tool", "enable_cache", "skip"}
_KNOWN_TOP_KEYS = {"$schema", "id", "name", "display_name", "description", "tags", "language", "inputs", "outputs", "nodes",
                   "node_variants", "environment", "additional_includes", "environment_variables", "message_format"}
OPENAI_URL = "https://api.openai.com/v1"


class PromptflowError(Exception):
    """The input is not a readable promptflow flow. The message reads ``path:line:col: problem: what to do``."""


@dataclass
class Report:
    """What the conversion did beyond the obvious, and what it could not do."""

    renamed: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # variable -> what it holds
    changed: list[str] = field(default_factory=list)
    not_converted: list[str] = field(default_factory=list)
    allow: list[str] = field(default_factory=list)  # module:function of the python nodes
    pythonpath: list[str] = field(default_factory=list)

    def setup_lines(self) -> list[str]:
        """Environment the converted flow needs before ``rill validate`` / ``rill run``."""
        lines = [f"export {name}=...   # {what}" for name, what in self.env.items()]
        if self.allow:
            lines.append(f"export PYTHONPATH={':'.join(self.pythonpath)}   # where the python nodes' modules are")
            lines.append(f"export RILL_PYTHON_ALLOW={','.join(self.allow)}")
        return lines

    def lines(self) -> list[str]:
        sections = [("set before `rill validate` / `rill run`:", self.setup_lines()), ("renamed:", self.renamed),
                    ("converted with changes:", self.changed), ("NOT converted (what to do):", self.not_converted)]
        out: list[str] = []
        for title, items in sections:
            if items:
                out.append(title)
                out.extend(("  " + item) if item.startswith("export ") else f"  - {item}" for item in items)
        return out


@dataclass(frozen=True)
class Conversion:
    name: str
    text: str
    report: Report


@dataclass
class _Node:
    name: str  # promptflow's
    pf: CommentedMap
    kind: str  # llm | prompt | python | placeholder | aggregation
    id: str = ""  # the rillflow node producing the output
    output: str = "value"  # its output field
    prompt_id: str | None = None
    deps: set[str] = field(default_factory=set)  # promptflow names of the nodes its inputs read


def find_flow_file(path: Path) -> Path:
    """``path`` itself, or the ``flow.dag.yaml`` inside a folder."""
    if path.is_dir():
        for name in ("flow.dag.yaml", "flow.dag.yml"):
            if (path / name).is_file():
                return path / name
        raise PromptflowError(f"{path}: no flow.dag.yaml in this folder: give the promptflow flow file or its folder")
    return path


def default_output(flow_file: Path, name: str) -> Path:
    """NAME.yaml beside the flow's folder: outside it, so `rill validate FOLDER` never meets flow.dag.yaml."""
    return flow_file.resolve().parent.parent / f"{name}.yaml"


def convert(path: Path) -> Conversion:
    """Convert the promptflow flow at ``path`` (its flow.dag.yaml or folder). Raises PromptflowError."""
    flow_file = find_flow_file(path)
    return _Converter(flow_file, _load(flow_file)).run()


# -- reading promptflow ---------------------------------------------------------------------------

def _load(path: Path) -> CommentedMap:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PromptflowError(f"{path}: no such file: give a promptflow flow.dag.yaml or the folder holding it") from None
    except UnicodeDecodeError as exc:
        raise PromptflowError(f"{path}: not UTF-8 text (byte {exc.start}): a flow.dag.yaml is YAML text") from None
    except OSError as exc:
        raise PromptflowError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = YAML(typ="rt").load(text)
    except YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise PromptflowError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, CommentedMap):
        raise PromptflowError(f"{path}:1:1: not a promptflow flow: expected a mapping with 'inputs', 'outputs' and 'nodes'")
    if "nodes" not in data:
        hint = " (a flex flow, whose code is the flow, has nothing to convert)" if "entry" in data else ""
        raise PromptflowError(f"{path}:1:1: not a promptflow DAG flow: it has no 'nodes' list{hint}")
    return data


def _at(path: Path, container: Any, key: Any, *, value: bool = True) -> str:
    """``path:line:col`` of a key (or its value) inside a ruamel container, as far as it is known."""
    try:
        if isinstance(container, CommentedSeq):
            line, col = container.lc.item(key)
        else:
            line, col = container.lc.value(key) if value else container.lc.key(key)
    except (AttributeError, KeyError, IndexError, TypeError):
        return str(path)
    return f"{path}:{line + 1}:{col + 1}"


def _plain(value: Any) -> Any:
    """ruamel's round-trip types as plain Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value if value is None else bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _escape(value: Any) -> Any:
    """Literal text as rillflow reads it: ``${`` would start a reference, ``$${`` is a literal one."""
    if isinstance(value, str):
        return value.replace("${", "$${")
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape(v) for v in value]
    return value


def rill_id(name: str, taken: set[str]) -> str:
    """A valid, unused rillflow node id for a promptflow name."""
    base = re.sub(r"_+", "_", re.sub(r"[^a-z0-9_]", "_", name.lower())).strip("_") or "node"
    if not base[0].isalpha():
        base = "n_" + base
    if base in _RESERVED:
        base += "_node"
    base = base[:64]
    candidate, n = base, 2
    while candidate in taken:
        candidate = f"{base[:60]}_{n}"
        n += 1
    taken.add(candidate)
    return candidate


def flow_name(flow_file: Path, data: CommentedMap) -> str:
    raw = str(data.get("name") or flow_file.resolve().parent.name)
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9_-]", "-", raw.lower())).strip("-_") or "imported"
    return (name if name[0].isalpha() else "pf-" + name)[:64]


def jinja_literal(value: Any) -> str:
    """A Python value written as a Jinja2 expression literal (for `when:` comparisons)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(jinja_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {jinja_literal(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value), ensure_ascii=False)


def env_prefix(connection: str) -> str:
    name = re.sub(r"_+", "_", re.sub(r"[^A-Z0-9]", "_", connection.upper())).strip("_") or "OPENAI"
    return name if name[0].isalpha() else "PF_" + name


# -- templates ------------------------------------------------------------------------------------

@dataclass
class ChatTemplate:
    """A promptflow chat template as rillflow messages, or why it could not be split."""

    messages: list[tuple[str, str]]
    history_var: str | None = None
    history_fields: list[str] = field(default_factory=list)
    problem: str | None = None


def trim_blocks(source: str) -> str:
    return _TRIM_BLOCKS.sub(r"\1", _TRIM_BEFORE_TEXT.sub(r"-\1", source))


def split_chat(source: str) -> ChatTemplate:
    """Split a chat template on its role lines; a ``{% for %}`` over the chat history becomes ``history``."""
    history_var, fields = None, []
    loop = next((m for m in _HISTORY_LOOP.finditer(source) if _ROLE_LINE.search(m.group(3))), None)
    if loop is not None:
        history_var = loop.group(2)
        used = sorted(set(re.findall(r"\b" + re.escape(loop.group(1)) + r"((?:\.\w+)+)", loop.group(3))))
        fields = [f"{{{{ {loop.group(1)}{f} }}}}" for f in used]
        source = source[: loop.start()] + source[loop.end():]
    chunks = _ROLE_SPLIT.split("\n" + trim_blocks(source))
    messages = [(chunks[i].lower(), chunks[i + 1]) for i in range(1, len(chunks) - 1, 2)]
    return ChatTemplate(messages, history_var, fields, _chat_problem(chunks[0], messages))


def _chat_problem(preamble: str, messages: list[tuple[str, str]]) -> str | None:
    if not messages:
        return "it has no role lines (# system:, # user:, # assistant:)"
    unbalanced = _unbalanced([("first", preamble), *messages])
    if unbalanced is not None:
        return unbalanced
    if preamble.strip():
        return "it has text before its first role line"
    bad = sorted({role for role, _ in messages if role not in ("system", "user", "assistant")})
    return f"it has {', '.join(bad)} messages, which rillflow's prompt node does not take" if bad else None


def _unbalanced(messages: list[tuple[str, str]]) -> str | None:
    """A role line inside ``{% if %}`` or ``{% for %}`` leaves a message that does not parse on its own."""
    for role, content in messages:
        try:
            environment().parse(content)
        except TemplateSyntaxError as exc:
            return f"a role line sits inside a {{% ... %}} block (the '{role}' message alone does not parse: {exc.message})"
    return None


# -- python sources -------------------------------------------------------------------------------

@dataclass
class ToolFunction:
    name: str
    params: dict[str, Any]  # name -> default (None without one)
    connections: set[str]  # parameters typed as a promptflow connection
    kwargs: bool
    imports_promptflow: bool


def tool_function(path: Path, text: str) -> ToolFunction:
    """The ``@tool`` function of a promptflow python node's file, read with ``ast`` (never imported)."""
    try:
        tree = ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise PromptflowError(f"{path}:{exc.lineno or 1}:{exc.offset or 1}: Python syntax error: {exc.msg}") from None
    tools = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(_is_tool(d) for d in n.decorator_list)]
    if not tools:
        classes = [n.name for n in tree.body if isinstance(n, ast.ClassDef) and any(
            isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(_is_tool(d) for d in f.decorator_list) for f in n.body)]
        what = f"class-based tools ({', '.join(classes)}) need a module-level function" if classes else "promptflow needs one"
        raise PromptflowError(f"{path}:1:1: no module-level function decorated with @tool: {what}")
    fn = tools[0]
    args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
    defaults: list[ast.expr | None] = [None] * (len(fn.args.posonlyargs + fn.args.args) - len(fn.args.defaults))
    defaults += [*fn.args.defaults, *fn.args.kw_defaults]
    params = {a.arg: _literal(d) for a, d in zip(args, defaults, strict=True)}
    connections = {a.arg for a in args if a.annotation is not None and ast.unparse(a.annotation).endswith("Connection")}
    imports = any(isinstance(n, (ast.Import, ast.ImportFrom)) and "promptflow" in ast.unparse(n) for n in ast.walk(tree))
    return ToolFunction(fn.name, params, connections, fn.args.kwarg is not None, imports)


def _is_tool(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(target, ast.Name) and target.id == "tool") or (isinstance(target, ast.Attribute) and target.attr == "tool")


def _literal(node: ast.expr | None) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


# -- the conversion -------------------------------------------------------------------------------

class _Converter:
    def __init__(self, flow_file: Path, data: CommentedMap) -> None:
        self.file, self.dir, self.data = flow_file, flow_file.parent, data
        self.report = Report()
        self.nodes: dict[str, _Node] = {}
        self.out_nodes: dict[str, CommentedMap] = {}
        self.comments: dict[str, str] = {}
        self.models: dict[str, CommentedMap] = {}
        self.model_keys: dict[tuple[str, str, str], str] = {}
        self.history_inputs: set[str] = set()
        self.standins: dict[str, dict[str, Any]] = {}
        self.taken: set[str] = set()
        self.skippable: set[str] = set()
        self.bypass_id = ""

    def run(self) -> Conversion:
        self._read_nodes()
        self._top_level_notes()
        for node in self.nodes.values():
            self._convert(node)
        doc = CommentedMap()
        doc["version"] = 1
        doc["name"] = name = flow_name(self.file, self.data)
        doc["description"] = str(self.data.get("description") or f"Imported from promptflow flow {self.file.parent.name}/{self.file.name}.")
        doc["inputs"] = self._inputs()
        doc["outputs"] = self._outputs()
        if self.models:
            doc["models"] = CommentedMap(self.models)
        doc["nodes"] = self._node_map()
        text = _dump(doc, self.report)
        return Conversion(name, text, self.report)

    # nodes: read, classify, name ----------------------------------------------------------------
    def _read_nodes(self) -> None:
        raw = self.data["nodes"]
        if not isinstance(raw, CommentedSeq) or not raw:
            raise PromptflowError(f"{_at(self.file, self.data, 'nodes')}: 'nodes' must be a non-empty list of nodes")
        for i, item in enumerate(raw):
            if not isinstance(item, CommentedMap) or not isinstance(item.get("name"), str) or not item["name"]:
                raise PromptflowError(f"{_at(self.file, raw, i)}: each node must be a mapping with a 'name'")
            if item["name"] in self.nodes:
                raise PromptflowError(f"{_at(self.file, item, 'name')}: a second node named '{item['name']}': node names are unique")
            pf = self._variant(item) if item.get("use_variants") else item
            self.nodes[item["name"]] = _Node(item["name"], pf, self._kind(pf))
        for node in self.nodes.values():
            self._name(node)
        for node in self.nodes.values():
            node.deps = {n for n in self._refs(node.pf.get("inputs")) if n in self.nodes}
        self.skippable = self._bypassable()

    def _variant(self, item: CommentedMap) -> CommentedMap:
        name = item["name"]
        variants = (self.data.get("node_variants") or {}).get(name)
        if not isinstance(variants, dict) or not isinstance(variants.get("variants"), dict) or not variants["variants"]:
            raise PromptflowError(f"{_at(self.file, item, 'use_variants')}: node '{name}' uses variants, but node_variants has none for it")
        default = variants.get("default_variant_id") or next(iter(variants["variants"]))
        chosen = variants["variants"].get(default)
        if not isinstance(chosen, dict) or not isinstance(chosen.get("node"), dict):
            raise PromptflowError(f"{_at(self.file, variants, 'default_variant_id')}: node '{name}': variant '{default}' has no 'node'")
        others = [v for v in variants["variants"] if v != default]
        if others:
            self.report.not_converted.append(
                f"node '{name}': variants {', '.join(others)} (only the default, {default}, was converted): import each variant "
                "as its own flow (edit use_variants/default_variant_id and run the import again) and compare them with `rill eval`")
        merged = CommentedMap(chosen["node"])
        merged["name"] = name
        return merged

    def _kind(self, pf: CommentedMap) -> str:
        source = pf.get("source") if isinstance(pf.get("source"), dict) else {}
        kind, stype = pf.get("type"), source.get("type", "code")
        if pf.get("aggregation"):
            return "aggregation"
        if kind in ("llm", "prompt") and stype == "code":
            return str(kind)
        if kind == "python" and stype == "code":
            return "python"
        if kind == "custom_llm" and stype == "package_with_prompt" and str(source.get("tool", "")).endswith(".llm"):
            return "llm"  # the newer "LLM" package tool: same template and connection as an llm node
        return "placeholder"

    def _name(self, node: _Node) -> None:
        if node.kind == "aggregation":
            return
        node.id = rill_id(node.name, self.taken)
        if node.id != node.name:
            self.report.renamed.append(f"node '{node.name}' -> '{node.id}' (rillflow ids are [a-z][a-z0-9_]{{0,63}})")
        node.output = "text" if node.kind in ("llm", "prompt") else "value"
        if node.kind == "llm":
            node.prompt_id = rill_id(node.id + "_prompt", self.taken)

    def _refs(self, value: Any) -> list[str]:
        """The promptflow node names a value reads."""
        if isinstance(value, dict):
            return [n for v in value.values() for n in self._refs(v)]
        m = _WHOLE_REF.match(value.strip()) if isinstance(value, str) else None
        return [m.group(1).split(".")[0].strip()] if m else []

    def _bypassable(self) -> set[str]:
        """Nodes promptflow may bypass: with `activate`, or reading only nodes that may be bypassed."""
        found: set[str] = set()
        changed = True
        while changed:
            changed = False
            for node in self.nodes.values():
                if node.name not in found and (node.pf.get("activate") or (node.deps and node.deps <= found)):
                    found.add(node.name)
                    changed = True
        return found

    # references --------------------------------------------------------------------------------
    def _path(self, expr: str, where: str) -> tuple[str, _Node | None]:
        parts = [p.strip() for p in expr.split(".")]
        if parts[0] == "inputs" and len(parts) > 1:
            if parts[1] not in (self.data.get("inputs") or {}):
                raise PromptflowError(f"{where}: '${{{expr}}}' reads an undeclared flow input: declare '{parts[1]}' under inputs")
            return expr.strip(), None
        node = self.nodes.get(parts[0])
        if node is None or len(parts) < 2 or parts[1] != "output":
            raise PromptflowError(f"{where}: '${{{expr}}}' is not a promptflow reference to a node: write ${{NODE.output}} or "
                                  f"${{inputs.NAME}} (nodes: {', '.join(self.nodes)})")
        if node.kind == "aggregation":
            raise PromptflowError(f"{where}: '${{{expr}}}' reads aggregation node '{node.name}': only other aggregation nodes can")
        rest = parts[2:]
        if rest and node.output == "text":
            self.report.changed.append(f"'${{{expr}}}': an llm or prompt node outputs text, so '.{'.'.join(rest)}' was dropped")
            rest = []
        return ".".join([node.id, node.output, *rest]), node

    def _value(self, value: Any, consumer: _Node, arg: str, where: str, default: Any = None) -> Any:
        """A node input as rillflow config: a reference, or literal text escaped."""
        m = _WHOLE_REF.match(value.strip()) if isinstance(value, str) else None
        if m is None:
            return _escape(value)
        path, source = self._path(m.group(1), where)
        if source is None or source.name not in self.skippable or len(consumer.deps) < 2:
            return "${" + path + "}"
        key = consumer.prompt_id or consumer.id
        self.standins.setdefault(key, {})[arg] = default
        return "${" + path + " ?? " + f"{self._bypass()}.value.{key}.{arg}" + "}"

    def _bypass(self) -> str:
        if not self.bypass_id:
            self.bypass_id = rill_id("bypassed", self.taken)
        return self.bypass_id

    def _when(self, node: _Node) -> str | None:
        parts = []
        if len(node.deps) > 1 and node.deps <= self.skippable:
            ids = sorted(self.nodes[d].id for d in node.deps)
            parts.append(" or ".join(ids))
        activate = node.pf.get("activate")
        if isinstance(activate, dict):
            where = _at(self.file, activate, "when")
            m = _WHOLE_REF.match(str(activate.get("when", "")).strip())
            if m is None or "is" not in activate:
                raise PromptflowError(f"{where}: node '{node.name}': activate needs 'when: ${{NODE.output}}' (or an input) and 'is: VALUE'")
            path, _ = self._path(m.group(1), where)
            parts.append(f"{path} == {jinja_literal(_plain(activate['is']))}")
        return " and ".join(f"({p})" if len(parts) > 1 and " or " in p else p for p in parts) or None

    # node conversion ---------------------------------------------------------------------------
    def _convert(self, node: _Node) -> None:
        for key in node.pf:
            if key not in _KNOWN_NODE_KEYS:
                self.report.changed.append(f"node '{node.name}': '{key}' has no rillflow equivalent and was left out")
        if node.pf.get("enable_cache"):
            self.report.changed.append(f"node '{node.name}': enable_cache -> not set; rillflow caches with `cache: {{ttl: 1h}}` on the node")
        if node.pf.get("skip"):
            self.report.not_converted.append(f"node '{node.name}': the old 'skip' config; write a `when:` condition (and a `fallback`)")
        convert = {"llm": self._llm, "prompt": self._prompt, "python": self._python, "placeholder": self._placeholder,
                   "aggregation": self._aggregation}[node.kind]
        convert(node)

    def _inputs_of(self, node: _Node) -> CommentedMap:
        inputs = node.pf.get("inputs")
        if inputs is None:
            return CommentedMap()
        if not isinstance(inputs, CommentedMap):
            raise PromptflowError(f"{_at(self.file, node.pf, 'inputs')}: node '{node.name}': 'inputs' must be a mapping")
        return inputs

    def _source_file(self, node: _Node) -> tuple[Path, str]:
        source = node.pf.get("source")
        path = source.get("path") if isinstance(source, dict) else None
        where = _at(self.file, source, "path") if isinstance(source, dict) and "path" in source else _at(self.file, node.pf, "name")
        if not isinstance(path, str) or not path:
            raise PromptflowError(f"{where}: node '{node.name}': source needs 'path', the template or code file")
        file = self.dir / path
        try:
            return file, file.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            why = "no such file" if isinstance(exc, FileNotFoundError) else f"cannot read it ({exc})"
            raise PromptflowError(f"{where}: node '{node.name}': {path}: {why}: the file must be in the flow's folder") from None

    def _vars(self, node: _Node, inputs: CommentedMap, skip: set[str]) -> CommentedMap:
        out = CommentedMap()
        for key, value in inputs.items():
            if key not in skip:
                out[str(key)] = self._value(_plain(value), node, str(key), _at(self.file, inputs, key))
        return out

    def _prompt(self, node: _Node) -> None:
        file, source = self._source_file(node)
        config = self._base("prompt", node)
        config["template"] = _text(_escape(trim_blocks(source)))
        config["vars"] = self._vars(node, self._inputs_of(node), set())
        self._fill_missing(node, [source], config["vars"])
        self._add(node.id, config, f"promptflow prompt node '{node.name}' ({file.name})")

    def _llm(self, node: _Node) -> None:
        file, source = self._source_file(node)
        inputs = self._inputs_of(node)
        assert node.prompt_id is not None
        prompt = self._base("prompt", node)
        api = str(node.pf.get("api") or inputs.get("api") or "chat")
        templates, history_var = self._llm_prompt(node, prompt, source, api, file)
        prompt["vars"] = self._vars(node, inputs, MODEL_PARAMS | {history_var})
        self._fill_missing(node, templates, prompt["vars"])
        self._add(node.prompt_id, prompt, f"promptflow llm node '{node.name}': its template ({file.name})")
        llm = CommentedMap(type="llm", model=self._model_key(node, inputs))
        llm["prompt"] = f"${{{node.prompt_id}.{'messages' if api == 'chat' else 'text'}}}"
        self._params(node, inputs, llm)
        self._add(node.id, llm, f"promptflow llm node '{node.name}': the model call ({api} API)")

    def _llm_prompt(self, node: _Node, prompt: CommentedMap, source: str, api: str, file: Path) -> tuple[list[str], str]:
        """Fill the prompt node's template or messages; returns the template texts (for their variables) and
        the variable that held the chat history ("" if none)."""
        if api != "chat":
            self.report.changed.append(f"node '{node.name}': the {api} API -> a chat call with the prompt as one user message")
            prompt["template"] = _text(_escape(trim_blocks(source)))
            return [source], ""
        chat = split_chat(source)
        if chat.problem is not None:
            self.report.not_converted.append(
                f"node '{node.name}' ({file.name}): {chat.problem}, so it is sent as one user message: split it into "
                f"`messages` of node '{node.prompt_id}' by hand")
            prompt["template"] = _text(_escape(trim_blocks(source)))
            return [source], ""
        prompt["messages"] = CommentedSeq([CommentedMap(role=role, content=_text(_escape(content))) for role, content in chat.messages])
        if chat.history_var is not None:
            self._history(node, prompt, chat)
        return [content for _, content in chat.messages], chat.history_var or ""

    def _history(self, node: _Node, prompt: CommentedMap, chat: ChatTemplate) -> None:
        assert chat.history_var is not None
        value = self._inputs_of(node).get(chat.history_var)
        m = _WHOLE_REF.match(str(value).strip()) if isinstance(value, str) else None
        if m is None:
            raise PromptflowError(f"{_at(self.file, node.pf, 'name')}: node '{node.name}': its template loops over "
                                  f"'{chat.history_var}', which its inputs do not give as a reference: add {chat.history_var}: ${{inputs.chat_history}}")
        path, _ = self._path(m.group(1), _at(self.file, self._inputs_of(node), chat.history_var))
        prompt["history"] = "${" + path + "}"
        if path.startswith("inputs."):
            self.history_inputs.add(path.split(".")[1])
        self.report.changed.append(
            f"node '{node.name}': the loop over {chat.history_var} ({', '.join(chat.history_fields)}) -> `history: {prompt['history']}`: "
            "callers send chat history as [{role: user|assistant, content}] messages, not promptflow's [{inputs, outputs}] turns")

    def _fill_missing(self, node: _Node, templates: list[str], variables: CommentedMap) -> None:
        missing: set[str] = set()
        for source in templates:
            try:
                missing |= undeclared_variables(trim_blocks(source)) - set(variables)
            except TemplateSyntaxError as exc:
                raise PromptflowError(f"{self._source_path(node)}:{exc.lineno}:1: node '{node.name}': Jinja2 syntax error: {exc.message}") from None
        for name in sorted(missing):
            variables[name] = ""
            self.report.changed.append(f"node '{node.name}': template variable '{name}' is not among its inputs; "
                                       "promptflow rendered it empty, so it is given as \"\"")

    def _source_path(self, node: _Node) -> Path:
        source = node.pf.get("source")
        return self.dir / str(source.get("path")) if isinstance(source, dict) else self.file

    def _python(self, node: _Node) -> None:
        file, text = self._source_file(node)
        fn = tool_function(file, text)
        module = self._module(node, file)
        target = f"{module}:{fn.name}"
        if target not in self.report.allow:
            self.report.allow.append(target)
        if fn.imports_promptflow:
            self.report.changed.append(f"{file.name} imports promptflow (for @tool): keep promptflow installed where rill runs, "
                                       "or delete that import and the decorator; rillflow needs neither")
        config = self._base("python", node)
        config["function"] = target
        args = CommentedMap()
        inputs = self._inputs_of(node)
        for key, value in inputs.items():
            name = str(key)
            if name in fn.connections:
                self.report.not_converted.append(
                    f"node '{node.name}': argument '{name}' is a promptflow connection ('{value}'); rillflow passes no connections: "
                    f"give {fn.name} a default for it and read the secrets from environment variables inside the function")
                continue
            if name not in fn.params and not fn.kwargs:
                self.report.changed.append(f"node '{node.name}': input '{name}' is not a parameter of {fn.name}; left out")
                continue
            args[name] = self._value(_plain(value), node, name, _at(self.file, inputs, key), fn.params.get(name))
        config["args"] = args
        self._add(node.id, config, f"promptflow python node '{node.name}' ({file.name}, @tool {fn.name})")

    def _module(self, node: _Node, file: Path) -> str:
        """module name of a code file, importable with the flow's folder (or the file's own) on PYTHONPATH."""
        try:
            parts = list(file.resolve().relative_to(self.dir.resolve()).with_suffix("").parts)
            root = self.dir.resolve()
        except ValueError:
            parts, root = [file.stem], file.resolve().parent
            self.report.changed.append(f"node '{node.name}': {file.name} lies outside the flow's folder (additional includes): "
                                       f"its folder {root} is added to PYTHONPATH")
        if not all(_IDENT.match(p) for p in parts):
            safe = [re.sub(r"\W", "_", p) for p in parts]
            self.report.not_converted.append(f"node '{node.name}': {'/'.join(parts)}.py is not an importable module name: "
                                             f"rename it to {'/'.join(safe)}.py")
            parts = safe
        if str(root) not in self.report.pythonpath:
            self.report.pythonpath.append(str(root))
        return ".".join(parts)

    def _placeholder(self, node: _Node) -> None:
        source = node.pf.get("source") if isinstance(node.pf.get("source"), dict) else {}
        tool = str(source.get("tool") or source.get("path") or node.pf.get("type"))
        config = self._base("static", node)
        config["value"] = f"NOT CONVERTED: promptflow node '{node.name}' ({node.pf.get('type')}, {tool}): replace this node"
        self.report.not_converted.append(f"node '{node.name}' ({node.pf.get('type')} tool {tool}): {_advice(tool)}; "
                                         f"it is a static placeholder '{node.id}' that outputs a NOT CONVERTED text")
        self._add(node.id, config, f"NOT CONVERTED: promptflow node '{node.name}' ({tool})")

    def _aggregation(self, node: _Node) -> None:
        source = node.pf.get("source") if isinstance(node.pf.get("source"), dict) else {}
        self.report.not_converted.append(
            f"aggregation node '{node.name}' ({source.get('path') or source.get('tool')}): it ran once over a whole batch; "
            "measure a dataset with `rill eval FLOW DATA --expect CHECKS` instead (docs/testing.md)")

    def _base(self, kind: str, node: _Node) -> CommentedMap:
        config = CommentedMap(type=kind)
        when = self._when(node)
        if when is not None:
            config["when"] = when
        return config

    def _add(self, node_id: str, config: CommentedMap, comment: str) -> None:
        self.out_nodes[node_id] = config
        self.comments[node_id] = comment

    # models -------------------------------------------------------------------------------------
    def _model_key(self, node: _Node, inputs: CommentedMap) -> str:
        connection = str(node.pf.get("connection") or inputs.get("connection") or "openai")
        provider = str(node.pf.get("provider") or "")
        azure = provider.lower().startswith("azure")
        names = [inputs.get(k) for k in (("deployment_name", "model") if azure else ("model", "deployment_name"))]
        model = next((str(n) for n in names if isinstance(n, str) and n and not _WHOLE_REF.match(n.strip())), None)
        if not provider and all(isinstance(n, str) and n for n in names) and names[0] != names[1]:
            self.report.changed.append(f"node '{node.name}': no provider given, so the model is its `model` input ({names[0]}), "
                                       f"not deployment_name {names[1]}: for Azure OpenAI, change models.*.model to the deployment")
        prefix = env_prefix(connection)
        key = (connection, provider, model or "")
        if key in self.model_keys:
            return self.model_keys[key]
        name = rill_id(model or connection, set(self.models)) if model else rill_id(connection, set(self.models))
        self.model_keys[key] = name
        spec = CommentedMap(provider="openai")
        if model is None:
            spec["model"] = f"${{env.{prefix}_MODEL}}"
            self.report.env[f"{prefix}_MODEL"] = f"model (or deployment) name for connection '{connection}'"
        else:
            spec["model"] = model
        spec["base_url"] = f"${{env.{prefix}_BASE_URL}}" if azure else f"${{env.{prefix}_BASE_URL:-{OPENAI_URL}}}"
        spec["api_key"] = f"${{env.{prefix}_API_KEY}}"
        self.models[name] = spec
        self.report.env[f"{prefix}_API_KEY"] = f"API key of promptflow connection '{connection}'"
        self.report.env.setdefault(f"{prefix}_BASE_URL", (
            "https://RESOURCE.openai.azure.com/openai/v1 (Azure's v1 API: the model is the deployment name)" if azure
            else f"endpoint of connection '{connection}' (optional: default {OPENAI_URL})"))
        if not azure and provider and provider.lower() != "openai":
            self.report.changed.append(f"connection '{connection}' (provider {provider}) -> an OpenAI-compatible endpoint")
        return name

    def _params(self, node: _Node, inputs: CommentedMap, llm: CommentedMap) -> None:
        """temperature and top_p (promptflow's defaults are 1.0), max_tokens, stop and seed; the rest is reported."""
        given = {str(k): _plain(v) for k, v in inputs.items() if _plain(v) not in (None, "")}
        for key, kind, low, high in (("temperature", float, 0.0, 2.0), ("top_p", float, 1e-9, 1.0), ("max_tokens", int, 1, 131_072),
                                     ("seed", int, None, None)):
            value = _number(given.get(key), kind)
            if key in given and value is None:
                self.report.changed.append(f"node '{node.name}': {key} '{given[key]}' is not a literal number; left out")
            if value is None and key in ("temperature", "top_p"):
                value = 1.0
            if value is not None:
                llm[key] = value if low is None or high is None else min(max(value, low), high)
        stop = given.get("stop")
        if isinstance(stop, str) and not _WHOLE_REF.match(stop):
            stop = [stop]
        if isinstance(stop, list) and stop:
            llm["stop"] = [str(s) for s in stop]
        handled = {"deployment_name", "model", "temperature", "top_p", "max_tokens", "seed", "stop", "connection", "api"}
        dropped = sorted(k for k in given if k in MODEL_PARAMS - handled)
        if dropped:
            hint = " (for JSON answers give the llm node a json_schema)" if "response_format" in dropped else ""
            self.report.not_converted.append(f"node '{node.name}': {', '.join(dropped)}: no rillflow llm equivalent, left out{hint}")

    # inputs, outputs, top level -----------------------------------------------------------------
    def _inputs(self) -> CommentedMap:
        raw = self.data.get("inputs") or CommentedMap()
        if not isinstance(raw, dict):
            raise PromptflowError(f"{_at(self.file, self.data, 'inputs')}: 'inputs' must be a mapping of input name -> {{type, default}}")
        # rill serve's chat endpoint sends the message to the first string input (or 'question'): the chat input goes first.
        names = sorted(raw, key=lambda n: not (isinstance(raw[n], dict) and raw[n].get("is_chat_input")))
        out = CommentedMap()
        for name in names:
            spec = raw[name]
            if not isinstance(spec, dict):
                raise PromptflowError(f"{_at(self.file, raw, name)}: input '{name}' must be a mapping such as {{type: string}}")
            out[str(name)] = self._input(str(name), spec)
        return out

    def _input(self, name: str, spec: dict[str, Any]) -> CommentedMap:
        pf_type = str(spec.get("type", "string"))
        kind = "chat_history" if spec.get("is_chat_history") or name in self.history_inputs else INPUT_TYPES.get(pf_type)
        if kind is None:
            self.report.not_converted.append(f"input '{name}': type '{pf_type}' has no rillflow equivalent; declared as object")
            kind = "object"
        if kind == "chat_history" and name not in self.history_inputs:
            self.report.changed.append(f"input '{name}': type chat_history, whose items are {{role, content}} messages: "
                                       "nodes that read it directly must expect that shape")
        out = CommentedMap(type=kind)
        if spec.get("description"):
            out["description"] = str(spec["description"])
        if "default" in spec:
            out["default"] = _escape(_default(_plain(spec["default"]), kind))
        if isinstance(spec.get("enum"), list):
            out["enum"] = _escape(_plain(spec["enum"]))
        return out

    def _outputs(self) -> CommentedMap:
        raw = self.data.get("outputs")
        if not isinstance(raw, dict) or not raw:
            raise PromptflowError(f"{_at(self.file, self.data, 'outputs')}: 'outputs' must map each output name to {{reference: ${{NODE.output}}}}")
        out = CommentedMap()
        # rill serve's chat endpoint answers with the 'answer' output, else the first streamed one: the chat output goes first.
        for name in sorted(raw, key=lambda n: not (isinstance(raw[n], dict) and raw[n].get("is_chat_output"))):
            spec = raw[name]
            ref = spec.get("reference") if isinstance(spec, dict) else None
            m = _WHOLE_REF.match(ref.strip()) if isinstance(ref, str) else None
            if m is None:
                raise PromptflowError(f"{_at(self.file, raw, name)}: output '{name}' needs 'reference: ${{NODE.output}}'")
            path, node = self._path(m.group(1), _at(self.file, spec, "reference"))
            if node is None:  # a rillflow output must read a node: pass the input through one
                echo = rill_id(f"input_{path.split('.')[1]}", self.taken)
                self._add(echo, CommentedMap(type="static", value="${" + path + "}"), f"passes {path} to output '{name}'")
                path = f"{echo}.value"
            out[str(name)] = "${" + path + "}"
        return out

    def _node_map(self) -> CommentedMap:
        nodes = CommentedMap()
        for node_id, config in self.out_nodes.items():
            nodes[node_id] = config
            nodes.yaml_set_comment_before_after_key(node_id, before=self.comments[node_id], indent=2)
        if self.standins:
            standin = CommentedMap(type="static")
            standin["value"] = {k: dict(v) for k, v in self.standins.items()}
            nodes[self.bypass_id] = standin
            nodes.yaml_set_comment_before_after_key(self.bypass_id, indent=2, before=(
                "what promptflow passed for an input whose node was bypassed (the parameter's default, else null);\n"
                "the `?? " + self.bypass_id + ".value...` merges read it"))
        return nodes

    def _top_level_notes(self) -> None:
        for key in self.data:
            if key not in _KNOWN_TOP_KEYS:
                self.report.changed.append(f"top-level '{key}' has no rillflow equivalent and was left out")
        includes = self.data.get("additional_includes")
        if includes:
            self.report.not_converted.append(
                f"additional_includes ({', '.join(map(str, includes))}): rillflow has no include list; templates were inlined, but "
                "code the python nodes import from there must be on PYTHONPATH")
        env = self.data.get("environment")
        if isinstance(env, dict) and env.get("python_requirements_txt"):
            self.report.changed.append(f"environment: install {env['python_requirements_txt']} where rill runs "
                                       f"(pip install -r {self.dir / str(env['python_requirements_txt'])})")
        if isinstance(env, dict) and env.get("image"):
            self.report.not_converted.append(f"environment image {env['image']}: build your own image with rillflow installed")
        if self.data.get("environment_variables"):
            names = ", ".join(map(str, self.data["environment_variables"]))
            self.report.not_converted.append(f"environment_variables ({names}): export them in the environment that runs rill")


def _advice(tool: str) -> str:
    lowered = tool.lower()
    if any(word in lowered for word in ("embedding", "vector", "faiss", "index_lookup", "search")):
        return ("rillflow embeds and searches in one `retrieve` node: declare a collection under `collections:` "
                "(rill ingest fills it) and use a retrieve node in place of the embedding and lookup nodes")
    return "no rillflow node type does this: write a python function that does it and call it from a `python` node"


def _default(value: Any, kind: str) -> Any:
    """promptflow accepts "256" for an int and "true" for a bool; rillflow checks defaults against the type."""
    if not isinstance(value, str):
        return value
    if kind in ("integer", "number"):
        number = _number(value, int if kind == "integer" else float)
        return value if number is None else number
    if kind == "boolean" and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _text(value: str) -> str:
    """Multi-line text as a YAML literal block, so templates read as they did in their files."""
    printable = all(c in "\n\t" or c.isprintable() for c in value)
    return LiteralScalarString(value) if "\n" in value and printable and not value.endswith((" ", "\t")) else value


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.width = 120
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.representer.ignore_aliases = lambda *_: True  # rillflow refuses anchors and aliases (E082)
    return yaml


def _dump(doc: CommentedMap, report: Report) -> str:
    header = ["Converted from promptflow by `rill import promptflow`; review before use."]
    for title, items in (("Set before `rill validate` / `rill run`:", report.setup_lines()),
                         ("NOT converted (what to do):", [f"- {item}" for item in report.not_converted])):
        if items:
            header += ["", title, *items]
    doc.yaml_set_start_comment("\n".join(header))
    text = _write(doc)
    if YAML(typ="safe").load(text) != _plain(doc):  # a literal block cannot hold every string exactly: quote them all
        _unliteral(doc)
        text = _write(doc)
    return text


def _write(doc: CommentedMap) -> str:
    stream = StringIO()
    _yaml().dump(doc, stream)
    return stream.getvalue()


def _unliteral(value: Any) -> None:
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in list(items):
        if isinstance(item, LiteralScalarString):
            value[key] = str(item)
        else:
            _unliteral(item)
