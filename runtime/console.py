"""`rill run` on a terminal: the streamed answer on stdout, a live step list of nodes on stderr."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from rillflow.runtime.events import Event
from rillflow.runtime.plan import Plan

_MARKS = {"waiting": "[dim]·[/]", "running": "[yellow]…[/]", "done": "[green]✓[/]", "skipped": "[dim]-[/]",
          "failed": "[red]✗[/]", "fallback": "[magenta]↪[/]", "retrying": "[yellow]↻[/]"}


class NodeDisplay:
    """A live table of each node's state and progress, with the answer streaming below it.

    The answer streams inside the live view (writing it to the same terminal beside a live redraw
    would garble both); the caller prints it once more, cleanly, when the display closes."""

    def __init__(self, plan: Plan, console: Console) -> None:
        self.states = dict.fromkeys(plan.order, "waiting")
        self.notes: dict[str, str] = {}
        self.answer = Text()
        self.live = Live(self._view(), console=console, transient=True, refresh_per_second=12)

    def __enter__(self) -> NodeDisplay:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)

    def update(self, event: Event) -> None:
        node = event.node
        if event.type == "chunk":
            self.answer.append(event.data["text"])
            self.live.update(self._view())
            return
        if node is None or node not in self.states:
            return
        state = {"node_started": "running", "node_finished": "done", "node_skipped": "skipped", "node_failed": "failed",
                 "node_fallback": "fallback", "node_retry": "retrying"}.get(event.type)
        if state:
            self.states[node] = state
        if event.type == "node_progress":
            self.notes[node] = event.data.get("message") or f"{event.data.get('done')}/{event.data.get('total')}"
        elif event.type in ("node_retry", "node_fallback", "node_failed"):
            self.notes[node] = event.data["error"]["message"]
        elif event.type == "node_finished" and "duration_ms" in event.data:
            self.notes[node] = f"{event.data['duration_ms']:.1f} ms"
        self.live.update(self._view())

    def _view(self) -> Group:
        return Group(self._table(), self.answer)

    def _table(self) -> Table:
        table = Table.grid(padding=(0, 1))
        for node, state in self.states.items():
            table.add_row(_MARKS[state], node, f"[dim]{self.notes.get(node, '')}[/]")
        return table


def stderr_console() -> Console:
    return Console(file=sys.stderr)
