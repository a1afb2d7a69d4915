"""`guardrail`: check text on its way in (user input), through (retrieved text) or out (model answers).

Checks (``rillflow.nodes.guard_checks`` holds the detectors): prompt injection, invisible text, PII,
secrets, regex, blocklist, max length, JSON Schema, topic (embedding similarity) and a custom
``python`` function. Each has an action: ``block`` (the node fails with kind ``guardrail``, so its
``fallback`` or ``on_fail`` runs), ``redact`` (replace the match), ``flag`` (an event only).

On a chunk stream (reliability notes 1.2, decision 2) the mode is explicit:

* ``buffer``: text is released only after it was checked, a sentence at a time (or ``buffer_chars``
  without a sentence end), so no character of a violation reaches a consumer. A match that touches
  the end of the unreleased text may still grow ("4111 1111" + " 1111 1111"): text from its start
  is held until it is complete. Released text stays in a short context window, so a match across a
  release point is still found. Checks that need the whole text (json_schema, topic allow lists,
  python) hold everything until the stream ends.
* ``retract``: chunks pass on at once; a violation emits a ``retract`` event (the consumer drops
  what it showed) and then fails the node. Rewriting checks cannot take back text, so they are
  refused at load time (E112).

A check that raises fails closed (the node fails: kind ``guardrail``) unless ``on_error: fail_open``,
which flags the error and lets the text pass. NeMo Guardrails' parallel rails fail open on errors;
we do not, by default (reliability notes 1.2, "Trap").
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from importlib import import_module
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, model_validator

from rillflow.nodes import guard_checks as gc
from rillflow.nodes.base import (
    CheckContext,
    Chunk,
    Emit,
    FlowEnv,
    Node,
    NodeConfig,
    Output,
    OutputField,
    RunContext,
    Signal,
    Streamed,
    register,
)
from rillflow.runtime.errors import NodeError

Finding = gc.Finding


# -- configuration ---------------------------------------------------------------------------------
PiiEntity = Literal["email", "phone", "card", "iban", "ip", "ssn"]
PII_ENTITIES: tuple[PiiEntity, ...] = ("email", "phone", "card", "iban", "ip", "ssn")


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)

    name: str | None = Field(None, description="Name of the check in events and violations (default: its type).")


class PromptInjectionCheck(_Check):
    """Injection phrasings in ten languages after normalisation, also inside base64."""

    check: Literal["prompt_injection"]
    action: Literal["block", "flag"] = "block"
    decode_base64: bool = Field(True, description="Decode base64 runs and check what they say.")


class InvisibleTextCheck(_Check):
    """Zero-width characters, Unicode tags and stray variation selectors; bidi controls."""

    check: Literal["invisible_text"]
    action: Literal["block", "redact", "flag"] = Field("block", description="redact removes the characters.")
    bidi: Literal["block", "redact", "flag", "ignore"] = Field("flag", description="What bidi overrides and isolates get.")


class PiiCheck(_Check):
    """Emails, phone numbers, payment cards (Luhn), IBANs (mod 97), IP addresses, US SSNs."""

    check: Literal["pii", "pii_redact"]
    action: Literal["block", "redact", "flag"] | None = Field(None, description="Default: block for pii, redact for pii_redact.")
    entities: list[PiiEntity] = Field(default_factory=lambda: list(PII_ENTITIES), description="Which entities to look for (default: all).")


class SecretsCheck(_Check):
    """API keys and tokens, private keys, JWTs, passwords in URLs and assignments."""

    check: Literal["secrets", "secrets_redact"]
    action: Literal["block", "redact", "flag"] | None = Field(None, description="Default: block for secrets, redact for secrets_redact.")


class RegexCheck(_Check):
    check: Literal["regex"]
    patterns: list[str] = Field(min_length=1, description="Python regular expressions, matched on the normalised text.")
    action: Literal["block", "redact", "flag"] = "block"
    ignore_case: bool = True
    mask: str = Field("[REDACTED]", description="Replacement when action is redact.")


class BlocklistCheck(_Check):
    check: Literal["blocklist"]
    words: list[str] = Field(min_length=1, description="Words or phrases; matched whole, ignoring case and accents.")
    action: Literal["block", "redact", "flag"] = "block"
    mask: str = Field("[REDACTED]", description="Replacement when action is redact.")


class MaxLengthCheck(_Check):
    check: Literal["max_length"]
    chars: int = Field(ge=1, description="Most characters the text may have.")
    action: Literal["block", "flag", "truncate"] = "block"


class JsonSchemaCheck(_Check):
    check: Literal["json_schema"]
    # 'schema' would shadow BaseModel.schema: the YAML key is 'schema', the attribute 'schema_'
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON Schema the text (parsed as JSON) must satisfy.")
    action: Literal["block", "flag"] = "block"


class TopicCheck(_Check):
    check: Literal["topic"]
    allow: list[str] = Field(default_factory=list, description="Examples of on-topic text; text like none of them is off topic.")
    deny: list[str] = Field(default_factory=list, description="Examples of forbidden topics; text like one of them is denied.")
    threshold: float = Field(0.4, ge=0, le=1, description="Cosine similarity that counts as 'like' (calibrate on your examples).")
    embedder: str = Field("all-MiniLM-L6-v2", description="Sentence-transformers model: a packaged name or a folder.")
    action: Literal["block", "flag"] = "block"

    @model_validator(mode="after")
    def _some_examples(self) -> TopicCheck:
        if not self.allow and not self.deny:
            raise ValueError("give 'allow' or 'deny' examples (or both)")
        return self


class PythonCheck(_Check):
    check: Literal["python"]
    function: str = Field(description="module:function(text) -> bool or str (a violation) or None, allowed in RILL_PYTHON_ALLOW.")
    action: Literal["block", "flag"] = "block"


CheckSpec = Annotated[
    PromptInjectionCheck | InvisibleTextCheck | PiiCheck | SecretsCheck | RegexCheck | BlocklistCheck | MaxLengthCheck | JsonSchemaCheck | TopicCheck | PythonCheck,
    Field(discriminator="check"),
]
CheckName = Literal["prompt_injection", "invisible_text", "pii", "pii_redact", "secrets", "secrets_redact"]


_SPEC: TypeAdapter[Any] = TypeAdapter(CheckSpec)


#: Checks that cannot run without settings, and the setting a bare name lacks.
_NEEDS = {"regex": "patterns: [...]", "blocklist": "words: [...]", "max_length": "chars: 2000", "json_schema": "schema: {...}",
          "topic": "deny: [...]", "python": "function: module:function"}


def _expand(value: Any) -> Any:
    """`- pii` is short for `- {check: pii}`."""
    if not isinstance(value, str):
        return value
    if value in _NEEDS:
        raise ValueError(f"check '{value}' needs settings: write {{check: {value}, {_NEEDS[value]}}}")
    return {"check": value}


# -- node ------------------------------------------------------------------------------------------
@register("guardrail")
class GuardrailNode(Node):
    """Check text (or a chunk stream) with ``checks``; block, redact or flag what they find."""

    class Config(NodeConfig):
        text: Streamed[str] = Field(description="The text to check: a value, or a chunk stream checked as it arrives.")
        checks: list[Annotated[CheckSpec, BeforeValidator(_expand, json_schema_input_type=CheckName | CheckSpec)]] = Field(
            min_length=1, description="Checks in order: a name (prompt_injection, pii, ...) or {check: name, ...settings}.")
        stream: Literal["buffer", "retract"] = Field("buffer", description="On a stream: release checked text only, or pass text at once and retract it.")
        buffer_chars: int = Field(400, ge=16, le=100_000, description="Release after this many characters when no sentence ends.")
        on_error: Literal["fail_closed", "fail_open"] = Field("fail_closed", description="A check that cannot run blocks the text, or is flagged and skipped.")

    config: GuardrailNode.Config

    @classmethod
    def outputs(cls, config: Any) -> dict[str, OutputField]:
        return {
            "text": OutputField("string", stream=True, description="The checked text, redacted where a check redacts."),
            "flagged": OutputField("boolean", description="Whether any check found anything (or could not run, with fail_open)."),
            "violations": OutputField("list", description="[{check, action, detail, span?}]; details never hold the matched value."),
        }

    @classmethod
    def check(cls, config: Any, ctx: CheckContext) -> None:
        for i, spec in enumerate(config.checks):
            if isinstance(spec, _Check):
                _check_spec(config, spec, ("checks", i), ctx)

    def __init__(self, node_id: str, config: Any, flow_dir: str = ".", env: FlowEnv | None = None) -> None:
        super().__init__(node_id, config, flow_dir, env)
        self.checkers = [make_checker(spec, flow_dir) for spec in config.checks]
        self.limits = [c for c in self.checkers if isinstance(c, _MaxLength)]
        self._prepared = False

    def prepare(self) -> None:
        for checker in self.checkers:
            checker.prepare()
        self._prepared = True

    async def run(self, ctx: RunContext, inputs: dict[str, Any]) -> AsyncIterator[Emit]:
        if not self._prepared:
            await ctx.to_thread(self.prepare)
        text = inputs["text"]
        guard = Guard(self, ctx, streaming=hasattr(text, "__aiter__"))
        if hasattr(text, "__aiter__"):
            async for chunk in text:
                if self.config.stream == "retract" and chunk:
                    guard.streamed += len(chunk)
                    yield chunk
                await guard.feed(chunk)
                for emit in guard.drain():
                    yield emit
        else:
            await guard.feed("" if text is None else str(text))
        await guard.finish()
        for emit in guard.drain():
            yield emit
        yield guard.output()


def effective_action(spec: Any) -> str:
    """A check's action, with the default its name implies (pii_redact redacts, pii blocks)."""
    action = getattr(spec, "action", None)
    if action is not None:
        return str(action)
    return "redact" if spec.check.endswith("_redact") else "block"


