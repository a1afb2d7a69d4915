"""Compile a flow file into an immutable Plan, collecting every problem in one pass.

Parse, don't validate (STYLE.md 3): YAML -> positioned data -> pydantic configs -> resolved references
-> checked graph -> Plan. Anything that can be checked before a run is checked here, so the
scheduler only ever sees a valid plan.
"""

from __future__ import annotations

import heapq
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from rillflow.nodes.base import POLICY_FIELDS, FlowEnv, Node, NodeConfig, OutputField, get_node_type, stream_fields
from rillflow.runtime.errors import FlowError, suggest
from rillflow.runtime.plan import Plan, PlanNode, StreamEdge
from rillflow.runtime.policies import normalise_timeout
from rillflow.runtime.refs import Interp, Ref, RefPath, iter_refs
from rillflow.runtime.spec import FlowSpec, InputSpec
from rillflow.runtime.templating import TemplateSyntaxError, attribute_paths, compile_condition, condition_source
from rillflow.runtime.validate import Collector, parse_refs, scan_secrets, validate_node, validate_top
from rillflow.runtime.yaml_source import Loc, SourceMap, load_yaml_bytes, load_yaml_file

_INPUT_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
                "list": "list", "object": "object", "chat_history": "list"}
_PY_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "object", tuple: "list"}


def load_flow(path: str | Path, *, env: Mapping[str, str] | None = None) -> Plan:
    """Load, validate and compile one flow file. Raises FlowError listing every problem."""
    data, smap = load_yaml_file(path)
    return compile_flow(data, smap, flow_dir=str(Path(path).parent), env=env)


def load_flow_text(text: str, path: str = "<flow>", *, flow_dir: str = ".", env: Mapping[str, str] | None = None) -> Plan:
    data, smap = load_yaml_bytes(text.encode("utf-8"), path)
    return compile_flow(data, smap, flow_dir=flow_dir, env=env)


def compile_flow(data: Any, smap: SourceMap, *, flow_dir: str = ".", env: Mapping[str, str] | None = None) -> Plan:
    out = Collector(smap, data)
    if not isinstance(data, dict) or not data:
        out.at((), "E002", "a flow must be a mapping with 'version', 'name', 'nodes' and 'outputs'")
        raise FlowError(out.items)
    return _Compiler(data, smap, out, flow_dir, os.environ if env is None else env).run()


