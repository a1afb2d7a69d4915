"""Flow test files (``NAME.tests.yaml``): what a case says, validated with ``file:line:col`` like flows.

A test file names its flow (default: ``NAME.yaml`` beside ``NAME.tests.yaml``) and lists cases. A case
has inputs, optional per-node overrides (a fixed output, fixed chunks, a forced failure, a delay) and
expectations. Expectations are one flat model with exactly one assertion key each, so a typo gets a
did-you-mean and a misplaced modifier an exact position, instead of the noise of a union of models.
Everything that can be checked before running is checked here: node, output and input names against
the compiled flow, dataset files, the judge's configuration.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rillflow.runtime.errors import ERROR_KINDS, FlowError, suggest
from rillflow.runtime.plan import Plan
from rillflow.runtime.policies import Duration
from rillflow.runtime.yaml_source import Loc, SourceMap, load_yaml_file

ErrorKind = Literal[ERROR_KINDS]  # type: ignore[valid-type]  # the one list of kinds, in errors.py
TEST_SUFFIXES = (".tests.yaml", ".tests.yml")
#: Keys of which an expectation has exactly one: what it asserts. The others are its modifiers.
OUTPUT_ASSERTIONS = ("equals", "contains", "not_contains", "regex", "json_schema", "jsonpath", "similar_to", "citations", "judge")
BEHAVIOUR_ASSERTIONS = ("ran", "skipped", "failed", "fell_back", "cache_hit", "flagged", "terminal")
BUDGET_ASSERTIONS = ("max_latency", "max_ttfc", "max_tokens", "max_output_tokens", "max_cost")
ASSERTIONS = OUTPUT_ASSERTIONS + BEHAVIOUR_ASSERTIONS + BUDGET_ASSERTIONS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Fail(_Strict):
    kind: ErrorKind = Field(description="The error kind the node fails with; retry and fallback policies match on it.")
    message: str = Field("failed by a test override", description="The error message.")
    times: int | None = Field(None, ge=1, description="Fail only the first N attempts, then run normally (tests retries).")


class Override(_Strict):
    """Replace what one node does in a case; the node's policies (retry, fallback, on_fail) still apply."""

    output: Any = Field(None, description="Fixed outputs: a mapping of output fields, or one value for the node's main field.")
    chunks: list[str] | None = Field(None, description="Fixed chunks of the node's streamed field, streamed one by one.")
    fail: ErrorKind | Fail | None = Field(None, description="Fail with this error kind (or {kind, message, times}).")
    delay: Duration | None = Field(None, description="Wait this long before the node runs (or fails), e.g. 2s.")

    @model_validator(mode="after")
    def _one_behaviour(self) -> Override:
        given = [name for name in ("output", "chunks", "fail") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of output, chunks and fail, not {' and '.join(given)}")
        if not given and self.delay is None:
            raise ValueError("an override needs output, chunks, fail or delay")
        return self

    @property
    def failure(self) -> Fail | None:
        return Fail(kind=self.fail) if isinstance(self.fail, str) else self.fail

    @property
    def replaces(self) -> bool:
        """Whether the node itself never runs (no model loaded, nothing recorded)."""
        return self.output is not None or self.chunks is not None or (self.failure is not None and self.failure.times is None)


class Expectation(_Strict):
    """One assertion (exactly one of the assertion keys) with its modifiers."""

    # outputs
    output: str | None = Field(None, description="The flow output an output assertion reads (default: the first declared).")
    equals: Any = Field(None, description="The output equals this value exactly.")
    contains: str | list[str] | None = Field(None, description="The output (text, or JSON text of a value) contains each string.")
    not_contains: str | list[str] | None = Field(None, description="The output contains none of these strings.")
    ignore_case: bool = Field(False, description="contains / not_contains / equals of text ignore case.")
    regex: str | None = Field(None, description="The output matches this regular expression (re.search).")
    json_schema: dict[str, Any] | None = Field(None, description="The output (or the JSON it holds) satisfies this JSON Schema.")
    jsonpath: str | None = Field(None, description="A JSONPath into the output; with `value`, its first match equals it.")
    value: Any = Field(None, description="With jsonpath: the value the path must hold.")
    similar_to: str | None = Field(None, description="A reference answer the output must be similar to (embedding cosine).")
    min_similarity: float = Field(0.7, ge=-1, le=1, description="With similar_to: the least cosine similarity.")
    embedder: str = Field("all-MiniLM-L6-v2", description="With similar_to: the sentence-transformers model.")
    citations: bool | int | None = Field(None, description="true (or a least count): the answer cites [n] passages that exist in `sources`.")
    sources: str = Field("sources", description="With citations: the output holding the cited passages.")
    judge: str | None = Field(None, description="Criteria a judge model scores the output against (needs `judge:` in the file).")
    min_score: float = Field(0.7, ge=0, le=1, description="With judge: the least score (0 to 1).")
    # behaviour
    ran: str | None = Field(None, description="This node finished (it ran, with or without retries).")
    skipped: str | None = Field(None, description="This node was skipped (its `when` was false or what it needs was skipped).")
    failed: str | None = Field(None, description="This node failed (optionally with error `kind`).")
    fell_back: str | None = Field(None, description="This node failed and its fallback stood in (optionally `to` a node).")
    cache_hit: str | None = Field(None, description="This node's outputs came from the cache (optionally of `tier`).")
    flagged: str | None = Field(None, description="This guardrail node flagged (optionally by `check`).")
    terminal: Literal["run_finished", "run_failed"] | None = Field(None, description="The event the run ended with.")
    kind: ErrorKind | None = Field(None, description="With failed / terminal: the error kind.")
    to: str | None = Field(None, description="With fell_back: the node that stood in.")
    tier: Literal["exact", "semantic", "offline", "resume"] | None = Field(None, description="With cache_hit: the cache tier.")
    check: str | None = Field(None, description="With flagged: the guardrail check.")
    status: Literal["ok", "responded"] | None = Field(None, description="With terminal: run_finished: ok, or responded (on_fail).")
    negate: bool = Field(False, alias="not", description="true inverts a behaviour assertion (e.g. the node did not fall back).")
    # budgets
    max_latency: Duration | None = Field(None, description="The run ends within this time.")
    max_ttfc: Duration | None = Field(None, description="The first chunk of any output (or of `output`) arrives within this time.")
    max_tokens: int | None = Field(None, ge=0, description="Input plus output tokens of every model call stay within this.")
    max_output_tokens: int | None = Field(None, ge=0, description="Output tokens of every model call stay within this.")
    max_cost: float | None = Field(None, ge=0, description="The run's cost (from the models' prices) stays within this.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _exactly_one(self) -> Expectation:
        given = self.assertions()
        if len(given) != 1:
            raise ValueError(f"an expectation asserts exactly one of {', '.join(ASSERTIONS)}" if not given
                             else f"one assertion per expectation, not {' and '.join(given)}: split it into two list items")
        if self.negate and given[0] not in BEHAVIOUR_ASSERTIONS[:-1]:
            raise ValueError("'not' applies to ran, skipped, failed, fell_back, cache_hit and flagged")
        return self

    def assertions(self) -> list[str]:
        return [name for name in ASSERTIONS if getattr(self, name) is not None and getattr(self, name) is not False]

    @property
    def name(self) -> str:
        return self.assertions()[0]

    def label(self) -> str:
        """A short stable name for reports (`contains`, `ran:search`, `max_latency`)."""
        value = getattr(self, self.name)
        subject = value if self.name in BEHAVIOUR_ASSERTIONS and isinstance(value, str) else self.output
        return f"{'not ' if self.negate else ''}{self.name}" + (f":{subject}" if subject else "")


class JudgeConfig(_Strict):
    model: dict[str, Any] = Field(description="The judge model, as in a flow's `models:` (llama_cpp or openai).")
    max_tokens: int = Field(200, ge=16, le=4096)


class Case(_Strict):
    name: str = Field(min_length=1, max_length=200)
    inputs: dict[str, Any] = Field(default_factory=dict, description="The flow's inputs.")
    overrides: dict[str, Override] = Field(default_factory=dict, description="Node id -> what it does instead.")
    expect: list[Expectation] = Field(default_factory=list)
    cases_from: str | None = Field(None, description="A .jsonl or .csv file: one case per row (inputs from its columns).")
    live: bool = Field(False, description="Always run against the real models, never a cassette.")
    repeat: int = Field(1, ge=1, le=10, description="Run this many times back to back; expectations apply to the last run.")
    cache: bool | None = Field(None, description="Give the runs a fresh cache (default: when repeat > 1 or with warm_up).")
    warm_up: list[dict[str, Any]] = Field(default_factory=list, max_length=10,
                                          description="Inputs of runs made first on the same cache, unchecked (e.g. a close question before a semantic cache hit).")
    skip: str | None = Field(None, description="Do not run this case; the reason is reported.")
    timeout: Duration = Field(600.0, description="The whole case's deadline.")

    @field_validator("cases_from")
    @classmethod
    def _dataset_kind(cls, value: str | None) -> str | None:
        if value is not None and not value.endswith((".jsonl", ".csv")):
            raise ValueError("cases_from takes a .jsonl or .csv file")
        return value


class TestSpec(_Strict):
    version: Literal[1] = 1
    flow: str | None = Field(None, description="The flow file, relative to this file (default: NAME.yaml for NAME.tests.yaml).")
    judge: JudgeConfig | None = None
    cases: list[Case] = Field(min_length=1)


@dataclass(frozen=True)
class TestCase:
    """One case to run: a file's case, or one row of its dataset (``row`` holds the row's fields)."""

    name: str
    case: Case
    inputs: dict[str, Any]
    expect: tuple[Expectation, ...]
    row: dict[str, Any] | None = None
    line: int = 1  # where the case starts in its file

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_" else "-" for c in self.name.lower()).strip("-")[:80] or "case"


@dataclass
class TestFile:
    path: Path
    spec: TestSpec
    plan: Plan
    cases: list[TestCase] = field(default_factory=list)
    judge_plan: Plan | None = None

    @property
    def cassette_dir(self) -> Path:
        """Cassettes sit beside the test file: ``NAME.cassettes/CASE.json``, one reviewable file per case."""
        return self.path.with_name(_stem(self.path) + ".cassettes")


def _stem(path: Path) -> str:
    for suffix in TEST_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def is_test_file(path: Path) -> bool:
    return path.name.endswith(TEST_SUFFIXES)


def test_files(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Expand folders into their ``*.tests.yaml`` files; a file given by name is taken as is."""
    found: list[Path] = []
    missing: list[str] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*.tests.y*ml") if is_test_file(p)))
        elif path.is_file():
            found.append(path)
        else:
            missing.append(f"{path}: error: no such file or folder")
    return found, missing


def load_tests(path: str | Path) -> TestFile:
    """Load, validate and expand one test file; raise FlowError with every problem, at its position."""
    from rillflow.runtime.compiler import load_flow
    from rillflow.runtime.pydantic_errors import map_validation_error
    from rillflow.runtime.validate import Collector

    path = Path(path)
    data, smap = load_yaml_file(path)
    out = Collector(smap, data)
    if not isinstance(data, dict):
        raise FlowError([smap.diag((), "T001", "a test file is a mapping with 'cases:' (and optionally 'flow:' and 'judge:')")])
    try:
        spec = TestSpec.model_validate(data)
    except ValidationError as exc:
        map_validation_error(exc, (), data, out, root=TestSpec)
        raise FlowError(out.items) from None
    flow_path = path.parent / (spec.flow or _stem(path) + ".yaml")
    if not flow_path.is_file():
        where = ("flow",) if spec.flow else ()
        raise FlowError([smap.diag(where, "T002", f"flow file '{flow_path}' does not exist: name it with 'flow: FILE.yaml'", at_key=bool(spec.flow))])
    plan = load_flow(flow_path)  # its own diagnostics, at its own positions
    tests = TestFile(path, spec, plan)
    _check(tests, data, smap, out)
    if spec.judge is not None:
        from rillflow.runtime.judge import compile_judge

        try:
            tests.judge_plan = compile_judge(spec.judge, path)
        except FlowError as exc:
            for diag in exc.diagnostics:
                out.at(("judge", "model"), "T050", f"judge model: {diag.message}")
    if out.has_errors:
        raise FlowError(out.items)
    return tests


def _check(tests: TestFile, data: dict[str, Any], smap: SourceMap, out: Any) -> None:
    plan, spec = tests.plan, tests.spec
    names: dict[str, int] = {}
    for i, case in enumerate(spec.cases):
        loc: Loc = ("cases", i)
        if case.name in names:
            out.at((*loc, "name"), "T010", f"case name '{case.name}' is used twice (also case {names[case.name] + 1}): names identify cassettes")
        names[case.name] = i
        for node_id, override in case.overrides.items():
            _check_override(plan, node_id, override, (*loc, "overrides", node_id), out)
        for j, expectation in enumerate(case.expect):
            _check_expectation(tests, expectation, (*loc, "expect", j), out)
        _check_warm_up(plan, case, loc, out)
        rows = [{}] if case.cases_from is None else _rows(tests.path.parent / case.cases_from, (*loc, "cases_from"), out)
        for k, row in enumerate(rows):
            inputs = dict(case.inputs)
            if case.cases_from is not None:
                inputs.update(row_inputs(plan, row))
            else:
                unknown = [name for name in inputs if name not in plan.inputs]
                for name in unknown:
                    out.at((*loc, "inputs", name), "T011", f"flow '{plan.name}' has no input '{name}'{suggest(name, plan.inputs)}", at_key=True)
            name = case.name if case.cases_from is None else f"{case.name}[{row.get('name') or k + 1}]"
            expect = tuple(substitute(e, row) for e in case.expect) if case.cases_from is not None else tuple(case.expect)
            tests.cases.append(TestCase(name, case, inputs, expect, row if case.cases_from is not None else None, smap.value(loc).line))


def _check_warm_up(plan: Plan, case: Case, loc: Loc, out: Any) -> None:
    for j, warm in enumerate(case.warm_up):
        for name in warm:
            if name not in plan.inputs:
                out.at((*loc, "warm_up", j, name), "T011", f"flow '{plan.name}' has no input '{name}'{suggest(name, plan.inputs)}", at_key=True)


def _check_override(plan: Plan, node_id: str, override: Override, loc: Loc, out: Any) -> None:
    pn = plan.nodes.get(node_id)
    if pn is None:
        out.at(loc, "T020", f"flow '{plan.name}' has no node '{node_id}'{suggest(node_id, plan.nodes)}", at_key=True)
        return
    if override.chunks is not None and not pn.stream_outputs:
        out.at((*loc, "chunks"), "T021", f"node '{node_id}' streams no output; give 'output:' instead", at_key=True)
    if isinstance(override.output, dict) and len(pn.outputs) > 1:
        unknown = sorted(set(override.output) - set(pn.outputs))
        if unknown:
            out.at((*loc, "output", unknown[0]), "T022", f"node '{node_id}' has no output '{unknown[0]}'{suggest(unknown[0], pn.outputs)}; "
                   f"its outputs are {', '.join(pn.outputs)}", at_key=True)


def _check_expectation(tests: TestFile, e: Expectation, loc: Loc, out: Any) -> None:
    plan = tests.plan
    if e.name in OUTPUT_ASSERTIONS or e.output is not None:
        output = e.output or next(iter(plan.outputs), None)
        if output not in plan.outputs:
            out.at((*loc, "output") if e.output else loc, "T030", f"flow '{plan.name}' has no output '{output}'{suggest(output, plan.outputs)}",
                   at_key=e.output is None)
    if e.name == "citations" and e.sources not in plan.outputs:
        out.at((*loc, "sources"), "T031", f"citations read the passages from output '{e.sources}', which flow '{plan.name}' does not have; "
               f"name it with 'sources:'")
    if e.name in BEHAVIOUR_ASSERTIONS[:-1]:
        node = getattr(e, e.name)
        if node not in plan.nodes:
            out.at((*loc, e.name), "T032", f"flow '{plan.name}' has no node '{node}'{suggest(node, plan.nodes)}")
    if e.to is not None and e.to not in plan.nodes:
        out.at((*loc, "to"), "T032", f"flow '{plan.name}' has no node '{e.to}'{suggest(e.to, plan.nodes)}")
    if e.name == "judge" and tests.spec.judge is None:
        out.at((*loc, "judge"), "T033", "a judge assertion needs a judge model: add 'judge: {model: {...}}' at the top of the test file",
               at_key=True)
    _check_syntax(e, loc, out)


def _check_syntax(e: Expectation, loc: Loc, out: Any) -> None:
    """Patterns, paths and schemas compile before anything runs."""
    if e.name == "regex":
        import re

        try:
            re.compile(e.regex or "")
        except re.error as exc:
            out.at((*loc, "regex"), "T034", f"not a regular expression: {exc}")
    if e.name == "jsonpath":
        from jsonpath_ng import parse  # type: ignore[import-untyped]
        from jsonpath_ng.exceptions import JSONPathError  # type: ignore[import-untyped]

        try:
            parse(e.jsonpath)
        except JSONPathError as exc:
            out.at((*loc, "jsonpath"), "T035", f"not a JSONPath: {exc}")
    if e.name == "json_schema":
        from jsonschema import Draft202012Validator, SchemaError

        try:
            Draft202012Validator.check_schema(e.json_schema or {})
        except SchemaError as exc:
            out.at((*loc, "json_schema"), "T036", f"not a JSON Schema: {exc.message}")


def _rows(path: Path, loc: Loc, out: Any) -> list[dict[str, Any]]:
    if not path.is_file():
        out.at(loc, "T040", f"dataset '{path}' does not exist")
        return []
    try:
        rows = list(read_dataset(path))
    except ValueError as exc:
        out.at(loc, "T041", str(exc))
        return []
    if not rows:
        out.at(loc, "T042", f"dataset '{path}' has no rows")
    return rows


def read_dataset(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a ``.jsonl`` (one JSON object per line) or ``.csv`` (a header row) file."""
    with path.open(encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            yield from csv.DictReader(f)
            return
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}:{exc.colno}: not JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}:1: each line must be a JSON object, not {type(row).__name__}")
            yield row


def row_inputs(plan: Plan, row: dict[str, Any]) -> dict[str, Any]:
    """A row's inputs: its ``inputs`` object, else its columns that name flow inputs."""
    inputs = row.get("inputs")
    if isinstance(inputs, dict):
        return inputs
    return {name: value for name, value in row.items() if name in plan.inputs}


def substitute(expectation: Expectation, row: dict[str, Any]) -> Expectation:
    """``${row.FIELD}`` in an expectation's text takes the row's value (a reference answer, an expected label)."""
    def fill(value: Any) -> Any:
        if isinstance(value, str):
            for key, cell in row.items():
                token = "${row." + key + "}"
                if value == token:
                    return cell
                value = value.replace(token, str(cell))
            return value
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    return Expectation.model_validate(fill(expectation.model_dump(by_alias=True, exclude_defaults=True)))