def rewrites(spec: Any) -> bool:
    """Whether a check changes the text it passes (which a stream in retract mode cannot take back)."""
    return effective_action(spec) in ("redact", "truncate") or getattr(spec, "bidi", None) == "redact"


# -- load-time checks --------------------------------------------------------------------------------
def _check_spec(config: Any, spec: _Check, loc: tuple[str | int, ...], ctx: CheckContext) -> None:
    if config.stream == "retract" and rewrites(spec):
        name = spec.name or spec.check  # type: ignore[attr-defined]
        ctx.error(loc, "E112", f"check '{name}' rewrites text, which cannot be taken back once streamed: "
                               "use stream: buffer, or action: block or flag")
    if isinstance(spec, RegexCheck):
        for j, pattern in enumerate(spec.patterns):
            bad = regex_problem(pattern, spec.ignore_case)
            if bad is not None:
                ctx.error((*loc, "patterns", j), "E110", f"regex does not compile: {bad[0]} (at position {bad[1]})", offset=bad[1])
    elif isinstance(spec, JsonSchemaCheck):
        schema_error = schema_problem(spec.schema_)
        if schema_error is not None:
            ctx.error((*loc, "schema"), "E111", f"invalid JSON Schema: {schema_error}")
    elif isinstance(spec, PythonCheck):
        not_callable = function_problem(spec.function)
        if not_callable is not None:
            ctx.error((*loc, "function"), "E113", not_callable)


