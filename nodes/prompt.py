"""`prompt`: render a Jinja2 template (or chat messages) in the sandbox.

Values reach the template only as variables (``vars``), so a user who types ``{{ 7*7 }}`` gets
those characters back, never 49.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from jinja2 import TemplateError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rillflow.nodes.base import CheckContext, Emit, FlowEnv, Node, NodeConfig, Output, OutputField, RunContext, Wired, register
from rillflow.runtime.errors import NodeError
from rillflow.runtime.templating import SecurityError, TemplateSyntaxError, compile_template, undeclared_variables


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str = Field(description="A Jinja2 template.")


@register("prompt")
class PromptNode(Node):
    """Render ``template`` (or ``template_file``, or ``messages``) with ``vars`` as variables."""

    class Config(NodeConfig):
        template: str | None = Field(None, description="Jinja2 template; its variables must be given in vars.")
        template_file: str | None = Field(None, description="Path of a Jinja2 template, relative to the flow file.")
        messages: list[Message] | None = Field(None, description="Chat messages whose contents are templates.")
        vars: dict[str, Wired[Any]] = Field(default_factory=dict, description="Template variables: literals or references.")
        max_chars: int = Field(100_000, ge=1, description="Longest rendered text; longer fails the node.")

        @model_validator(mode="after")
        def _one_source(self) -> PromptNode.Config:
            given = [n for n in ("template", "template_file", "messages") if getattr(self, n) is not None]
            if len(given) != 1:
                raise ValueError("give exactly one of 'template', 'template_file' or 'messages'")
            return self

    @classmethod
    def outputs(cls, config: Any) -> dict[str, OutputField]:
        return {
            "text": OutputField("string", description="The rendered text (message contents joined)."),
            "messages": OutputField("list", description="Chat messages [{role, content}]."),
        }

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

    def __init__(self, node_id: str, config: Any, flow_dir: str = ".", env: FlowEnv | None = None) -> None:
        super().__init__(node_id, config, flow_dir, env)
        if config.messages is not None:
            self._messages = [(m.role, compile_template(m.content)) for m in config.messages]
        else:
            source = config.template if config.template is not None else _read(flow_dir, config.template_file)
            self._messages = [("user", compile_template(source))]
        self._single = config.messages is None

    async def run(self, ctx: RunContext, inputs: dict[str, Any]) -> AsyncIterator[Emit]:
        variables = inputs["vars"]
        try:
            messages = [{"role": role, "content": tpl.render(variables)} for role, tpl in self._messages]
        except SecurityError as exc:
            raise NodeError("config", f"template of node '{self.id}' tried an unsafe operation: {exc}") from exc
        except TemplateError as exc:
            raise NodeError("config", f"template of node '{self.id}' failed: {exc}") from exc
        text = messages[0]["content"] if self._single else "\n\n".join(m["content"] for m in messages)
        if len(text) > inputs["max_chars"]:
            raise NodeError("invalid_output", f"prompt '{self.id}' rendered {len(text)} characters; the limit is {inputs['max_chars']}")
        yield Output(text=text, messages=messages)


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
