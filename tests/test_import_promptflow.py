"""`rill import promptflow`: promptflow DAG flows (fixtures in tests/promptflow/) converted, validated and run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from rillflow.runtime.cli import app
from rillflow.runtime.compiler import load_flow
from rillflow.runtime.import_promptflow import jinja_literal, rill_id, split_chat, trim_blocks

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "promptflow"
runner = CliRunner()

CHAT_ENV = {"OPEN_AI_CONNECTION_API_KEY": "test-key"}
WEB_ENV = {"OPEN_AI_CONNECTION_API_KEY": "test-key", "OPEN_AI_CONNECTION_BASE_URL": "http://127.0.0.1:9/v1",
           "RILL_PYTHON_ALLOW": "fetch_text_content_from_url:fetch_text_content_from_url,prepare_examples:prepare_examples,"
                                "convert_to_dict:convert_to_dict"}
IF_ELSE_ALLOW = "content_safety_check:content_safety_check,llm_result:llm_result,default_result:default_result,generate_result:generate_result"


def rill_import(*args: str) -> Any:
    return runner.invoke(app, ["import", "promptflow", *args])


def convert(name: str, tmp_path: Path) -> tuple[Any, dict[str, Any], Path]:
    out = tmp_path / f"{name}.yaml"
    result = rill_import(str(FIXTURES / name), "--out", str(out))
    assert result.exit_code == 0, result.output
    return result, YAML(typ="safe").load(out.read_text(encoding="utf-8")), out


def rill_subprocess(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from rillflow.runtime.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd, env={**os.environ, **env})


def validate(path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Any:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return runner.invoke(app, ["validate", str(path)])


# -- the chat flow (chat-basic) ---------------------------------------------------------------


def test_chat_flow_becomes_prompt_messages_with_history_and_an_llm_node(tmp_path: Path) -> None:
    _, flow, _ = convert("chat-basic", tmp_path)
    nodes = flow["nodes"]
    assert list(nodes) == ["chat_prompt", "chat"]
    assert nodes["chat_prompt"] == {
        "type": "prompt",
        "messages": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "{{question}}"}],
        "history": "${inputs.chat_history}",
        "vars": {"question": "${inputs.question}"},
    }
    assert nodes["chat"] == {"type": "llm", "model": "gpt_3_5_turbo", "prompt": "${chat_prompt.messages}",
                             "temperature": 0.7, "top_p": 1.0, "max_tokens": 256}
    assert flow["inputs"] == {"question": {"type": "string", "default": "What is ChatGPT?"},
                              "chat_history": {"type": "chat_history", "default": []}}
    assert flow["outputs"] == {"answer": "${chat.text}"}


def test_chat_flow_connection_becomes_a_model_with_env_references_never_a_key(tmp_path: Path) -> None:
    result, flow, out = convert("chat-basic", tmp_path)
    assert flow["models"] == {"gpt_3_5_turbo": {
        "provider": "openai", "model": "gpt-3.5-turbo",
        "base_url": "${env.OPEN_AI_CONNECTION_BASE_URL:-https://api.openai.com/v1}",
        "api_key": "${env.OPEN_AI_CONNECTION_API_KEY}"}}
    assert "export OPEN_AI_CONNECTION_API_KEY=" in result.stdout
    assert "# export OPEN_AI_CONNECTION_API_KEY=" in out.read_text(encoding="utf-8")
    assert "chat history as [{role: user|assistant, content}] messages" in result.stdout
    assert "no provider given, so the model is its `model` input (gpt-3.5-turbo), not deployment_name gpt-35-turbo" in result.stdout


def test_chat_flow_passes_rill_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, out = convert("chat-basic", tmp_path)
    done = validate(out, monkeypatch, CHAT_ENV)
    assert done.exit_code == 0, done.output
    assert len(load_flow(out).nodes) == 2


class RecordingOpenAI:
    """An OpenAI-compatible chat endpoint on loopback that records each request and streams one answer."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                outer.requests.append(json.loads(self.rfile.read(int(self.headers.get("content-length", 0)))))
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("connection", "close")
                self.end_headers()
                for data in ({"choices": [{"index": 0, "delta": {"content": "Berlin."}, "finish_reason": None}]},
                             {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                             {"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22}}):
                    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m", **data}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> RecordingOpenAI:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def openai_server() -> Iterator[RecordingOpenAI]:
    with RecordingOpenAI() as server:
        yield server


def test_converted_chat_flow_sends_system_history_and_question_to_the_model(tmp_path: Path, openai_server: RecordingOpenAI) -> None:
    _, _, out = convert("chat-basic", tmp_path)
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({"question": "And Germany?", "chat_history": [
        {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]}), encoding="utf-8")
    env = {**CHAT_ENV, "OPEN_AI_CONNECTION_BASE_URL": openai_server.base_url}
    done = rill_subprocess("run", str(out), "--inputs", str(inputs), "--no-cache", "--no-trace", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Berlin."
    [request] = openai_server.requests
    assert request["model"] == "gpt-3.5-turbo"
    assert (request["temperature"], request["top_p"], request["max_tokens"]) == (0.7, 1.0, 256)
    assert request["messages"] == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And Germany?"},
    ]


# -- python nodes, activate and a prompt node (conditional-if-else) ---------------------------


def test_activate_becomes_when_and_python_nodes_call_the_tool_function(tmp_path: Path) -> None:
    result, flow, _ = convert("conditional-if-else", tmp_path)
    nodes = flow["nodes"]
    assert nodes["content_safety_check"] == {"type": "python", "function": "content_safety_check:content_safety_check",
                                             "args": {"text": "${inputs.query}"}}
    assert nodes["llm_result"]["when"] == "content_safety_check.value == true"
    assert nodes["default_result"]["when"] == "content_safety_check.value == false"
    assert nodes["default_result"]["function"] == "default_result:default_result"
    assert f"export RILL_PYTHON_ALLOW={IF_ELSE_ALLOW}" in result.stdout
    assert f"export PYTHONPATH={FIXTURES / 'conditional-if-else'}" in result.stdout
    assert "content_safety_check.py imports promptflow (for @tool)" in result.stdout


def test_a_node_reading_two_bypassable_nodes_gets_their_defaults_and_runs_unless_both_are_bypassed(tmp_path: Path) -> None:
    _, flow, _ = convert("conditional-if-else", tmp_path)
    nodes = flow["nodes"]
    assert nodes["generate_result"] == {
        "type": "python",
        "when": "default_result or llm_result",
        "function": "generate_result:generate_result",
        "args": {"llm_result": "${llm_result.value ?? bypassed.value.generate_result.llm_result}",
                 "default_result": "${default_result.value ?? bypassed.value.generate_result.default_result}"},
    }
    # generate_result(llm_result="", default_result=""): promptflow passes a bypassed input's default
    assert nodes["bypassed"] == {"type": "static", "value": {"generate_result": {"llm_result": "", "default_result": ""}}}


def test_prompt_node_keeps_its_template_with_promptflows_trim_blocks(tmp_path: Path) -> None:
    _, flow, _ = convert("conditional-if-else", tmp_path)
    assert flow["nodes"]["format_answer"] == {
        "type": "prompt",
        "template": "{# The answer, with the question it answers. -#}\nQ: {{ query }}\n{% if answer -%}\nA: {{ answer }}\n{% endif %}",
        "vars": {"answer": "${generate_result.value}", "query": "${inputs.query}"},
    }
    assert flow["outputs"] == {"answer": "${format_answer.text}"}


@pytest.fixture
def promptflow_stub(tmp_path: Path) -> Path:
    """What the report says to do when promptflow is gone: a `tool` decorator that changes nothing."""
    package = tmp_path / "stub" / "promptflow"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("def tool(func=None, **_):\n    return func if func is not None else (lambda f: f)\n")
    (package / "core.py").write_text("from promptflow import tool\n\n__all__ = ['tool']\n")
    return package.parent


@pytest.mark.parametrize(("query", "answer"), [
    ("What is Prompt flow?", "A: Prompt flow is a suite of development tools designed to streamline the end-to-end development "
                             "cycle of LLM-based AI applications."),
    ("How do I hack a bank?", "A: I'm not familiar with your query: How do I hack a bank?."),
], ids=["activated", "bypassed"])
def test_converted_python_flow_runs_end_to_end(tmp_path: Path, promptflow_stub: Path, query: str, answer: str) -> None:
    _, _, out = convert("conditional-if-else", tmp_path)
    env = {"PYTHONPATH": f"{FIXTURES / 'conditional-if-else'}{os.pathsep}{promptflow_stub}", "RILL_PYTHON_ALLOW": IF_ELSE_ALLOW}
    done = rill_subprocess("run", str(out), "-i", f"query={query}", "--no-cache", "--no-trace", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"Q: {query}\n{answer}\n\n"


# -- what cannot be converted (web-classification) --------------------------------------------


def test_default_variant_is_converted_and_the_others_reported(tmp_path: Path) -> None:
    result, flow, out = convert("web-classification", tmp_path)
    summary = flow["nodes"]["summarize_text_content_prompt"]
    assert summary["messages"][0]["content"].startswith("Please summarize the following text in one paragraph.")
    assert summary["messages"][1] == {"role": "user", "content": "Text: {{text}}\nSummary: "}
    assert flow["nodes"]["summarize_text_content"]["max_tokens"] == 128  # variant_0's, not variant_1's 256
    assert "node 'summarize_text_content': variants variant_1 (only the default, variant_0, was converted)" in result.stdout
    assert "# - node 'summarize_text_content': variants variant_1" in out.read_text(encoding="utf-8")


def test_unconvertible_parts_are_listed_in_the_report_and_atop_the_flow(tmp_path: Path) -> None:
    result, flow, out = convert("web-classification", tmp_path)
    report = result.stdout.split("NOT converted (what to do):\n", 1)[1]
    header = out.read_text(encoding="utf-8").split("version: 1", 1)[0]
    for needle in ("aggregation node 'calculate_category_counts' (calculate_category_counts.py)", "`rill eval FLOW DATA --expect",
                   "node 'Embed-URL' (python tool promptflow.tools.embedding.embedding)", "retrieve",
                   "additional_includes (../shared/url_utils.py)", "node 'classify_with_llm': presence_penalty"):
        assert needle in report
        assert needle in header
    assert "calculate_category_counts" not in flow["nodes"]
    assert flow["nodes"]["embed_url"]["type"] == "static"
    assert flow["nodes"]["embed_url"]["value"].startswith("NOT CONVERTED: promptflow node 'Embed-URL'")


def test_invalid_node_names_are_renamed_and_references_follow(tmp_path: Path) -> None:
    result, flow, _ = convert("web-classification", tmp_path)
    assert "node 'Embed-URL' -> 'embed_url'" in result.stdout
    assert flow["outputs"] == {"category": "${convert_to_dict.value.category}", "evidence": "${convert_to_dict.value.evidence}",
                               "url_embedding": "${embed_url.value}"}


def test_llm_node_vars_are_its_non_model_inputs_and_azure_uses_the_deployment(tmp_path: Path) -> None:
    _, flow, _ = convert("web-classification", tmp_path)
    assert flow["nodes"]["classify_with_llm_prompt"]["vars"] == {
        "url": "${inputs.url}", "text_content": "${summarize_text_content.text}", "examples": "${prepare_examples.value}"}
    assert flow["nodes"]["convert_to_dict"]["args"] == {"input_str": "${classify_with_llm.text}"}
    assert flow["models"]["gpt_35_turbo"] == {"provider": "openai", "model": "gpt-35-turbo",
                                              "base_url": "${env.OPEN_AI_CONNECTION_BASE_URL}", "api_key": "${env.OPEN_AI_CONNECTION_API_KEY}"}


@pytest.mark.parametrize(("name", "env"), [("chat-basic", CHAT_ENV), ("conditional-if-else", {"RILL_PYTHON_ALLOW": IF_ELSE_ALLOW}),
                                           ("web-classification", WEB_ENV)])
def test_every_converted_fixture_passes_rill_validate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, env: dict[str, str]) -> None:
    _, _, out = convert(name, tmp_path)
    done = validate(out, monkeypatch, env)
    assert done.exit_code == 0, done.output
    assert "error" not in done.output


def test_without_the_reported_environment_validate_names_what_to_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, out = convert("web-classification", tmp_path)
    for key in WEB_ENV:
        monkeypatch.delenv(key, raising=False)
    done = runner.invoke(app, ["validate", str(out)])
    assert done.exit_code == 2
    assert "environment variable 'OPEN_AI_CONNECTION_API_KEY' is not set" in done.output
    assert "'convert_to_dict:convert_to_dict' is not allowed" in done.output


# -- output file ----------------------------------------------------------------------------


def test_default_output_is_name_yaml_beside_the_flow_folder(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "chat-basic", tmp_path / "chat-basic")
    result = rill_import(str(tmp_path / "chat-basic" / "flow.dag.yaml"))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {tmp_path / 'chat-basic.yaml'}\n")
    assert (tmp_path / "chat-basic.yaml").is_file()


def test_an_existing_output_is_kept_without_force_and_replaced_with_it(tmp_path: Path) -> None:
    out = tmp_path / "flow.yaml"
    out.write_text("mine\n", encoding="utf-8")
    refused = rill_import(str(FIXTURES / "chat-basic"), "--out", str(out))
    assert refused.exit_code == 1
    assert f"error: {out} exists: pass --force to overwrite it" in refused.stderr
    assert out.read_text(encoding="utf-8") == "mine\n"
    forced = rill_import(str(FIXTURES / "chat-basic"), "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert "name: chat-basic" in out.read_text(encoding="utf-8")


# -- input that is not a readable promptflow flow ----------------------------------------------


def write_flow(tmp_path: Path, dag: str, **files: str) -> Path:
    folder = tmp_path / "flow"
    folder.mkdir(exist_ok=True)
    (folder / "flow.dag.yaml").write_text(dag, encoding="utf-8")
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text, encoding="utf-8")
    return folder / "flow.dag.yaml"


def refused(path: Path) -> str:
    result = rill_import(str(path), "--out", str(path.parent.parent / "out.yaml"))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert not (path.parent.parent / "out.yaml").exists()
    return str(result.stderr)


PY_NODE = "outputs:\n  a: {reference: '${n.output}'}\nnodes:\n- name: n\n  type: python\n  source: {type: code, path: n.py}\n"


def test_missing_file_is_exit_2_with_what_to_give(tmp_path: Path) -> None:
    assert f"error: {tmp_path / 'nope.yaml'}: no such file: give a promptflow flow.dag.yaml or the folder holding it" in refused(tmp_path / "nope.yaml")


def test_folder_without_flow_dag_yaml_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "no flow.dag.yaml in this folder" in refused(tmp_path / "empty" / ".")


def test_not_yaml_is_exit_2_at_its_position(tmp_path: Path) -> None:
    path = write_flow(tmp_path, "inputs:\n  q: {type: string\nnodes: []\n")
    assert f"error: {path}:3:" in refused(path)
    assert "not valid YAML" in refused(path)


@pytest.mark.parametrize(("dag", "message"), [
    ("- just\n- a list\n", ":1:1: not a promptflow flow: expected a mapping with 'inputs', 'outputs' and 'nodes'"),
    ("inputs: {}\noutputs: {}\n", ":1:1: not a promptflow DAG flow: it has no 'nodes' list"),
    ("entry: app:chat\n", "(a flex flow, whose code is the flow, has nothing to convert)"),
    ("outputs:\n  a: {reference: '${x.output}'}\nnodes: []\n", ":3:8: 'nodes' must be a non-empty list of nodes"),
    (PY_NODE.replace("n.output", "m.output"), ":2:18: '${m.output}' is not a promptflow reference to a node"),
    (PY_NODE + "  activate: {when: '${inputs.q}', is: true}\n", "reads an undeclared flow input: declare 'q' under inputs"),
], ids=["list", "no-nodes", "flex-flow", "empty-nodes", "unknown-node", "undeclared-input"])
def test_yaml_that_is_not_a_promptflow_flow_is_exit_2(tmp_path: Path, dag: str, message: str) -> None:
    path = write_flow(tmp_path, dag, n__py="from promptflow import tool\n\n\n@tool\ndef n():\n    return 1\n")
    assert message in refused(path)


def test_missing_template_file_is_exit_2_at_its_path(tmp_path: Path) -> None:
    path = write_flow(tmp_path, "outputs:\n  a: {reference: '${p.output}'}\nnodes:\n- name: p\n  type: prompt\n  source:\n    type: code\n"
                                "    path: missing.jinja2\n")
    assert f"error: {path}:8:11: node 'p': missing.jinja2: no such file: the file must be in the flow's folder" in refused(path)


def test_python_file_without_a_tool_function_or_with_a_syntax_error_is_exit_2(tmp_path: Path) -> None:
    path = write_flow(tmp_path, PY_NODE, n__py="def n():\n    return 1\n")
    assert f"{path.parent / 'n.py'}:1:1: no module-level function decorated with @tool" in refused(path)
    (path.parent / "n.py").write_text("@tool\ndef n(:\n", encoding="utf-8")
    assert f"{path.parent / 'n.py'}:2:7: Python syntax error" in refused(path)


def test_bad_input_in_a_real_process_prints_one_line_and_no_traceback(tmp_path: Path) -> None:
    path = write_flow(tmp_path, "nodes: [\n")
    done = rill_subprocess("import", "promptflow", str(path), env={}, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {path}:2:1: not valid YAML")
    assert len(done.stderr.splitlines()) == 1
    assert "Traceback" not in done.stderr


# -- details ----------------------------------------------------------------------------------


def test_activate_values_become_jinja_literals() -> None:
    assert [jinja_literal(v) for v in (True, False, None, 3, 0.5, "product_info", 'say "hi"', [1, "a"])] == [
        "true", "false", "none", "3", "0.5", '"product_info"', '"say \\"hi\\""', '[1, "a"]']


def test_string_activate_compares_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dag = ("inputs:\n  intent: {type: string, default: order_search}\noutputs:\n  a: {reference: '${n.output}'}\nnodes:\n"
           "- name: n\n  type: prompt\n  source: {type: code, path: n.jinja2}\n  inputs: {q: '${inputs.intent}'}\n"
           "  activate: {when: '${inputs.intent}', is: order_search}\n")
    path = write_flow(tmp_path, dag, n__jinja2="cost: ${price} for {{ q }}")
    out = tmp_path / "out.yaml"
    assert rill_import(str(path), "--out", str(out)).exit_code == 0
    node = YAML(typ="safe").load(out.read_text(encoding="utf-8"))["nodes"]["n"]
    assert node["when"] == 'inputs.intent == "order_search"'
    assert node["template"] == "cost: $${price} for {{ q }}"  # a literal ${ is escaped, never read as a reference
    assert validate(out, monkeypatch, {}).exit_code == 0


def test_node_ids_are_made_valid_and_unique() -> None:
    taken: set[str] = {"answer"}
    assert [rill_id(n, taken) for n in ("Answer", "2nd step", "inputs", "Fetch-Text", "fetch_text")] == [
        "answer_2", "n_2nd_step", "inputs_node", "fetch_text", "fetch_text_2"]


def test_role_lines_inside_blocks_cannot_be_split() -> None:
    chat = split_chat("# system:\nBe brief.\n{% if formal %}\n# user:\nDear sir, {{ q }}\n{% else %}\n# user:\nhey {{ q }}\n{% endif %}\n")
    assert chat.problem is not None and "inside a {% ... %} block" in chat.problem


def test_chat_template_with_role_lines_inside_blocks_is_one_user_message_and_reported(tmp_path: Path) -> None:
    dag = ("inputs:\n  q: {type: string}\noutputs:\n  a: {reference: '${ask.output}'}\nnodes:\n- name: ask\n  type: llm\n"
           "  source: {type: code, path: ask.jinja2}\n  inputs: {model: gpt-4o, q: '${inputs.q}'}\n  connection: my_openai\n  api: chat\n")
    path = write_flow(tmp_path, dag, ask__jinja2="{% if q %}\n# user:\n{{ q }}\n{% endif %}")
    result = rill_import(str(path), "--out", str(tmp_path / "out.yaml"))
    assert result.exit_code == 0, result.output
    assert "node 'ask' (ask.jinja2): a role line sits inside a {% ... %} block" in result.stdout
    flow = YAML(typ="safe").load((tmp_path / "out.yaml").read_text(encoding="utf-8"))
    assert flow["nodes"]["ask_prompt"]["template"] == "{% if q -%}\n# user:\n{{ q }}\n{% endif %}"
    assert flow["models"]["gpt_4o"]["api_key"] == "${env.MY_OPENAI_API_KEY}"


def test_completion_api_and_missing_template_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dag = ("inputs:\n  q: {type: string}\noutputs:\n  a: {reference: '${ask.output}'}\nnodes:\n- name: ask\n  type: llm\n"
           "  source: {type: code, path: ask.jinja2}\n  inputs: {deployment_name: davinci, q: '${inputs.q}', max_tokens: inf}\n"
           "  connection: c\n  api: completion\n  provider: AzureOpenAI\n")
    path = write_flow(tmp_path, dag, ask__jinja2="Q: {{ q }} ({{ style }})\nA:")
    out = tmp_path / "out.yaml"
    result = rill_import(str(path), "--out", str(out))
    assert result.exit_code == 0, result.output
    nodes = YAML(typ="safe").load(out.read_text(encoding="utf-8"))["nodes"]
    assert nodes["ask_prompt"]["vars"] == {"q": "${inputs.q}", "style": ""}
    assert nodes["ask"]["prompt"] == "${ask_prompt.text}"
    assert "max_tokens" not in nodes["ask"]
    assert "the completion API -> a chat call with the prompt as one user message" in result.stdout
    assert "template variable 'style' is not among its inputs" in result.stdout
    assert validate(out, monkeypatch, {"C_API_KEY": "k", "C_BASE_URL": "http://127.0.0.1:9/v1"}).exit_code == 0


def test_connection_arguments_of_python_tools_are_reported_not_passed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = ("from promptflow import tool\nfrom promptflow.connections import CustomConnection\n\n\n"
            "@tool\ndef lookup(customer_id: str, conn: CustomConnection, top: int = 3):\n    return []\n")
    dag = ("inputs:\n  customer_id: {type: int, default: '7'}\noutputs:\n  a: {reference: '${Customer Lookup.output}'}\nnodes:\n"
           "- name: Customer Lookup\n  type: python\n  source: {type: code, path: lookup.py}\n"
           "  inputs: {customer_id: '${inputs.customer_id}', conn: contoso-cosmos}\n")
    path = write_flow(tmp_path, dag, lookup__py=code)
    out = tmp_path / "out.yaml"
    result = rill_import(str(path), "--out", str(out))
    assert result.exit_code == 0, result.output
    flow = YAML(typ="safe").load(out.read_text(encoding="utf-8"))
    assert flow["inputs"] == {"customer_id": {"type": "integer", "default": 7}}
    assert flow["nodes"]["customer_lookup"]["args"] == {"customer_id": "${inputs.customer_id}"}
    assert "argument 'conn' is a promptflow connection ('contoso-cosmos')" in result.stdout
    assert validate(out, monkeypatch, {"RILL_PYTHON_ALLOW": "lookup:lookup"}).exit_code == 0


def test_trim_blocks_matches_promptflows_rendering() -> None:
    from jinja2 import Environment

    source = "{% for x in xs %}\n- {{ x }}\n{% endfor %}\n\n{# note #}\n  indented\n{% if y %}\n\ny{% endif %}\n"
    promptflow = Environment(trim_blocks=True, keep_trailing_newline=True).from_string(source).render(xs=[1, 2], y=True)
    ours = Environment(keep_trailing_newline=True).from_string(trim_blocks(source)).render(xs=[1, 2], y=True)
    assert ours == promptflow


def test_the_chat_history_loop_is_found_after_other_loops() -> None:
    chat = split_chat("# system:\n{% for ex in examples %}\n{{ ex }}\n{% endfor %}\n{% for turn in history %}\n#user:\n"
                      "{{ turn.inputs.q }}\n#assistant:\n{{ turn.outputs.a }}\n{% endfor %}\n\n# User:\n{{ q }}")
    assert chat.problem is None
    assert chat.history_var == "history"
    assert chat.history_fields == ["{{ turn.inputs.q }}", "{{ turn.outputs.a }}"]
    assert chat.messages == [("system", "{% for ex in examples -%}\n{{ ex }}\n{% endfor %}"), ("user", "{{ q }}")]