class _Compiler:
    def __init__(self, raw: dict[str, Any], smap: SourceMap, out: Collector, flow_dir: str, env: Mapping[str, str]) -> None:
        self.raw, self.smap, self.out, self.flow_dir, self.env = raw, smap, out, flow_dir, env
        self.secrets: set[str] = set()
        self.configs: dict[str, NodeConfig] = {}
        self.outputs: dict[str, dict[str, OutputField]] = {}
        self.deps: dict[str, set[str]] = {}
        self.edge_loc: dict[tuple[str, str], tuple[Loc, int]] = {}
        self.stream_inputs: dict[str, set[Loc]] = {}
        self.full_deps: dict[str, set[str]] = {}  # deps read whole (not only as a chunk stream)
        self.stream_edges: set[StreamEdge] = set()

    # -- the pass -------------------------------------------------------------------------
    def run(self) -> Plan:
        scan_secrets(self.raw, (), self.out)
        self.out.secrets = self.secrets  # filled by parse_refs; the collector redacts them from messages
        data = parse_refs(self.raw, (), self.out, self.env, self.secrets)
        top = validate_top(data, self.out)
        self.inputs: dict[str, InputSpec] = top.get("inputs") or {}
        self._check_input_defaults()
        nodes_raw = top.get("nodes")
        if "nodes" in top and (not isinstance(nodes_raw, dict) or not nodes_raw):  # `nodes: ~` too
            self.out.at(("nodes",), "E006", "'nodes' must be a mapping from node id to node config, with at least one node")
            nodes_raw = None
        for node_id, raw in (nodes_raw or {}).items():
            config = validate_node(node_id, raw, self.out)
            if config is not None:
                self.configs[node_id] = config
                outputs = get_node_type(config.type).outputs(config)  # type: ignore[union-attr]
                if config.map is not None:  # one value per item, in item order; items do not stream
                    outputs = {f: OutputField("list", description=f"{o.type} per item") for f, o in outputs.items()}
                self.outputs[node_id] = outputs
        self._check_resource_refs(data)
        self.flow_env = FlowEnv(name=str(top.get("name", "")), flow_dir=self.flow_dir,
                                models=_declared(top, data, "models"), collections=_declared(top, data, "collections"))
        for node_id, config in self.configs.items():
            self._check_node(node_id, config)
        output_refs = self._check_outputs(top.get("outputs"))
        self._check_fallbacks()
        order = self._check_graph()
        if self.out.has_errors or nodes_raw is None or "outputs" not in top:
            raise FlowError(self.out.items)
        return self._build(top, order, output_refs)

    def _check_input_defaults(self) -> None:
        from rillflow.runtime.inputs import check_value  # the same rules a caller's value meets

        for name, spec in self.inputs.items():
            if "default" in spec.model_fields_set and spec.default is not None:
                problem = check_value(name, spec, spec.default)
                if problem:
                    self.out.at(("inputs", name, "default"), "E060", f"default does not fit: {problem}")

    def _check_resource_refs(self, data: dict[str, Any]) -> None:
        """Models and collections open before any node runs: only ${env.NAME} can reach them."""
        for section in ("models", "collections"):
            for loc, ref, _ in iter_refs(data.get(section), (section,)):
                self.out.at(loc, "E026", f"'{section}' can only use ${{env.NAME}}, not '{ref}': they are opened before any node runs",
                            offset=ref.offset)

    # -- nodes ----------------------------------------------------------------------------
    def _check_node(self, node_id: str, config: NodeConfig) -> None:
        node_cls = get_node_type(config.type)
        assert node_cls is not None
        base: Loc = ("nodes", node_id)
        self.deps[node_id] = set()
        self.full_deps[node_id] = set()
        self.stream_inputs[node_id] = set()
        node_cls.check(config, _CheckContext(self, base))
        self._check_cache(node_id, config)
        streams = stream_fields(type(config))
        for field_name in type(config).model_fields:
            if field_name in ("when", "fallback", "type", "description"):
                continue
            value = getattr(config, field_name)
            for loc, ref, whole in iter_refs(value, (field_name,)):
                accepts_stream = (loc == (field_name,) and field_name in streams) or _accepts_stream(node_cls, config, loc)
                self._check_ref(node_id, (*base, *loc), ref, whole, _expected_type(type(config), loc) if whole else "string",
                                accepts_stream, in_map=config.map is not None and field_name != "map", target_loc=loc)
        if config.when is not None:
            self._check_condition(node_id, config.when)

    def _check_cache(self, node_id: str, config: NodeConfig) -> None:
        policy = config.cache
        if policy is None:
            return
        for tier in ("semantic", "offline"):
            if getattr(policy, tier) is not None and config.type != "llm":
                self.out.at(("nodes", node_id, "cache", tier), "E150", f"cache.{tier} matches questions by meaning and serves model "
                            f"answers: it is for llm nodes, and '{node_id}' is a {config.type} node (remove '{tier}')", at_key=True)
        if config.map is not None:
            self.out.at(("nodes", node_id, "cache"), "W152", f"node '{node_id}' has map: its items are not cached yet (cache the "
                        "node it maps over, or split the work into a node without map)", at_key=True, severity="warning")

    def _check_ref(self, node_id: str | None, loc: Loc, ref: Ref, whole: bool, expected: str, accepts_stream: bool,
                   *, in_map: bool = False, target_loc: Loc = ()) -> None:
        for path in ref.alternatives:
            produced = self._check_path(node_id, loc, ref, path, in_map)
            if produced is None:
                continue
            kind, stream = produced
            if not whole and kind in ("list", "object"):
                self.out.at(loc, "E061", f"'{path}' is a {kind}; it cannot be placed inside text: pass it whole, or format it in a prompt template", offset=ref.offset)
            elif whole and not _compatible(kind, expected):
                self.out.at(loc, "E061", f"'{path}' is {_a(kind)} but this field takes {_a(expected)}", offset=ref.offset)
            # A node input streams only from a single producer; flow outputs may also stream a merge.
            single = node_id is None or len(ref.alternatives) == 1
            if stream and whole and accepts_stream and single and path.root not in ("inputs", "item") and len(path.parts) == 1:
                target = node_id or "outputs"
                self.stream_edges.add(StreamEdge(path.root, str(path.parts[0]), target, ".".join(map(str, target_loc))))
                if node_id is not None:
                    self.stream_inputs[node_id].add(target_loc)
            elif node_id is not None and path.root in self.configs:
                self.full_deps[node_id].add(path.root)

    def _check_path(self, node_id: str | None, loc: Loc, ref: Ref, path: RefPath, in_map: bool) -> tuple[str, bool] | None:
        """Check one reference path; return (type, streams) of what it reads, or None if invalid."""
        if path.root == "inputs":
            return self._check_input_path(loc, ref, path)
        if path.root == "item":
            if not in_map:
                self.out.at(loc, "E025", "${item} is only defined in a node with 'map'", offset=ref.offset)
                return None
            return "any", False
        if path.root not in self.configs:
            nodes = self.raw.get("nodes")
            if isinstance(nodes, dict) and nodes and path.root not in nodes:  # else 'nodes' itself is reported
                self.out.at(loc, "E021", f"unknown node '{path.root}'{suggest(path.root, nodes)}", offset=ref.offset)
            return None  # an invalid node already reported its own error
        field = str(path.parts[0])
        fields = self.outputs[path.root]
        if field not in fields:
            self.out.at(loc, "E022", f"node '{path.root}' has no output '{field}'{suggest(field, fields)} (its outputs: {', '.join(fields)})", offset=ref.offset)
            return None
        if node_id is not None:
            self.deps[node_id].add(path.root)
            self.edge_loc.setdefault((path.root, node_id), (loc, ref.offset))
        out_field = fields[field]
        if len(path.parts) > 1 and out_field.type in ("string", "integer", "number", "boolean"):
            self.out.at(loc, "E061", f"'{path.root}.{field}' is {_a(out_field.type)}; it has no part '{path.parts[1]}'", offset=ref.offset)
            return None
        return (out_field.type if len(path.parts) == 1 else "any"), out_field.stream

    def _check_input_path(self, loc: Loc, ref: Ref, path: RefPath) -> tuple[str, bool] | None:
        name = str(path.parts[0])
        if name in self.inputs:
            return (_INPUT_TYPES[self.inputs[name].type] if len(path.parts) == 1 else "any"), False
        if not self._declared_input(name):  # a declared but invalid input has its own error
            self.out.at(loc, "E023", f"unknown flow input '{name}'{suggest(name, self.inputs)}" + _known(self.inputs), offset=ref.offset)
        return None

    def _declared_input(self, name: str) -> bool:
        raw_inputs = self.raw.get("inputs")
        return isinstance(raw_inputs, dict) and name in raw_inputs

    def _check_condition(self, node_id: str, expression: str) -> None:
        loc: Loc = ("nodes", node_id, "when")
        try:
            compile_condition(expression)
            uses = attribute_paths(condition_source(expression))
        except TemplateSyntaxError as exc:
            self.out.at(loc, "E075", f"condition syntax: {(exc.message or '').replace('end of template', 'end of the condition')}")
            return
        except RecursionError:  # Jinja's parser recurses once per bracket
            self.out.at(loc, "E075", "condition syntax: the condition nests too deeply: simplify it")
            return
        for name, attr, _line in uses:
            if name == "inputs":
                if attr is not None and attr not in self.inputs and not self._declared_input(attr):
                    self.out.at(loc, "E023", f"unknown flow input '{attr}'{suggest(attr, self.inputs)}")
                continue
            if name in self.configs:
                if attr is not None and attr not in self.outputs[name]:
                    self.out.at(loc, "E022", f"node '{name}' has no output '{attr}'{suggest(attr, self.outputs[name])}")
                    continue
                self.deps[node_id].add(name)
                self.full_deps[node_id].add(name)
                self.edge_loc.setdefault((name, node_id), (loc, 0))
            elif name not in _JINJA_NAMES:
                self.out.at(loc, "E021", f"condition reads unknown name '{name}'{suggest(name, [*self.configs, 'inputs'])} (conditions read inputs.NAME or NODE.FIELD)")

    # -- outputs, fallbacks, graph -------------------------------------------------------
    def _check_outputs(self, outputs: Any) -> dict[str, Any]:
        if outputs is None:
            return {}
        if not outputs:
            self.out.at(("outputs",), "E051", "the flow declares no outputs: add one, e.g. answer: ${node.text}")
        for name, value in outputs.items():
            refs = list(iter_refs(value, ("outputs", name)))
            if not refs:
                self.out.at(("outputs", name), "E051", f"output '{name}' references no node: write a reference such as ${{node.field}}")
            for loc, ref, whole in refs:
                self._check_ref(None, loc, ref, whole, "any", accepts_stream=True, target_loc=(name,))
        return dict(outputs)

    def _check_fallbacks(self) -> None:
        self.fallback_loops: set[str] = set()  # nodes on a reported loop: their fallback edges are left out of the graph
        for node_id, config in self.configs.items():
            target = config.fallback
            if target is None:
                continue
            loc: Loc = ("nodes", node_id, "fallback")
            if target == node_id:
                self.out.at(loc, "E041", f"node '{node_id}' cannot be its own fallback")
                continue
            if target not in self.configs:
                if target not in (self.raw.get("nodes") or {}):
                    self.out.at(loc, "E021", f"unknown fallback node '{target}'{suggest(target, self.configs)}")
                continue
            missing = [f for f in self.outputs[node_id] if f not in self.outputs[target]]
            if missing:
                self.out.at(loc, "E042", f"fallback '{target}' has no output {', '.join(repr(m) for m in missing)} that '{node_id}' provides")
        self._check_fallback_loops()

    def _check_fallback_loops(self) -> None:
        """Report each loop of fallbacks once, at its first node; every node is walked once (linear time)."""
        order = {n: i for i, n in enumerate(self.configs)}
        done: set[str] = set()
        for start in self.configs:
            walk: list[str] = []
            on_walk: set[str] = set()
            node: str | None = start
            while node is not None and node in self.configs and node not in done and node not in on_walk:
                walk.append(node)
                on_walk.add(node)
                fallback = self.configs[node].fallback
                node = fallback if fallback != node else None  # a node that is its own fallback is reported above
            if node is not None and node in on_walk:
                loop = walk[walk.index(node):]
                first = loop.index(min(loop, key=order.__getitem__))
                loop = loop[first:] + loop[:first]
                self.out.at(("nodes", loop[0], "fallback"), "E041", f"fallback chain loops: {_path(loop + loop[:1])}")
                self.fallback_loops.update(loop)
            done.update(walk)

    def _check_graph(self) -> tuple[str, ...]:
        edges: dict[str, set[str]] = {n: set() for n in self.configs}
        for node_id, deps in self.deps.items():
            for d in deps:
                edges[d].add(node_id)
        for node_id, config in self.configs.items():
            if config.fallback in self.configs and config.fallback != node_id and node_id not in self.fallback_loops:
                edges[config.fallback].add(node_id)  # the stand-in must finish before node_id's outputs exist
                self.edge_loc.setdefault((config.fallback, node_id), (("nodes", node_id, "fallback"), 0))
        order = _topological(edges)
        if order is not None:
            return order
        self._report_cycles(edges)
        return ()

    def _report_cycles(self, edges: dict[str, set[str]]) -> None:
        # networkx only on this (rare) path: importing it costs more than validating a flow.
        import networkx as nx

        graph = nx.DiGraph([(u, v) for u, vs in edges.items() for v in vs])
        for component in nx.strongly_connected_components(graph):
            members = sorted(component)
            if len(members) == 1 and not graph.has_edge(members[0], members[0]):
                continue
            cycle = [u for u, _ in nx.find_cycle(graph.subgraph(members), source=members[0])]
            cycle.append(cycle[0])
            loc, offset = self.edge_loc.get((cycle[-2], cycle[-1]), (("nodes", cycle[-1]), 0))
            self.out.at(loc, "E040", f"cycle: {_path(cycle)}", offset=offset)

    # -- plan -----------------------------------------------------------------------------
    def _build(self, top: dict[str, Any], order: tuple[str, ...], outputs: dict[str, Any]) -> Plan:
        fallback_of = {c.fallback: n for n, c in self.configs.items() if c.fallback is not None}
        needed = self._needed(outputs, fallback_of)
        for node_id in self.configs:
            if node_id not in needed:
                self.out.at(("nodes", node_id), "W050", f"node '{node_id}' is never used by an output or fallback: it will not run",
                            at_key=True, severity="warning")
        defaults = top["defaults"]
        dependants: dict[str, list[str]] = {n: [] for n in self.configs}
        for node_id, deps in self.deps.items():
            for d in deps:
                dependants[d].append(node_id)
        nodes: dict[str, PlanNode] = {}
        for node_id in order:
            if node_id not in needed:
                continue
            config = self.configs[node_id]
            node_cls = get_node_type(config.type)
            assert node_cls is not None
            inputs = {k: getattr(config, k) for k in type(config).model_fields if k not in POLICY_FIELDS and k != "type"}
            nodes[node_id] = PlanNode(
                id=node_id, type=config.type, node=node_cls(node_id, config, self.flow_dir, self.flow_env), config=config,
                inputs=MappingProxyType(inputs), wired=frozenset(k for k, v in inputs.items() if _has_ref(v)),
                stream_inputs=frozenset(self.stream_inputs[node_id]),
                deps=tuple(sorted(self.deps[node_id])),
                stream_deps=frozenset(self.deps[node_id] - self.full_deps[node_id]),
                dependants=tuple(sorted(d for d in dependants[node_id] if d in needed)),
                outputs=MappingProxyType(self.outputs[node_id]),
                stream_outputs=tuple(f for f, o in self.outputs[node_id].items() if o.stream),
                when=compile_condition(config.when) if config.when else None, when_source=config.when,
                timeout=normalise_timeout(config.timeout if config.timeout is not None else defaults.timeout),
                retry=config.retry or defaults.retry, on_fail=config.on_fail or defaults.on_fail,
                fallback=config.fallback, map=config.map,
                fallback_only=node_id in fallback_of and not self._used_directly(node_id, outputs, needed),
                cache=self._cache_policy(node_id, config, node_cls, defaults.cache),
            )
        output_streams = frozenset(e.target_field for e in self.stream_edges if e.target == "outputs")
        return Plan(
            name=top["name"], path=self.smap.path, description=top.get("description"),
            spec=FlowSpec.model_construct(**{**top, "nodes": self.raw.get("nodes")}),
            inputs=MappingProxyType(self.inputs), outputs=MappingProxyType(outputs), output_streams=output_streams,
            nodes=MappingProxyType(nodes), order=tuple(n for n in order if n in nodes),
            stream_edges=frozenset(e for e in self.stream_edges if e.target == "outputs" or e.target in nodes),
            concurrency=top.get("concurrency"), warnings=tuple(self.out.items), secrets=frozenset(self.secrets),
            env=self.flow_env,
        )

    def _cache_policy(self, node_id: str, config: NodeConfig, node_cls: type[Node], default: Any) -> Any:
        """The node's own cache policy, else the flow default for node types where caching pays."""
        policy = config.cache if config.cache is not None else (default if node_cls.worth_caching else None)
        if policy is None or policy.mode == "off":
            return None
        if self.stream_inputs.get(node_id) and config.cache is not None:
            self.out.at(("nodes", node_id, "cache"), "W151", f"node '{node_id}' reads a chunk stream as it arrives, so its inputs "
                        "are not known until it has run: it is not cached (cache the node that produces the stream instead)",
                        at_key=True, severity="warning")
            return None
        if self.stream_inputs.get(node_id) or config.map is not None:
            return None
        return policy

    def _needed(self, outputs: dict[str, Any], fallback_of: dict[str, str]) -> set[str]:
        needed: set[str] = set()
        stack = [p.root for v in outputs.values() for _, ref, _ in iter_refs(v) for p in ref.alternatives if p.root in self.configs]
        while stack:
            node_id = stack.pop()
            if node_id in needed:
                continue
            needed.add(node_id)
            stack.extend(self.deps.get(node_id, ()))
            fb = self.configs[node_id].fallback
            if fb in self.configs:
                stack.append(fb)
        return needed

    def _used_directly(self, node_id: str, outputs: dict[str, Any], needed: set[str]) -> bool:
        if any(node_id in self.deps[n] for n in needed if n in self.deps):
            return True
        return any(p.root == node_id for v in outputs.values() for _, ref, _ in iter_refs(v) for p in ref.alternatives)


