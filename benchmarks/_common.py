"""Shared pieces of the benchmark harness: the input frame, timing, machine facts, workers.

Every measurement runs in a fresh worker process (``python -m benchmarks._worker``), so peak
RSS and CPU time belong to that measurement alone; the emulator it talks to runs in a third
process (see ``_emulator.py``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
WORKER_TIMEOUT = 1800.0
API_KEY = "bench-key"
WORKFLOW = "bench-spell"

Json = dict[str, Any]


def make_frame(rows: int) -> Any:
    """``rows`` rows of 5 mixed columns: str, nullable Int64, float, bool, tz-aware datetime."""
    import numpy as np
    import pandas as pd

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


def frame_bytes(*frames: Any) -> int:
    """The frames' own memory, deep (strings included)."""
    return int(sum(int(f.memory_usage(deep=True).sum()) for f in frames))


@dataclass(slots=True)
class Clock:
    """CPU (this process, all threads) and wall time of a block."""

    cpu_s: float = 0.0
    wall_s: float = 0.0


@contextmanager
def clocked() -> Iterator[Clock]:
    clock = Clock()
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        yield clock
    finally:
        clock.cpu_s = time.process_time() - cpu
        clock.wall_s = time.perf_counter() - wall


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A throwaway cache directory on the same disk as the project (not a tmpfs)."""
    with tempfile.TemporaryDirectory(prefix="fb-bench-", dir=os.environ.get("FB_BENCH_TMP")) as path:
        yield Path(path)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def us_per_row(seconds: float, rows: int) -> float:
    return round(seconds / rows * 1e6, 2) if rows else 0.0


def best(values: list[float]) -> float:
    return min(values) if values else float("nan")


def run_worker(function: Callable[..., Json], **params: Any) -> Json:
    """Call ``function(**params)`` in a fresh Python process; return its JSON answer."""
    target = f"{function.__module__}:{function.__name__}"
    command = [sys.executable, "-m", "benchmarks._worker", target, json.dumps(params)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=WORKER_TIMEOUT)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"worker {target} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    answer: Json = json.loads(lines[-1])
    return answer


def machine_facts() -> Json:
    """CPU, cores, memory, versions and the checkout, recorded with every result."""
    versions = {
        name: _version(name) for name in ("pandas", "pyarrow", "numpy", "httpx", "httpcore", "h11", "orjson")
    }
    versions.update(
        {name: _version(name) for name in ("anyio", "parallel-web", "vectorshift", "frame-batch")}
    )
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git": _git_state(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 2**30, 1)


def _git_state() -> Json:
    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}
