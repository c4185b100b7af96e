"""One size at a glance: client CPU per row, peak RSS and no-op resume (kept for README links).

    .venv/bin/python benchmarks/core_overhead.py --rows 100000

A shortcut into the harness (``python -m benchmarks`` runs everything): the same workers
as the ``overhead``, ``memory`` and ``resume`` suites, at one size, printed as JSON. The
emulator runs in its own process over loopback, so no emulator CPU is subtracted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import memory, overhead, resume
from benchmarks._common import run_worker


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3, help="runs per CPU measurement (best counts)")
    parser.add_argument("--profile", action="store_true", help="also split the CPU by stage (cProfile)")
    args = parser.parse_args()
    cpu = run_worker(overhead.measure, rows=args.rows, reps=args.reps, profile=args.profile)
    rss = run_worker(memory.measure, rows=args.rows)
    again = run_worker(resume.measure, rows=args.rows, reps=args.reps)
    report = {
        "rows": args.rows,
        "batch_size": cpu["batch_size"],
        "client_cpu_us_per_row": cpu["client_cpu_us_per_row"],
        "client_cpu_us_per_row_all": cpu["client_cpu_us_per_row_all"],
        "emulator_cpu_us_per_row": cpu["emulator_cpu_us_per_row"],
        "wall_s": cpu["wall_s"],
        "noop_resume_s": again["resume_wall_s"],
        "noop_resume_creates": again["resume_creates_server"],
        "peak_rss_mib": rss["peak_rss_mib"],
        "input_plus_output_frames_mib": round(rss["input_frame_mib"] + rss["output_frame_mib"], 1),
        "stages": cpu.get("profile", {}).get("stages"),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
