"""`prompt`: render a Jinja2 template (or chat messages) in the sandbox, fitted to a token budget.

Values reach the template only as variables (``vars``), so a user who types ``{{ 7*7 }}`` gets
those characters back, never 49.

Chat (issue 4, item 8): ``history`` (a list of ``{role, content}``, e.g. an input of type
``chat_history``) goes into ``messages`` just before the last ``user`` message, so after the system
message and any few-shot turns. History is data: its contents are never rendered as templates.

Budget: with ``budget``, the prompt must fit the model's context minus ``reserve`` tokens kept for
the answer. When it does not, the node drops, in this order, (1) the last documents of the ``trim``
variable (retrievers rank best first, so the least relevant go first) until the rendered messages
fit without history, then (2) gives the room left to the newest history messages, dropping the oldest.
Documents win over old turns because they are the evidence for the question asked now. A kept
history starts with a ``user`` message (chat templates such as Gemma's insist that roles alternate).
What does not fit even with every document and all history dropped fails as ``bad_request``.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jinja2 import TemplateError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rillflow.nodes.base import (
    CheckContext,
    Emit,
    FlowEnv,
    Node,
    NodeConfig,
    Output,
    OutputField,
    Progress,
    RunContext,
    Wired,
    check_resource_name,
    register,
)
from rillflow.runtime.errors import NodeError, suggest
from rillflow.runtime.templating import SecurityError, TemplateSyntaxError, compile_template, undeclared_variables

ROLES = ("system", "user", "assistant")


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str = Field(description="A Jinja2 template.")


class Budget(BaseModel):
    """The prompt's token budget: the context size, the room kept for the answer, and what may be cut."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(None, description="A key of the flow's models: its tokenizer counts tokens and its n_ctx is the context.")
    max_tokens: int | None = Field(None, ge=1, description="Context size in tokens: instead of a model's n_ctx, or overriding it.")
    reserve: int = Field(256, ge=0, description="Tokens kept free for the answer.")
    trim: str | None = Field(None, description="The vars entry holding retrieved documents (best first); the last are dropped first.")

    @model_validator(mode="after")
    def _has_size(self) -> Budget:
        if self.model is None and self.max_tokens is None:
            raise ValueError("give 'model' (a key of the flow's models) or 'max_tokens' (the context size)")
        return self


