"""What a run did (``Outcome``, read from its events) and the check of one expectation against it.

Every failed check returns one message that says what was expected, what happened instead and which
node produced the value, so a red CI line is enough to start fixing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rillflow.runtime.events import Event
from rillflow.runtime.plan import Plan
from rillflow.runtime.refs import Interp, Ref
from rillflow.runtime.testfile import Expectation

SHOWN = 240  # characters of an actual value quoted in a message
_CITATION = re.compile(r"\[(\d{1,3})\]")


@dataclass
class Outcome:
    """One run, as the assertions see it."""

    status: str  # ok | responded | failed | cancelled
    terminal: str  # run_finished | run_failed
    outputs: dict[str, Any]
    error: dict[str, Any] | None
    latency: float  # seconds to the terminal event
    first_chunk: dict[str, float]  # flow output -> seconds to its first chunk
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    finished: set[str] = field(default_factory=set)
    skipped: dict[str, str] = field(default_factory=dict)  # node -> reason
    failed: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> error
    fallbacks: dict[str, str] = field(default_factory=dict)  # failed node -> its stand-in
    cache_hits: dict[str, str] = field(default_factory=dict)  # node -> tier
    flags: list[tuple[str, str, str]] = field(default_factory=list)  # (node, check, action)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @classmethod
    def of(cls, events: list[Event]) -> Outcome:
        last = events[-1]
        finished = last.type == "run_finished"
        outcome = cls(status=last.data["status"] if finished else ("cancelled" if last.data["error"]["kind"] == "cancelled" else "failed"),
                      terminal=last.type, outputs=last.data.get("outputs", {}) if finished else {},
                      error=None if finished else last.data["error"], latency=last.ts, first_chunk={})
        for event in events:
            outcome._note(event)
        return outcome

    def _note(self, event: Event) -> None:
        kind, node, data = event.type, event.node or "", event.data
        if kind == "chunk":
            self.first_chunk.setdefault(data["output"], event.ts)
        elif kind in ("node_finished", "node_retry"):
            usage = data.get("usage") or {}
            self.input_tokens += usage.get("input_tokens") or 0
            self.output_tokens += usage.get("output_tokens") or 0
            self.cost += usage.get("cost") or 0.0
            if kind == "node_finished":
                self.finished.add(node)
        elif kind == "node_skipped":
            self.skipped[node] = data.get("reason", "")
        elif kind == "node_failed":
            self.failed[node] = data["error"]
        elif kind == "node_fallback":
            self.fallbacks[node] = data["to"]
            self.failed.setdefault(node, data["error"])
        elif kind == "cache_hit":
            self.cache_hits[node] = data.get("tier", "exact")
        elif kind == "guardrail_flagged":
            self.flags.append((node, data.get("check", ""), data.get("action", "")))

    def summary(self) -> dict[str, Any]:
        return {"status": self.status, "latency_s": round(self.latency, 4),
                "ttfc_s": round(min(self.first_chunk.values()), 4) if self.first_chunk else None,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens, "cost": round(self.cost, 8)}


Judge = Callable[[str, str], Awaitable[tuple[float, str]]]  # (criteria, answer) -> (score 0..1, reason)
Embed = Callable[[str, list[str]], Awaitable[list[list[float]]]]  # (embedder name, texts) -> vectors


@dataclass
class Checker:
    plan: Plan
    embed: Embed | None = None
    judge: Judge | None = None

    async def check(self, e: Expectation, outcome: Outcome) -> str | None:
        """None when ``e`` holds, else the failure message."""
        name = e.name
        if name in ("ran", "skipped", "failed", "fell_back", "cache_hit", "flagged"):
            held, expected, actual = self._behaviour(e, outcome)
            if held != e.negate:
                return None
            return f"expected {'not ' if e.negate else ''}{expected}; actual: {actual}"
        if name == "terminal":
            return self._terminal(e, outcome)
        if name.startswith("max_"):
            return self._budget(e, outcome)
        return await self._output_check(e, outcome)

    # -- outputs -------------------------------------------------------------------------------------

    def producer(self, output: str) -> str | None:
        value = self.plan.outputs.get(output)
        refs = [value] if isinstance(value, Ref) else [p for p in value.parts if isinstance(p, Ref)] if isinstance(value, Interp) else []
        for ref in refs:
            root = ref.alternatives[0].root
            if root in self.plan.nodes:
                return root
        return None

    async def _output_check(self, e: Expectation, outcome: Outcome) -> str | None:
        output = e.output or next(iter(self.plan.outputs))
        node = self.producer(output)
        subject = f"output '{output}'" + (f" (node '{node}')" if node else "")
        if output not in outcome.outputs:
            why = (f"the run failed at node '{outcome.error.get('node')}' ({outcome.error['kind']}: {outcome.error['message']})"
                   if outcome.error else "the run produced no such output")
            return f"expected {subject} for '{e.name}'; actual: no output: {why}"
        value = outcome.outputs[output]
        problem = await self._value_check(e, value, outcome)
        return None if problem is None else f"{subject}: {problem}"

    async def _value_check(self, e: Expectation, value: Any, outcome: Outcome) -> str | None:  # noqa: C901 - one branch per assertion
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
        def fold(s: str) -> str:
            return s.casefold() if e.ignore_case else s

        if e.equals is not None:
            same = fold(value) == fold(e.equals) if isinstance(value, str) and isinstance(e.equals, str) else value == e.equals
            return None if same else f"expected {_show(e.equals)}; actual: {_show(value)}"
        if e.contains is not None:
            missing = [s for s in _strings(e.contains) if fold(s) not in fold(text)]
            return None if not missing else f"expected to contain {', '.join(map(_show, missing))}; actual: {_show(text)}"
        if e.not_contains is not None:
            found = [s for s in _strings(e.not_contains) if fold(s) in fold(text)]
            return None if not found else f"expected not to contain {', '.join(map(_show, found))}; actual: {_show(text)}"
        if e.regex is not None:
            pattern = re.compile(e.regex, re.IGNORECASE if e.ignore_case else 0)
            return None if pattern.search(text) else f"expected to match /{e.regex}/; actual: {_show(text)}"
        if e.json_schema is not None:
            return _schema_problem(e.json_schema, value)
        if e.jsonpath is not None:
            return _jsonpath_problem(e, value)
        if e.similar_to is not None:
            return await self._similarity(e, text)
        if e.citations is not None:
            return _citations_problem(e, text, outcome.outputs.get(e.sources))
        if e.judge is not None:
            if self.judge is None:
                return "expected a judge score, but no judge model is configured"
            score, reason = await self.judge(e.judge, text)
            return None if score >= e.min_score else f"expected a judge score ≥ {e.min_score:.2f} for {_show(e.judge)}; actual: {score:.2f} ({reason})"
        raise AssertionError(f"unhandled assertion {e.name}")

    async def _similarity(self, e: Expectation, text: str) -> str | None:
        if self.embed is None:
            return "expected an embedding similarity, but no embedder is available"
        a, b = await self.embed(e.embedder, [text, e.similar_to or ""])
        score = sum(x * y for x, y in zip(a, b, strict=True)) / ((sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5) or 1.0)
        if score >= e.min_similarity:
            return None
        return f"expected similarity ≥ {e.min_similarity:.2f} to {_show(e.similar_to)}; actual: {score:.2f} for {_show(text)}"

    # -- behaviour -----------------------------------------------------------------------------------

    def _behaviour(self, e: Expectation, o: Outcome) -> tuple[bool, str, str]:
        """(held, what was expected, what happened to the node)."""
        node = str(getattr(e, e.name))
        actual = _node_story(node, o)
        if e.name == "ran":
            return node in o.finished, f"node '{node}' to run", actual
        if e.name == "skipped":
            return node in o.skipped, f"node '{node}' to be skipped", actual
        if e.name == "failed":
            error = o.failed.get(node)
            held = error is not None and (e.kind is None or error.get("kind") == e.kind)
            return held, f"node '{node}' to fail" + (f" with kind '{e.kind}'" if e.kind else ""), actual
        if e.name == "fell_back":
            to = o.fallbacks.get(node)
            held = to is not None and (e.to is None or to == e.to)
            return held, f"node '{node}' to fall back" + (f" to '{e.to}'" if e.to else ""), actual
        if e.name == "cache_hit":
            tier = o.cache_hits.get(node)
            held = tier is not None and (e.tier is None or tier == e.tier)
            return held, f"node '{node}' to hit the cache" + (f" ({e.tier} tier)" if e.tier else ""), actual
        flags = [(check, action) for n, check, action in o.flags if n == node and action != "repair"]
        held = any(e.check is None or check == e.check for check, _ in flags)
        actual = f"flagged by {', '.join(f'{c} ({a})' for c, a in flags)}" if flags else f"no flag from '{node}' ({actual})"
        return held, f"guardrail '{node}' to flag" + (f" with check '{e.check}'" if e.check else ""), actual

    def _terminal(self, e: Expectation, o: Outcome) -> str | None:
        error = o.error or {}
        held = o.terminal == e.terminal and (e.status is None or o.status == e.status) and (e.kind is None or error.get("kind") == e.kind)
        if held:
            return None
        expected = str(e.terminal) + (f" (status {e.status})" if e.status else "") + (f" (kind {e.kind})" if e.kind else "")
        actual = (f"run_finished (status {o.status})" if o.terminal == "run_finished"
                  else f"run_failed ({error.get('kind')}: {error.get('message')}" + (f", at node '{error['node']}')" if error.get("node") else ")"))
        return f"expected the run to end with {expected}; actual: {actual}"

    def _budget(self, e: Expectation, o: Outcome) -> str | None:
        if e.max_latency is not None:
            return None if o.latency <= e.max_latency else f"expected latency ≤ {e.max_latency:.3f}s; actual: {o.latency:.3f}s"
        if e.max_ttfc is not None:
            firsts = [o.first_chunk[e.output]] if e.output in o.first_chunk else list(o.first_chunk.values()) if e.output is None else []
            if not firsts:
                return f"expected a first chunk{f' of output {e.output!r}' if e.output else ''} within {e.max_ttfc:.3f}s; actual: no chunk streamed"
            first = min(firsts)
            return None if first <= e.max_ttfc else f"expected the first chunk within {e.max_ttfc:.3f}s; actual: {first:.3f}s"
        if e.max_tokens is not None:
            return None if o.tokens <= e.max_tokens else (f"expected ≤ {e.max_tokens} tokens; actual: {o.tokens} "
                                                          f"({o.input_tokens} in + {o.output_tokens} out)")
        if e.max_output_tokens is not None:
            return None if o.output_tokens <= e.max_output_tokens else f"expected ≤ {e.max_output_tokens} output tokens; actual: {o.output_tokens}"
        assert e.max_cost is not None
        return None if o.cost <= e.max_cost else f"expected cost ≤ {e.max_cost:g}; actual: {o.cost:g}"


def _node_story(node: str, o: Outcome) -> str:
    if node in o.fallbacks:
        return f"node '{node}' failed ({o.failed[node].get('kind')}) and fell back to '{o.fallbacks[node]}'"
    if node in o.failed:
        error = o.failed[node]
        return f"node '{node}' failed ({error.get('kind')}: {error.get('message')})"
    if node in o.skipped:
        return f"node '{node}' was skipped ({o.skipped[node]})" if o.skipped[node] else f"node '{node}' was skipped"
    if node in o.cache_hits:
        return f"node '{node}' was served from the cache ({o.cache_hits[node]})"
    if node in o.finished:
        return f"node '{node}' ran"
    return f"node '{node}' never ran"


def _strings(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return repr(text if len(text) <= SHOWN else text[:SHOWN] + "…")


def _as_json(value: Any) -> Any:
    """A value, or the JSON a text holds (a model's structured answer arrives as text)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _schema_problem(schema: dict[str, Any], value: Any) -> str | None:
    from jsonschema import Draft202012Validator

    data = _as_json(value)
    errors = sorted(Draft202012Validator(schema).iter_errors(data), key=lambda err: list(err.absolute_path))
    if not errors:
        return None
    first = errors[0]
    where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first.absolute_path)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"expected to satisfy the JSON Schema; actual: at {where}: {first.message}{more}; value: {_show(data)}"


