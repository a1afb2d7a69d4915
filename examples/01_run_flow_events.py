"""Run a flow from Python and read its event stream.

Progress per node, the answer as it streams, retries and fallbacks as they happen, then a summary of
the outputs and of each node's time and tokens, all taken from the events alone (the same stream the
CLI prints, the web chat renders and the trace stores: rillflow.runtime.events lists them).

    python examples/01_run_flow_events.py --question "What is rillflow?"
    python examples/01_run_flow_events.py --flow flows/docs_qa.yaml --question "How do I cache node results?"

examples/hello.yaml streams a scripted answer, so it runs before any model is installed. The demo
flow, flows/docs_qa.yaml, ingests the docs into its local Qdrant folder (the first time only: later
runs skip unchanged files), loads the local Gemma model and answers for real.
Exit status: 0 the run finished, 1 it failed, 2 the flow or the inputs are invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rillflow.runtime import load_flow, run
from rillflow.runtime.errors import FlowError
from rillflow.runtime.events import Event
from rillflow.runtime.inputs import InputError, coerce_cli_value
from rillflow.runtime.plan import Plan

ROOT = Path(__file__).resolve().parents[1]
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


@dataclass
class NodeSummary:
    """What the events said about one node, for the summary table."""

    type: str = ""
    status: str = "running"
    attempts: int = 0
    duration_ms: float | None = None
    ttft_ms: float | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    note: str = ""


class EventPrinter:
    """Prints each event as it arrives: a line per node event, chunks inline as they stream."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.nodes: dict[str, NodeSummary] = {}
        self.streaming: str | None = None  # the output whose chunks the current line is showing
        self.terminal: Event | None = None
        self.handlers: dict[str, Callable[[Event], None]] = {
            "run_started": self.run_started, "node_started": self.node_started, "node_progress": self.node_progress,
            "chunk": self.chunk, "retract": self.retract, "node_retry": self.node_retry, "node_fallback": self.node_fallback,
            "cache_hit": self.cache_hit, "node_skipped": self.node_skipped, "node_finished": self.node_finished,
            "node_failed": self.node_failed, "route_chosen": self.route_chosen, "guardrail_flagged": self.guardrail_flagged,
            "model_queued": self.model_queued, "run_finished": self.end, "run_failed": self.end,
        }

    def handle(self, event: Event) -> None:
        self.handlers[event.type](event)

    def line(self, event: Event, text: str) -> None:
        if self.streaming is not None:  # a node event in the middle of a streamed answer starts a line of its own
            self.out.write("\n")
            self.streaming = None
        self.out.write(f"  {event.ts:6.2f}s  {event.node or '':<12} {text}\n")
        self.out.flush()

    def node(self, event: Event) -> NodeSummary:
        return self.nodes.setdefault(event.node or "", NodeSummary())

    def run_started(self, event: Event) -> None:
        inputs = ", ".join(event.data["inputs"]) or "none"
        self.out.write(f"run {event.run_id[:12]} of flow '{event.data['flow']}' (inputs: {inputs})\n")

    def node_started(self, event: Event) -> None:
        summary = self.node(event)
        summary.type, summary.attempts = event.data["node_type"], event.data["attempt"]
        again = f", attempt {event.data['attempt']}" if event.data["attempt"] > 1 else ""
        self.line(event, f"started ({summary.type}{again})")

    def node_progress(self, event: Event) -> None:
        total = event.data.get("total")
        count = f"{event.data['done']}/{total}" if total else str(event.data["done"])
        self.line(event, f"progress {count} {event.data.get('message') or ''}".rstrip())

    def chunk(self, event: Event) -> None:
        output = event.data["output"]
        if self.streaming != output:
            if self.streaming is not None:
                self.out.write("\n")
            self.out.write(f"[{output}] ")
            self.streaming = output
        self.out.write(event.data["text"])
        self.out.flush()  # a chunk is shown the moment it arrives, not when a line or buffer fills

    def retract(self, event: Event) -> None:
        chars = event.data.get("chars")
        what = f"the last {chars} characters" if chars is not None else "the text"
        self.line(event, f"retracted {what} streamed so far ({event.data['reason']}): what follows replaces them")

    def node_retry(self, event: Event) -> None:
        error = event.data["error"]
        self.line(event, f"retry: attempt {event.data['attempt']} failed ({error['kind']}: {error['message']}), "
                         f"next attempt in {event.data['delay']:.2f}s")

    def node_fallback(self, event: Event) -> None:
        error = event.data["error"]
        summary = self.node(event)
        summary.note, summary.attempts = f"fell back to {event.data['to']}", event.data.get("attempts", summary.attempts)
        self.line(event, f"fallback: failed ({error['kind']}: {error['message']}), '{event.data['to']}' stands in")

    def cache_hit(self, event: Event) -> None:
        self.node(event).note = f"cached ({event.data['tier']})"
        self.line(event, f"cache hit ({event.data['tier']}, {event.data['age_s']:.0f}s old)")

    def node_skipped(self, event: Event) -> None:
        summary = self.node(event)
        summary.status, summary.note = "skipped", event.data["reason"]
        self.line(event, f"skipped: {event.data['reason']}")

    def node_finished(self, event: Event) -> None:
        # A node its fallback stood in for finishes with {"via": stand_in}; an offline cache answer has no duration.
        summary, data = self.node(event), event.data
        summary.status, summary.attempts = "ok", data.get("attempts", summary.attempts)
        summary.duration_ms, summary.ttft_ms, summary.usage = data.get("duration_ms"), data.get("ttft_ms"), data.get("usage") or {}
        took = f" in {summary.duration_ms:.0f} ms" if summary.duration_ms is not None else ""
        via = f" through its fallback '{data['via']}'" if "via" in data else ""
        self.line(event, f"finished{took}{via}")

    def node_failed(self, event: Event) -> None:
        summary = self.node(event)
        error = event.data["error"]
        summary.status, summary.attempts, summary.note = "failed", event.data["attempts"], f"{error['kind']}: {error['message']}"
        self.line(event, f"failed after {event.data['attempts']} attempt(s): {error['kind']}: {error['message']}")

    def route_chosen(self, event: Event) -> None:
        self.line(event, f"route: {event.data['branch']} ({event.data['reason']})")

    def guardrail_flagged(self, event: Event) -> None:
        self.line(event, f"guardrail {event.data['check']}: {event.data['action']} ({event.data['detail']})")

    def model_queued(self, event: Event) -> None:
        self.line(event, f"waited {event.data['wait_ms']:.0f} ms for model '{event.data['model']}'")

    def end(self, event: Event) -> None:
        if self.streaming is not None:
            self.out.write("\n")
            self.streaming = None
        self.terminal = event


