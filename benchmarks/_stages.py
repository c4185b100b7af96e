"""Split a cProfile of one ``frame_batch.run`` into stages by the cumulative time of their roots.

A stage is a few *root* functions of ``frame_batch`` (by file name and function name, so a
moved line does not break it). A stage's time is the cumulative time of its roots, where a
root called directly from a root of the same stage is counted once (by the outer one) and a
root of another stage called directly from it is subtracted (it is counted by that stage).
Whatever no stage claims (event loop, engine bookkeeping, setup, progress) is ``other``.

The profile uses ``time.thread_time`` as its timer, so it measures the CPU of the thread
that runs the engine (idle time in ``select`` costs nothing). cProfile adds a fixed cost per
Python call, so per-row code looks heavier than it is: the shares are indicative, and
``est_us_per_row`` rescales them to the unprofiled CPU time.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import PurePath
from typing import Any

FuncKey = tuple[str, int, str]

# stage -> (file name, function name) of its roots in frame_batch (Respell provider).
STAGES: dict[str, tuple[tuple[str, str], ...]] = {
    "encode": (("_encode.py", "_chunks"),),
    "plan (row keys, batches)": (("_planning.py", "plan_batches"),),
    "request (httpx + socket)": (("_http.py", "_send"),),
    "decode (JSON -> results)": (
        ("_http.py", "json_or_none"),
        ("respell.py", "_read_runs"),
        ("_engine.py", "_complete"),
    ),
    "store (parts + journal)": (
        ("__init__.py", "write_results"),
        ("__init__.py", "latest"),
        ("__init__.py", "done_keys"),
        ("journal.py", "begin"),
        ("journal.py", "submitted"),
        ("journal.py", "staged"),
    ),
    "join (results -> frame)": (("_join.py", "join_results"),),
}
OTHER = "other (event loop, engine, setup)"
HOTSPOTS = 15


@contextmanager
def profiled(timer: Callable[[], float] = time.thread_time) -> Iterator[cProfile.Profile]:
    """Profile the block; the default timer counts this thread's CPU (not time spent waiting)."""
    profile = cProfile.Profile(timer)
    profile.enable()
    try:
        yield profile
    finally:
        profile.disable()


def split(profile: cProfile.Profile, rows: int, cpu_us_per_row: float) -> dict[str, Any]:
    """Stage times (profiled µs/row, share, estimate at unprofiled speed) and the top hotspots."""
    stats: dict[FuncKey, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    roots = _roots(stats)
    total = sum(entry[2] for entry in stats.values())  # every function's own time
    seconds = dict.fromkeys(STAGES, 0.0)
    for func, stage in roots.items():
        seconds[stage] += _exclusive(stats, roots, func, stage)
    seconds[OTHER] = max(0.0, total - sum(seconds.values()))
    found = set(roots.values())
    return {
        "profiled_us_per_row": round(total / rows * 1e6, 2),
        "stages": [_stage_row(name, s, total, rows, cpu_us_per_row) for name, s in seconds.items()],
        "missing_roots": sorted(stage for stage in STAGES if stage not in found),
        "hotspots": _hotspots(stats, rows),
    }


def _roots(stats: dict[FuncKey, Any]) -> dict[FuncKey, str]:
    wanted = {(file, name): stage for stage, funcs in STAGES.items() for file, name in funcs}
    roots: dict[FuncKey, str] = {}
    for func in stats:
        path, _, name = func
        if "frame_batch" in path and (PurePath(path).name, name) in wanted:
            roots[func] = wanted[(PurePath(path).name, name)]
    return roots


def _exclusive(stats: dict[FuncKey, Any], roots: dict[FuncKey, str], func: FuncKey, stage: str) -> float:
    callers: dict[FuncKey, tuple[int, int, float, float]] = stats[func][4]
    seconds = sum(entry[3] for caller, entry in callers.items() if roots.get(caller) != stage)
    for other, other_stage in roots.items():
        via = stats[other][4].get(func)
        if other_stage != stage and via is not None:
            seconds -= via[3]  # another stage's root called from here: counted there
    return seconds


def _stage_row(name: str, seconds: float, total: float, rows: int, cpu_us_per_row: float) -> dict[str, Any]:
    share = seconds / total if total else 0.0
    return {
        "stage": name,
        "profiled_us_per_row": round(seconds / rows * 1e6, 2),
        "share": round(share, 3),
        "est_us_per_row": round(share * cpu_us_per_row, 2),
    }


def top_cumulative(profile: cProfile.Profile, limit: int = HOTSPOTS) -> list[dict[str, Any]]:
    """The ``frame_batch`` functions with the largest cumulative time, in seconds."""
    stats: dict[FuncKey, Any] = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    ours = [(func, entry) for func, entry in stats.items() if "frame_batch" in func[0]]
    ours.sort(key=lambda item: item[1][3], reverse=True)
    return [
        {
            "function": _label(func),
            "calls": entry[1],
            "cum_s": round(entry[3], 4),
            "own_s": round(entry[2], 4),
        }
        for func, entry in ours[:limit]
    ]


def _hotspots(stats: dict[FuncKey, Any], rows: int) -> list[dict[str, Any]]:
    by_own = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:HOTSPOTS]
    return [
        {
            "function": _label(func),
            "calls": entry[1],
            "own_us_per_row": round(entry[2] / rows * 1e6, 2),
            "cum_us_per_row": round(entry[3] / rows * 1e6, 2),
            "called_from": _label(max(entry[4].items(), key=_cumulative)[0]) if entry[4] else "",
        }
        for func, entry in by_own
    ]


def _cumulative(item: tuple[FuncKey, tuple[int, int, float, float]]) -> float:
    return item[1][3]


def _label(func: FuncKey) -> str:
    path, line, name = func
    if path == "~":
        return name  # a built-in
    parts = PurePath(path).parts
    short = "/".join(parts[parts.index("frame_batch") :]) if "frame_batch" in parts else "/".join(parts[-2:])
    return f"{short}:{line}({name})"
