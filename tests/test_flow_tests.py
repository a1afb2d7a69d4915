"""`rill test`: test files validated with positions, every assertion passing and failing with its
message, overrides (forcing a fallback, retries), datasets, reports (JUnit XML against its schema, JSON),
-j N giving the results of -j 1, and the CLI's exit codes. Record and replay against the real model
are in test_flow_cassettes.py."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rillflow.runtime.errors import FlowError
from rillflow.runtime.testfile import load_tests
from rillflow.runtime.testrun import CaseResult, Options, Runner

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "schemas" / "junit-10.xsd"

FLOW = """\
version: 1
name: shop
inputs:
  question: {type: string}
  detailed: {type: boolean, default: false}
outputs:
  answer: ${checked.text}
  data: ${extract.value}
  sources: ${cite.value}
  more: ${extra.text}
nodes:
  draft:
    type: scripted
    text: "Kettles descale monthly [1]. Write to jane@example.com"
    fallback: backup
    retry: {attempts: 2, backoff: 10ms}
  backup: {type: scripted, text: "A backup answer [1]."}
  checked: {type: guardrail, text: "${draft.text}", checks: [pii_redact], stream: buffer}
  extract: {type: static, value: {name: Zephyr, price: 12, tags: [kettle, steel]}}
  cite: {type: static, value: [{marker: "[1]", source: kettle.md}]}
  extra: {type: scripted, text: "more", when: "inputs.detailed"}
