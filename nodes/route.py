"""`route`: choose a branch by conditions, or by a classifier over example texts (issue 4, item 10).

A route node does not run its branches: it outputs the chosen ``branch``, and downstream nodes pick
themselves with ``when: "route.branch == 'simple'"``; a merge such as ``${small.text ?? large.text}``
takes the one that ran. The choice and its reason are also an event (``route_chosen``).

**Conditions**: ``conditions`` are tried in order; each ``when`` is a Jinja2 expression over ``vars``
(compiled by the same ``compile_condition`` as a node's ``when``). The first true one wins; none
true gives ``default``.

**Classifier**: ``examples`` maps each branch to a few example texts. Each branch is represented by
its **centroid**, the normalised mean of its examples' unit embeddings, and the branch whose centroid
is most similar (cosine) to ``text`` wins. Centroids rather than k-nearest neighbours: averaging
cancels what single examples say about their topic and keeps what the branch's examples share (short
fact questions versus multi-part analysis), which is what a route decides on; it needs fewer
examples, does not favour the branch with more of them, and mixes languages in one branch well
(measured on English, German and French questions with all-MiniLM-L6-v2: centroids chose right where
1- and 2-nearest-neighbour voting did not). The reason still names the nearest examples, for people.
A best similarity under ``threshold`` gives ``default``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from rillflow.nodes.base import CheckContext, Emit, FlowEnv, Node, NodeConfig, Output, OutputField, RunContext, Signal, Wired, register
from rillflow.runtime.errors import NodeError, suggest
from rillflow.runtime.templating import TemplateSyntaxError, compile_condition, condition_source, undeclared_variables

if TYPE_CHECKING:
    from rillflow.nodes.embedder import Embedder

#: Branch names are compared in downstream conditions (``route.branch == 'simple'``): keep them plain.
Branch = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,63}$")]
#: How many nearest examples the reason names.
NEAREST_SHOWN = 2


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    when: str = Field(description="Jinja2 condition over the route's vars, e.g. \"n_docs == 0\".")
    branch: Branch = Field(description="The branch chosen when the condition is true.")


@register("route")
class RouteNode(Node):
    """Choose a branch: the first true of ``conditions``, or the closest ``examples`` to ``text``."""

    class Config(NodeConfig):
        conditions: list[Condition] | None = Field(None, description="Tried in order; the first true one chooses its branch.")
        vars: dict[str, Wired[Any]] = Field(default_factory=dict, description="Variables the conditions read: literals or references.")
        text: Wired[str] | None = Field(None, description="The text the classifier routes (with examples).")
        examples: dict[Branch, list[str]] | None = Field(None, description="Branch -> example texts; the closest branch centroid wins.")
        threshold: float = Field(0.0, ge=-1, le=1, description="Least cosine similarity the best branch needs; below it, default.")
        default: Branch = Field(description="The branch when no condition is true, the best similarity is under threshold, or text is empty.")
        embedder: str = Field("all-MiniLM-L6-v2", description="The classifier's sentence-transformers model: a packaged name or a folder.")

        @model_validator(mode="after")
        def _one_mode(self) -> RouteNode.Config:
            if (self.conditions is None) == (self.examples is None):
                raise ValueError("give exactly one of 'conditions' or 'examples'")
            if self.examples is not None and self.text is None:
                raise ValueError("a classifier ('examples') needs 'text', the text to route")
            if self.conditions is not None and self.text is not None:
                raise ValueError("'text' is for a classifier ('examples'); conditions read 'vars'")
            return self

    @classmethod
    def outputs(cls, config: Any) -> dict[str, OutputField]:
        return {
            "branch": OutputField("string", description="The chosen branch."),
            "reason": OutputField("string", description="Why: the condition that matched, or the scores and nearest examples."),
            "scores": OutputField("object", description="Branch -> cosine similarity of its centroid to text (empty for conditions)."),
        }

    @classmethod
    def check(cls, config: Any, ctx: CheckContext) -> None:
        if config.conditions is not None:
            _check_conditions(config.conditions, set(config.vars), ctx)
        if config.examples is not None:
            _check_examples(config.examples, config.default, ctx)
            _check_embedder(config.embedder, ctx)

    def __init__(self, node_id: str, config: Any, flow_dir: str = ".", env: FlowEnv | None = None) -> None:
        super().__init__(node_id, config, flow_dir, env)
        self._conditions = [(c.when, c.branch, compile_condition(c.when)) for c in config.conditions or ()]
        self._examples: dict[str, list[str]] | None = config.examples
        self._embedder_name: str = config.embedder
        self._index: _Index | None = None

    def prepare(self) -> None:
        """Embed the examples once (blocking; the embedder itself is loaded once per process)."""
        if self._examples is not None and self._index is None:
            from rillflow.nodes.embedder import load_embedder

            self._index = _Index.build(load_embedder(self._embedder_name, self.flow_dir), self._examples)

    async def run(self, ctx: RunContext, inputs: dict[str, Any]) -> AsyncIterator[Emit]:
        if self._examples is None:
            branch, reason, scores = self._by_conditions(inputs["vars"], inputs["default"])
        else:
            if self._index is None:  # a plan is prepared before its first run; this covers direct use
                await ctx.to_thread(self.prepare)
            assert self._index is not None
            branch, reason, scores = await self._by_examples(ctx, inputs["text"], inputs["threshold"], inputs["default"])
        yield Signal("route_chosen", {"branch": branch, "reason": reason, "scores": scores})
        yield Output(branch=branch, reason=reason, scores=scores)

    def _by_conditions(self, variables: dict[str, Any], default: str) -> tuple[str, str, dict[str, float]]:
        for i, (source, branch, condition) in enumerate(self._conditions, 1):
            try:
                hit = bool(condition(**variables))
            except Exception as exc:  # StrictUndefined, a type error in a comparison, the sandbox
                raise NodeError("config", f"route '{self.id}': condition {i} ({source}) failed: {type(exc).__name__}: {exc}") from exc
            if hit:
                return branch, f"condition {i} is true: {source}", {}
        return default, "no condition is true: default", {}

    async def _by_examples(self, ctx: RunContext, text: Any, threshold: float, default: str) -> tuple[str, str, dict[str, float]]:
        assert self._index is not None
        if text is None or not str(text).strip():
            return default, "the text is empty: default", {}
        scores, nearest = await ctx.to_thread(self._index.score, str(text))
        ranked = sorted(scores, key=scores.__getitem__, reverse=True)
        best = ranked[0]
        shown = ", ".join(f"'{_short(t)}' ({b} {s:.2f})" for t, b, s in nearest)
        if scores[best] < threshold:
            return default, f"no branch reached the threshold {threshold:.2f} (best: {best} {scores[best]:.2f}): default; nearest examples: {shown}", scores
        runner_up = f", next {ranked[1]} {scores[ranked[1]]:.2f}" if len(ranked) > 1 else ""
        return best, f"closest to {best} ({scores[best]:.2f}{runner_up}); nearest examples: {shown}", scores


@dataclass(frozen=True)
class _Index:
    """The embedded examples: one unit centroid per branch, and every example for the reason."""

    embedder: Embedder
    branches: tuple[str, ...]
    centroids: Any  # numpy (branches x dim), unit rows
    vectors: Any  # numpy (examples x dim), unit rows
    labels: tuple[tuple[str, str], ...]  # (example text, branch) per row of vectors

    @classmethod
    def build(cls, embedder: Embedder, examples: dict[str, list[str]]) -> _Index:
        import numpy as np

        labels = tuple((text, branch) for branch, texts in examples.items() for text in texts)
        vectors = np.asarray(embedder.embed([t for t, _ in labels]), dtype=np.float32)
        rows = []
        for branch in examples:
            mean = vectors[[i for i, (_, b) in enumerate(labels) if b == branch]].mean(axis=0)
            rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        return cls(embedder, tuple(examples), np.stack(rows), vectors, labels)

    def score(self, text: str) -> tuple[dict[str, float], list[tuple[str, str, float]]]:
        """Branch -> similarity of its centroid to ``text``, and the nearest examples (blocking)."""
        import numpy as np

        query = np.asarray(self.embedder.embed_one(text), dtype=np.float32)
        scores = {b: round(float(s), 4) for b, s in zip(self.branches, self.centroids @ query, strict=True)}
        sims = self.vectors @ query
        nearest = [(self.labels[i][0], self.labels[i][1], float(sims[i])) for i in np.argsort(-sims)[:NEAREST_SHOWN]]
        return scores, nearest


def _short(text: str, limit: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# -- load-time checks ------------------------------------------------------------------------
def _check_conditions(conditions: list[Condition], provided: set[str], ctx: CheckContext) -> None:
    for i, cond in enumerate(conditions):
        loc: tuple[str | int, ...] = ("conditions", i, "when")
        try:
            compile_condition(cond.when)
            names = undeclared_variables(condition_source(cond.when))
        except TemplateSyntaxError as exc:
            ctx.error(loc, "E130", f"condition syntax: {(exc.message or '').replace('end of template', 'end of the condition')}")
            continue
        except RecursionError:
            ctx.error(loc, "E130", "condition syntax: the condition nests too deeply: simplify it")
            continue
        for name in sorted(names - provided):
            hint = ("conditions read vars, not inputs: add vars: {NAME: ${inputs.NAME}} and test NAME" if name == "inputs"
                    else f"add it to 'vars' (vars: {{{name}: ${{inputs.{name}}}}}, or a node's ${{node.field}})")
            ctx.error(loc, "E131", f"condition reads '{name}', which is not in vars{suggest(name, provided)}: {hint}")


def _check_examples(examples: dict[str, list[str]], default: str, ctx: CheckContext) -> None:
    if len(examples) < 2:
        ctx.error(("examples",), "E132", "a classifier needs examples for at least two branches (one branch leaves nothing to choose)")
    seen: dict[str, str] = {}
    for branch, texts in examples.items():
        if not texts:
            ctx.error(("examples", branch), "E132", f"branch '{branch}' has no examples: give a few texts that should go there")
        for j, text in enumerate(texts):
            key = " ".join(text.split()).lower()
            if not key:
                ctx.error(("examples", branch, j), "E132", f"example {j + 1} of branch '{branch}' is empty")
            elif seen.setdefault(key, branch) != branch:
                ctx.error(("examples", branch, j), "E132", f"example '{_short(text)}' is in both '{seen[key]}' and '{branch}': keep it in one")
    if default not in examples:
        known = ", ".join(examples)
        ctx.error(("default",), "E133", f"default branch '{default}' has no examples (branches: {known}){suggest(default, examples)}")


def _check_embedder(name: str, ctx: CheckContext) -> None:
    """Cheap: a packaged name or an existing folder (loading it waits for prepare())."""
    from rillflow.nodes.model_files import PACKAGED_EMBEDDERS

    if name in PACKAGED_EMBEDDERS or Path(ctx.flow_dir, os.path.expanduser(name)).is_dir():
        return
    known = ", ".join(sorted(k for k in PACKAGED_EMBEDDERS if "/" not in k))
    ctx.error(("embedder",), "E134", f"embedder '{name}' is neither a packaged model ({known}) nor a folder beside the flow")


__all__ = ["Condition", "RouteNode"]
