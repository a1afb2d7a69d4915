"""`/v1/chat/completions` and `/v1/models` through the official `openai` Python client, streaming and not."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from rillflow.ui.limits import KeyLimits
from rillflow.ui.settings import ServeSettings
from tests.live_server import LiveServer, serving

ECHO = """\
version: 1
name: echo
inputs:
  question: {type: string, max_length: 1000}
  history: {type: chat_history, default: []}
outputs:
  answer: ${answer.text}
nodes:
  prompt:
    type: prompt
    template: "{% for m in history %}{{ m.role }}={{ m.content }} {% endfor %}you said {{ question }}"
    vars: {history: "${inputs.history}", question: "${inputs.question}"}
  answer: {type: scripted, text: "${prompt.text}", delay: 2ms}
"""

FAIL = """\
version: 1
name: broken
inputs:
  question: {type: string}
outputs:
  answer: ${model.text}
nodes:
  model: {type: scripted, text: "a b c d", fail_attempts: [1], fail_after: 2, error: server}
"""

FALLS_BACK = """\
version: 1
name: stand_in
inputs:
  question: {type: string}
outputs:
  answer: ${model.text}
nodes:
  model: {type: scripted, text: "half an answer that dies", fail_attempts: [1], fail_after: 2, error: server, fallback: backup}
  backup: {type: scripted, text: "the backup answer"}
"""

NO_CHAT = """\
version: 1
name: numbers
inputs:
  n: {type: integer}
outputs:
  doubled: ${calc.value}
nodes:
  calc: {type: static, value: "${inputs.n}"}
"""


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("v1")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RILL_PYTHON_ALLOW", "tests.flowfuncs.*")
        settings = ServeSettings(cache=False, trace=False, limits=KeyLimits(requests_per_minute=10_000, max_streams=20))
        with serving({"echo.yaml": ECHO, "broken.yaml": FAIL, "numbers.yaml": NO_CHAT, "stand_in.yaml": FALLS_BACK}, settings, tmp=tmp) as server:
            yield server


@pytest.fixture
def client(live: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused-locally", max_retries=0) as c:
        yield c


def test_models_are_the_flows_that_can_chat(client: openai.OpenAI) -> None:
    assert sorted(m.id for m in client.models.list()) == ["broken", "echo", "stand_in"]


def test_a_completion_answers_with_the_flow_output_and_usage(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(model="echo", messages=[{"role": "system", "content": "ignored"},
                                                                  {"role": "user", "content": "hello there"}])
    assert done.choices[0].message.content == "you said hello there"
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.completion_tokens == 4
    assert done.model == "echo" and done.id.startswith("chatcmpl-")


def test_earlier_messages_become_the_flows_chat_history(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(model="echo", messages=[
        {"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "second"}])
    assert done.choices[0].message.content == "user=first assistant=ok you said second"


def test_a_streamed_completion_arrives_in_several_deltas(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "stream this please"}], stream=True,
                                            stream_options={"include_usage": True})
    deltas, finish, usage = [], None, None
    for part in stream:
        if part.usage is not None:
            usage = part.usage
        for choice in part.choices:
            if choice.delta.content:
                deltas.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert len(deltas) >= 4
    assert "".join(deltas) == "you said stream this please"
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 5


def test_a_failing_flow_is_an_api_error_streaming_or_not(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError, match="scripted failure"):
        client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}])
    stream = client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(openai.APIError, match="scripted failure"):
        for _ in stream:
            pass


def test_bad_requests_are_specific(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="no flow named 'gpt-4'"):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="takes no text input"):
        client.chat.completions.create(model="numbers", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.UnprocessableEntityError, match="last message must be the user's"):
        client.chat.completions.create(model="echo", messages=[{"role": "assistant", "content": "x"}])
    with pytest.raises(openai.UnprocessableEntityError, match="question"):
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x" * 1001}])


def test_a_fallback_after_partial_text_streams_the_stand_ins_answer(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="stand_in", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text.endswith("the backup answer"), text
    assert finishes == ["stop"], "a fallback is not a content filter"
    whole = client.chat.completions.create(model="stand_in", messages=[{"role": "user", "content": "hi"}])
    assert whole.choices[0].message.content == "the backup answer"
    assert whole.choices[0].finish_reason == "stop"
