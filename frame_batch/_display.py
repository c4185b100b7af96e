"""Compact HTML views for Jupyter: a job's progress and a run's summary.

Plain markup with inline styles only (no scripts, no CSS classes that depend on the front
end), every value escaped: error messages come from vendors and may hold markup.
"""

from __future__ import annotations

from html import escape

from ._types import JobStatus, RunSummary

_BOX = "font-family:system-ui,sans-serif;font-size:13px;line-height:1.4;max-width:46em"
_CELL = "padding:1px 10px 1px 0;text-align:left"


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(
        f"<tr><th style='{_CELL};font-weight:600'>{escape(k)}</th><td style='{_CELL}'>{escape(v)}</td></tr>"
        for k, v in rows
    )
    return f"<table style='border-collapse:collapse'>{body}</table>"


def _bar(done: int, total: int) -> str:
    width = 100 if total <= 0 else min(100, round(100 * done / total))
    return (
        "<div style='background:#e5e7eb;border-radius:3px;height:8px;width:20em;margin:4px 0'>"
        f"<div style='background:#2563eb;border-radius:3px;height:8px;width:{width}%'></div></div>"
    )


def _list(title: str, items: list[str]) -> str:
    if not items:
        return ""
    lis = "".join(f"<li>{escape(i)}</li>" for i in items)
    return f"<div style='margin-top:4px'><b>{escape(title)}</b><ul style='margin:2px 0'>{lis}</ul></div>"


def status_html(status: JobStatus) -> str:
    rows = [
        ("state", status.state),
        ("done", f"{status.done:,} of {status.to_run:,} rows ({status.failed:,} failed)"),
        ("from cache", f"{status.cached:,}"),
        ("in flight", f"{status.batches_in_flight} batches"),
    ]
    if status.rows_per_s:
        rows.append(("speed", f"{status.rows_per_s:,.1f} rows/s"))
    if status.eta_s is not None and status.state == "running":
        rows.append(("time left", f"about {status.eta_s:,.0f}s"))
    if status.error:
        rows.append(("error", status.error))
    head = f"<b>frame-batch job</b> · {escape(status.state)}"
    return f"<div style='{_BOX}'>{head}{_bar(status.done, status.to_run)}{_table(rows)}</div>"


def summary_html(summary: RunSummary) -> str:
    rows = [
        ("rows", f"{summary.rows:,}"),
        ("succeeded", f"{summary.succeeded:,}"),
        ("failed", f"{summary.failed:,}"),
    ]
    optional = [
        ("cancelled", summary.cancelled),
        ("skipped (bad input)", summary.skipped),
        ("pending (run again)", summary.pending),
        ("possibly paid twice", summary.possibly_duplicated),
    ]
    rows += [(name, f"{n:,}") for name, n in optional if n]
    rows.append(("from cache", f"{summary.cached:,}"))
    rows.append(("create requests", f"{summary.create_requests:,} in {summary.elapsed_s:.1f}s"))
    if summary.estimated_cost is not None:
        rows.append(("estimated cost", f"{summary.estimated_cost:,.4g}"))
    finished = summary.succeeded + summary.failed + summary.skipped + summary.cancelled
    errors = [f"{n:,} × {text}" for text, n in summary.errors]
    return (
        f"<div style='{_BOX}'><b>frame-batch run</b>{_bar(finished, summary.rows)}{_table(rows)}"
        f"{_list('errors by kind', errors)}{_list('notes', list(summary.notes))}</div>"
    )
