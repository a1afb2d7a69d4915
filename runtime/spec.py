"""The flow file format, version 1, as pydantic models (the reference is docs/flow-spec.md).

Node configs are validated separately, each against its own type's ``Config`` (a registry of names,
never an import path), so an error in one node never hides errors in another.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rillflow.nodes.base import Wired
from rillflow.runtime.policies import Defaults, Duration

InputType = Literal["string", "integer", "number", "boolean", "list", "object", "chat_history"]
ID_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
FLOW_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class InputSpec(Strict):
    """One flow input: its type, default and limits, enforced before a run starts."""

    type: InputType = Field("string", description="string, integer, number, boolean, list, object or chat_history.")
    description: str | None = None
    default: Any = Field(None, description="Value used when the caller gives none; without it the input is required.")
    required: bool | None = Field(None, description="Defaults to true when no default is given.")
    max_length: int | None = Field(None, ge=0, description="Longest string, or most list items / chat messages.")
    min_length: int | None = Field(None, ge=0)
    minimum: float | None = None
    maximum: float | None = None
    enum: list[Any] | None = Field(None, description="Allowed values.")

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else "default" not in self.model_fields_set


class Price(Strict):
    input: float = Field(0.0, ge=0, description="Price per million input tokens.")
    output: float = Field(0.0, ge=0, description="Price per million output tokens.")


class LlamaCppModel(Strict):
    """A local GGUF model run by llama.cpp (llama-cpp-python)."""

    provider: Literal["llama_cpp"]
    model: str | None = Field(None, description="A packaged model name, e.g. gemma3-270m.")
    path: str | None = Field(None, description="Path to a .gguf file (relative to the flow).")
    n_ctx: int = Field(4096, ge=256, le=1_048_576)
    n_threads: int | None = Field(None, ge=1)
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to the GPU; -1 for all (needs a CUDA build).")
    temperature: float = Field(0.2, ge=0, le=2)
    seed: int | None = None
    chat_template: str | None = Field(None, description="gemma, chatml, or a Jinja2 chat template; default: the GGUF's own, else by architecture.")
    prompt_lookup: int = Field(0, ge=0, le=64, description="Prompt-lookup speculative decoding: tokens drafted per step (0 = off; try 10 for RAG).")
    price_per_mtok: Price | None = Field(None, description="Optional: price local compute per million tokens, for cost reports.")

    @model_validator(mode="after")
    def _model_or_path(self) -> LlamaCppModel:
        if (self.model is None) == (self.path is None):
            raise ValueError("give exactly one of 'model' (a packaged name) or 'path' (a .gguf file)")
        return self


class OpenAIModel(Strict):
    """Any OpenAI-compatible chat API (OpenAI, vLLM, TGI, llama.cpp server, Ollama)."""

    provider: Literal["openai"]
    model: Wired[str]
    base_url: Wired[str] | None = Field(None, description="e.g. http://127.0.0.1:8080/v1; defaults to OpenAI's.")
    api_key: Wired[str] | None = Field(None, description="Always ${env.NAME}: literal keys are refused.")
    temperature: float = Field(0.2, ge=0, le=2)
    seed: int | None = None
    request_timeout: Duration = Field(60.0, description="Per-request HTTP timeout.")
    structured_output: Literal["json_schema", "json_object"] = Field(
        "json_schema", description="How an llm with json_schema asks: json_schema (OpenAI, vLLM, llama-server) or json_object (llama-cpp-python's server).")
    price_per_mtok: Price | None = None


ModelResource = Annotated[LlamaCppModel | OpenAIModel, Field(discriminator="provider")]


class QdrantLocal(Strict):
    path: str = Field(".rill/qdrant", description="Folder of local Qdrant storage (one process at a time).")


class QdrantServer(Strict):
    url: Wired[str]
    api_key: Wired[str] | None = None


class CollectionResource(Strict):
    """A vector collection: which embedder fills it and where Qdrant keeps it."""

    embedder: str = Field("all-MiniLM-L6-v2", description="A sentence-transformers model name or path.")
    qdrant: QdrantLocal | QdrantServer = Field(default_factory=QdrantLocal)
    name: str | None = Field(None, description="Qdrant collection name; defaults to the key.")
    sources: list[str] = Field(default_factory=list, description=(
        "Files or folders (relative to the flow) that `rill serve` ingests, incrementally, before it serves: "
        "unchanged files are skipped, so a restart costs seconds."))


class FlowSpec(Strict):
    """A whole flow file. ``nodes`` values are checked against their own type's config."""

    version: Literal[1] = Field(description="Flow format version; 1 is the only one.")
    name: str = Field(pattern=FLOW_NAME_PATTERN, description="Flow name; the model name on /v1/chat/completions.")
    description: str | None = None
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    outputs: dict[str, Wired[Any]] = Field(description="Output name -> reference, e.g. answer: ${llm.text}.")
    models: dict[str, ModelResource] = Field(default_factory=dict)
    collections: dict[str, CollectionResource] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    concurrency: int | None = Field(None, ge=1, le=10_000, description="Most nodes running at once in one run.")
    nodes: dict[str, dict[str, Any]] = Field(description="Node id -> node config; the id must match [a-z][a-z0-9_]{0,63}.")
