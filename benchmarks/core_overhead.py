"""Client CPU per row and peak RSS of one run against the in-process Respell emulator.

    python benchmarks/core_overhead.py --rows 100000

Zero latency, 1,000 rows per request. The emulator runs in this process, so the CPU it
spends answering (timed around its handler) is subtracted to give the client's own share.
Run it in a fresh process each time: peak RSS (ru_maxrss) only ever grows.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

import frame_batch
from frame_batch import Respell, RetryPolicy
from frame_batch.testing import RespellEmulator


def make_frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "company": [f"Company {i}" for i in range(rows)],
            "employees": pd.array(rng.integers(1, 5000, rows), dtype="Int64"),
            "score": rng.random(rows),
            "active": rng.random(rows) > 0.5,
            "founded": pd.Timestamp("2000-01-01", tz="UTC")
            + pd.to_timedelta(rng.integers(0, 9000, rows), "D"),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    df = make_frame(args.rows)
    emu = RespellEmulator(spells={"bench": lambda x: {"label": "ok", "n": 1}})
    server_cpu = 0.0

    def timed(request: httpx.Request) -> httpx.Response:
        nonlocal server_cpu
        start = time.process_time()
        try:
            return emu.handler(request)
        finally:
            server_cpu += time.process_time() - start

    options = {
        "provider": Respell(api_key="bench"),
        "transport": httpx.MockTransport(timed),
        "progress": False,
        "retry": RetryPolicy.testing(),
        "batch_size": args.batch_size,
        "max_in_flight": 16,
        "poll_interval": 0.001,
    }
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as cache:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = frame_batch.run(df, "bench", cache=Path(cache), **options)  # type: ignore[arg-type]
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        resume0 = time.perf_counter()
        again = frame_batch.run(df, "bench", cache=Path(cache), **options)  # type: ignore[arg-type]
        resume = time.perf_counter() - resume0
    assert result.summary.succeeded == args.rows
    assert again.summary.create_requests == 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    frames_mb = (df.memory_usage(deep=True).sum() + result.frame.memory_usage(deep=True).sum()) / 2**20
    report = {
        "rows": args.rows,
        "batch_size": args.batch_size,
        "client_cpu_us_per_row": round((cpu - server_cpu) / args.rows * 1e6, 2),
        "emulator_cpu_us_per_row": round(server_cpu / args.rows * 1e6, 2),
        "wall_s": round(wall, 2),
        "noop_resume_s": round(resume, 3),
        "peak_rss_mb": round(peak / 1024, 1),
        "rss_before_run_mb": round(rss_before / 1024, 1),
        "input_plus_output_frames_mb": round(frames_mb, 1),
        "python": sys.version.split()[0],
        "pandas": pd.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
