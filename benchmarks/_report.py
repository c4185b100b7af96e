"""Turn the suites' JSON into text tables and pass/fail targets."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from benchmarks._common import Json

CPU_TARGET_US = 10.0
EFFICIENCY_TARGET = 0.90
RSS_TARGET_RATIO = 3.0
RESUME_TARGET_S = 1.0


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width table: text left-aligned, numbers right-aligned."""
    cells = [[_text(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(list(headers)), rule, *(line(r) for r in cells)]).rstrip()


def render(results: Json) -> str:
    """Every section that ran, in suite order."""
    sections: dict[str, Callable[[Any], str]] = {
        "overhead": _overhead,
        "throughput": _throughput,
        "memory": _memory,
        "resume": _resume,
        "compare": _compare,
    }
    return "\n\n".join(sections[name](data) for name, data in results.items() if name in sections)


def render_suite(name: str, data: Any) -> str:
    return render({name: data})


def targets(results: Json) -> list[Json]:
    """The issue's targets, for the suites that ran."""
    found: list[Json] = []
    if "overhead" in results:
        found.append(_cpu_target(results["overhead"]))
    if "throughput" in results:
        found.extend(_efficiency_target(results["throughput"], kind) for kind in ("clean", "faults"))
    if "memory" in results:
        found.append(_rss_target(results["memory"]))
    if "resume" in results:
        found.append(_resume_target(results["resume"][0]))
    if "compare" in results:
        found.extend(_compare_target(pair) for pair in results["compare"])
    return found


def render_targets(found: list[Json]) -> str:
    rows = [["PASS" if t["passed"] else "FAIL", t["target"], t["measured"]] for t in found]
    return "Targets\n" + table(["", "target", "measured"], rows)


# -- sections ----------------------------------------------------------------------------------


def _overhead(data: list[Json]) -> str:
    rows = [
        [
            f"{d['rows']:,}",
            d["client_cpu_us_per_row"],
            " / ".join(f"{v:g}" for v in d["client_cpu_us_per_row_all"]),
            d["wall_s"],
            d["emulator_cpu_us_per_row"],
        ]
        for d in data
    ]
    head = (
        "1. Client CPU per row (Respell emulator in its own process, zero latency, B=1000, C=4; "
        f"best of {data[0]['reps']} runs, the machine is shared)\n"
    )
    text = head + table(["rows", "client CPU us/row", "all runs", "wall s", "emulator CPU us/row"], rows)
    profiled = [d for d in data if "profile" in d]
    if profiled:
        text += "\n\n" + _stage_table(profiled) + "\n\n" + _hotspot_table(profiled[-1])
    return text


def _hotspot_table(data: Json) -> str:
    sampled = data.get("sampled", {}).get("hotspots")
    if not sampled:
        return _profiled_hotspots(data)
    rows = [[h["function"], f"{h['share']:.1%}", h["est_us_per_row"]] for h in sampled[:12]]
    title = f"Top functions by own CPU (py-spy samples, innermost frame), {data['rows']:,} rows"
    return title + "\n" + table(["function", "share", "us/row"], rows)


def _stage_table(data: list[Json]) -> str:
    names = [s["stage"] for s in data[0]["profile"]["stages"]]
    rows = []
    for i, name in enumerate(names):
        row: list[object] = [name]
        for d in data:
            profiled = d["profile"]["stages"][i]
            sampled = d.get("sampled", {}).get("stages")
            spy = sampled[i] if sampled else None
            row += [f"{profiled['share']:.0%}", f"{spy['share']:.0%}" if spy else "-"]
            row.append((spy or profiled)["est_us_per_row"])
        rows.append(row)
    headers = ["stage"]
    for d in data:
        rows_k = _size(d["rows"])
        headers += [f"{rows_k} cProfile", f"{rows_k} py-spy", f"{rows_k} us/row"]
    skipped = {d.get("sampled", {}).get("skipped") for d in data} - {None}
    note = (
        "Stage split: share of the client's CPU per stage, by cProfile (thread-CPU timer, cumulative time of "
        "each stage's root functions; profiled totals "
        + ", ".join(f"{d['profile']['profiled_us_per_row']:g}" for d in data)
        + " us/row) and by py-spy sampling; us/row = the py-spy share (else cProfile's) x the unprofiled CPU"
        + (f"\n(py-spy split skipped: {skipped.pop()})" if skipped else "")
    )
    return note + "\n" + table(headers, rows)


def _profiled_hotspots(data: Json) -> str:
    rows = [
        [h["function"], h["calls"], h["own_us_per_row"], h["cum_us_per_row"], h["called_from"]]
        for h in data["profile"]["hotspots"][:10]
    ]
    title = f"Top functions by own time, profiled, {data['rows']:,} rows"
    return title + "\n" + table(["function", "calls", "own us/row", "cum us/row", "mostly called from"], rows)


def _throughput(data: Json) -> str:
    parts = []
    for kind, title in (("clean", "no faults"), ("faults", "5% 5xx + 5% 429 on every request kind")):
        grid = data[kind]
        head = (
            f"2. Throughput efficiency, L={grid['latency_s'] * 1000:.0f} ms per batch, "
            f"poll_interval={grid['poll_interval_s']} s, {title}"
        )
        parts.append(head + "\n" + table(_CELL_HEADERS, [_cell_row(c) for c in grid["cells"]]))
    if "target_repeats" in data:
        rows = [[kind, *_cell_row(c)] for kind in ("clean", "faults") for c in _target_runs(data, kind)]
        parts.append(
            "The target cell, B=100, C=16: the runs each target reads, the median of them (clean: the"
            " grid's run and its repeats; with faults: a run longer than the grid's)\n"
            + table(["faults", *_CELL_HEADERS], rows)
        )
    if "poll_sweep" in data:
        rows = [[f"{c['poll_interval_s'] * 1000:g} ms", *_cell_row(c)] for c in data["poll_sweep"]["cells"]]
        parts.append(
            "Poll interval sweep at B=100, C=16, no faults\n" + table(["poll", *_CELL_HEADERS], rows)
        )
    if "fault_sweep" in data:
        rows = [[_fault_label(c["faults"]), *_cell_row(c)] for c in data["fault_sweep"]["cells"]]
        parts.append("Which faults cost what, at B=100, C=16\n" + table(["faults", *_CELL_HEADERS], rows))
    if "stock_emulator" in data:
        rows = [_cell_row(c) for c in data["stock_emulator"]["cells"]]
        parts.append(
            "The same cell against the stock emulator (Nagle on, backlog 5: as the tests serve it)\n"
            + table(_CELL_HEADERS, rows)
        )
    return "\n\n".join(parts)


def _fault_label(faults: Json) -> str:
    return (
        f"5xx {faults['rate_5xx']:.0%} + 429 {faults['rate_429']:.0%} on {faults['on']}, "
        f"Retry-After {faults['retry_after']:g} s"
    )


_CELL_HEADERS = [
    "B",
    "C",
    "rows",
    "rows/s",
    "bound",
    "eff",
    "polls/batch",
    "client busy",
    "emu busy",
    "limit",
]


def _cell_row(c: Json) -> list[object]:
    return [
        c["batch_size"],
        c["in_flight"],
        c["rows"],
        c["rows_per_s"],
        c["bound_rows_per_s"],
        f"{c['efficiency']:.0%}",
        c["polls_per_batch"],
        c["client_busy"],
        c["server_busy"],
        c["bottleneck"],
    ]


def _memory(data: list[Json]) -> str:
    rows = [
        [
            f"{d['rows']:,}",
            d["peak_rss_mib"],
            d["imports_rss_mib"],
            d["input_frame_mib"],
            d["output_frame_mib"],
            d["ratio_peak"],
            d["ratio_above_imports"],
        ]
        for d in data
    ]
    headers = [
        "rows",
        "peak RSS MiB",
        "after imports MiB",
        "input MiB",
        "output MiB",
        "peak/frames",
        "(peak-imports)/frames",
    ]
    return "3. Peak RSS (fresh process per size) vs input + output frame memory\n" + table(headers, rows)


def _resume(data: list[Json]) -> str:
    d = data[0]
    rows = [
        [
            f"{d['rows']:,}",
            d["first_run_wall_s"],
            d["resume_wall_s"],
            " / ".join(f"{v:g}" for v in d["resume_wall_s_all"]),
            d["resume_creates_client"],
            d["resume_creates_server"],
        ]
    ]
    headers = [
        "rows",
        "first run s",
        "no-op resume s (best)",
        "all resumes",
        "creates (summary)",
        "creates (emulator)",
    ]
    text = "4. No-op resume of a finished run\n" + table(headers, rows)
    top = [[t["function"], t["calls"], t["cum_s"], t["own_s"]] for t in d["profile_top_cumulative"][:10]]
    return (
        text
        + "\n\nWhere a resume spends its time (cProfile, wall clock)\n"
        + table(["function", "calls", "cum s", "own s"], top)
    )


def _compare(data: list[Json]) -> str:
    parts = []
    for pair in data:
        rows = [
            [
                line["client"],
                line["in_flight"],
                line["succeeded"],
                line["wall_s"],
                line["rows_per_s"],
                line["client_cpu_us_per_row"],
            ]
            for line in pair["lines"]
        ]
        head = f"{pair['pair']} ({pair['rows']:,} rows, latency {pair['latency_s'] * 1000:.0f} ms per batch)"
        parts.append(
            head + "\n" + table(["client", "C", "rows ok", "wall s", "rows/s", "client CPU us/row"], rows)
        )
    return "5. Side by side (best of the runs each)\n" + "\n\n".join(parts)


# -- targets -----------------------------------------------------------------------------------


def _cpu_target(data: list[Json]) -> Json:
    largest = max(data, key=lambda d: d["rows"])
    value = largest["client_cpu_us_per_row"]
    return _target(
        f"client CPU <= {CPU_TARGET_US:g} us/row at B=1000, {largest['rows']:,} rows",
        f"{value} us/row",
        value <= CPU_TARGET_US,
    )


def _efficiency_target(data: Json, kind: str) -> Json:
    """The median of the B=100, C=16 runs with ``kind`` faults: the grid's cell, and the full
    run's repeats of it; repeats longer than the grid's cell replace it (faults: see
    ``throughput.FAULT_TARGET_ROUNDS``)."""
    runs = _target_runs(data, kind)
    runs.sort(key=lambda c: c["efficiency"])
    cell = runs[len(runs) // 2]  # the median (an odd count of runs)
    label = "no faults" if kind == "clean" else "5% 5xx + 5% 429"
    label += f", {cell['rows']:,} rows"
    measured = (
        f"{cell['efficiency']:.1%} ({cell['rows_per_s']:,.0f} of {cell['bound_rows_per_s']:,.0f} rows/s)"
    )
    if len(runs) > 1:
        measured += f", median of {len(runs)} runs: {runs[0]['efficiency']:.1%}-{runs[-1]['efficiency']:.1%}"
    return _target(
        f"efficiency >= 90% at B=100, C=16, L=200ms, {label}",
        measured,
        cell["efficiency"] >= EFFICIENCY_TARGET,
    )


def _target_runs(data: Json, kind: str) -> list[Json]:
    grid_cell = _target_cell(data[kind])
    repeats: list[Json] = data.get("target_repeats", {}).get(kind, [])
    if repeats and repeats[0]["rows"] != grid_cell["rows"]:
        return list(repeats)
    return [grid_cell, *repeats]


def _target_cell(grid: Json) -> Json:
    cell: Json = next(c for c in grid["cells"] if c["batch_size"] == 100 and c["in_flight"] == 16)
    return cell


def _rss_target(data: list[Json]) -> Json:
    largest = max(data, key=lambda d: d["rows"])
    measured = f"{largest['ratio_peak']}x ({largest['peak_rss_mib']} MiB peak)"
    passed = largest["ratio_peak"] <= RSS_TARGET_RATIO
    return _target(f"peak RSS <= 3x (input + output frame) at {largest['rows']:,} rows", measured, passed)


def _resume_target(d: Json) -> Json:
    creates = max(d["resume_creates_client"], d["resume_creates_server"])
    passed = d["resume_wall_s"] <= RESUME_TARGET_S and creates == 0
    measured = f"{d['resume_wall_s']} s, {creates} creates"
    return _target(f"no-op resume of {d['rows']:,} rows <= 1 s with 0 creates", measured, passed)


def _compare_target(pair: Json) -> Json:
    """Each alternative against frame_batch at the alternative's own concurrency (the
    ``matched`` line, or the default where that is the same C); passed if faster than all."""
    ours = [line for line in pair["lines"] if line["frame_batch"]]
    margins = []
    for alt in (line for line in pair["lines"] if not line["frame_batch"]):
        same = [line for line in ours if line["in_flight"] == alt["in_flight"]]
        mine = next((line for line in same if "matched" in line["client"]), same[0] if same else ours[0])
        margins.append((mine["rows_per_s"] / alt["rows_per_s"], alt["in_flight"]))
    measured = "; ".join(f"{margin:.2f}x at C={c}" for margin, c in margins)
    passed = min(margin for margin, _ in margins) > 1.0
    return _target(f"frame_batch faster than the alternative: {pair['pair']}", measured + " (rows/s)", passed)


def _size(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows >= 1_000_000 else f"{rows // 1000}k"


def _target(target: str, measured: str, passed: bool) -> Json:
    return {"target": target, "measured": measured, "passed": bool(passed)}


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
