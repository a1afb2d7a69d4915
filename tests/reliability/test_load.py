"""Load on loopback (reliability group 5): concurrent chats, disconnects, slow readers, rejections, a soak.

Each test runs one scenario of tests/reliability/load.py at its CI size and asserts its figure; the
benchmark (bench/reliability.py --only load) prints the same figures at the report's sizes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import pytest

from bench.serve import ServerProcess
from rillflow.ui import protocol
from rillflow.ui.limits import KeyLimits
from rillflow.ui.settings import ServeSettings
from tests import flowfuncs
from tests.live_server import serving
from tests.reliability import load
from tests.reliability.figures import Figure, assert_figures


@pytest.fixture(scope="module")
def rill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`rill serve` in its own process, shared by the process-level scenarios (the soak runs last)."""
    with load.rill_serve(tmp_path_factory.mktemp("load")) as server:
        yield server


def test_10_50_and_200_concurrent_chats_each_get_every_chunk_and_exactly_one_terminal_event(rill: ServerProcess) -> None:
    assert_figures([load.concurrent_chats(rill, load.CI)])


def test_200_clients_leaving_mid_stream_cancel_their_runs_and_leak_no_task_or_fd(rill: ServerProcess) -> None:
    assert_figures([load.disconnects(rill, load.CI)])


def test_stalled_readers_lose_their_runs_to_the_send_timeout_while_other_chats_complete(tmp_path: Path) -> None:
    assert_figures([load.slow_readers(tmp_path, load.CI)])


def test_every_rejection_of_a_burst_over_a_limit_is_429_or_503_with_an_integer_retry_after(tmp_path: Path) -> None:
    assert_figures([load.rejections(tmp_path, load.CI)])


def test_the_server_closes_a_stalled_readers_connection_after_the_send_timeout(tmp_path: Path) -> None:
    settings = ServeSettings(cache=False, trace=False, send_timeout=0.5, limits=KeyLimits(requests_per_minute=1000))
    with load.python_allowed(), serving({"flood.yaml": load.FLOOD}, settings, tmp=tmp_path) as live:
        sock = load.stalled_reader(live)
        try:
            assert load.wait_for(lambda: flowfuncs.TICKER["running"] == 1, 10), "the flood started"
            assert load.wait_for(lambda: flowfuncs.TICKER["running"] == 0, 30), "the send timeout cancelled the run"
            assert load.wait_for(lambda: load.server_connections(live.port) == 0, protocol.LINGER + 5), "the server still holds the connection"
        finally:
            load.reset(sock)


def test_a_one_minute_soak_keeps_tasks_fds_and_memory_flat(rill: ServerProcess) -> None:
    assert_figures([load.soak(rill, load.CI)])


def test_the_rss_slope_sees_a_slow_leak_and_ignores_one_spike() -> None:
    flat = [(t * 2.0, 70.0) for t in range(15)]
    spiked = [(t, mb + (30 if t == 10 else 0)) for t, mb in flat]
    leaking = [(t, 70 + t / 60 * 1.5) for t, _ in flat]  # 1.5 MB a minute
    assert load.slope_mb_per_min(spiked) == 0.0
    assert load.slope_mb_per_min(leaking) == pytest.approx(1.5)


def test_server_connections_counts_the_open_connections_of_a_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        assert load.server_connections(port) == 0
        with socket.create_connection(("127.0.0.1", port)), listener.accept()[0]:
            assert load.server_connections(port) == 1


def test_measure_returns_one_figure_per_scenario(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def stub(name: str) -> object:
        def scenario(*args: object) -> Figure:
            calls.append(name)
            return Figure(load.GROUP, name, "stub", True)
        return scenario

    for name in load.SCENARIOS:
        monkeypatch.setattr(load, name.replace(" ", "_"), stub(name))
    monkeypatch.setattr(load, "rill_serve", lambda folder: nullcontext(None))
    figures = load.measure()
    assert sorted(f.name for f in figures) == sorted(load.SCENARIOS) == sorted(calls)
