"""The stage split again, from py-spy samples (when py-spy is installed in the venv).

cProfile charges a fixed cost to every Python call, so it overstates per-row Python code
(planning, decoding) against work done in a few big C calls (Parquet writes, Arrow
``take``, fsync). py-spy samples the worker from outside, without slowing it, and skips
idle samples (a thread waiting in ``select`` or on the disk), so its shares are the better
estimate of where the CPU goes. It is optional: ``.venv/bin/pip install py-spy``; without
it (or without ptrace permission) this split is skipped and says why.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path, PurePath
from typing import Any

from benchmarks._common import ROOT, WORKER_TIMEOUT, Json
from benchmarks._stages import OTHER, STAGES

RATE = 250  # samples per second
_FRAME = re.compile(r"^(?P<name>\S+) \((?P<file>[^:()]+)(?::\d+)?\)$")
_LINE = re.compile(r":\d+\)$")
_RUN = ("_run.py", "run")
HOTSPOTS = 15


def py_spy() -> str | None:
    """The py-spy next to this interpreter (the venv's), or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def sampled_split(function: Any, params: Json, cpu_us_per_row: float) -> Json:
    """Run ``function(**params)`` in a worker under py-spy; stage shares of the samples taken
    inside ``frame_batch.run``, and those shares of ``cpu_us_per_row``."""
    tool = py_spy()
    if tool is None:
        return {"skipped": "py-spy is not installed (.venv/bin/pip install py-spy)"}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "stacks.txt"
        target = f"{function.__module__}:{function.__name__}"
        worker = [sys.executable, "-m", "benchmarks._worker", target, json.dumps(params)]
        command = [tool, "record", "-r", str(RATE), "-f", "raw", "-o", str(out), "--", *worker]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=WORKER_TIMEOUT)
        if done.returncode != 0 or not out.exists():
            return {"skipped": f"py-spy failed (exit {done.returncode}): {done.stderr.strip()[-300:]}"}
        raw = out.read_text()
    counts = _stage_counts(raw)
    total = sum(counts.values())
    if not total:
        return {"skipped": "py-spy recorded no samples inside frame_batch.run"}
    return {
        "samples": total,
        "rate_hz": RATE,
        "stages": [
            {
                "stage": stage,
                "share": round(counts[stage] / total, 3),
                "est_us_per_row": round(counts[stage] / total * cpu_us_per_row, 2),
            }
            for stage in [*STAGES, OTHER]
        ],
        "hotspots": [
            {
                "function": name,
                "share": round(n / total, 3),
                "est_us_per_row": round(n / total * cpu_us_per_row, 2),
            }
            for name, n in _leaf_counts(raw).most_common(HOTSPOTS)
        ],
    }


def _stage_counts(raw: str) -> Counter[str]:
    roots = {root: stage for stage, funcs in STAGES.items() for root in funcs}
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, number = line.rpartition(" ")
        frames = [_key(frame) for frame in stack.split(";")]
        if _RUN not in frames:
            continue  # setup, imports, the frame's construction
        stage = next((roots[f] for f in reversed(frames) if f in roots), OTHER)
        counts[stage] += int(number)
    return counts


def _leaf_counts(raw: str) -> Counter[str]:
    """Samples per innermost frame (the function itself was running), inside frame_batch.run."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, number = line.rpartition(" ")
        frames = stack.split(";")
        if _RUN in (_key(frame) for frame in frames):
            counts[_LINE.sub(")", frames[-1].strip())] += int(number)
    return counts


def _key(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if match is None:
        return ("", frame)
    return (PurePath(match["file"]).name, match["name"].rsplit(".", 1)[-1])
