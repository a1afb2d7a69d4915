"""The figures the reliability suite measures: one shape for the tests (assert every figure holds) and
for `bench/reliability.py` (print them as one table).

Each group module in this folder (model_faults, other_faults, bad_input, guardrails, load, tenancy)
has `measure(bench: bool = False) -> list[Figure]`. With `bench=False` it runs the bounded CI sizes
(seconds to a minute); with `bench=True` the report's sizes (more fuzz cases, a 10-minute soak).
The group's tests call it and assert `ok`; the benchmark prints `value`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Figure:
    group: str  # e.g. "1 model faults"
    name: str  # what was measured, e.g. "terminal events"
    value: str  # the figure as a sentence, e.g. "23/23 fault kinds ended with exactly one terminal event"
    ok: bool  # the figure meets its target
    failures: list[str] = field(default_factory=list)  # what fell short, for the assertion message

    def __str__(self) -> str:
        tail = "" if self.ok else "  FAILED: " + "; ".join(self.failures[:10])
        return f"[{self.group}] {self.name}: {self.value}{tail}"


def ratio(group: str, name: str, passed: int, total: int, what: str, failures: Iterable[str] = ()) -> Figure:
    """A count figure that holds only at total/total: "23/23 fault kinds ended with ..."."""
    failed = list(failures)
    return Figure(group, name, f"{passed}/{total} {what}", passed == total and total > 0 and not failed, failed)


def assert_figures(figures: list[Figure]) -> None:
    """Fail with every figure that fell short, not just the first."""
    assert figures, "the group measured nothing"
    bad = [str(f) for f in figures if not f.ok]
    assert not bad, "\n".join(bad)
