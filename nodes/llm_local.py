"""Local GGUF models through llama-cpp-python: one loaded model per process, runs queue for its context.

Why our own token loop over ``Llama.generate`` instead of ``create_chat_completion``: exact token
counts, cancellation checked between tokens (generation stops within one token of a disconnect),
stop strings held back without re-detokenising the whole answer per token, and chat templates
rendered by us: a GGUF without an embedded template (the packaged Gemma 270M has none) would
otherwise get llama-cpp-python's Llama-2 default, and its built-in Gemma format drops system messages.

KV-cache reuse comes from llama.cpp itself: ``generate`` keeps the longest common token prefix of
the previous prompt, so flows that put the stable part (system prompt, instructions) first and the
variable part (retrieved context, question) last skip re-evaluating that prefix (bench/llm.py).
"""

from __future__ import annotations

import asyncio
import codecs
import threading
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from rillflow.nodes.llm_types import Finish, GenerateParams
from rillflow.nodes.model_files import gguf_path
from rillflow.runtime.context import RESOURCES, executor
from rillflow.runtime.errors import NodeError

# Gemma's own template folds the system message into the first user turn (Gemma has no system role).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set system = namespace(text='') %}"
    "{% for m in messages %}{% if m.role == 'system' %}{% set system.text = system.text + m.content + '\n\n' %}{% endif %}{% endfor %}"
    "{% set first = namespace(done=false) %}"
    "{% for m in messages if m.role != 'system' %}"
    "<start_of_turn>{{ 'model' if m.role == 'assistant' else 'user' }}\n"
    "{% if not first.done and m.role == 'user' %}{{ system.text }}{% set first.done = true %}{% endif %}"
    "{{ m.content | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
BUILTIN_TEMPLATES = {"gemma": GEMMA_TEMPLATE, "chatml": CHATML_TEMPLATE}


@dataclass(frozen=True, slots=True)
class LocalModelKey:
    path: str
    n_ctx: int
    n_threads: int | None
    n_gpu_layers: int
    prompt_lookup: int


