"""The flows a server serves: compiled once at start-up, opened in the lifespan, described for clients.

A bad flow stops start-up with its ``file:line:col`` diagnostics (``FlowsError``): a server that
starts serves every flow in the folder, never some of them. Each flow's chat mapping says how a chat
turn (the web page, ``/v1/chat/completions``) becomes its inputs and which outputs are the answer and
its sources; a flow without a string input can still be run through ``/api/flows/{name}/runs``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rillflow.runtime.plan import Plan


class FlowsError(Exception):
    """The flows cannot be served; ``lines`` are what to print, one problem each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class ChatMapping:
    """How a chat turn maps onto a flow: the message and history inputs, the answer and sources outputs."""

    message: str
    history: str | None
    answer: str | None
    sources: str | None


@dataclass(frozen=True)
class ServedFlow:
    plan: Plan
    chat: ChatMapping | None

    @property
    def name(self) -> str:
        return self.plan.name

    def describe(self) -> dict[str, Any]:
        """What ``GET /api/flows`` says about the flow: its inputs, chat mapping and graph."""
        from rillflow.runtime.graph_export import edges

        inputs = {name: {"type": spec.type, "description": spec.description, "required": spec.is_required,
                         "default": spec.default, "max_length": spec.max_length}
                  for name, spec in self.plan.inputs.items()}
        graph = {"nodes": [{"id": pn.id, "type": pn.type} for pn in self.plan.nodes.values()],
                 "edges": [{"source": s, "target": t, "stream": kind == "stream", "fallback": kind == "fallback"}
                           for s, t, kind in edges(self.plan) if s in self.plan.nodes and t in self.plan.nodes]}
        chat = None if self.chat is None else {"message": self.chat.message, "history": self.chat.history,
                                                "answer": self.chat.answer, "sources": self.chat.sources}
        return {"name": self.name, "description": self.plan.description, "inputs": inputs,
                "outputs": list(self.plan.outputs), "chat": chat, "graph": graph}


def load_flows(folder: Path, *, env: Mapping[str, str] | None = None) -> dict[str, ServedFlow]:
    """Compile every flow under ``folder`` (or one flow file); FlowsError lists every problem at once."""
    from rillflow.runtime.cli import flow_files
    from rillflow.runtime.compiler import load_flow
    from rillflow.runtime.errors import FlowError

    files, missing = flow_files([folder])
    problems = list(missing)
    if not files and not missing:
        problems.append(f"{folder}: error: no flow files (*.yaml) here; `rill init NAME` scaffolds one")
    served: dict[str, ServedFlow] = {}
    where: dict[str, Path] = {}
    for path in files:
        try:
            plan = load_flow(path, env=env)
        except FlowError as exc:
            problems.extend(str(d) for d in exc.diagnostics)
            continue
        if plan.name in served:
            problems.append(f"{path}: error: flow name '{plan.name}' is already used by {where[plan.name]}; "
                            "names are the API's flow ids, so each must be unique")
            continue
        served[plan.name], where[plan.name] = ServedFlow(plan, chat_mapping(plan)), path
    if problems:
        raise FlowsError(problems)
    return served


def chat_mapping(plan: Plan) -> ChatMapping | None:
    """The message is the first string input (``question`` if there is one), the history the first
    ``chat_history`` input; the answer is the ``answer`` output, else the first streamed one, else
    the first; sources are the ``sources`` or ``citations`` output. None without a string input."""
    strings = [name for name, spec in plan.inputs.items() if spec.type == "string"]
    if not strings:
        return None
    message = "question" if "question" in strings else strings[0]
    history = next((name for name, spec in plan.inputs.items() if spec.type == "chat_history"), None)
    outputs = list(plan.outputs)
    streamed = [name for name in outputs if name in plan.output_streams]
    answer = "answer" if "answer" in outputs else next(iter(streamed or outputs), None)
    sources = next((name for name in ("sources", "citations") if name in outputs), None)
    return ChatMapping(message, history, answer, sources)


async def open_flows(flows: Mapping[str, ServedFlow], say: Callable[[str], None]) -> None:
    """Ingest declared collection sources, then open every model and collection (once per process).

    Raises FlowsError with what the operator must fix; anything half-opened is closed by ``close_flows``.
    """
    import asyncio

    from rillflow.runtime.prepare import PrepareError, prepare

    for flow in flows.values():
        await asyncio.to_thread(ingest_sources, flow.plan, say)
    problems: list[str] = []
    for flow in flows.values():
        say(f"loading models and collections of {flow.name}…")
        try:
            await prepare(flow.plan)
        except PrepareError as exc:
            problems.extend(f"{flow.plan.path}: node '{node}': {message}" for node, message in exc.problems.items())
    if problems:
        raise FlowsError(problems)


def ingest_sources(plan: Plan, say: Callable[[str], None]) -> None:
    """Bring the flow's collections up to date with their ``sources:`` (incremental: unchanged files are skipped)."""
    from rillflow.runtime.sources import SourcesError
    from rillflow.runtime.sources import ingest_sources as ingest

    try:
        ingest(plan, say)
    except SourcesError as exc:
        raise FlowsError(exc.lines) from None


async def close_flows() -> None:
    """Close what the flows opened: remote model clients, then models and Qdrant clients."""
    from rillflow.runtime.prepare import close_resources

    await close_resources()