@register("prompt")
class PromptNode(Node):
    """Render ``template`` (or ``template_file``, or ``messages``) with ``vars`` as variables; optionally
    insert chat ``history`` and fit a token ``budget``."""

    class Config(NodeConfig):
        template: str | None = Field(None, description="Jinja2 template; its variables must be given in vars.")
        template_file: str | None = Field(None, description="Path of a Jinja2 template, relative to the flow file.")
        messages: list[Message] | None = Field(None, description="Chat messages whose contents are templates.")
        vars: dict[str, Wired[Any]] = Field(default_factory=dict, description="Template variables: literals or references.")
        history: Wired[list[Any]] | None = Field(
            None, description="Chat history [{role, content}] (e.g. an input of type chat_history), put before the last user message.")
        budget: Budget | None = Field(None, description="Fit the prompt into a model's context: {model or max_tokens, reserve, trim}.")
        max_chars: int = Field(100_000, ge=1, description="Longest rendered text (or messages, all contents); longer fails the node.")

        @model_validator(mode="after")
        def _one_source(self) -> PromptNode.Config:
            given = [n for n in ("template", "template_file", "messages") if getattr(self, n) is not None]
            if len(given) != 1:
                raise ValueError("give exactly one of 'template', 'template_file' or 'messages'")
            return self

    @classmethod
    def outputs(cls, config: Any) -> dict[str, OutputField]:
        fields = {
            "text": OutputField("string", description="The rendered template (with messages or history: message contents joined)."),
            "messages": OutputField("list", description="Chat messages [{role, content}], history included."),
        }
        if getattr(config, "budget", None) is not None:
            fields["tokens"] = OutputField("integer", description="Tokens of the fitted prompt (an estimate for openai models).")
            fields["trimmed"] = OutputField("integer", description="Documents dropped from budget.trim to fit.")
            fields["trimmed_history"] = OutputField("integer", description="History messages dropped to fit.")
        return fields

    @classmethod
    def check(cls, config: Any, ctx: CheckContext) -> None:
        provided = set(config.vars)
        for loc, source, line_base in _sources(config, ctx.flow_dir, ctx):
            try:
                needed = undeclared_variables(source)
            except TemplateSyntaxError as exc:
                ctx.error(loc, "E070", f"template syntax: {exc.message}", template_line=(exc.lineno or 1) + line_base)
                continue
            except RecursionError:
                ctx.error(loc, "E070", "template nests too deeply to compile: flatten it")
                continue
            for name in sorted(needed - provided):
                ctx.error(loc, "E020", f"template variable '{name}' is not given: add it to 'vars' (vars: {{{name}: ${{inputs.{name}}}}})")
        if config.budget is not None:
            _check_budget(config.budget, provided, ctx)

    def __init__(self, node_id: str, config: Any, flow_dir: str = ".", env: FlowEnv | None = None) -> None:
        super().__init__(node_id, config, flow_dir, env)
        if config.messages is not None:
            self._messages = [(m.role, compile_template(m.content)) for m in config.messages]
        else:
            source = config.template if config.template is not None else _read(flow_dir, config.template_file)
            self._messages = [("user", compile_template(source))]
        # An edited template file is another prompt: its hash is part of the cache key.
        self._template_hash = hashlib.sha256(source.encode("utf-8")).hexdigest() if config.template_file is not None else None
        self._single = config.messages is None
        self._budget: Budget | None = config.budget
        self._count: Callable[[str], int] | None = None

    async def cache_identity(self, ctx: RunContext, inputs: dict[str, Any]) -> Any:
        return self._template_hash

    def prepare(self) -> None:
        if self._budget is not None and self._count is None:
            from rillflow.nodes.tokens import token_counter

            spec = self.env.models.get(self._budget.model) if self._budget.model is not None else None
            self._count = token_counter(spec, self.flow_dir)

    async def run(self, ctx: RunContext, inputs: dict[str, Any]) -> AsyncIterator[Emit]:
        variables = inputs["vars"]
        history = _history(inputs["history"], self.id)
        extra: dict[str, int] = {}
        if self._budget is None:
            rendered = self._render(variables)
        else:
            fit = await ctx.to_thread(self._fit, self._budget, variables, history)
            rendered, history = fit.rendered, fit.history
            extra = {"tokens": fit.tokens, "trimmed": fit.trimmed, "trimmed_history": fit.trimmed_history}
            if fit.trimmed or fit.trimmed_history:
                yield Progress(fit.documents - fit.trimmed, fit.documents or None, fit.summary())
        messages = _insert(rendered, history)
        # A single template's text stays what it rendered; history reaches chat models through `messages`.
        text = rendered[0]["content"] if self._single else "\n\n".join(m["content"] for m in messages)
        _check_size(self.id, text, messages, inputs["max_chars"])
        yield Output(text=text, messages=messages, **extra)

    def _render(self, variables: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            return [{"role": role, "content": tpl.render(variables)} for role, tpl in self._messages]
        except SecurityError as exc:
            raise NodeError("config", f"template of node '{self.id}' tried an unsafe operation: {exc}") from exc
        except TemplateError as exc:
            raise NodeError("config", f"template of node '{self.id}' failed: {exc}") from exc

    # -- the budget (blocking: runs in a worker thread) -----------------------------------
    def _fit(self, budget: Budget, variables: dict[str, Any], history: list[dict[str, str]]) -> _Fit:
        from rillflow.nodes.tokens import count_messages

        if self._count is None:  # a plan is prepared before its first run; this covers direct use
            self.prepare()
        count = self._count
        assert count is not None
        limit = self._limit(budget)
        docs = _documents(variables, budget.trim, self.id)
        cache: dict[int, tuple[list[dict[str, Any]], int]] = {}

        def rendered(n: int) -> tuple[list[dict[str, Any]], int]:
            if n not in cache:
                msgs = self._render(variables if docs is None else {**variables, str(budget.trim): docs[:n]})
                cache[n] = (msgs, count_messages(count, msgs))
            return cache[n]

        total = len(docs or ())
        kept = _most_documents(total, lambda n: rendered(n)[1] <= limit)
        if kept is None:
            raise NodeError("bad_request", self._too_long(budget, rendered(0)[1], limit, total, len(history)))
        msgs, tokens = rendered(kept)
        recent, tokens = _fit_history(count, history, tokens, limit)
        return _Fit(msgs, recent, tokens, total, total - kept, len(history) - len(recent), limit)

    def _limit(self, budget: Budget) -> int:
        return _context_size(budget, self.env) - budget.reserve

    def _too_long(self, budget: Budget, tokens: int, limit: int, docs: int, history: int) -> str:
        dropped = []
        if budget.trim is not None:
            dropped.append(f"all {docs} documents of '{budget.trim}'")
        if history:
            dropped.append(f"all {history} history messages")
        without = f" even without {' and '.join(dropped)}" if dropped else ""
        return (f"prompt '{self.id}' needs {tokens} tokens{without}; the budget is {limit} "
                f"({_context_size(budget, self.env)} context - {budget.reserve} reserved for the answer): "
                f"shorten the template or its inputs, or raise the context size")


@dataclass(frozen=True)
class _Fit:
    """The fitted prompt: the rendered template messages, the history kept, and what was dropped."""

    rendered: list[dict[str, Any]]
    history: list[dict[str, str]]
    tokens: int
    documents: int
    trimmed: int
    trimmed_history: int
    limit: int

    def summary(self) -> str:
        dropped = [f"{self.trimmed} of {self.documents} documents"] if self.documents else []
        if self.trimmed_history:
            dropped.append(f"{self.trimmed_history} history messages")
        return f"trimmed to fit {self.limit} tokens: dropped {' and '.join(dropped)} ({self.tokens} tokens)"


def _insert(rendered: list[dict[str, Any]], history: list[dict[str, str]]) -> list[dict[str, Any]]:
    """History goes before the last user message (after the system message and few-shot turns)."""
    at = max((i for i, m in enumerate(rendered) if m["role"] == "user"), default=len(rendered))
    return [*rendered[:at], *history, *rendered[at:]]


def _fit_history(count: Callable[[str], int], history: list[dict[str, str]], tokens: int, limit: int) -> tuple[list[dict[str, str]], int]:
    """The newest history messages that fit in the room left, and the prompt's tokens with them."""
    from rillflow.nodes.tokens import MESSAGE_OVERHEAD

    costs = [count(m["content"]) + MESSAGE_OVERHEAD for m in history]
    start = len(history)
    while start > 0 and tokens + costs[start - 1] <= limit:  # newest first
        start -= 1
        tokens += costs[start]
    if start > 0:  # some were dropped: keep whole turns, so the kept history starts with the user
        while start < len(history) and history[start]["role"] != "user":
            tokens -= costs[start]
            start += 1
    return history[start:], tokens


def _most_documents(total: int, fits: Callable[[int], bool]) -> int | None:
    """The largest n <= total with fits(n), by bisection (a prompt grows with each document); None if even 0 fails."""
    if fits(total):
        return total
    if total == 0 or not fits(0):
        return None
    lo, hi = 0, total - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _documents(variables: dict[str, Any], trim: str | None, node_id: str) -> list[Any] | None:
    """The documents the budget may drop; None when there are none to drop (no trim, or a none value)."""
    docs = variables.get(trim) if trim is not None else None
    if docs is None:
        return None
    if not isinstance(docs, list):
        raise NodeError("config", f"prompt '{node_id}': budget.trim names '{trim}', which holds {type(docs).__name__}, not a list of documents")
    return docs


def _history(value: Any, node_id: str) -> list[dict[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise NodeError("config", f"prompt '{node_id}': history must be a list of {{role, content}}, got {type(value).__name__}")
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
            raise NodeError("config", f"prompt '{node_id}': history item {i} must be {{role: system|user|assistant, content: text}}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _check_size(node_id: str, text: str, messages: list[dict[str, Any]], max_chars: int) -> None:
    """The output size cap (issue 4, item 8) covers the text and, for chat, every message content."""
    in_messages = sum(len(m["content"]) for m in messages)
    size, what = (len(text), "characters") if len(text) >= in_messages else (in_messages, f"characters in {len(messages)} messages")
    if size > max_chars:
        raise NodeError("invalid_output", f"prompt '{node_id}' rendered {size} {what}; the limit (max_chars) is {max_chars}")


def _context_size(budget: Budget, env: FlowEnv) -> int:
    if budget.max_tokens is not None:
        return budget.max_tokens
    assert budget.model is not None  # Budget requires one of the two
    return int(env.models[budget.model].n_ctx)


def _check_budget(budget: Budget, provided: set[str], ctx: CheckContext) -> None:
    if budget.trim is not None and budget.trim not in provided:
        known = ", ".join(sorted(provided)) or "none"
        ctx.error(("budget", "trim"), "E140", f"budget.trim names '{budget.trim}', which is not in vars (vars: {known}){suggest(budget.trim, provided)}")
    size = budget.max_tokens
    if budget.model is not None and check_resource_name(ctx, ("budget", "model"), "models", budget.model):
        spec = ctx.env.models.get(budget.model)
        if spec is None:  # the models section is invalid and already reported
            return
        if size is None and getattr(spec, "provider", None) != "llama_cpp":
            ctx.error(("budget", "model"), "E141", f"model '{budget.model}' does not declare its context size: add budget.max_tokens")
            return
        size = size if size is not None else int(spec.n_ctx)
    if size is not None and budget.reserve >= size:
        loc: tuple[str | int, ...] = ("budget", "reserve") if "reserve" in budget.model_fields_set else ("budget",)
        ctx.error(loc, "E142", f"budget.reserve ({budget.reserve}) leaves no room in a context of {size} tokens: lower it or raise the size")


def _read(flow_dir: str, name: str) -> str:
    return template_path(flow_dir, name).read_text(encoding="utf-8")


def template_path(flow_dir: str, name: str) -> Path:
    """The template file, which must lie inside the flow's folder (a flow cannot read /etc/passwd)."""
    base = Path(flow_dir).resolve()
    path = (base / name).resolve()
    if not path.is_relative_to(base):
        raise ValueError(f"template_file '{name}' is outside the flow's folder: keep templates beside the flow")
    return path


def _sources(config: Any, flow_dir: str, ctx: CheckContext) -> list[tuple[tuple[str | int, ...], str, int]]:
    """(field location, template source, line offset inside the YAML value) for each template."""
    if config.template is not None:
        return [(("template",), config.template, 0)]
    if config.messages is not None:
        return [(("messages", i, "content"), m.content, 0) for i, m in enumerate(config.messages)]
    name = config.template_file
    try:
        path = template_path(flow_dir, name)
    except ValueError as exc:  # outside the folder, or a NUL in the name
        ctx.error(("template_file",), "E084", str(exc) if "outside" in str(exc) else f"template_file '{name!r}' is not a valid path")
        return []
    try:
        return [(("template_file",), path.read_text(encoding="utf-8"), 0)]
    except (OSError, UnicodeDecodeError) as exc:
        ctx.error(("template_file",), "E072", f"cannot read template file '{name}': {getattr(exc, 'strerror', None) or exc}")
        return []