class LocalModel:
    """One llama.cpp model and context. ``stream`` queues callers: a context is not thread-safe."""

    def __init__(self, key: LocalModelKey, chat_template: str | None, name: str) -> None:
        try:
            import llama_cpp
            from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
        except ImportError:
            raise NodeError("config", "llama-cpp-python is not installed: CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install llama-cpp-python") from None
        self._llama_cpp = llama_cpp
        _quiet_llama_logs(llama_cpp)
        if key.n_gpu_layers != 0 and not llama_cpp.llama_supports_gpu_offload():
            raise NodeError("config", f"n_gpu_layers={key.n_gpu_layers} but this llama-cpp-python build has no GPU support: "
                                      "reinstall with CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install --force-reinstall --no-cache-dir llama-cpp-python, "
                                      "or set n_gpu_layers: 0")
        draft = LlamaPromptLookupDecoding(num_pred_tokens=key.prompt_lookup) if key.prompt_lookup else None
        try:
            self.llm = llama_cpp.Llama(model_path=key.path, n_ctx=key.n_ctx, n_threads=key.n_threads, n_gpu_layers=key.n_gpu_layers,
                                       draft_model=draft, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise NodeError("config", f"llama.cpp could not load {key.path}: {exc}") from None
        self.name = name
        self.key = key
        self.n_ctx = key.n_ctx
        self.template_source = chat_template or self._default_template()
        self._template = _compile_chat_template(self.template_source)
        self._bos = self._piece(self.llm.token_bos())
        self._eos = self._piece(self.llm.token_eos())
        self._thread_lock = threading.Lock()  # the true exclusion, held by the generating thread
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
        self.waiting = 0

    def close(self) -> None:
        """Free the model and its context now (RESOURCES.close at shutdown), not in a finaliser at exit."""
        with self._thread_lock:
            self.llm.close()

    def _default_template(self) -> str:
        embedded = self.llm.metadata.get("tokenizer.chat_template")
        if embedded:
            return str(embedded)
        arch = str(self.llm.metadata.get("general.architecture", ""))
        return GEMMA_TEMPLATE if arch.startswith("gemma") else CHATML_TEMPLATE

    def _piece(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    # -- prompts -------------------------------------------------------------------------
    def render(self, messages: Sequence[dict[str, str]]) -> str:
        """The chat messages as the model's prompt text, through its chat template."""
        return str(self._template.render(messages=list(messages), add_generation_prompt=True, bos_token=self._bos, eos_token=self._eos))

    def tokenize(self, text: str, *, chat: bool) -> list[int]:
        """Token ids of a prompt: a rendered chat prompt carries its own BOS; plain text gets one."""
        ids: list[int] = self.llm.tokenize(text.encode("utf-8"), add_bos=not chat, special=chat)
        return ids

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    # -- generation ----------------------------------------------------------------------
    def _queue(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._queues.get(loop)
        if lock is None:
            lock = self._queues[loop] = asyncio.Lock()
        return lock

    async def stream(self, prompt_ids: list[int], params: GenerateParams) -> AsyncIterator[str | Finish]:
        """Text pieces as the model produces them, then one ``Finish``. Cancel-safe: closing the
        iterator stops generation at the next token and waits for the worker thread to let go."""
        if len(prompt_ids) + 1 >= self.n_ctx:
            raise NodeError("bad_request", f"the prompt is {len(prompt_ids)} tokens but model '{self.name}' has n_ctx={self.n_ctx}: "
                                           "shorten it (prompt budget) or raise n_ctx")
        queued_at = time.perf_counter()
        self.waiting += 1
        try:
            await self._queue().acquire()
        finally:
            self.waiting -= 1
        queue_ms = (time.perf_counter() - queued_at) * 1000
        try:
            async for item in self._generate(prompt_ids, params, queue_ms):
                yield item
        finally:
            self._queue().release()

    async def _generate(self, prompt_ids: list[int], params: GenerateParams, queue_ms: float) -> AsyncIterator[str | Finish]:
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def send(kind: str, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(out.put_nowait, (kind, value))
            except RuntimeError:  # the loop closed under us: the run is gone, nobody listens
                stop.set()

        def work() -> None:
            with self._thread_lock:
                try:
                    finish = self._run_tokens(prompt_ids, params, stop, send)
                    send("finish", finish)
                except Exception as exc:
                    send("error", exc)

        worker = loop.run_in_executor(executor(), work)
        started = time.perf_counter()
        first: float | None = None
        try:
            while True:
                kind, value = await out.get()
                if kind == "text":
                    if first is None:
                        first = time.perf_counter()
                    yield value
                elif kind == "finish":
                    finish: Finish = value
                    yield finish._replace(queue_ms=queue_ms, ttft_ms=((first or time.perf_counter()) - started) * 1000)
                    return
                else:
                    raise _as_node_error(value, self.name)
        finally:
            stop.set()
            await asyncio.shield(worker)  # at most one token away: the context must be free before we return

    def _run_tokens(self, prompt_ids: list[int], params: GenerateParams, stop: threading.Event, send: Any) -> Finish:
        llm = self.llm
        vocab = llm._model.vocab
        is_eog = self._llama_cpp.llama_vocab_is_eog
        if params.seed is not None:
            llm.set_seed(params.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        held = StopScanner(params.stop)
        produced = 0
        reason = "length"
        grammar = params.grammar
        for token in llm.generate(prompt_ids, temp=params.temperature, top_p=params.top_p, top_k=params.top_k,
                                  repeat_penalty=params.repeat_penalty, grammar=grammar):
            if stop.is_set():
                reason = "cancelled"
                break
            if is_eog(vocab, token):
                reason = "stop"
                break
            produced += 1
            text, hit = held.feed(decoder.decode(llm.detokenize([token])))
            if text:
                send("text", text)
            if hit:
                reason = "stop"
                break
            if produced >= params.max_tokens or len(prompt_ids) + produced >= self.n_ctx:
                break
        tail = "" if held.hit else held.flush(decoder.decode(b"", final=True))
        if tail:
            send("text", tail)
        return Finish(reason=reason, input_tokens=len(prompt_ids), output_tokens=produced)


class StopScanner:
    """Holds back text that may be the start of a stop string, so a stop string never leaks."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        self.pending += text
        for s in self.stops:
            at = self.pending.find(s)
            if at >= 0:
                self.hit = True
                out, self.pending = self.pending[:at], ""
                return out, True
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(out):]
        return out, False

    def flush(self, text: str) -> str:
        out, self.pending = self.pending + text, ""
        return out


_log_callback: Any = None


def _quiet_llama_logs(llama_cpp: Any) -> None:
    """llama.cpp logs to stderr even with verbose=False (e.g. the SWA cache notice on every load);
    a CLI streaming an answer to a terminal must not interleave it. Errors still surface as exceptions."""
    global _log_callback
    if _log_callback is None:
        import ctypes

        @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
        def drop(level: int, text: bytes, user_data: Any) -> None:
            return None

        _log_callback = drop  # keep a reference: llama.cpp holds only the C pointer
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


def _compile_chat_template(source: str) -> Any:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise NodeError("bad_request", f"the model's chat template refused the messages: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise NodeError("config", f"the chat template does not compile: {exc}") from None


def _as_node_error(exc: BaseException, name: str) -> NodeError:
    if isinstance(exc, NodeError):
        return exc
    return NodeError("internal", f"llama.cpp failed while generating with model '{name}': {type(exc).__name__}")


def load_local_model(spec: Any, flow_dir: str, name: str) -> LocalModel:
    """The process-wide LocalModel for a ``LlamaCppModel`` spec: loaded once, shared by every flow."""
    path = gguf_path(spec.model, spec.path, flow_dir)
    key = LocalModelKey(str(path), spec.n_ctx, spec.n_threads, spec.n_gpu_layers, spec.prompt_lookup)
    template = BUILTIN_TEMPLATES.get(spec.chat_template, spec.chat_template) if spec.chat_template else None
    return RESOURCES.get(("llama", key, template), lambda: LocalModel(key, template, spec.model or path.name))