def regex_problem(pattern: str, ignore_case: bool = True) -> tuple[str, int] | None:
    """(message, position) when ``pattern`` does not compile."""
    try:
        re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        return exc.msg, exc.pos or 0
    return None


def schema_problem(schema: dict[str, Any]) -> str | None:
    """What is wrong with a JSON Schema (checked against its draft's meta-schema), or None."""
    import jsonschema  # type: ignore[import-untyped,unused-ignore]  # lazy: `rill validate` of other flows never pays for it

    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/" + "/".join(str(p) for p in exc.absolute_path)
        return f"{exc.message} (at {where})"
    return None


def function_problem(target: str) -> str | None:
    from rillflow.nodes.python import _TARGET, ALLOW_ENV, allowlist, is_allowed

    if not _TARGET.match(target):
        return f"'{target}' is not module:function (e.g. mypkg.guards:is_polite)"
    if not is_allowed(target, allowlist()):
        return f"'{target}' is not allowed: the operator must list it in {ALLOW_ENV}"
    return None


# -- checkers ------------------------------------------------------------------------------------------
class Checker:
    """One configured check, ready to run. ``spans`` finds matches inside a text window; ``segment``
    judges the text about to be released; ``whole`` judges the complete text at the end."""

    has_spans = False
    has_segment = False
    has_whole = False

    def __init__(self, spec: Any, flow_dir: str) -> None:
        self.spec = spec
        self.name: str = spec.name or spec.check
        self.action = effective_action(spec)
        self.flow_dir = flow_dir
        #: In buffer mode, nothing is released before the whole text has been judged.
        self.holds = self.has_whole

    def prepare(self) -> None:
        """Load what the check needs (blocking; once per plan)."""

    def spans(self, text: str) -> list[Finding]:
        return []

    async def segment(self, ctx: RunContext, text: str) -> list[Finding]:
        return []

    async def whole(self, ctx: RunContext, text: str) -> list[Finding]:
        return []

    def action_for(self, finding: Finding) -> str:
        return self.action

    def mask_for(self, finding: Finding) -> str:
        return str(getattr(self.spec, "mask", "[REDACTED]"))


