"""Peak RSS of one ``frame_batch.run`` against the size of its input and output frames.

    .venv/bin/python -m benchmarks --only memory

Each size (10k, 100k, 1M rows) runs in a fresh worker process (``ru_maxrss`` only ever
grows), against a Respell emulator in another process (zero latency, 1,000 rows per
request). Reported: the peak, the process before the frame was built (interpreter and
imports), and the frames' own memory (``memory_usage(deep=True)``). Target: peak <= 3x
(input + output frame) at 1M rows.
"""

from __future__ import annotations

import gc
from pathlib import Path

import frame_batch
from benchmarks._common import (
    WORKFLOW,
    Json,
    frame_bytes,
    make_frame,
    peak_rss_bytes,
    run_worker,
    scratch_dir,
)
from benchmarks._emulator import EmulatorProcess
from benchmarks.overhead import options

MIB = 2**20


def suite(quick: bool) -> list[Json]:
    sizes = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    return [run_worker(measure, rows=rows) for rows in sizes]


def measure(rows: int) -> Json:
    """Peak RSS of building a ``rows``-row frame and running it once, in this fresh process."""
    imports = current_rss_bytes()
    df = make_frame(rows)
    gc.collect()
    before_run = current_rss_bytes()
    with EmulatorProcess("respell") as emulator, scratch_dir() as cache:
        result = frame_batch.run(df, WORKFLOW, cache=cache, **options(emulator.url))
    peak = peak_rss_bytes()
    frames = frame_bytes(df, result.frame)
    return {
        "rows": rows,
        "peak_rss_mib": round(peak / MIB, 1),
        "imports_rss_mib": round(imports / MIB, 1),
        "before_run_rss_mib": round(before_run / MIB, 1),
        "input_frame_mib": round(frame_bytes(df) / MIB, 1),
        "output_frame_mib": round(frame_bytes(result.frame) / MIB, 1),
        "ratio_peak": round(peak / frames, 2),
        "ratio_above_imports": round((peak - imports) / frames, 2),
        "succeeded": result.summary.succeeded,
    }


def current_rss_bytes() -> int:
    """The resident set size now (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")
