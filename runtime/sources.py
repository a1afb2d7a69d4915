"""Bring a flow's collections up to date with their ``sources:`` before it runs (``rill serve`` at start-up,
``rill test --record`` and live test cases before their first run). Incremental: unchanged files are skipped."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from rillflow.runtime.plan import Plan


class SourcesError(Exception):
    """A collection could not be brought up to date; ``lines`` are what to print, one problem each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def ingest_sources(plan: Plan, say: Callable[[str], None]) -> None:
    from rillflow.runtime.errors import NodeError
    from rillflow.runtime.ingest_cli import ingest_paths

    flow_dir = Path(plan.env.flow_dir)
    for label, spec in plan.env.collections.items():
        if not spec.sources:
            continue
        say(f"ingesting {', '.join(spec.sources)} into collection '{label}'…")
        paths = [(flow_dir / source).resolve() for source in spec.sources]
        # Citations name sources relative to the folder the sources share (docs/caching.md), not the flow's
        # folder, which sources often sit beside (../docs): no absolute paths of the server reach users.
        names_from = Path(os.path.commonpath([p.parent for p in paths]))
        store = None
        try:
            summary, store = ingest_paths(paths, spec, label, flow_dir, None, names_from=names_from)
        except NodeError as exc:
            raise SourcesError([f"{plan.path}: collection '{label}': {exc.message}"]) from None
        except Exception as exc:  # bad usage (a missing source folder) or a library error: one line, no traceback
            raise SourcesError([f"{plan.path}: collection '{label}': {exc}"]) from None
        finally:
            if store is not None:
                store.close()  # a local folder's lock: retrieval opens it again in prepare
        say(summary.line())
        for source, why in summary.failed.items():
            say(f"warning: {source}: {why}")