class _Injection(Checker):
    has_spans = True

    def spans(self, text: str) -> list[Finding]:
        return gc.injection_findings(text, decode_base64=self.spec.decode_base64)


class _Invisible(Checker):
    has_spans = True

    def spans(self, text: str) -> list[Finding]:
        found = gc.invisible_findings(text)
        return [f for f in found if f.kind != "bidi" or self.spec.bidi != "ignore"]

    def action_for(self, finding: Finding) -> str:
        return str(self.spec.bidi) if finding.kind == "bidi" else self.action

    def mask_for(self, finding: Finding) -> str:
        return ""  # redacting invisible characters removes them


class _Pii(Checker):
    has_spans = True

    def spans(self, text: str) -> list[Finding]:
        return [f._replace(detail=f.kind) for f in gc.find_pii(text, self.spec.entities)]

    def mask_for(self, finding: Finding) -> str:
        return gc.LABELS[finding.kind]


class _Secrets(Checker):
    has_spans = True

    def spans(self, text: str) -> list[Finding]:
        return gc.find_secrets(text)

    def mask_for(self, finding: Finding) -> str:
        return gc.LABELS["secret"]


class _Regex(Checker):
    has_spans = True

    def __init__(self, spec: Any, flow_dir: str) -> None:
        super().__init__(spec, flow_dir)
        flags = re.IGNORECASE if spec.ignore_case else 0
        self.patterns = [re.compile(p, flags) for p in spec.patterns]

    def spans(self, text: str) -> list[Finding]:
        view = gc.normalize(text)
        return [Finding("regex", *view.span(m.start(), m.end()), f"pattern {i + 1}")
                for i, pattern in enumerate(self.patterns) for m in pattern.finditer(view.text) if m.end() > m.start()]


class _Blocklist(Checker):
    has_spans = True

    def __init__(self, spec: Any, flow_dir: str) -> None:
        super().__init__(spec, flow_dir)
        self.pattern = gc.compile_blocklist(spec.words)
        self.numbers = {" ".join(gc.fold(w).text.split()): i + 1 for i, w in reversed(list(enumerate(spec.words)))}

    def spans(self, text: str) -> list[Finding]:
        view = gc.fold(text)
        # the detail names the word by its number in the list: the words may be confidential
        return [Finding("blocklist", *view.span(m.start(), m.end()), f"word {self.numbers.get(' '.join(m.group().split()), 0)}")
                for m in self.pattern.finditer(view.text)]


class _MaxLength(Checker):
    """Judged by the guard as text arrives (it needs the running total, not a window)."""


class _JsonSchema(Checker):
    has_whole = True

    def __init__(self, spec: Any, flow_dir: str) -> None:
        super().__init__(spec, flow_dir)
        self._validator: Any = None

    async def whole(self, ctx: RunContext, text: str) -> list[Finding]:
        import jsonschema  # type: ignore[import-untyped,unused-ignore]

        if self._validator is None:
            cls = jsonschema.validators.validator_for(self.spec.schema_)
            self._validator = cls(self.spec.schema_, format_checker=cls.FORMAT_CHECKER)
        try:
            value = json.loads(_unfence(text))
        except json.JSONDecodeError as exc:
            return [Finding("json", 0, 0, f"not valid JSON (line {exc.lineno}, column {exc.colno})")]
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        if error is None:
            return []
        where = "/" + "/".join(str(p) for p in error.absolute_path)
        # the schema's words only: the instance may hold what the check protects
        return [Finding("json", 0, 0, f"{where} fails '{error.validator}': {json.dumps(error.validator_value, ensure_ascii=False)[:80]}")]


