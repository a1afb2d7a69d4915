"""`keyword_extract`: the keywords of a text, most frequent first, for a keyword search or for tags.

A node type outside rillflow, written to the contract in rillflow/nodes/base.py: a frozen pydantic
``Config`` checked when the flow loads, declared ``outputs``, and one async ``run`` that ends with one
``Output``. It is pure Python and deterministic, so it needs no ``prepare`` (nothing heavy to load)
and ``records`` stays False: `rill test` runs it for real in every case instead of replaying it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from pydantic import Field, field_validator

from rillflow.nodes.base import Emit, FlowEnv, Node, NodeConfig, Output, OutputField, RunContext, Wired, register

# Letters only (no digits, no underscore), with inner apostrophes or hyphens: "don't", "well-known".
WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")

STOPWORDS = frozenset({
    "a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be",
    "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing",
    "don't", "down", "during", "each", "else", "explain", "few", "for", "from", "further", "get", "gets", "got", "had", "has",
    "have", "having", "he", "her", "here", "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself",
    "just", "know", "like", "me", "more", "most", "must", "my", "need", "no", "nor", "not", "now", "of", "off", "on", "once",
    "only", "or", "other", "our", "ours", "out", "over", "own", "please", "same", "she", "should", "show", "so", "some", "such",
    "tell", "than", "that", "the", "their", "theirs", "them", "then", "there", "these", "they", "this", "those", "through",
    "to", "too", "under", "until", "up", "use", "using", "very", "want", "was", "we", "were", "what", "when", "where", "which",
    "while", "who", "whom", "whose", "why", "will", "with", "would", "you", "your", "yours",
})


@register("keyword_extract")
class KeywordExtractNode(Node):
    """Output ``keywords`` (a list) and ``query`` (them joined by spaces) from ``text``."""

    class Config(NodeConfig):
        text: Wired[str] = Field(description="The text to take keywords from, e.g. ${inputs.question}.")
        top_k: int = Field(5, ge=1, le=50, description="Most keywords to return.")
        min_length: int = Field(3, ge=1, le=30, description="Shortest word, in characters, that can be a keyword.")
        stopwords: list[str] = Field(default_factory=list, description="Words to leave out besides the built-in English stop words.")

        @field_validator("stopwords")
        @classmethod
        def _one_word_each(cls, value: list[str]) -> list[str]:
            # Text is split into single words before stop words apply: "vector store" could never match.
            for word in value:
                if not WORD.fullmatch(word):
                    raise ValueError(f"stopword {word!r} is not one word of letters; list each word of a phrase on its own")
            return value

    @classmethod
    def outputs(cls, config: Any) -> dict[str, OutputField]:
        return {
            "keywords": OutputField("list", description="Up to top_k keywords, lowercase, most frequent first (ties: first seen first)."),
            "query": OutputField("string", description="The keywords joined by spaces, for a keyword search."),
        }

    def __init__(self, node_id: str, config: Any, flow_dir: str = ".", env: FlowEnv | None = None) -> None:
        super().__init__(node_id, config, flow_dir, env)
        # Built once per compiled plan and shared by all its runs (the contract's "cheap" part).
        self.stopwords = STOPWORDS | {word.casefold() for word in config.stopwords}

    async def run(self, ctx: RunContext, inputs: dict[str, Any]) -> AsyncIterator[Emit]:
        keywords = extract_keywords(inputs["text"], inputs["top_k"], inputs["min_length"], self.stopwords)
        yield Output(keywords=keywords, query=" ".join(keywords))


def extract_keywords(text: str, top_k: int, min_length: int, stopwords: frozenset[str] | set[str]) -> list[str]:
    """The ``top_k`` most frequent words of ``text`` that are not stop words and have ``min_length`` letters."""
    counts: Counter[str] = Counter()
    first_seen: dict[str, int] = {}
    for position, match in enumerate(WORD.finditer(text)):
        word = match.group().casefold().replace("\u2019", "'")  # a typographic apostrophe, as in "don\u2019t"
        word = word.removesuffix("'s")  # "rillflow's" counts as "rillflow"
        if len(word) < min_length or word in stopwords:
            continue
        counts[word] += 1
        first_seen.setdefault(word, position)
    ranked = sorted(counts, key=lambda word: (-counts[word], first_seen[word]))
    return ranked[:top_k]