"""


def write(folder: Path, tests: str, flow: str = FLOW, name: str = "shop") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(flow)
    path = folder / f"{name}.tests.yaml"
    path.write_text(textwrap.dedent(tests))
    return path


def run(path: Path, **options: object) -> list[CaseResult]:
    return asyncio.run(Runner(Options(**options)).run([load_tests(path)]))  # type: ignore[arg-type]


def one_case(tmp_path: Path, expect: str, overrides: str = "", inputs: str = "{question: kettles?}") -> CaseResult:
    body = f"cases:\n  - name: c\n    inputs: {inputs}\n"
    if overrides:
        body += f"    overrides: {overrides}\n"
    body += "    expect:\n" + textwrap.indent(textwrap.dedent(expect).strip(), "      ") + "\n"
    [result] = run(write(tmp_path, body))
    return result


# (expectation, whether it holds on FLOW's run, a fragment of the failure message)
ASSERTIONS = [
    ("- contains: descale monthly", True, ""),
    ("- contains: [Descale, Weekly]", False, "output 'answer' (node 'checked'): expected to contain 'Descale', 'Weekly'; actual: 'Kettles descale"),
    ("- contains: KETTLES\n  ignore_case: true", True, ""),
    ("- not_contains: jane@example.com", True, ""),
    ("- not_contains: '[EMAIL]'", False, "expected not to contain '[EMAIL]'; actual: 'Kettles descale monthly [1]. Write to [EMAIL]'"),
    ("- equals: Kettles descale monthly [1]. Write to [EMAIL]", True, ""),
    ("- equals: kettles", False, "expected 'kettles'; actual: 'Kettles descale monthly [1]. Write to [EMAIL]'"),
    ("- regex: '^Kettles .* \\[1\\]'", True, ""),
    ("- regex: '^\\d+$'", False, "expected to match /^\\d+$/; actual: 'Kettles"),
    ("- output: data\n  json_schema: {type: object, required: [name, price], properties: {price: {type: integer}}}", True, ""),
    ("- output: data\n  json_schema: {type: object, properties: {price: {type: string}}}", False,
     "output 'data' (node 'extract'): expected to satisfy the JSON Schema; actual: at $.price: 12 is not of type 'string'"),
    ("- output: data\n  jsonpath: $.tags[1]\n  value: steel", True, ""),
    ("- output: data\n  jsonpath: $.tags[0]\n  value: copper", False, "expected $.tags[0] to be 'copper'; actual: 'kettle'"),
    ("- output: data\n  jsonpath: $.colour", False, "expected $.colour to match; actual: no match in"),
    ("- citations: true", True, ""),
    ("- citations: 2", False, "expected at least 2 citations like [1] of the 1 passages in 'sources'; actual: 1 in"),
    ("- similar_to: How often should a kettle be descaled? Monthly.\n  min_similarity: 0.4", True, ""),
    ("- similar_to: The stock market closed higher on Friday.\n  min_similarity: 0.5", False,
     "expected similarity ≥ 0.50 to 'The stock market closed higher on Friday.'; actual: "),
    ("- ran: draft", True, ""),
    ("- ran: extra", False, "expected node 'extra' to run; actual: node 'extra' was skipped"),
    ("- skipped: extra", True, ""),
    ("- skipped: draft", False, "expected node 'draft' to be skipped; actual: node 'draft' ran"),
    ("- failed: draft", False, "expected node 'draft' to fail; actual: node 'draft' ran"),
    ("- fell_back: draft\n  not: true", True, ""),
    ("- fell_back: draft", False, "expected node 'draft' to fall back; actual: node 'draft' ran"),
    ("- cache_hit: draft", False, "expected node 'draft' to hit the cache; actual: node 'draft' ran"),
    ("- flagged: checked\n  check: pii_redact", True, ""),
    ("- flagged: checked\n  check: secrets_redact", False, "expected guardrail 'checked' to flag with check 'secrets_redact'; actual: flagged by pii_redact (redact)"),
    ("- terminal: run_finished\n  status: ok", True, ""),
    ("- terminal: run_failed", False, "expected the run to end with run_failed; actual: run_finished (status ok)"),
    ("- max_latency: 30s", True, ""),
    ("- max_latency: 0ms", False, "expected latency ≤ 0.000s; actual: 0.0"),
    ("- max_ttfc: 30s", True, ""),
    ("- max_ttfc: 0ms", False, "expected the first chunk within 0.000s; actual: "),
    ("- max_tokens: 100", True, ""),
    ("- max_tokens: 3", False, "expected ≤ 3 tokens; actual: 7 (0 in + 7 out)"),
    ("- max_output_tokens: 3", False, "expected ≤ 3 output tokens; actual: 7"),
    ("- max_cost: 0", True, ""),
]


@pytest.mark.parametrize(("expect", "holds", "message"), ASSERTIONS, ids=[a[0].split("\n")[0][2:40] for a in ASSERTIONS])
def test_each_assertion_passes_or_fails_with_expected_and_actual(tmp_path: Path, expect: str, holds: bool, message: str) -> None:
    result = one_case(tmp_path, expect)
    assert [c.passed for c in result.checks] == [holds], result.failures
    assert result.status == ("passed" if holds else "failed")
    if not holds:
        assert message in result.checks[0].message, result.checks[0].message  # type: ignore[operator]


def test_failed_node_and_failed_run_assertions_with_a_forced_failure(tmp_path: Path) -> None:
    flow = FLOW.replace("    fallback: backup\n", "")
    path = write(tmp_path, """\
        cases:
          - name: server error
            inputs: {question: q}
            overrides: {draft: {fail: server}}
            expect:
              - failed: draft
                kind: server
              - terminal: run_failed
                kind: server
              - failed: draft
                kind: timeout
              - contains: anything
    """, flow=flow)
    [result] = run(path)
    assert [c.passed for c in result.checks] == [True, True, False, False]
    assert "expected node 'draft' to fail with kind 'timeout'; actual: node 'draft' failed (server: failed by a test override)" in result.failures[0]
    assert result.failures[1] == ("contains: expected output 'answer' (node 'checked') for 'contains'; actual: no output: "
                                  "the run failed at node 'draft' (server: failed by a test override)")


def test_overrides_force_a_fallback_retry_and_fixed_outputs(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        cases:
          - name: falls back when the model is down
            inputs: {question: q}
            overrides: {draft: {fail: {kind: server, message: model down}}}
            expect:
              - fell_back: draft
                to: backup
              - equals: A backup answer [1].
          - name: retries a transient failure without falling back
            inputs: {question: q}
            overrides: {draft: {fail: {kind: rate_limit, times: 1}}}
            expect:
              - fell_back: draft
                not: true
              - contains: descale
          - name: a non-retryable failure falls back at once
            inputs: {question: q}
            overrides: {draft: {fail: auth, delay: 50ms}}
            expect:
              - fell_back: draft
              - max_latency: 5s
          - name: fixed output and chunks
            inputs: {question: q}
            overrides:
              draft: {chunks: ["Call ", "me at ", "bob@example.org"]}
              extract: {output: {name: Other}}
            expect:
              - equals: Call me at [EMAIL]
              - output: data
                equals: {name: Other}
    """)
    results = run(path)
    assert [r.status for r in results] == ["passed"] * 4, [r.failures for r in results]
    events = _events_of(path, "retries a transient failure without falling back")
    assert [e.type for e in events if e.node == "draft" and e.type in ("node_retry", "node_finished")] == ["node_retry", "node_finished"]


