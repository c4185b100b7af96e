"""Client CPU per row, split by stage: Respell emulator, zero latency, 1,000 rows per request.

    .venv/bin/python -m benchmarks --only overhead

For each size (10k, 100k, 1M rows) a fresh worker process runs ``frame_batch.run`` a few
times against a Respell emulator served from *another* process over loopback, so
``time.process_time()`` of the worker is the client's CPU alone; the best repetition counts
(the machine is shared). One more run under cProfile splits that CPU by stage (``_stages``),
and, when py-spy is installed, one more run sampled by py-spy splits it again (``_sampled``:
cProfile overstates per-row Python code, sampling does not).
"""

from __future__ import annotations

import gc
from typing import Any

import frame_batch
from benchmarks._common import (
    API_KEY,
    WORKFLOW,
    Json,
    best,
    clocked,
    make_frame,
    run_worker,
    scratch_dir,
    us_per_row,
)
from benchmarks._emulator import EmulatorProcess
from benchmarks._sampled import sampled_split
from benchmarks._stages import profiled, split

BATCH_SIZE = 1000
MAX_IN_FLIGHT = 4  # the Respell default
POLL_INTERVAL = 0.001  # zero latency: the first poll finds the batch done


def suite(quick: bool) -> list[Json]:
    sizes = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    reps = 2 if quick else 3
    answers = []
    for rows in sizes:
        answer = run_worker(measure, rows=rows, reps=reps, profile=True)
        cpu = answer["client_cpu_us_per_row"]
        answer["sampled"] = sampled_split(measure, {"rows": rows, "reps": 1, "profile": False}, cpu)
        answers.append(answer)
    return answers


def measure(rows: int, reps: int, profile: bool) -> Json:
    """Best-of-``reps`` client CPU per row for ``rows`` rows, and (optionally) the stage split."""
    df = make_frame(rows)
    runs = [_timed_run(df) for _ in range(reps)]
    cpu = best([r["cpu_s"] for r in runs])
    answer: Json = {
        "rows": rows,
        "batch_size": BATCH_SIZE,
        "max_in_flight": MAX_IN_FLIGHT,
        "reps": reps,
        "client_cpu_us_per_row": us_per_row(cpu, rows),
        "client_cpu_us_per_row_all": [us_per_row(r["cpu_s"], rows) for r in runs],
        "wall_s": round(best([r["wall_s"] for r in runs]), 3),
        "emulator_cpu_us_per_row": us_per_row(best([r["server_cpu_s"] for r in runs]), rows),
    }
    if profile:
        answer["profile"] = _profiled_run(df, answer["client_cpu_us_per_row"])
    return answer


def _timed_run(df: Any) -> Json:
    gc.collect()
    with EmulatorProcess("respell") as emulator, scratch_dir() as cache:
        before = emulator.stats()
        with clocked() as clock:
            result = frame_batch.run(df, WORKFLOW, cache=cache, **options(emulator.url))
        after = emulator.stats()
    _check(result, len(df))
    return {"cpu_s": clock.cpu_s, "wall_s": clock.wall_s, "server_cpu_s": after.cpu_s - before.cpu_s}


def _profiled_run(df: Any, cpu_us_per_row: float) -> Json:
    gc.collect()
    with EmulatorProcess("respell") as emulator, scratch_dir() as cache, profiled() as profile:
        result = frame_batch.run(df, WORKFLOW, cache=cache, **options(emulator.url))
    _check(result, len(df))
    return split(profile, len(df), cpu_us_per_row)


def options(url: str) -> Json:
    return {
        "provider": frame_batch.Respell(base_url=url, api_key=API_KEY),
        "batch_size": BATCH_SIZE,
        "max_in_flight": MAX_IN_FLIGHT,
        "poll_interval": POLL_INTERVAL,
        "progress": False,
    }


def _check(result: Any, rows: int) -> None:
    if result.summary.succeeded != rows:
        raise RuntimeError(f"expected {rows} succeeded rows, got {result.summary}")
