"""`rill cache stats` and `rill cache clear` on a real SQLite file and a real Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rillflow.runtime.cache_cli import human
from rillflow.runtime.cache_redis import RedisCache
from rillflow.runtime.cache_sqlite import SqliteCache
from rillflow.runtime.cache_store import CacheEntry
from rillflow.runtime.cli import app
from tests.redis_server import RedisServer, free_port

runner = CliRunner()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:  # fails (never skips) when redis-server is not installed
        yield server


def entry(text: str, flow: str, node: str) -> CacheEntry:
    return CacheEntry(key=f"{flow}-{node}-{text}".ljust(64, "0"), flow=flow, node=node, node_type="llm", tenant=None,
                      created=time.time(), expires=None, payload={"outputs": {"text": "x" * 100}})


def fill(store: SqliteCache | RedisCache) -> None:
    for i in range(3):
        store.put(entry(str(i), "qa", "answer"))
    store.put(entry("r", "qa", "retrieve"))
    store.put(entry("c", "chat", "answer"))
    for what in ("hit", "hit", "hit", "miss"):
        store.count("qa", "answer", what)  # type: ignore[arg-type]
    store.count("qa", "retrieve", "corrupt")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    store = SqliteCache(tmp_path / "cache.db")
    fill(store)
    store.close()
    return f"sqlite:///{tmp_path / 'cache.db'}"


def rill(*args: str, input: str | None = None):
    return runner.invoke(app, ["cache", *args], input=input)


def test_stats_prints_a_table_per_flow_and_node_with_totals(sqlite_url: str) -> None:
    result = rill("stats", "--url", sqlite_url)
    assert result.exit_code == 0, result.output
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in result.stdout.splitlines() if line.startswith("│")]
    assert cells[0] == ["chat", "answer", "1", cells[0][3], "0", "0", "-", "0"]
    assert cells[1][:3] == ["qa", "answer", "3"] and cells[1][4:] == ["3", "1", "75%", "0"]
    assert cells[2][:3] == ["qa", "retrieve", "1"] and cells[2][4:] == ["0", "0", "-", "1"]
    assert cells[3][:3] == ["total", "", "5"] and cells[3][4:] == ["3", "1", "75%", "1"]
    assert cells[3][3].endswith(" B") or cells[3][3].endswith(" KiB")


def test_stats_json_and_flow_filter(sqlite_url: str) -> None:
    result = rill("stats", "--url", sqlite_url, "--json", "--flow", "qa")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["node"], r["entries"], r["hits"], r["misses"], r["corrupt"]) for r in rows] == [("answer", 3, 3, 1, 0), ("retrieve", 1, 0, 0, 1)]
    assert rows[0]["hit_rate"] == 0.75


def test_stats_of_a_cache_not_created_yet_is_empty_and_creates_nothing(tmp_path: Path) -> None:
    result = rill("stats", "--json", "--url", f"sqlite:///{tmp_path / 'none.db'}")
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    assert not (tmp_path / "none.db").exists()


def test_stats_reads_rill_cache_url(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RILL_CACHE_URL", sqlite_url)
    result = rill("stats", "--json")
    assert result.exit_code == 0 and len(json.loads(result.stdout)) == 3


def test_clear_a_node_or_a_flow(sqlite_url: str) -> None:
    result = rill("clear", "--url", sqlite_url, "--flow", "qa", "--node", "answer")
    assert result.exit_code == 0 and result.stdout.startswith("removed 3 entries of node 'answer' of flow 'qa'")
    result = rill("clear", "--url", sqlite_url, "--flow", "qa")
    assert result.exit_code == 0 and result.stdout.startswith("removed 1 entry of flow 'qa'")
    assert [r["flow"] for r in json.loads(rill("stats", "--json", "--url", sqlite_url).stdout)] == ["chat"]


def test_clearing_everything_asks_first(sqlite_url: str) -> None:
    declined = rill("clear", "--url", sqlite_url, input="n\n")
    assert declined.exit_code == 1 and "Clear every entry" in declined.stdout and "nothing cleared" in declined.stderr
    assert len(json.loads(rill("stats", "--json", "--url", sqlite_url).stdout)) == 3
    accepted = rill("clear", "--url", sqlite_url, input="y\n")
    assert accepted.exit_code == 0 and "removed 5 entries" in accepted.stdout
    assert rill("clear", "--url", sqlite_url, "--yes").stdout.startswith("removed 0 entries")


def test_a_url_of_no_accepted_form_is_bad_usage(tmp_path: Path) -> None:
    result = rill("stats", "--url", "postgres://db/cache")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "sqlite:///" in result.stderr and "redis://" in result.stderr


def test_a_file_that_is_not_a_database_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    result = rill("stats", "--url", f"sqlite:///{tmp_path / 'junk.db'}")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "junk.db" in result.stderr and "Traceback" not in result.output


def test_an_unreachable_redis_is_one_line() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = rill("stats", "--url", url)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot reach the cache at {url}: ") and result.stderr.count("\n") == 1


def test_stats_and_clear_on_redis(redis_server: RedisServer) -> None:
    store = RedisCache(redis_server.url, prefix="rill:")
    try:
        fill(store)  # no event loop: written at once
    finally:
        store.close()
    rows = json.loads(rill("stats", "--json", "--url", redis_server.url).stdout)
    assert [(r["flow"], r["node"], r["entries"], r["hits"]) for r in rows] == [("chat", "answer", 1, 0), ("qa", "answer", 3, 3), ("qa", "retrieve", 1, 0)]
    assert rill("clear", "--url", redis_server.url, "--flow", "qa").stdout.startswith("removed 4 entries of flow 'qa'")
    assert rill("clear", "--url", redis_server.url, "--yes").stdout.startswith("removed 1 entry")


def test_human_sizes() -> None:
    assert [human(n) for n in (0, 1023, 1024, 1536, 5 * 1024**2, 3 * 1024**4)] == ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3072.0 GiB"]
