"""The `split` node: a long text cut into passages for a `map`, with the splitter `rill ingest` uses."""

from __future__ import annotations

from tests.helpers import flow, run_flow

DOC = """# Guide

## Setting up
Mount it on an inside wall. Join a 2.4 GHz network.

## Schedules
It learns your week. Holiday mode keeps 12 degrees.
"""


def split_flow(extra: str = "") -> object:
    return flow(f"""
inputs: {{doc: {{type: string}}}}
outputs: {{passages: "${{split.passages}}", count: "${{split.count}}", parts: "${{label.text}}"}}
nodes:
  split: {{type: split, text: "${{inputs.doc}}"{extra}}}
  label:
    type: prompt
    template: "{{{{ n }}}}. {{{{ heading }}}}"
    vars: {{n: "${{item.index}}", heading: "${{item.heading}}"}}
    map: {{over: "${{split.passages}}"}}
""")


async def test_passages_follow_headings_and_feed_a_map() -> None:
    result = await run_flow(split_flow(), {"doc": DOC})
    assert result.ok, result.error
    assert result.outputs["count"] == 2
    assert [p["index"] for p in result.outputs["passages"]] == [1, 2]
    assert "Join a 2.4 GHz network." in result.outputs["passages"][0]["text"]
    assert "Holiday mode" in result.outputs["passages"][1]["text"]
    assert result.outputs["parts"] == ["1. Guide > Setting up", "2. Guide > Schedules"]
    progress = [e.data for e in result.events if e.type == "node_progress" and e.node == "label"]
    assert [p["done"] for p in progress] == [1, 2] and all(p["total"] == 2 for p in progress)


async def test_too_many_passages_fail_before_any_item_runs() -> None:
    doc = "\n\n".join(f"## Part {i}\nText of part {i}." for i in range(1, 6))
    result = await run_flow(split_flow(", max_passages: 3"), {"doc": doc})
    assert not result.ok
    assert result.error is not None and result.error["kind"] == "bad_request"
    assert "5 passages, more than max_passages (3)" in result.error["message"]
    assert not [e for e in result.events if e.node == "label"]


def test_overlap_must_be_smaller_than_the_chunk_size() -> None:
    import pytest

    from rillflow.runtime.errors import FlowError

    with pytest.raises(FlowError, match="overlap"):
        split_flow(", chunk_size: 200, overlap: 200")