_JINJA_NAMES = frozenset({"true", "false", "none", "True", "False", "None", "range", "lipsum", "dict", "cycler", "joiner", "namespace", "loop"})


class _CheckContext:
    """Lets a node type's load-time check report at positions inside its own config."""

    def __init__(self, compiler: _Compiler, base: Loc) -> None:
        self._compiler = compiler
        self._base = base
        self.flow_dir = compiler.flow_dir
        self.env = compiler.flow_env

    def error(self, field_loc: Loc, code: str, message: str, *, offset: int = 0, template_line: int | None = None) -> None:
        self._compiler.out.at((*self._base, *field_loc), code, message, offset=offset, template_line=template_line)


def _declared(top: dict[str, Any], data: dict[str, Any], section: str) -> dict[str, Any]:
    """The validated models or collections; when the section itself is invalid (already reported),
    its names with no spec, so nodes naming them get no second, misleading error."""
    if section in top:
        return dict(top[section])
    raw = data.get(section)
    return dict.fromkeys(raw, None) if isinstance(raw, dict) else {}


def _accepts_stream(node_cls: type[Node], config: NodeConfig, loc: Loc) -> bool:
    hook = getattr(node_cls, "accepts_stream", None)
    return bool(hook(config, loc)) if hook is not None else False


def _topological(edges: dict[str, set[str]]) -> tuple[str, ...] | None:
    """Kahn's algorithm, smallest id first for a stable order; None when there is a cycle."""
    indegree = dict.fromkeys(edges, 0)
    for targets in edges.values():
        for t in targets:
            indegree[t] += 1
    ready = [n for n, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node = heapq.heappop(ready)
        order.append(node)
        for t in edges[node]:
            indegree[t] -= 1
            if indegree[t] == 0:
                heapq.heappush(ready, t)
    return tuple(order) if len(order) == len(edges) else None


def _path(nodes: list[str]) -> str:
    """'a -> b -> a', shortened in the middle when a loop is long."""
    if len(nodes) <= 12:
        return " -> ".join(nodes)
    return f"{' -> '.join(nodes[:5])} -> ... -> {' -> '.join(nodes[-5:])} ({len(nodes) - 1} nodes)"


def _a(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


def _has_ref(value: Any) -> bool:
    return next(iter_refs(value), None) is not None


def _known(names: Mapping[str, Any]) -> str:
    return f" (flow inputs: {', '.join(names)})" if names else " (the flow declares no inputs)"


def _expected_type(config_cls: type[NodeConfig], loc: Loc) -> str:
    """The type a config field takes, from its annotation; 'any' where it is not simple."""
    if len(loc) != 1:
        return "any"
    info = config_cls.model_fields.get(str(loc[0]))
    if info is None:
        return "any"
    annotation: Any = info.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)] if typing.get_origin(annotation) in (typing.Union, _UnionType) else [annotation]
    args = [typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a for a in args]
    kinds = {_PY_TYPES.get(typing.get_origin(a) or a, "any") for a in args}
    return kinds.pop() if len(kinds) == 1 else "any"


try:
    from types import UnionType as _UnionType
except ImportError:  # pragma: no cover - Python 3.10 has it; kept for type checkers
    _UnionType = typing.Union  # type: ignore[assignment,misc]


def _compatible(produced: str, expected: str) -> bool:
    if "any" in (produced, expected) or produced == expected:
        return True
    return produced == "integer" and expected == "number"


__all__ = ["FlowError", "Interp", "Plan", "compile_flow", "load_flow", "load_flow_text"]