def print_summary(printer: EventPrinter, out: TextIO) -> None:
    """The run's outcome, its outputs, and a table of nodes with their time and tokens."""
    end = printer.terminal
    assert end is not None, "every run ends with run_finished or run_failed"
    if end.type == "run_finished":
        out.write(f"\nrun {end.data['status']} in {end.ts:.2f}s\noutputs:\n")
        for name, value in end.data["outputs"].items():
            out.write(f"  {name}: {_show(value)}\n")
    else:
        error = end.data["error"]
        where = f" (node '{error['node']}')" if error.get("node") else ""
        out.write(f"\nrun failed in {end.ts:.2f}s: {error['kind']}: {error['message']}{where}\n")
    width = max([4, *map(len, printer.nodes)])
    out.write(f"\n{'node':<{width}}  {'status':<8} {'tries':>5} {'time':>9} {'1st chunk':>9} {'tokens in/out':>13}  model / note\n")
    tokens_in = tokens_out = 0
    for name, s in printer.nodes.items():
        tokens_in += s.usage.get("input_tokens", 0)
        tokens_out += s.usage.get("output_tokens", 0)
        tokens = f"{s.usage.get('input_tokens', 0)}/{s.usage.get('output_tokens', 0)}" if s.usage else "-"
        notes = ", ".join(x for x in (s.usage.get("model"), s.note) if x)
        row = f"{name:<{width}}  {s.status:<8} {s.attempts:>5} {_ms(s.duration_ms):>9} {_ms(s.ttft_ms):>9} {tokens:>13}  {notes}"
        out.write(row.rstrip() + "\n")
    out.write(f"tokens: {tokens_in} in, {tokens_out} out\n")
    out.flush()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _show(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def gather_inputs(plan: Plan, question: str, pairs: list[str]) -> dict[str, Any]:
    """--input KEY=VALUE pairs typed as the flow declares them; --question fills the flow's message input."""
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise InputError([f"--input takes KEY=VALUE, got '{pair}'"])
        inputs[key] = coerce_cli_value(plan.inputs.get(key), value)
    strings = [name for name, spec in plan.inputs.items() if spec.type == "string"]
    message = "question" if "question" in strings else next(iter(strings), None)
    if message is not None and message not in inputs:
        inputs[message] = question
    return inputs


async def open_flow(plan: Plan, say: Callable[[str], None]) -> None:
    """Bring the flow's collections up to date and load its models before the run, as `rill serve` does at
    start-up, so loading time is not counted as the first node's time. Cheap for flows with neither."""
    from rillflow.runtime.prepare import prepare
    from rillflow.runtime.sources import ingest_sources

    await asyncio.to_thread(ingest_sources, plan, say)
    await prepare(plan)


async def main_async(plan: Plan, inputs: dict[str, Any], out: TextIO) -> int:
    from rillflow.runtime.prepare import PrepareError, close_resources
    from rillflow.runtime.sources import SourcesError

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        await open_flow(plan, say)
        printer = EventPrinter(out)
        async for event in run(plan, inputs):  # InputError comes at once, before anything runs
            printer.handle(event)
    except SourcesError as exc:
        say("\n".join(exc.lines))
        return EXIT_INVALID
    except PrepareError as exc:
        for node, message in exc.problems.items():
            say(f"{plan.path}: node '{node}': {message}")
        return EXIT_INVALID
    finally:
        await close_resources()  # models and Qdrant folders: the next process can open them
    print_summary(printer, out)
    assert printer.terminal is not None
    return EXIT_OK if printer.terminal.type == "run_finished" else EXIT_FAILED


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flow", type=Path, default=ROOT / "examples" / "hello.yaml", help="The flow file (default: examples/hello.yaml).")
    parser.add_argument("--question", default="What is rillflow?", help="The message: the flow's 'question' input, else its first string input.")
    parser.add_argument("-i", "--input", action="append", default=[], metavar="KEY=VALUE", help="Another input (repeatable).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        plan = load_flow(args.flow)
        inputs = gather_inputs(plan, args.question, args.input)
        return asyncio.run(main_async(plan, inputs, sys.stdout))
    except FlowError as exc:
        print(f"{exc}\n(fix the flow, then check it with `rill validate {args.flow}`)", file=sys.stderr)
    except InputError as exc:
        print(f"error: {exc} (give inputs as --input KEY=VALUE)", file=sys.stderr)
    except KeyboardInterrupt:  # asyncio.run cancelled the run: every node was stopped before we got here
        print("\ncancelled", file=sys.stderr)
        return 130
    return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
