"""Counting tokens for a prompt's budget: the model's own tokenizer where we have it, else an estimate.

A ``llama_cpp`` model counts with its own vocabulary, loaded vocab-only (no weights, well under a
second) once per process and shared by every flow naming the same file. An ``openai`` model's
tokenizer is not ours to load (and a server may run any model), so it gets an **estimate**: one token
per four characters, rounded up, the rule of thumb for English BPE vocabularies. The estimate also
stands in when llama-cpp-python is not installed. Budgets keep a ``reserve`` for the answer, which
absorbs the estimate's error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rillflow.runtime.context import RESOURCES
from rillflow.runtime.errors import NodeError

#: Tokens a chat template adds around each message. Measured on Gemma 3's template
#: (``<start_of_turn>user\n`` ... ``<end_of_turn>\n`` is 5 tokens); ChatML (``<|im_start|>user\n`` ...
#: ``<|im_end|>\n``) is the same size.
MESSAGE_OVERHEAD = 5
#: Tokens added once per prompt: BOS and the generation prompt (``<start_of_turn>model\n``).
PROMPT_OVERHEAD = 4
CHARS_PER_TOKEN = 4

Counter = Callable[[str], int]


def estimate_tokens(text: str) -> int:
    """An estimate: characters / 4, rounded up (see the module docstring)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def token_counter(model_spec: Any, flow_dir: str) -> Counter:
    """A function counting the tokens of a text for ``model_spec`` (a validated model from ``models:``).

    Blocking on first use of a llama_cpp model (loads its vocabulary): call it from ``prepare()`` or a
    worker thread. Raises ``NodeError("config")`` when the model's file cannot be found.
    """
    if getattr(model_spec, "provider", None) != "llama_cpp":
        return estimate_tokens
    try:
        import llama_cpp
    except ImportError:  # counting still works, less exactly; the llm node reports the missing backend
        return estimate_tokens
    from rillflow.nodes.model_files import gguf_path

    path = gguf_path(model_spec.model, model_spec.path, flow_dir)

    def load() -> Any:
        try:
            return llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise NodeError("config", f"the vocabulary of {path} could not be loaded: {exc}") from None

    llm = RESOURCES.get(("llama-vocab", str(path)), load)

    def count(text: str) -> int:
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    return count


def count_messages(count: Counter, messages: Sequence[dict[str, str]]) -> int:
    """Tokens of a chat prompt: each message's content plus its template framing."""
    return PROMPT_OVERHEAD + sum(count(m["content"]) + MESSAGE_OVERHEAD for m in messages)