def _events_of(path: Path, case: str) -> list:  # type: ignore[type-arg]
    """The events of one case's run, through the same plan copy the runner builds."""
    from rillflow.runtime.sync import collect
    from rillflow.runtime.testrun import case_plan

    tf = load_tests(path)
    tc = next(c for c in tf.cases if c.name == case)
    return asyncio.run(collect(case_plan(tf.plan, tc, None), dict(tc.inputs))).events


def test_repeat_with_a_cache_asserts_a_cache_hit(tmp_path: Path) -> None:
    flow = FLOW.replace("    retry: {attempts: 2, backoff: 10ms}\n", "    retry: {attempts: 2, backoff: 10ms}\n    cache: 10m\n")
    path = write(tmp_path, """\
        cases:
          - name: second ask is cached
            repeat: 2
            inputs: {question: q}
            expect:
              - cache_hit: draft
                tier: exact
          - name: one ask is not
            inputs: {question: q}
            expect:
              - cache_hit: draft
                not: true
    """, flow=flow)
    assert [r.status for r in run(path)] == ["passed", "passed"]


def test_cases_from_jsonl_and_csv_rows(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"name": "kettle", "question": "k?", "word": "descale"}\n\n{"question": "x?", "word": "weekly"}\n')
    (tmp_path / "rows.csv").write_text("question,word\nk?,Kettles\n")
    path = write(tmp_path, """\
        cases:
          - name: rows
            cases_from: rows.jsonl
            expect:
              - contains: ${row.word}
          - name: table
            cases_from: rows.csv
            expect:
              - contains: ${row.word}
    """)
    results = run(path)
    assert [(r.case, r.status) for r in results] == [("rows[kettle]", "passed"), ("rows[2]", "failed"), ("table[1]", "passed")]
    assert "expected to contain 'weekly'" in results[1].failures[0]


