"""The `llm` node: a chat model call, streamed token by token, on a local llama.cpp model or any
OpenAI-compatible API (the flow's `models:` entry decides which). Reports tokens, cost, queue wait
and time to first token; with `json_schema`, parses and validates the answer with repair attempts.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from pydantic import Field, field_validator

from rillflow.nodes.base import (
    CheckContext,
    Emit,
    Node,
    NodeConfig,
    Output,
    OutputField,
    RunContext,
    Signal,
    Wired,
    check_resource_name,
    register,
)
from rillflow.nodes.llm_types import Finish, GenerateParams, cost
from rillflow.runtime.errors import NodeError

ROLES = frozenset({"system", "user", "assistant"})
#: A queue wait shorter than this is not worth an event.
QUEUE_EVENT_MS = 5.0


class LlmConfig(NodeConfig):
    model: str = Field(description="A key of the flow's `models:` (llama_cpp or openai provider).")
    prompt: Wired[str | list[dict[str, str]]] = Field(
        description="Chat messages [{role, content}] (e.g. ${prompt.messages}) or plain text (sent as one user message).")
    system: Wired[str] | None = Field(None, description="A system message put before the prompt's messages.")
    max_tokens: int = Field(512, ge=1, le=131_072)
    temperature: float | None = Field(None, ge=0, le=2, description="Overrides the model's temperature.")
    top_p: float = Field(0.95, gt=0, le=1)
    stop: list[str] = Field(default_factory=list, description="Stop strings: generation ends before them; they never reach the stream.")
    seed: int | None = Field(None, description="Overrides the model's seed (reproducible sampling).")
    json_schema: dict[str, Any] | None = Field(None, description="JSON Schema the answer must satisfy; the answer is not streamed.")
    repair_attempts: int = Field(2, ge=0, le=5, description="Re-asks with the validation error before the node fails (invalid_output).")

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("stop strings must not be empty")
        return value


@register("llm")
class LlmNode(Node):
    """Calls a chat model. Outputs `text` (streamed), `finish_reason`, `usage`, and `json` with a schema."""

    Config = LlmConfig
    config: LlmConfig
    worth_caching = True
    records = True

    @classmethod
    def outputs(cls, config: Any) -> dict[str, OutputField]:
        structured = config.json_schema is not None
        fields = {
            "text": OutputField("string", stream=not structured, description="The answer, streamed token by token."),
            "finish_reason": OutputField("string", description="stop, or length when max_tokens cut the answer."),
            "usage": OutputField("object", description="input_tokens, output_tokens, model, cost, queue_ms, ttft_ms."),
        }
        if structured:
            fields["json"] = OutputField("object", description="The parsed answer, valid against json_schema.")
        return fields

    @classmethod
    def check(cls, config: Any, ctx: CheckContext) -> None:
        check_resource_name(ctx, ("model",), "models", config.model)
        if config.json_schema is not None:
            from jsonschema import Draft202012Validator, SchemaError

            try:
                Draft202012Validator.check_schema(config.json_schema)
            except SchemaError as exc:
                ctx.error(("json_schema",), "E100", f"json_schema is not a valid JSON Schema: {exc.message}")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._backend: Any = None
        self._grammar: Any = None

    # -- preparation ------------------------------------------------------------------------
    def prepare(self) -> None:
        spec = self.env.models.get(self.config.model)
        if spec is None:
            raise NodeError("config", f"model '{self.config.model}' is not declared under models:")
        if spec.provider == "llama_cpp":
            from rillflow.nodes.llm_local import load_local_model

            self._backend = load_local_model(spec, self.env.flow_dir, self.config.model)
            if self.config.json_schema is not None:
                self._grammar = _grammar(self.config.json_schema)
        else:
            from rillflow.nodes.llm_remote import RemoteModel

            self._backend = RemoteModel(spec, self.config.model)

    # -- caching -----------------------------------------------------------------------------
    async def cache_identity(self, ctx: RunContext, inputs: dict[str, Any]) -> Any:
        spec = self.env.models[self.config.model]
        if spec.provider == "llama_cpp":
            from rillflow.nodes.model_files import gguf_path

            file = gguf_path(spec.model, spec.path, self.env.flow_dir)
            stat = file.stat()  # a replaced .gguf is another model
            weights: Any = {"file": file.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        else:
            weights = {"base_url": spec.base_url}
        return {"model": spec.model_dump(mode="json", exclude={"api_key", "price_per_mtok", "request_timeout", "n_threads", "base_url"}),
                "weights": weights, "temperature": self._temperature(spec), "seed": self._seed(spec)}

    def nondeterministic(self) -> str | None:
        """Why two identical calls may answer differently (sampling without a seed), or None."""
        spec = self.env.models.get(self.config.model)
        if spec is None or self._temperature(spec) == 0 or self._seed(spec) is not None:
            return None
        return f"samples at temperature {self._temperature(spec):g} without a seed"

    def cacheable(self, outputs: dict[str, Any]) -> bool:
        return outputs.get("finish_reason") != "length"  # a truncated answer is not the answer

    def semantic_text(self, inputs: dict[str, Any]) -> str | None:
        prompt = inputs.get("prompt")
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list):
            users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
            if users and isinstance(users[-1], str):
                return users[-1]
        return None

    def _temperature(self, spec: Any) -> float:
        return float(self.config.temperature if self.config.temperature is not None else spec.temperature)

    def _seed(self, spec: Any) -> int | None:
        return self.config.seed if self.config.seed is not None else spec.seed

    # -- running ------------------------------------------------------------------------------
    async def run(self, ctx: RunContext, inputs: dict[str, Any]) -> AsyncIterator[Emit]:
        if self._backend is None:
            await ctx.to_thread(self.prepare)
        messages = _messages(inputs["prompt"], inputs.get("system"))
        spec = self.env.models[self.config.model]
        params = GenerateParams(
            max_tokens=self.config.max_tokens, top_p=self.config.top_p, stop=tuple(self.config.stop),
            temperature=self._temperature(spec), seed=self._seed(spec),
            grammar=self._grammar, json_mode=self.config.json_schema is not None and spec.provider != "llama_cpp",
            json_schema=self.config.json_schema if spec.provider != "llama_cpp" else None,
        )
        if self.config.json_schema is None:
            async for emit in self._answer(ctx, messages, params, spec):
                yield emit
        else:
            async for emit in self._structured(ctx, messages, params, spec):
                yield emit

    async def _generate(self, ctx: RunContext, messages: list[dict[str, str]], params: GenerateParams,
                        parts: list[str]) -> AsyncIterator[str | Finish]:
        """One model call: text pieces (also collected into ``parts``), then its Finish."""
        backend = self._backend
        if hasattr(backend, "render"):
            prompt_ids = await ctx.to_thread(lambda: backend.tokenize(backend.render(messages), chat=True))
            stream = backend.stream(prompt_ids, params)
        else:
            stream = backend.stream(messages, params)
        async for item in stream:
            if type(item) is str:
                parts.append(item)
            yield item

    async def _answer(self, ctx: RunContext, messages: list[dict[str, str]], params: GenerateParams, spec: Any) -> AsyncIterator[Emit]:
        parts: list[str] = []
        finish: Finish | None = None
        async for item in self._generate(ctx, messages, params, parts):
            if type(item) is str:
                yield item
            else:
                finish = item  # type: ignore[assignment]
        assert finish is not None
        usage = self._usage(ctx, spec, [finish])
        if finish.queue_ms >= QUEUE_EVENT_MS:
            yield Signal("model_queued", {"model": self.config.model, "wait_ms": round(finish.queue_ms, 1)})
        yield Output(text="".join(parts), finish_reason=finish.reason, usage=usage)

    async def _structured(self, ctx: RunContext, messages: list[dict[str, str]], params: GenerateParams, spec: Any) -> AsyncIterator[Emit]:
        from jsonschema import Draft202012Validator

        validator = Draft202012Validator(self.config.json_schema or {})
        finishes: list[Finish] = []
        problem = ""
        for attempt in range(self.config.repair_attempts + 1):
            parts: list[str] = []
            async for item in self._generate(ctx, messages, params, parts):
                if type(item) is not str:
                    finishes.append(item)  # type: ignore[arg-type]
            text = "".join(parts)
            value, problem = parse_json(text, validator)
            if not problem:
                yield Output(text=text, json=value, finish_reason=finishes[-1].reason, usage=self._usage(ctx, spec, finishes))
                return
            yield Signal("guardrail_flagged", {"check": "json_schema", "action": "repair", "detail": problem, "count": attempt + 1})
            messages = [*messages, {"role": "assistant", "content": text},
                        {"role": "user", "content": f"That answer is not valid: {problem}. Reply with only a JSON value that satisfies the schema."}]
        self._usage(ctx, spec, finishes)
        raise NodeError("invalid_output", f"the answer did not satisfy json_schema after {self.config.repair_attempts} repair attempts: {problem}")

    def _usage(self, ctx: RunContext, spec: Any, finishes: list[Finish]) -> dict[str, Any]:
        tokens_in = sum(f.input_tokens for f in finishes)
        tokens_out = sum(f.output_tokens for f in finishes)
        price = cost(spec.price_per_mtok, tokens_in, tokens_out)
        ctx.usage(input_tokens=tokens_in, output_tokens=tokens_out, model=self.config.model, cost=price)
        return {"input_tokens": tokens_in, "output_tokens": tokens_out, "model": self.config.model, "cost": price,
                "queue_ms": round(sum(f.queue_ms for f in finishes), 3), "ttft_ms": round(finishes[0].ttft_ms, 3),
                "estimated": any(f.estimated for f in finishes)}


def _messages(prompt: Any, system: Any) -> list[dict[str, str]]:
    """The chat messages of a call, checked: a bad shape is the flow author's error, said plainly."""
    messages: list[dict[str, str]] = [{"role": "system", "content": str(system)}] if system else []
    if isinstance(prompt, str):
        return [*messages, {"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise NodeError("bad_request", "prompt must be text or a non-empty list of {role, content} messages")
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise NodeError("bad_request", f"prompt message {i} must be {{role: system|user|assistant, content: text}}")
        messages.append({"role": m["role"], "content": m["content"]})
    return messages


def parse_json(text: str, validator: Any) -> tuple[Any, str]:
    """The JSON value in a model's answer (code fences and prose around it tolerated) and '' when it
    satisfies the schema, else (None, what is wrong)."""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return None, "no JSON value found in the answer"
    try:
        # strict=False lets a raw newline inside a string through: small models write them, and
        # refusing costs a repair round trip for a value whose meaning is clear.
        value, _ = json.JSONDecoder(strict=False).raw_decode(text, min(starts))
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg.removesuffix(' at')} at character {exc.pos})"
    error = next(iter(sorted(validator.iter_errors(value), key=lambda e: list(e.path))), None)
    if error is not None:
        where = "/".join(str(p) for p in error.path) or "the top level"
        return None, f"at {where}: {error.message}"
    return value, ""


def _grammar(schema: dict[str, Any]) -> Any:
    """A llama.cpp grammar from the schema: local models can then only emit JSON of that shape."""
    from llama_cpp.llama_grammar import LlamaGrammar

    try:
        return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except (ValueError, RuntimeError):
        return None  # a schema feature the converter lacks: validation and repair still apply