def _unfence(text: str) -> str:
    """Models wrap JSON in ```json fences; the fence is not part of the value."""
    body = text.strip()
    if body.startswith("```") and body.endswith("```") and "\n" in body:
        return body[body.index("\n") + 1 : -3]
    return body


class _Topic(Checker):
    has_segment = True
    has_whole = True

    def __init__(self, spec: Any, flow_dir: str) -> None:
        super().__init__(spec, flow_dir)
        self.holds = bool(spec.allow)  # deny is judged per released segment; allow needs the whole text
        self._embed: Callable[[list[str]], list[list[float]]] | None = None
        self._allow: list[list[float]] = []
        self._deny: list[list[float]] = []

    def prepare(self) -> None:
        if self._embed is None:
            from rillflow.nodes.embedder import load_embedder

            embedder = load_embedder(self.spec.embedder, self.flow_dir)
            self._allow = embedder.embed(self.spec.allow)
            self._deny = embedder.embed(self.spec.deny)
            self._embed = embedder.embed

    async def _vector(self, ctx: RunContext, text: str) -> list[float]:
        if self._embed is None:
            await ctx.to_thread(self.prepare)
        assert self._embed is not None
        return (await ctx.to_thread(self._embed, [text]))[0]

    async def segment(self, ctx: RunContext, text: str) -> list[Finding]:
        if not self.spec.deny or not text.strip():
            return []
        number, score = _closest(await self._vector(ctx, text), self._deny)
        if score < self.spec.threshold:
            return []
        return [Finding("topic", 0, 0, f"like denied example {number} (similarity {score:.2f})")]

    async def whole(self, ctx: RunContext, text: str) -> list[Finding]:
        if not self.spec.allow or not text.strip():
            return []
        _, score = _closest(await self._vector(ctx, text), self._allow)
        if score >= self.spec.threshold:
            return []
        return [Finding("topic", 0, 0, f"off topic (closest allowed example: similarity {score:.2f} < {self.spec.threshold:g})")]


def _closest(vector: list[float], examples: list[list[float]]) -> tuple[int, float]:
    """(1-based number, cosine similarity) of the example closest to ``vector`` (all unit length)."""
    scores = [sum(a * b for a, b in zip(vector, example, strict=True)) for example in examples]
    best = max(range(len(scores)), key=scores.__getitem__)
    return best + 1, scores[best]


class _Python(Checker):
    has_whole = True

    def __init__(self, spec: Any, flow_dir: str) -> None:
        super().__init__(spec, flow_dir)
        self._fn: Callable[[str], Any] | None = None

    def _function(self) -> Callable[[str], Any]:
        if self._fn is None:
            problem = function_problem(self.spec.function)
            if problem is not None:
                raise NodeError("config", problem)
            module, _, name = self.spec.function.partition(":")
            self._fn = getattr(import_module(module), name)
        return self._fn

    async def whole(self, ctx: RunContext, text: str) -> list[Finding]:
        fn = self._function()
        result = await fn(text) if inspect.iscoroutinefunction(fn) else await ctx.to_thread(fn, text)
        if result is None or result is False or result == "":
            return []
        return [Finding("python", 0, 0, result[:200] if isinstance(result, str) else "the check failed")]


_CHECKERS: dict[type[_Check], type[Checker]] = {
    PromptInjectionCheck: _Injection, InvisibleTextCheck: _Invisible, PiiCheck: _Pii, SecretsCheck: _Secrets, RegexCheck: _Regex,
    BlocklistCheck: _Blocklist, MaxLengthCheck: _MaxLength, JsonSchemaCheck: _JsonSchema, TopicCheck: _Topic, PythonCheck: _Python,
}


def make_checker(spec: Any, flow_dir: str) -> Checker:
    if isinstance(spec, str):
        spec = _SPEC.validate_python({"check": spec})
    return _CHECKERS[type(spec)](spec, flow_dir)


# -- the guard: one run's state ------------------------------------------------------------------------
class Hit(NamedTuple):
    """A finding with the check that made it, the action it gets, and its span in the input."""

    checker: Checker
    finding: Finding
    action: str
    span: tuple[int, int] | None = None