def test_keyword_filter_and_skip(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        cases:
          - name: alpha one
            inputs: {question: q}
            expect: [{ran: draft}]
          - name: beta
            inputs: {question: q}
            skip: waiting for the new model
            expect: [{ran: draft}]
          - name: alpha two
            inputs: {question: q}
            expect: [{ran: draft}]
    """)
    assert [r.case for r in run(path, keyword="ALPHA")] == ["alpha one", "alpha two"]
    skipped = run(path, keyword="beta")
    assert [(r.status, r.problems) for r in skipped] == [("skipped", ["waiting for the new model"])]


def test_invalid_inputs_are_a_case_error_not_a_crash(tmp_path: Path) -> None:
    [result] = run(write(tmp_path, "cases:\n  - {name: c, inputs: {detailed: 3}, expect: [{ran: draft}]}\n"))
    assert result.status == "error"
    assert "question" in result.failures[0] and "invalid inputs" in result.failures[0]


INVALID = [
    ("cases:\n  - name: c\n    expect:\n      - contans: x\n", "4:9", "unknown field 'contans'; did you mean 'contains'?"),
    ("cases:\n  - name: c\n    expect:\n      - {contains: x, regex: y}\n", "4:9", "one assertion per expectation, not contains and regex"),
    ("cases:\n  - name: c\n    overrides:\n      darft: {fail: server}\n", "4:7", "flow 'shop' has no node 'darft'; did you mean 'draft'?"),
    ("cases:\n  - name: c\n    overrides:\n      draft: {fail: broken}\n", "4:21", "overrides.draft.fail"),
    ("cases:\n  - name: c\n    overrides:\n      draft: {output: x, fail: server}\n", "4:7", "give one of output, chunks and fail, not output and fail"),
    ("cases:\n  - name: c\n    overrides:\n      extract: {chunks: [a]}\n", "4:17", "node 'extract' streams no output; give 'output:' instead"),
    ("cases:\n  - name: c\n    inputs: {questoin: q}\n", "3:14", "flow 'shop' has no input 'questoin'; did you mean 'question'?"),
    ("cases:\n  - name: c\n    expect:\n      - {output: answr, contains: x}\n", "4:18", "flow 'shop' has no output 'answr'; did you mean 'answer'?"),
    ("cases:\n  - name: c\n    expect:\n      - {ran: nope}\n", "4:15", "flow 'shop' has no node 'nope'"),
    ("cases:\n  - name: c\n    expect:\n      - {regex: '(unclosed'}\n", "4:17", "not a regular expression"),
    ("cases:\n  - name: c\n    expect:\n      - {judge: is it polite?}\n", "4:10", "a judge assertion needs a judge model"),
    ("cases:\n  - name: c\n  - name: c\n", "3:11", "case name 'c' is used twice"),
    ("cases:\n  - name: c\n    cases_from: missing.jsonl\n", "3:17", "dataset"),
    ("cases: []\n", "1:8", "cases"),
]


@pytest.mark.parametrize(("text", "where", "message"), INVALID, ids=[m[:30] for _, _, m in INVALID])
def test_invalid_test_files_are_reported_at_their_position(tmp_path: Path, text: str, where: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(FlowError) as caught:
        load_tests(path)
    lines = [str(d) for d in caught.value.diagnostics]
    assert any(line.startswith(f"{path}:{where}: error: ") and message in line for line in lines), lines


def test_a_broken_flow_is_reported_with_its_own_positions(tmp_path: Path) -> None:
    path = write(tmp_path, "cases:\n  - name: c\n", flow=FLOW.replace("type: static", "type: statik", 1))
    with pytest.raises(FlowError) as caught:
        load_tests(path)
    assert str(caught.value.diagnostics[0]).startswith(f"{tmp_path / 'shop.yaml'}:19:19:")


MIXED = """\
cases:
  - name: passes
    inputs: {question: q}
    expect: [{contains: descale}, {ran: draft}]
  - name: fails twice
    inputs: {question: q}
    expect: [{contains: weekly}, {max_tokens: 1}]
  - name: falls back
    inputs: {question: q}
    overrides: {draft: {fail: server, delay: 30ms}}
    expect: [{fell_back: draft}]
  - name: slow chunks
    inputs: {question: q}
    overrides: {draft: {chunks: [a, b, c], delay: 60ms}}
    expect: [{equals: abc}, {max_ttfc: 30s}]
  - name: wrong inputs
    inputs: {detailed: true}
    expect: [{ran: draft}]
  - name: skipped
    skip: not today
    inputs: {question: q}
"""


def _stable(results: list[CaseResult]) -> list[tuple[str, str, list[str]]]:
    return [(r.case, r.status, r.failures) for r in results]


def test_concurrent_runs_give_the_same_results_as_one_at_a_time(tmp_path: Path) -> None:
    path = write(tmp_path, MIXED)
    serial, parallel = run(path, jobs=1), run(path, jobs=6)
    assert _stable(serial) == _stable(parallel)
    assert [r.status for r in serial] == ["passed", "failed", "passed", "passed", "error", "skipped"]


def rill(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rillflow.runtime.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RILL_STATE_DIR": str(cwd / ".rill")})


def test_cli_reports_junit_xml_valid_against_its_schema_and_json(tmp_path: Path) -> None:
    import xmlschema  # type: ignore[import-untyped]

    write(tmp_path, MIXED)
    done = rill("test", ".", "-j", "3", "--junit-xml", "out/report.xml", "--json", "out/report.json", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED shop.tests.yaml:5 fails twice" in done.stdout
    assert "expected ≤ 1 tokens; actual: 7 (0 in + 7 out)" in done.stdout
    assert "3 passed, 1 failed, 1 error, 1 skipped" in done.stdout
    schema = xmlschema.XMLSchema(str(SCHEMA))
    schema.validate(str(tmp_path / "out" / "report.xml"))  # raises on any violation
    suite = schema.to_dict(str(tmp_path / "out" / "report.xml"))["testsuite"][0]
    assert (suite["@tests"], suite["@failures"], suite["@errors"], suite["@skipped"]) == ("6", "1", "1", "1")
    cases = {c["@name"]: c for c in suite["testcase"]}
    assert "expected to contain 'weekly'" in cases["fails twice"]["failure"][0]["@message"]
    assert cases["skipped"]["skipped"][0]["@message"] == "not today"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["summary"] == {**report["summary"], "passed": 3, "failed": 1, "error": 1, "skipped": 1, "total": 6}
    assert report["cases"][1]["failures"][1] == "max_tokens: expected ≤ 1 tokens; actual: 7 (0 in + 7 out)"


def test_cli_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good"
    write(good, "cases:\n  - {name: ok, inputs: {question: q}, expect: [{ran: draft}]}\n")
    assert rill("test", str(good), cwd=tmp_path).returncode == 0
    bad = tmp_path / "bad"
    write(bad, "cases:\n  - {name: ok, inputs: {question: q}, expect: [{rann: draft}]}\n")
    done = rill("test", str(bad), str(good), cwd=tmp_path)
    assert done.returncode == 2
    assert f"{bad / 'shop.tests.yaml'}:2:49: error: unknown field 'rann'; did you mean 'ran'?" in done.stderr
    assert "1 passed" in done.stdout  # the valid file still ran
    assert "Traceback" not in done.stderr
    assert rill("test", str(tmp_path / "nowhere"), cwd=tmp_path).returncode == 2
    assert rill("test", "--record", "--live", str(good), cwd=tmp_path).returncode == 2


def test_eval_reports_pass_rates_latency_tokens_and_compares_with_a_baseline(tmp_path: Path) -> None:
    write(tmp_path, "cases:\n  - name: c\n")
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"question": "a", "word": "descale"}, {"question": "b", "word": "weekly"},
        {"question": "c", "word": "Kettles", "expect": [{"max_tokens": 1}]}]) + "\n")
    (tmp_path / "expect.yaml").write_text("- contains: ${row.word}\n- terminal: run_finished\n")
    first = rill("eval", "shop.yaml", "data.jsonl", "--expect", "expect.yaml", "-j", "2", "--out", "first.json", cwd=tmp_path)
    assert first.returncode == 1, first.stdout + first.stderr  # one row misses its word, one its token budget
    record = json.loads((tmp_path / "first.json").read_text())
    assert record["pass_rates"] == {"contains": 0.6667, "terminal:run_finished": 1.0, "max_tokens": 0.0}
    assert record["metrics"]["rows"] == 3 and record["metrics"]["rows passed"] == 1 and record["metrics"]["tokens"] == 21
    assert 0 < record["metrics"]["latency p50 (s)"] <= record["metrics"]["latency p95 (s)"]
    assert "pass rate: contains" in first.stdout and "latency p95 (s)" in first.stdout
    (tmp_path / "data.jsonl").write_text(json.dumps({"question": "a", "word": "descale"}) + "\n")
    second = rill("eval", "shop.yaml", "data.jsonl", "--expect", "expect.yaml", "--baseline", "first.json", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"baseline {record['id']}" in second.stdout
    row = next(line for line in second.stdout.splitlines() if "pass rate: contains" in line)
    assert [c.strip() for c in row.split("│")[1:-1]] == ["pass rate: contains", "0.6667", "1", "+0.3333"]
    saved = list((tmp_path / ".rill" / "evals").glob("*.json"))
    assert len(saved) == 1  # without --out, runs are kept for --baseline ID
    by_id = rill("eval", "shop.yaml", "data.jsonl", "--baseline", saved[0].stem, cwd=tmp_path)
    assert by_id.returncode == 0 and f"baseline {saved[0].stem}" in by_id.stdout
    missing = rill("eval", "shop.yaml", "data.jsonl", "--baseline", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "baseline 'nope': no such eval run" in missing.stderr


def test_eval_rejects_bad_expectations_at_their_position(tmp_path: Path) -> None:
    write(tmp_path, "cases:\n  - name: c\n")
    (tmp_path / "data.jsonl").write_text('{"question": "a"}\n')
    (tmp_path / "expect.yaml").write_text("- contains: x\n- max_latncy: 2s\n")
    done = rill("eval", "shop.yaml", "data.jsonl", "--expect", "expect.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert "expect.yaml:2:3: error: unknown field 'max_latncy'; did you mean 'max_latency'?" in done.stderr


def test_a_bad_jsonpath_is_reported_at_its_position(tmp_path: Path) -> None:
    path = write(tmp_path, "cases:\n  - name: c\n    expect:\n      - {output: data, jsonpath: '$.a[?(@'}\n")
    with pytest.raises(FlowError) as caught:
        load_tests(path)
    assert str(caught.value.diagnostics[0]).startswith(f"{path}:4:34: error: not a JSONPath: ")