def _jsonpath_problem(e: Expectation, value: Any) -> str | None:
    from jsonpath_ng import parse  # type: ignore[import-untyped]

    data = _as_json(value)
    matches = [m.value for m in parse(e.jsonpath).find(data)]
    if not matches:
        return f"expected {e.jsonpath} to match; actual: no match in {_show(data)}"
    if e.value is None or matches[0] == e.value:
        return None
    return f"expected {e.jsonpath} to be {_show(e.value)}; actual: {_show(matches[0])}"


def _citations_problem(e: Expectation, text: str, sources: Any) -> str | None:
    markers = {str(s.get("marker")) for s in sources or [] if isinstance(s, dict)} if isinstance(sources, list) else set()
    cited = [f"[{n}]" for n in dict.fromkeys(_CITATION.findall(text))]
    valid = [c for c in cited if c in markers]
    invalid = [c for c in cited if c not in markers]
    least = 1 if e.citations is True else int(e.citations or 0)
    if invalid:
        return f"expected citations of the {len(markers)} passages in '{e.sources}'; actual: cites {', '.join(invalid)}, which no passage has"
    if len(valid) < least:
        return (f"expected at least {least} citation{'s' if least != 1 else ''} like [1] of the {len(markers)} passages in '{e.sources}'; "
                f"actual: {len(valid)} in {_show(text)}")
    return None