class Guard:
    """Checks one run's text, window by window (see the module docstring for the two modes)."""

    #: Characters of already released input kept for detection across a release point: an IBAN
    #: with spaces (42), a card (23), a phone (20) or a long email fit.
    CONTEXT = 96

    def __init__(self, node: GuardrailNode, ctx: RunContext, *, streaming: bool) -> None:
        self.node = node
        self.ctx = ctx
        config = node.config
        self.streaming = streaming  # a whole value is judged in one final round
        self.buffer = not streaming or config.stream == "buffer"
        self.buffer_chars = config.buffer_chars
        self.fail_open = config.on_error == "fail_open"
        self.holding = self.buffer and any(c.holds for c in node.checkers)
        truncating = [c for c in node.limits if c.action == "truncate"]
        self.limit = min(truncating, key=_chars) if truncating else None
        self.pending = ""  # received, not yet released
        self.context = ""  # the tail of released input
        self.offset = 0  # input position of pending[0]
        self.received: list[str] = []
        self.total = 0
        self.released: list[str] = []
        self.streamed = 0  # characters passed on unchecked (retract mode)
        self.dropping = False  # truncated: the rest of the input is read and dropped
        self.violations: list[dict[str, Any]] = []
        self.flagged = False
        self.outbox: list[Emit] = []
        self.error: NodeError | None = None
        self._over: set[int] = set()  # max_length checks already flagged

    # -- feeding ------------------------------------------------------------------------------------
    async def feed(self, chunk: str) -> None:
        if self.error is not None or not chunk:
            return
        self.received.append(chunk)
        self.total += len(chunk)
        self._check_length()
        if self.error is not None or self.dropping or self.holding:
            return  # holding: the text is joined once at the end (no quadratic concatenation)
        self.pending += chunk
        if self.streaming and gc.release_point(self.pending, self.buffer_chars):
            await self._round(final=False)

    async def finish(self) -> None:
        if self.error is not None:
            return
        if self.holding:
            self.pending = "".join(self.received)
        if self.dropping:
            await self._judge_whole()
        else:
            await self._round(final=True)

    def drain(self) -> Iterator[Emit]:
        """What to yield now; raises the block error after its events."""
        out, self.outbox = self.outbox, []
        yield from out
        if self.error is not None:
            raise self.error

    def output(self) -> Output:
        text = "".join(self.released if self.buffer else self.received)
        return Output(text=text, flagged=self.flagged, violations=self.violations)

    # -- one window -------------------------------------------------------------------------------------
    async def _round(self, final: bool) -> None:
        cut = len(self.pending) if final else gc.release_point(self.pending, self.buffer_chars)
        window = self.context + self.pending
        base = len(self.context)
        hits = self._span_hits(window, base)
        if hits is None:
            return
        end = base + cut if final else self._hold_growing(hits, len(window), base + cut, base)
        blocked = [h for h in hits if h.action == "block" and (final or h.finding.end < len(window))]
        if blocked:
            return self._block(blocked[0])
        end = self._truncate(_settle(hits, base, end), base)
        if end == base and not final:
            return
        segment = window[base:end]
        if not await self._judge(segment, "segment") or (final and not await self._judge_whole()):
            return
        applied = [h for h in hits if h.finding.start < end and h.action != "block"]
        self._release(segment, applied, base, end)
        self.context = (self.context + segment)[-self.CONTEXT:]
        self.pending = "" if self.dropping else window[end:]
        self.offset += end - base

    def _span_hits(self, window: str, base: int) -> list[Hit] | None:
        """Findings that reach into the unreleased text (those inside the context were handled)."""
        hits: list[Hit] = []
        for checker in self.node.checkers:
            if not checker.has_spans:
                continue
            try:
                found = checker.spans(window)
            except Exception as exc:  # a detector bug must not let text through unchecked
                if not self._check_failed(checker, exc):
                    return None
                continue
            for f in found:
                action = checker.action_for(f)
                if f.end > base and action != "ignore":
                    hits.append(Hit(checker, f, action, (self.offset + f.start - base, self.offset + f.end - base)))
        return hits

    @staticmethod
    def _hold_growing(hits: list[Hit], size: int, end: int, base: int) -> int:
        """A match touching the end of the window may still grow: hold the text from its start."""
        for h in hits:
            if h.finding.end >= size:
                end = min(end, max(h.finding.start, base))
        return end

    def _truncate(self, end: int, base: int) -> int:
        if self.limit is None or self.offset + end - base <= self.limit.spec.chars:
            return end
        self.dropping = True
        self._record([Hit(self.limit, Finding("length", 0, 0, f"truncated to {self.limit.spec.chars} characters"), "truncate")])
        return base + _chars(self.limit) - self.offset

    async def _judge(self, text: str, scope: str) -> bool:
        """Run segment (or whole-text) checks; False when one blocked."""
        for checker in self.node.checkers:
            if not (checker.has_segment if scope == "segment" else checker.has_whole):
                continue
            try:
                found = await (checker.segment(self.ctx, text) if scope == "segment" else checker.whole(self.ctx, text))
            except Exception as exc:  # fail closed unless the flow said fail_open
                if not self._check_failed(checker, exc):
                    return False
                continue
            for f in found:
                hit = Hit(checker, f, checker.action)
                if hit.action == "block":
                    self._block(hit)
                    return False
                self._record([hit])
        return True

    async def _judge_whole(self) -> bool:
        return await self._judge("".join(self.received), "whole")

    # -- verdicts -------------------------------------------------------------------------------------
    def _release(self, segment: str, applied: list[Hit], base: int, end: int) -> None:
        masks = [(max(h.finding.start, base) - base, min(h.finding.end, end) - base, h.checker.mask_for(h.finding))
                 for h in applied if h.action == "redact"]
        text = gc.redact(segment, masks) if masks else segment
        self._record(applied)
        if self.buffer and text:
            self.released.append(text)
            self.outbox.append(Chunk(text, "text"))

    def _record(self, hits: list[Hit]) -> None:
        """Violations (one per hit) and guardrail_flagged events (one per check, action and detail)."""
        if not hits:
            return
        self.flagged = True
        counts: dict[tuple[str, str, str], int] = {}
        for h in hits:
            detail = h.finding.detail or h.finding.kind
            action = "redact" if h.action == "truncate" else h.action  # events know block, redact and flag
            key = (h.checker.name, action, detail)
            counts[key] = counts.get(key, 0) + 1
            violation: dict[str, Any] = {"check": h.checker.name, "action": action, "detail": detail}
            if h.span is not None:
                violation["span"] = [max(h.span[0], 0), h.span[1]]
            self.violations.append(violation)
        for (check, action, detail), count in counts.items():
            self.outbox.append(Signal("guardrail_flagged", {"check": check, "action": action, "detail": detail, "count": count}))

    def _block(self, hit: Hit) -> None:
        self._record([hit])
        detail = hit.finding.detail or hit.finding.kind
        self._fail(hit.checker.name, f"{hit.checker.name}: {detail}", f"guardrail '{self.node.id}' blocked the text ({hit.checker.name}: {detail})")

    def _check_failed(self, checker: Checker, exc: Exception) -> bool:
        """Flag a check that raised and go on (fail_open), or fail the node (fail_closed)."""
        detail = f"check could not run ({type(exc).__name__})"
        self._record([Hit(checker, Finding("error", 0, 0, detail), "flag" if self.fail_open else "block")])
        if not self.fail_open:
            self._fail(checker.name, f"{checker.name}: {detail}", f"guardrail check '{checker.name}' could not run")
        return self.fail_open

    def _fail(self, check: str, reason: str, message: str) -> None:
        if not self.buffer and self.streamed:
            self.outbox.append(Signal("retract", {"reason": reason, "check": check, "chars": self.streamed}))
        self.error = NodeError("guardrail", message)

    def _check_length(self) -> None:
        for i, checker in enumerate(self.node.limits):
            chars = checker.spec.chars
            if self.total <= chars or checker.action == "truncate" or i in self._over:
                continue
            self._over.add(i)
            hit = Hit(checker, Finding("length", 0, 0, f"longer than {chars} characters"), checker.action)
            if checker.action == "block":
                return self._block(hit)
            self._record([hit])


def _chars(checker: Checker) -> int:
    return int(checker.spec.chars)


def _settle(hits: list[Hit], base: int, end: int) -> int:
    """Move the release point back before any match it would cut in two (until none is cut)."""
    moved = True
    while moved:
        moved = False
        for h in hits:
            if h.finding.start < end < h.finding.end:
                end = max(h.finding.start, base)
                moved = True
    return end
