"""The benchmark harness (``benchmarks/``) still runs: each suite's measurement, at a tiny size,
in a worker process against an emulator process, as ``python -m benchmarks`` runs it.

Nothing here asserts a time or a rate (performance is measured by the harness, never by
tests): only that every row ends succeeded, that the counts the tables are built from are
there, and that a no-op resume sends nothing.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.e2e


def worker(target: str, **params: Any) -> dict[str, Any]:
    """``benchmarks.<module>:<function>`` with ``params``, the way the harness calls it."""
    command = [sys.executable, "-m", "benchmarks._worker", target, json.dumps(params)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def test_overhead_memory_and_resume_measure_a_small_run() -> None:
    overhead = worker("benchmarks.overhead:measure", rows=3000, reps=1, profile=False)
    assert overhead["rows"] == 3000
    assert overhead["client_cpu_us_per_row"] > 0
    memory = worker("benchmarks.memory:measure", rows=2000)
    assert memory["succeeded"] == 2000
    assert memory["peak_rss_mib"] >= memory["imports_rss_mib"] > 0
    resume = worker("benchmarks.resume:measure", rows=2000, reps=1)
    assert resume["first_run_succeeded"] == 2000
    assert (resume["resume_creates_client"], resume["resume_creates_server"]) == (0, 0)
    assert resume["resume_cached"] == 2000


@pytest.mark.parametrize(
    "faults", [None, {"rate_5xx": 0.05, "rate_429": 0.05, "on": "all", "retry_after": 0.05}]
)
def test_a_throughput_cell_counts_its_requests(faults: dict[str, Any] | None) -> None:
    cell = worker("benchmarks.throughput:cell", batch_size=10, in_flight=2, rounds=3, faults=faults)
    assert cell["rows"] == cell["succeeded"] == 60
    assert cell["requests"]["getBulkRuns"] >= cell["create_requests"] >= 6
    assert cell["efficiency"] > 0


def test_the_target_cell_repeats_clean_and_with_faults() -> None:
    repeats = worker("benchmarks.throughput:target_repeats", runs=1, fault_runs=1, rounds=3, fault_rounds=4)
    for kind, rows in (("clean", 4800), ("faults", 6400)):
        (cell,) = repeats[kind]
        assert (cell["batch_size"], cell["in_flight"]) == (100, 16)
        assert cell["succeeded"] == cell["rows"] == rows
    assert any(name.startswith("fault:") for name in repeats["faults"][0]["requests"])


@pytest.mark.parametrize("pair", ["apply_pair", "parallel_pair", "vectorshift_pair"])
def test_each_comparison_runs_both_clients_on_the_same_rows(pair: str) -> None:
    rows = 4 if pair == "apply_pair" else 20
    answer = worker(f"benchmarks.compare:{pair}", rows=rows, reps=1)
    lines = answer["lines"]
    assert [line["succeeded"] for line in lines] == [rows] * len(lines)
    assert {line["frame_batch"] for line in lines} == {True, False}  # the alternative and us


@pytest.fixture
def report(monkeypatch: pytest.MonkeyPatch) -> Any:
    """``benchmarks._report``, from this checkout (the harness is not an installed package)."""
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("benchmarks._report")


def test_each_alternative_is_judged_against_frame_batch_at_its_own_concurrency(report: Any) -> None:
    """An SDK at C=4 is not compared with frame_batch at C=1, nor the other way round."""
    _compare_target = report._compare_target

    def line(client: str, in_flight: int, rate: float, ours: bool) -> dict[str, Any]:
        return {"client": client, "in_flight": in_flight, "rows_per_s": rate, "frame_batch": ours}

    lines = [
        line("sdk loop", 1, 49.0, False),
        line("frame_batch.run, matched C=1", 1, 50.0, True),
        line("sdk async", 4, 197.0, False),
        line("frame_batch.run, default C=4", 4, 192.0, True),
    ]
    target = _compare_target({"pair": "p", "lines": lines})
    assert target["measured"] == "1.02x at C=1; 0.97x at C=4 (rows/s)"
    assert target["passed"] is False
    faster = _compare_target({"pair": "p", "lines": [*lines[:3], line("frame_batch, C=4", 4, 200.0, True)]})
    assert faster["passed"] is True


def test_the_efficiency_target_reads_the_median_of_the_target_cells_runs(report: Any) -> None:
    """The grid's run of B=100, C=16 and its repeats: the median decides, the range is shown."""
    _efficiency_target = report._efficiency_target

    def cell(efficiency: float, batch_size: int = 100, rows: int = 32_000) -> dict[str, Any]:
        return {
            "batch_size": batch_size,
            "in_flight": 16,
            "rows": rows,
            "efficiency": efficiency,
            "rows_per_s": efficiency * 8000,
            "bound_rows_per_s": 8000.0,
        }

    grid = {"cells": [cell(0.99, batch_size=10), cell(0.95)]}
    alone = _efficiency_target({"clean": grid}, "clean")
    assert alone["measured"] == "95.0% (7,600 of 8,000 rows/s)"
    data = {"clean": grid, "target_repeats": {"clean": [cell(0.88), cell(0.91)]}}
    target = _efficiency_target(data, "clean")
    assert target["measured"] == "91.0% (7,280 of 8,000 rows/s), median of 3 runs: 88.0%-95.0%"
    assert target["passed"] is True
    data["target_repeats"]["clean"][1] = cell(0.89)
    assert _efficiency_target(data, "clean")["passed"] is False
    # Longer repeats (the faults target's) replace the grid's shorter run.
    data = {"faults": grid, "target_repeats": {"faults": [cell(r, rows=400_000) for r in (0.93, 0.9, 0.91)]}}
    target = _efficiency_target(data, "faults")
    assert target["measured"] == "91.0% (7,280 of 8,000 rows/s), median of 3 runs: 90.0%-93.0%"
    assert "400,000 rows" in target["target"]
