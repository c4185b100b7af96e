"""The benchmark harness's command line: ``.venv/bin/python -m benchmarks [--quick] [--only NAME]``.

Runs the suites in order, prints each one's table as it finishes, then the targets; writes
every number, the machine facts and the targets as JSON (``benchmarks/results/latest.json``
unless ``--out``). Exit code 0 whether targets pass or not (1 if a suite crashed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import compare, memory, overhead, resume, throughput
from benchmarks._common import RESULTS, Json, machine_facts
from benchmarks._emulator import STOCK_ENV
from benchmarks._report import render_suite, render_targets, targets

SUITES: dict[str, Callable[[bool], Any]] = {
    "overhead": overhead.suite,
    "throughput": throughput.suite,
    "memory": memory.suite,
    "resume": resume.suite,
    "compare": compare.suite,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = args.only or list(SUITES)
    if args.stock_emulator:
        os.environ[STOCK_ENV] = "1"  # read by every EmulatorProcess in the worker processes
    report: Json = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "emulator_socket_tuning": not args.stock_emulator,
        "machine": machine_facts(),
        "results": {},
        "load_avg": {},
    }
    print(_facts_line(report), flush=True)
    started, failed = time.perf_counter(), False
    for name in names:
        failed |= not _run_suite(name, args.quick, report)
    report["duration_s"] = round(time.perf_counter() - started, 1)
    report["targets"] = targets(report["results"])
    print("\n" + render_targets(report["targets"]), flush=True)
    _write(report, args.out)
    return 1 if failed else 0


def _run_suite(name: str, quick: bool, report: Json) -> bool:
    print(f"\n== {name} ...", flush=True)
    began = time.perf_counter()
    try:
        data = SUITES[name](quick)
    except Exception:
        traceback.print_exc()
        report["results"][name] = None
        return False
    report["results"][name] = data
    report["load_avg"][name] = [round(x, 2) for x in os.getloadavg()]
    print(render_suite(name, data), flush=True)
    print(
        f"({name}: {time.perf_counter() - began:.0f} s; load average {report['load_avg'][name]})", flush=True
    )
    return True


def _write(report: Json, out: str | None) -> None:
    path = Path(out) if out else RESULTS / "latest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report["results"] = {k: v for k, v in report["results"].items() if v is not None}
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path} ({report['duration_s']} s in all)")


def _facts_line(report: Json) -> str:
    m = report["machine"]
    v = m["versions"]
    return (
        f"{m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB; "
        f"Python {m['python']}, pandas {v['pandas']}, pyarrow {v['pyarrow']}, httpx {v['httpx']}; "
        f"commit {str(m['git']['commit'])[:10]}"
        f"{' (dirty)' if m['git']['dirty'] else ''}; load {m['load_avg_at_start']}; {report['mode']} run"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and grids (about 1-2 minutes)")
    parser.add_argument(
        "--only", action="append", choices=list(SUITES), help="run only this suite (repeatable)"
    )
    parser.add_argument("--out", help="where to write the JSON (default: benchmarks/results/latest.json)")
    parser.add_argument(
        "--stock-emulator",
        action="store_true",
        help="serve the emulators without the socket tuning (Nagle on, backlog 5): see _emulator.py",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
