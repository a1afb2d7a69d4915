"""Admission over real HTTP: API keys (401, never in a URL), per-key rate limits and stream caps (429 +
Retry-After), the global cap (503 + Retry-After), daily budgets, tenancy of traces, CORS."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rillflow.ui.auth import generate_key
from rillflow.ui.limits import KeyLimits
from rillflow.ui.settings import ServeSettings
from tests import flowfuncs
from tests.live_server import LiveServer, serving

TICK = """\
version: 1
name: tick
inputs:
  question: {type: string}
  count: {type: integer, default: 3}
  delay: {type: number, default: 0.01}
outputs:
  answer: ${model.text}
nodes:
  model:
    type: python
    function: "tests.flowfuncs:ticker"
    stream: true
    args: {question: "${inputs.question}", count: "${inputs.count}", delay: "${inputs.delay}"}
"""

WORDS = """\
version: 1
name: words
inputs:
  question: {type: string}
outputs:
  answer: ${model.text}
nodes:
  model: {type: scripted, text: "one two three four five six seven eight nine ten"}
"""


def write_keys(path: Path, *entries: tuple[str, str | None, str]) -> dict[str, str]:
    """Write a key file; returns name -> secret key. ``entries``: (name, tenant, limits YAML flow map)."""
    lines, secrets = ["keys:"], {}
    for name, tenant, limits in entries:
        key_id, secret, digest = generate_key()
        secrets[name] = secret
        lines += [f"  - id: {key_id}", f"    name: {name}", f"    sha256: {digest}"]
        if tenant:
            lines.append(f"    tenant: {tenant}")
        if limits:
            lines.append(f"    limits: {limits}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return secrets


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("keys")
    secrets = write_keys(tmp / "keys.yaml", ("alice", "acme", ""), ("bob", "globex", ""),
                         ("burst", None, "{requests_per_minute: 3}"), ("two", None, "{max_streams: 1}"),
                         ("thrifty", None, "{daily_tokens: 12}"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RILL_PYTHON_ALLOW", "tests.flowfuncs.*")
        mp.setenv("RILL_STATE_DIR", str(tmp / "state"))
        settings = ServeSettings(cache=False, trace=True, api_keys=tmp / "keys.yaml", cors_origins=("https://app.example",),
                                 limits=KeyLimits(requests_per_minute=1000, max_streams=10))
        with serving({"tick.yaml": TICK, "words.yaml": WORDS}, settings, tmp=tmp) as server:
            yield server, secrets


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_every_kind_of_bad_key_gets_the_same_401(keyed: tuple[LiveServer, dict[str, str]]) -> None:
    live, secrets = keyed
    good = secrets["alice"]
    variants = [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}, {"Authorization": f"Bearer {good[:-1]}x"},
                {"Authorization": "Bearer rk_00000000_" + "A" * 43}]
    bodies = set()
    for headers in variants:
        for method, path in (("GET", "/api/flows"), ("POST", "/api/flows/tick/runs"), ("POST", "/v1/chat/completions"),
                             ("GET", "/v1/models"), ("GET", "/metrics"), ("GET", f"/api/runs/{'a' * 32}")):
            response = httpx.request(method, live.url + path, headers=headers, json={"inputs": {"question": "x"}})
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"].startswith("Bearer")
            error = response.json()["error"]
            bodies.add((error.get("kind") or error["type"], error["message"]))  # /v1 answers in OpenAI's error shape
    assert len(bodies) == 1 and next(iter(bodies))[0] == "auth", "nothing tells one bad key from another"
    assert httpx.get(f"{live.url}/api/flows", headers=auth(good)).status_code == 200
    assert httpx.get(f"{live.url}/healthz").status_code == 200, "health stays open for load balancers"


def test_a_key_in_the_url_is_refused_even_when_valid(keyed: tuple[LiveServer, dict[str, str]]) -> None:
    live, secrets = keyed
    response = httpx.get(f"{live.url}/api/flows", params={"api_key": secrets["alice"]}, headers=auth(secrets["alice"]))
    assert response.status_code == 401 and "never accepted in a URL" in response.json()["error"]["message"]


def test_the_rate_limit_answers_429_with_retry_after_and_runs_nothing(keyed: tuple[LiveServer, dict[str, str]]) -> None:
    live, secrets = keyed
    produced = flowfuncs.TICKER["produced"]
    answers = [httpx.post(f"{live.url}/api/flows/tick/runs", json={"inputs": {"question": "x", "count": 1}}, headers=auth(secrets["burst"]))
               for _ in range(6)]
    codes = [a.status_code for a in answers]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429, 429]
    for rejected in answers[3:]:
        assert int(rejected.headers["retry-after"]) >= 1
        assert rejected.json()["error"]["kind"] == "rate_limit"
    assert flowfuncs.TICKER["produced"] == produced + 3, "a rejected request never reaches the model"
    other = httpx.post(f"{live.url}/api/flows/tick/runs", json={"inputs": {"question": "x", "count": 1}}, headers=auth(secrets["alice"]))
    assert other.status_code == 200, "one key's limit does not touch another key"


def test_a_keys_concurrent_stream_cap_answers_429_while_its_stream_runs(keyed: tuple[LiveServer, dict[str, str]]) -> None:
    live, secrets = keyed
    started = threading.Event()

    def hold() -> None:
        with httpx.stream("POST", f"{live.url}/api/flows/tick/runs", json={"inputs": {"question": "x", "count": 60}, "stream": True},
                          headers=auth(secrets["two"])) as response:
            for line in response.iter_lines():
                if line.startswith("event: chunk"):
                    started.set()

    holder = threading.Thread(target=hold)
    holder.start()
    assert started.wait(10)
    second = httpx.post(f"{live.url}/api/flows/tick/runs", json={"inputs": {"question": "x"}}, headers=auth(secrets["two"]))
    assert second.status_code == 429 and second.json()["error"]["kind"] == "streams" and int(second.headers["retry-after"]) >= 1
    holder.join(20)
    assert httpx.post(f"{live.url}/api/flows/tick/runs", json={"inputs": {"question": "x", "count": 1}},
                      headers=auth(secrets["two"])).status_code == 200, "the slot is free again once the stream ended"


def test_a_daily_token_budget_stops_a_runaway_client(keyed: tuple[LiveServer, dict[str, str]]) -> None:
    live, secrets = keyed
    first = httpx.post(f"{live.url}/api/flows/words/runs", json={"inputs": {"question": "x"}}, headers=auth(secrets["thrifty"]))
    second = httpx.post(f"{live.url}/api/flows/words/runs", json={"inputs": {"question": "x"}}, headers=auth(secrets["thrifty"]))
    assert first.status_code == 200 and second.status_code == 200  # 10 tokens each: the second starts under budget
    third = httpx.post(f"{live.url}/api/flows/words/runs", json={"inputs": {"question": "x"}}, headers=auth(secrets["thrifty"]))
    assert third.status_code == 429 and third.json()["error"]["kind"] == "budget"
    assert 1 <= int(third.headers["retry-after"]) <= 86_400, "retry after the UTC day ends"


def test_runs_and_feedback_of_one_tenant_are_404_to_another(keyed: tuple[LiveServer, dict[str, str]]) -> None:
    live, secrets = keyed
    run_id = httpx.post(f"{live.url}/api/flows/words/runs", json={"inputs": {"question": "mine"}}, headers=auth(secrets["alice"])).json()["run_id"]
    assert httpx.get(f"{live.url}/api/runs/{run_id}", headers=auth(secrets["alice"])).json()["tenant"] == "acme"
    theirs = httpx.get(f"{live.url}/api/runs/{run_id}", headers=auth(secrets["bob"]))
    assert theirs.status_code == 404
    unknown = httpx.get(f"{live.url}/api/runs/{'f' * 32}", headers=auth(secrets["bob"]))
    assert theirs.json()["error"]["message"].replace(run_id, "ID") == unknown.json()["error"]["message"].replace("f" * 32, "ID"), \
        "another tenant's run looks exactly like a missing one"
    assert httpx.post(f"{live.url}/api/runs/{run_id}/feedback", json={"score": 1}, headers=auth(secrets["bob"])).status_code == 404


def test_cors_allows_only_the_listed_origins(keyed: tuple[LiveServer, dict[str, str]]) -> None:
    live, _ = keyed
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = httpx.options(f"{live.url}/api/flows/tick/runs", headers={"Origin": "https://app.example", **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
    foreign = httpx.options(f"{live.url}/api/flows/tick/runs", headers={"Origin": "https://evil.example", **preflight})
    assert foreign.status_code == 400 and "access-control-allow-origin" not in foreign.headers


def test_the_global_cap_sheds_load_with_503_and_retry_after(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RILL_PYTHON_ALLOW", "tests.flowfuncs.*")
    settings = ServeSettings(cache=False, trace=False, max_active=2, max_queued=1, queue_timeout=0.3,
                             limits=KeyLimits(requests_per_minute=10_000, max_streams=100))
    with serving({"tick.yaml": TICK}, settings, tmp=tmp_path) as live:
        results: list[httpx.Response] = []

        def call() -> None:
            results.append(httpx.post(f"{live.url}/api/flows/tick/runs", json={"inputs": {"question": "x", "count": 20, "delay": 0.05}},
                                      timeout=30))

        threads = [threading.Thread(target=call) for _ in range(6)]
        for t in threads:
            t.start()
            time.sleep(0.02)
        for t in threads:
            t.join(30)
        codes = sorted(r.status_code for r in results)
        assert codes.count(200) == 2 and codes.count(503) == 4, codes
        for shed in (r for r in results if r.status_code == 503):
            assert int(shed.headers["retry-after"]) >= 1 and shed.json()["error"]["kind"] == "overloaded"
        assert live.rill.gate.shedder.active == 0 and live.rill.gate.shedder.queued == 0
