"""Run test cases: each in its own copy of the flow's plan (overrides and cassette wrapped around its
nodes), concurrently up to ``jobs``, each checked against its expectations.

Modes: *replay* (default) answers every model and retrieval call from the case's cassette, offline;
*record* runs the real models and collections and writes the cassette; *live* (``live: true`` on a
case, or ``rill test --live``) runs the real ones and neither reads nor writes a cassette.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Literal

from rillflow.runtime.cassette import Cassette, CassetteError, RecordedNode
from rillflow.runtime.expect import Checker, Outcome
from rillflow.runtime.inputs import InputError
from rillflow.runtime.overrides import OverriddenNode
from rillflow.runtime.plan import Plan
from rillflow.runtime.testfile import TestCase, TestFile

Status = Literal["passed", "failed", "error", "skipped"]


@dataclass(frozen=True)
class Options:
    record: bool = False
    live: bool = False
    speed: float = 1.0  # replay pace: 2.0 replays twice as fast as recorded
    jobs: int = 1
    keyword: str | None = None  # -k: cases whose "file::case" name contains it (case-insensitive)


@dataclass
class Check:
    label: str
    passed: bool
    message: str | None = None


@dataclass
class CaseResult:
    file: str
    flow: str
    case: str
    status: Status
    mode: str
    duration: float
    checks: list[Check] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # errors that are not an expectation (cassette, inputs, prepare)
    outcome: dict[str, Any] | None = None
    line: int = 1

    @property
    def failures(self) -> list[str]:
        return [*self.problems, *(f"{c.label}: {c.message}" for c in self.checks if not c.passed)]

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "flow": self.flow, "case": self.case, "status": self.status, "mode": self.mode,
                "duration_s": round(self.duration, 4), "failures": self.failures,
                "checks": [dataclasses.asdict(c) for c in self.checks], "outcome": self.outcome}


def case_plan(plan: Plan, tc: TestCase, cassette: Cassette | None) -> Plan:
    """The case's own copy of the plan: overridden nodes wrapped, recorded types wired to the cassette."""
    nodes = {}
    for node_id, pn in plan.nodes.items():
        node = pn.node
        override = tc.case.overrides.get(node_id)
        if cassette is not None and getattr(node, "records", False) and not (override is not None and override.replaces):
            node = RecordedNode(node, cassette)
        if override is not None:
            node = OverriddenNode(dataclasses.replace(pn, node=node), override)
        nodes[node_id] = pn if node is pn.node else dataclasses.replace(pn, node=node)
    return dataclasses.replace(plan, nodes=nodes, state={})


