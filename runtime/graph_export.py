"""Render a compiled plan as Mermaid or Graphviz dot: data edges, stream edges (thick), fallbacks (dotted)."""

from __future__ import annotations

from rillflow.runtime.plan import Plan
from rillflow.runtime.refs import iter_refs


def edges(plan: Plan) -> list[tuple[str, str, str]]:
    """(source, target, kind) with kind 'data', 'stream' or 'fallback'."""
    streams = {(e.source, e.target) for e in plan.stream_edges}
    edges: list[tuple[str, str, str]] = []
    for node in plan.nodes.values():
        read = [*node.inputs.values(), node.map.over if node.map is not None else None]
        if any(p.root == "inputs" for v in read for _, ref, _ in iter_refs(v) for p in ref.alternatives) or (
            node.when_source is not None and "inputs" in node.when_source
        ):
            edges.append(("inputs", node.id, "data"))
        for dep in node.deps:
            edges.append((dep, node.id, "stream" if (dep, node.id) in streams else "data"))
        if node.fallback:
            edges.append((node.id, node.fallback, "fallback"))
    for value in plan.outputs.values():
        for _, ref, _ in iter_refs(value):
            for path in ref.alternatives:
                if path.root in plan.nodes:
                    edges.append((path.root, "outputs", "stream" if (path.root, "outputs") in streams else "data"))
    return sorted(set(edges))


def to_mermaid(plan: Plan) -> str:
    lines = ["flowchart TD"]
    for node in plan.nodes.values():
        lines.append(f'    {node.id}["{node.id}<br/><small>{node.type}</small>"]')
    lines.append("    inputs([inputs])")
    lines.append("    outputs([outputs])")
    arrows = {"data": "-->", "stream": "==>|stream|", "fallback": "-.->|fallback|"}
    lines.extend(f"    {src} {arrows[kind]} {dst}" for src, dst, kind in edges(plan))
    return "\n".join(lines) + "\n"


def to_dot(plan: Plan) -> str:
    lines = [f'digraph "{plan.name}" {{', "    rankdir=TB;", "    node [shape=box, fontname=Helvetica];"]
    lines.append('    inputs [shape=oval]; outputs [shape=oval];')
    for node in plan.nodes.values():
        lines.append(f'    {node.id} [label="{node.id}\\n({node.type})"];')
    style = {"data": "", "stream": ' [penwidth=3, label="stream"]', "fallback": ' [style=dashed, label="fallback"]'}
    lines.extend(f"    {src} -> {dst}{style[kind]};" for src, dst, kind in edges(plan))
    lines.append("}")
    return "\n".join(lines) + "\n"
