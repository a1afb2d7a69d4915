"""Group 2, "other faults" (reliability notes FT-12 to FT-21 outside the model): each test runs one scenario of
tests/reliability/other_faults.py at CI size and asserts its figure; the bench prints the same figures at report size."""

from __future__ import annotations

import pytest

from tests.reliability import other_faults
from tests.reliability.figures import Figure, assert_figures


def holds(figure: Figure | None) -> None:
    assert figure is not None
    assert figure.group == other_faults.GROUP
    assert_figures([figure])


def test_a_qdrant_folder_locked_by_another_process_stops_every_start_up_path_with_one_line_naming_it() -> None:
    holds(other_faults.qdrant_locked())


def test_a_missing_collection_or_one_of_another_vector_size_or_embedder_is_a_start_up_error_with_a_fix() -> None:
    holds(other_faults.collection_faults())


def test_a_missing_embedding_model_is_a_start_up_error_in_bounded_time_without_a_hub_probe() -> None:
    holds(other_faults.embedder_missing())


def test_corrupt_cache_and_trace_files_and_a_tampered_entry_leave_the_run_ok_with_a_warning_and_a_miss() -> None:
    holds(other_faults.corrupt_stores())


def test_a_full_tmpfs_fails_cache_and_trace_writes_but_not_the_run() -> None:
    refused = other_faults.tmpfs_refused()
    if refused is not None:
        pytest.skip(refused)  # only this variant: the RLIMIT_FSIZE one below needs no privileges
    holds(other_faults.full_disk_tmpfs())


def test_a_file_size_limit_fails_cache_and_trace_writes_but_not_the_run() -> None:
    holds(other_faults.full_disk_rlimit())


def test_kill_9_of_a_cache_and_trace_writer_at_random_moments_leaves_no_torn_entry_and_no_temp_file() -> None:
    holds(other_faults.kill9_writers())


def test_cancellation_at_every_await_point_leaves_no_task_no_open_producer_and_no_partial_cache_entry() -> None:
    figure = other_faults.cancellation()
    holds(figure)
    swept = int(figure.value.split("/")[0])
    assert swept >= 40, f"only {swept} cancellation points were swept: {figure.value}"


def test_measure_runs_every_scenario_and_leaves_out_only_a_variant_that_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[tuple[str, bool]] = []

    def stub(name: str, result: bool) -> object:
        def scenario(bench: bool = False) -> Figure | None:
            called.append((name, bench))
            return Figure(other_faults.GROUP, name, "1/1", True) if result else None
        return scenario

    names = [s.__name__ for s in other_faults.SCENARIOS]
    assert set(names) >= {"qdrant_locked", "collection_faults", "embedder_missing", "corrupt_stores", "full_disk_tmpfs",
                          "full_disk_rlimit", "kill9_writers", "cancellation"}
    monkeypatch.setattr(other_faults, "SCENARIOS", [stub(n, n != "full_disk_tmpfs") for n in names])
    figures = other_faults.measure(bench=True)
    assert called == [(n, True) for n in names]
    assert [f.name for f in figures] == [n for n in names if n != "full_disk_tmpfs"]