class Runner:
    """Runs the cases of several test files; one per process (it holds the per-flow ingest state)."""

    def __init__(self, options: Options, on_result: Callable[[CaseResult], None] | None = None) -> None:
        self.options = options
        self.on_result = on_result
        self._ingested: dict[str, asyncio.Lock] = {}
        self._ready: set[str] = set()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None  # made on first use: caches of cases that repeat

    def selected(self, files: list[TestFile]) -> list[tuple[TestFile, TestCase]]:
        keyword = (self.options.keyword or "").casefold()
        return [(tf, tc) for tf in files for tc in tf.cases if keyword in f"{tf.path.name}::{tc.name}".casefold()]

    async def run(self, files: list[TestFile]) -> list[CaseResult]:
        cases = self.selected(files)
        gate = asyncio.Semaphore(max(1, self.options.jobs))

        async def one(tf: TestFile, tc: TestCase) -> CaseResult:
            async with gate:
                result = await self.run_case(tf, tc)
            if self.on_result is not None:
                self.on_result(result)
            return result

        try:
            return list(await asyncio.gather(*(one(tf, tc) for tf, tc in cases)))
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    def mode_of(self, tc: TestCase) -> str:
        return "live" if tc.case.live or self.options.live else "record" if self.options.record else "replay"

    async def run_case(self, tf: TestFile, tc: TestCase) -> CaseResult:
        mode = self.mode_of(tc)
        result = CaseResult(str(tf.path), tf.plan.name, tc.name, "passed", mode, 0.0, line=tc.line)
        if tc.case.skip is not None:
            result.status, result.problems = "skipped", [tc.case.skip]
            return result
        started = perf_counter()
        try:
            await asyncio.wait_for(self._run_case(tf, tc, mode, result), tc.case.timeout)
        except asyncio.TimeoutError:
            result.problems.append(f"the case did not finish within its timeout of {tc.case.timeout:g}s")
        except CaseError as exc:
            result.problems.append(str(exc))
        result.duration = perf_counter() - started
        _redact_messages(result, tf.plan)
        if result.problems:
            result.status = "error" if not result.checks else "failed"
        elif not all(c.passed for c in result.checks):
            result.status = "failed"
        return result

    async def _run_case(self, tf: TestFile, tc: TestCase, mode: str, result: CaseResult) -> None:
        from rillflow.runtime.sync import collect

        cassette = None
        if mode != "live":
            path = tf.cassette_dir / f"{tc.slug}.json"
            try:
                cassette = Cassette.open(path, "record" if mode == "record" else "replay", self.options.speed)
            except CassetteError as exc:
                raise CaseError(str(exc)) from None
        plan = case_plan(tf.plan, tc, cassette)
        if mode != "replay":
            await self._ready_for_real_calls(tf.plan)
        await _prepare(plan)
        shared = tc.case.repeat > 1 or bool(tc.case.warm_up)
        cache = self._cache(tc) if tc.case.cache or (tc.case.cache is None and shared) else None
        runs = [{**tc.inputs, **warm} for warm in tc.case.warm_up] + [dict(tc.inputs)] * tc.case.repeat
        run = None
        for inputs in runs:
            try:
                run = await collect(plan, inputs, cache=cache)
            except InputError as exc:
                raise CaseError(str(exc)) from None
        assert run is not None
        outcome = Outcome.of(run.events)
        result.outcome = outcome.summary()
        if cassette is not None:
            result.problems.extend(cassette.problems)
        checker = Checker(tf.plan, embed=_embed(tf), judge=self._judge(tf, tc, cassette))
        for expectation in tc.expect:
            message = await checker.check(expectation, outcome)
            result.checks.append(Check(expectation.label(), message is None, message))
        if cassette is not None and mode == "record":
            self._save(cassette, tc, tf)

    def _save(self, cassette: Cassette, tc: TestCase, tf: TestFile) -> None:
        if cassette.calls:
            cassette.save(tc.name, tf.plan.name)
        elif cassette.path.exists():
            cassette.path.unlink()  # the case makes no call any more (an override replaced it): no stale cassette

    async def _ready_for_real_calls(self, plan: Plan) -> None:
        """Fill the flow's collections from their ``sources:`` once per run of ``rill test`` (incremental)."""
        if plan.path in self._ready:
            return
        lock = self._ingested.setdefault(plan.path, asyncio.Lock())
        async with lock:
            if plan.path in self._ready:
                return
            from rillflow.runtime.sources import SourcesError, ingest_sources

            try:
                await asyncio.to_thread(ingest_sources, plan, lambda line: None)
            except SourcesError as exc:
                raise CaseError("; ".join(exc.lines)) from None
            self._ready.add(plan.path)

    def _cache(self, tc: TestCase) -> Any:
        from rillflow.runtime.cache_sqlite import SqliteCache
        from rillflow.runtime.caching import RunCache

        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="rill-test-")
        folder = Path(self._tmp.name) / f"{tc.slug}-{id(tc)}"
        folder.mkdir(parents=True, exist_ok=True)
        return RunCache(SqliteCache(folder / "cache.db"))

    def _judge(self, tf: TestFile, tc: TestCase, cassette: Cassette | None) -> Any:
        if tf.judge_plan is None:
            return None
        from rillflow.runtime.judge import Judge

        return Judge(tf.judge_plan, cassette, prepared=_prepare).score


def _redact_messages(result: CaseResult, plan: Plan) -> None:
    """Reports are CI artifacts, read more widely than the flow's environment: the flow's ``${env.*}``
    values, secret-named environment values and credentials never reach them (reliability notes AU-07).
    Personal data stays: it is the test file's own data, and a failed ``not_contains: jane@example.com``
    must still say what it found."""
    from rillflow.runtime.redact import Redactor

    redactor = Redactor(plan.secrets, pii=False, max_chars=100_000)
    result.problems = [redactor.redact_text(p) for p in result.problems]
    for check in result.checks:
        if check.message is not None:
            check.message = redactor.redact_text(check.message)


class CaseError(Exception):
    """The case could not be run as written (cassette unreadable, inputs invalid, a model missing)."""


async def _prepare(plan: Plan) -> None:
    from rillflow.runtime.prepare import PrepareError, prepare

    try:
        await prepare(plan)
    except PrepareError as exc:
        raise CaseError("; ".join(f"node '{node}': {message}" for node, message in exc.problems.items())) from None


def _embed(tf: TestFile) -> Callable[[str, list[str]], Awaitable[list[list[float]]]]:
    async def embed(name: str, texts: list[str]) -> list[list[float]]:
        from rillflow.nodes.embedder import load_embedder

        return await asyncio.to_thread(lambda: load_embedder(name, str(tf.path.parent)).embed(texts))  # loads once, off the loop

    return embed
