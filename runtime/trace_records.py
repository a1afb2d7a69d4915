"""The record of a run: what the trace store writes, the OTLP exporter receives and ``get_run`` returns.

A record is a dict with the ``runs`` columns (RUN_COLUMNS), ``spans`` (each with the SPAN_COLUMNS,
``attributes`` and ``events`` decoded, ``start_ms``/``end_ms`` since the run started) and, once read
back, ``feedback``. ``to_record`` builds one from a finished RunTrace, redacted; ``run_dict`` and
``span_dict`` turn the rows of the trace file back into one, decoding the JSON columns that
``to_json`` wrote. Pure functions: the file itself is rillflow.runtime.trace_db.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from rillflow.runtime.redact import Redactor
from rillflow.runtime.trace_model import RunTrace, Span

RUN_COLUMNS = ("run_id", "trace_id", "root_span_id", "flow", "tenant", "started_at", "duration_ms", "status", "error_kind",
               "error_message", "ttft_ms", "input_tokens", "output_tokens", "cost", "cache_hits", "inputs", "outputs", "span_count")
SPAN_COLUMNS = ("span_id", "node", "node_type", "attempt", "start_ms", "end_ms", "status", "attributes", "events")


def to_record(trace: RunTrace, redactor: Redactor) -> dict[str, Any]:
    """The redacted record of a trace: what is written, exported, and read back by ``get_run``."""
    r = redactor.with_secrets(trace.secrets)
    spans = sorted((_span_record(span, r) for span in trace.spans), key=lambda s: s["start_ms"])
    return {
        "run_id": trace.run_id, "trace_id": trace.trace_id, "root_span_id": trace.root_span_id, "flow": trace.flow,
        "tenant": trace.tenant, "started_at": trace.started_at, "duration_ms": trace.duration_ms, "status": trace.status,
        "error_kind": trace.error_kind, "error_message": None if trace.error_message is None else r.redact_text(trace.error_message),
        "ttft_ms": trace.ttft_ms, "input_tokens": trace.input_tokens, "output_tokens": trace.output_tokens, "cost": trace.cost,
        "cache_hits": trace.cache_hits, "inputs": r.redact_value(trace.inputs), "outputs": r.redact_value(trace.outputs),
        "span_count": len(spans), "spans": spans,
    }


def _span_record(span: Span, r: Redactor) -> dict[str, Any]:
    # Attribute names are rillflow's own (trace_model.ATTRIBUTES): only the values are redacted.
    attributes = {str(k): r.redact_value(v) for k, v in span.attributes.items()}
    if span.inputs is not None:
        attributes["rill.input"] = r.truncate(to_json(r.redact_value(span.inputs)))
    if span.outputs is not None:
        attributes["rill.output"] = r.truncate(to_json(r.redact_value(span.outputs)))
    return {
        "span_id": span.span_id, "node": span.node, "node_type": span.node_type, "attempt": span.attempt,
        "start_ms": span.start * 1000.0, "end_ms": None if span.end is None else span.end * 1000.0, "status": span.status,
        "attributes": attributes,
        "events": [{"time_ms": t * 1000.0, "name": str(name), "data": r.redact_value(data)} for t, name, data in span.events],
    }


def run_dict(row: sqlite3.Row) -> dict[str, Any]:
    """A ``runs`` row as a record, its JSON columns decoded (no spans or feedback yet)."""
    run = {c: row[c] for c in RUN_COLUMNS}
    run["inputs"], run["outputs"] = from_json(run["inputs"]), from_json(run["outputs"])
    return run


def span_dict(row: sqlite3.Row) -> dict[str, Any]:
    """A ``spans`` row as a span of a record, its attributes and events decoded."""
    span = {c: row[c] for c in SPAN_COLUMNS}
    span["attributes"] = from_json(span["attributes"]) or {}
    span["events"] = from_json(span["events"]) or []
    return span


def to_json(value: Any) -> str:
    """``value`` as compact JSON for a column; what JSON cannot hold becomes its ``str``."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def from_json(text: str | None) -> Any:
    """A JSON column decoded; text that is not JSON comes back as it is."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
