from __future__ import annotations

from pathlib import Path

import pytest

from rillflow.runtime.compiler import load_flow_text
from rillflow.runtime.errors import FlowError

FLOW = """\
version: 1
name: demo
inputs:
  question: {type: string}
outputs:
  answer: ${answer.text}
nodes:
  prompt:
    type: prompt
    template: "Q: {{ q }}"
    vars: {q: "${inputs.question}"}
  answer:
    type: scripted
    text: "A: ${prompt.text}"
"""


def test_valid_flow_compiles_to_plan_with_order_and_stream_edge():
    plan = load_flow_text(FLOW)
    assert plan.order == ("prompt", "answer")
    assert plan.nodes["answer"].deps == ("prompt",)
    assert plan.output_streams == {"answer"}


def test_unknown_node_reference_points_at_the_reference(tmp_path: Path):
    bad = FLOW.replace("${prompt.text}", "${promt.text}")
    with pytest.raises(FlowError, match=r"<flow>:14:15: error: unknown node 'promt'; did you mean 'prompt'\? \[E021\]"):
        load_flow_text(bad)
