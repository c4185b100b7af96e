"""A no-op resume of a finished run: wall time and create requests (target <= 1 s, 0 creates).

    .venv/bin/python -m benchmarks --only resume

A fresh worker runs 1M rows once against a Respell emulator (in another process) to fill
the cache, then runs the same call again a few times; only those repeats are timed (best
counts). Creates are counted twice: by the run's summary and by the emulator's books. One
more repeat runs under cProfile (wall-clock timer) to show where the time goes.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import frame_batch
from benchmarks._common import WORKFLOW, Json, best, clocked, make_frame, run_worker, scratch_dir
from benchmarks._emulator import EmulatorProcess
from benchmarks._stages import profiled, top_cumulative
from benchmarks.overhead import options


def suite(quick: bool) -> list[Json]:
    return [run_worker(measure, rows=100_000 if quick else 1_000_000, reps=3)]


def measure(rows: int, reps: int) -> Json:
    """Fill a cache with ``rows`` rows, then time ``reps`` no-op resumes of the same call."""
    df = make_frame(rows)
    with EmulatorProcess("respell") as emulator, scratch_dir() as cache:
        with clocked() as first:
            filled = frame_batch.run(df, WORKFLOW, cache=cache, **options(emulator.url))
        creates_before = emulator.stats().create_requests
        walls, creates = [], []
        for _ in range(reps):
            gc.collect()
            with clocked() as clock:
                again = frame_batch.run(df, WORKFLOW, cache=cache, **options(emulator.url))
            walls.append(clock.wall_s)
            creates.append(again.summary.create_requests)
        server_creates = emulator.stats().create_requests - creates_before
        with profiled(time.perf_counter) as profile:
            frame_batch.run(df, WORKFLOW, cache=cache, **options(emulator.url))
    return {
        "rows": rows,
        "first_run_wall_s": round(first.wall_s, 2),
        "first_run_succeeded": filled.summary.succeeded,
        "resume_wall_s": round(best(walls), 3),
        "resume_wall_s_all": [round(w, 3) for w in walls],
        "resume_creates_client": max(creates),
        "resume_creates_server": server_creates,
        "resume_cached": int(_cached(again)),
        "profile_top_cumulative": top_cumulative(profile),
    }


def _cached(result: Any) -> int:
    return int(result.summary.cached)
