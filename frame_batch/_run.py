"""``frame_batch.run``, ``plan`` and ``preview``: frame -> rows -> engine -> frame.

``run`` checks its arguments and opens the store (a ``Session``) before anything is sent,
drives the engine to the end, and joins the stored results back by key. ``plan`` streams
the same planning with nothing sent. Background runs (``submit``) are in ``_job``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pandas as pd

from ._checkpoint import Checkpoint
from ._cost import CostModel, check_cost_options
from ._encode import CHUNK_ROWS
from ._engine import OnAmbiguous
from ._files import FileOutputs
from ._planning import Budget, PlanState
from ._progress import TqdmProgress
from ._retry import RetryPolicy
from ._rowkeys import count_unique
from ._session import RunResult, Session
from ._setup import DEFAULT_CACHE, Cache, Inputs, RunOptions, resolve, stream_batches
from ._sync import run_sync
from ._types import ProgressCallback
from .providers import Provider
from .store import Store

__all__ = ["DEFAULT_CACHE", "PlanReport", "RunResult", "plan", "preview", "run", "run_with"]


@dataclass(frozen=True, slots=True, repr=False)
class PlanReport:
    """A dry run: what ``run`` would send now, with nothing sent."""

    rows: int
    skipped: int
    cached: int
    duplicates: int  # rows that share their inputs with an earlier row (sent once)
    to_submit: int
    batches: int
    create_requests: int
    in_flight: int  # rows in batches submitted by an earlier run: polled, not sent again
    in_flight_batches: int
    unresolved_batches: int  # create in flight when an earlier run stopped
    errors: tuple[str, ...]  # the first skipped rows' reasons
    held: int = 0  # rows max_rows=/max_cost= would keep for a later run
    estimated_cost: float | None = None  # of the rows to submit; None: no price known
    cost_basis: str = "no cost data"  # where the estimate comes from

    def __str__(self) -> str:
        text = (
            f"{self.rows} rows: {self.cached} cached, {self.to_submit} to submit in {self.batches} "
            f"batches ({self.create_requests} create requests), {self.duplicates} duplicates sent once, "
            f"{self.skipped} skipped"
        )
        if self.in_flight_batches:
            text += f"; {self.in_flight} rows in {self.in_flight_batches} batches in flight will be polled"
        if self.unresolved_batches:
            text += f"; {self.unresolved_batches} batches had a create request in flight when a run stopped"
        if self.held:
            text += f"; {self.held} rows held back by max_rows/max_cost"
        if self.estimated_cost is not None:
            text += f"; estimated cost {self.estimated_cost:,.4g} ({self.cost_basis})"
        else:
            text += "; cost unknown (pass cost_per_row= to estimate it)"
        return text

    def __repr__(self) -> str:
        return f"<PlanReport: {self}>"

    def _repr_html_(self) -> str:
        from html import escape

        return f"<div style='font-family:system-ui,sans-serif;font-size:13px'>{escape(str(self))}</div>"


def run(
    df: pd.DataFrame,
    workflow: str,
    *,
    provider: str | Provider,
    inputs: Inputs = None,
    cache: Cache = DEFAULT_CACHE,
    api_key: str | None = None,
    base_url: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    batch_size: int | None = None,
    max_bytes: int | None = None,
    max_in_flight: int | None = None,
    poll_interval: float | None = None,
    timeout: float | None = None,
    retry_failed: bool = False,
    on_ambiguous: OnAmbiguous = "resubmit",
    cancel_on_interrupt: bool = False,
    progress: bool | ProgressCallback = True,
    retry: RetryPolicy | None = None,
    chunk_rows: int = CHUNK_ROWS,
    file_root: str | os.PathLike[str] | None = None,
    file_inputs: str | Sequence[str] | None = None,
    max_file_bytes: int | None = None,
    file_outputs: FileOutputs = "path",
    checkpoint: Callable[[Checkpoint], None] | None = None,
    checkpoint_every: float = 30.0,
    resume_from: pd.DataFrame | None = None,
    max_rows: int | None = None,
    max_cost: float | None = None,
    cost_per_row: float | None = None,
    **provider_options: Any,
) -> RunResult:
    """Run ``workflow`` on every row of ``df``; return the enriched frame and a summary.

    Rows become input maps (``inputs``: input name -> column; default every column by name),
    are sent in batches, and their outputs come back as new columns next to ``bulk_status``,
    ``bulk_error`` and ``bulk_run_id``. Results are stored in ``cache`` as they land: running
    the same call again resumes, and never pays for a stored row twice.

    Other keyword options go to the provider named by ``provider=`` (e.g. Parallel's
    ``output_schema=`` and ``processor=``); see that provider's class.

    Files (providers that take them, VectorShift): a bytes cell is a file; with
    ``file_root=`` a ``Path`` cell, or a str cell of an input named in ``file_inputs=``, is a
    file read from under that folder (at most ``max_file_bytes``). File outputs are saved
    under ``<cache>/files/`` and their column holds the path, or the bytes with
    ``file_outputs="bytes"`` (always the bytes with ``cache=None``: nothing is kept).

    Checkpoints (the CLI keeps them in the output workbook): ``checkpoint`` is called with a
    ``Checkpoint`` (the frame so far and a state table) every ``checkpoint_every`` seconds,
    before each create request leaves and after its answer is recorded, and at the end.
    ``resume_from`` takes such a state table and writes it into the cache first, so a rerun
    resumes from it even when the cache directory was lost.

    Cost guards: ``max_rows`` and ``max_cost`` stop sending new rows once the next row would
    pass the limit (rows already stored or in flight do not count). The rest stay pending,
    and the summary says so: run again without the limit to finish them. ``max_cost`` is in
    the unit of the estimate: Parallel's list price in USD, or ``cost_per_row`` (your price
    per run, e.g. credits), or this workflow's recorded history; see ``plan``.
    """
    options = RunOptions(
        provider=provider,
        inputs=inputs,
        cache=cache,
        api_key=api_key,
        base_url=base_url,
        transport=transport,
        batch_size=batch_size,
        max_bytes=max_bytes,
        max_in_flight=max_in_flight,
        poll_interval=poll_interval,
        timeout=timeout,
        retry_failed=retry_failed,
        on_ambiguous=on_ambiguous,
        cancel_on_interrupt=cancel_on_interrupt,
        progress=progress,
        retry=retry,
        chunk_rows=chunk_rows,
        file_root=file_root,
        file_inputs=file_inputs,
        max_file_bytes=max_file_bytes,
        file_outputs=file_outputs,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume_from=resume_from,
        max_rows=max_rows,
        max_cost=max_cost,
        cost_per_row=cost_per_row,
        provider_options=provider_options,
    )
    return run_with(df, workflow, options)


def run_with(df: pd.DataFrame, workflow: str, options: RunOptions) -> RunResult:
    """``run`` with its options as one value."""
    session = Session(df, workflow, options)
    bar = TqdmProgress(f"{session.setup.provider.name} {workflow[:32]}") if options.progress is True else None
    session.progress = bar if bar is not None else (options.progress or None)  # type: ignore[assignment]
    try:
        try:
            outcome = run_sync(session.execute)
        except KeyboardInterrupt:
            where = (
                "a temporary cache (cache=None): nothing to resume"
                if session.store.temporary
                else str(session.store.root)
            )
            print(
                f"\ninterrupted: results collected so far are stored in {where}; "
                "run the same call again to resume (stored rows are not paid again)",
                file=sys.stderr,
            )
            raise
        finally:
            if bar is not None:
                bar.close()
        result = session.finish(outcome)
    finally:
        session.close()
    if options.progress:
        print(result.summary, file=sys.stderr)
    return result


def preview(df: pd.DataFrame, workflow: str, *, n: int = 5, **options: Any) -> pd.DataFrame:
    """Run the first ``n`` rows only and return them enriched. They are stored like any run's:
    the full run later does not pay for them again."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of rows, not {n!r}")
    return run_with(df.head(n), workflow, RunOptions.of(options)).frame


def plan(df: pd.DataFrame, workflow: str, **options: Any) -> PlanReport:
    """What ``run`` would do now, with the same options: rows cached, to submit, batches,
    requests, and the estimated cost. Sends nothing."""
    opts = RunOptions.of(options)
    check_cost_options(opts.max_rows, opts.max_cost, opts.cost_per_row)
    setup = resolve(df, workflow, opts)
    with Store.open(opts.cache) as store:
        costs = CostModel(setup.provider, workflow, opts.cost_per_row, store.journal.spend(setup.scope_id))
        budget = Budget(opts.max_rows, opts.max_cost, costs)
        open_batches = store.journal.open_batches(setup.scope_id)
        in_flight = {k for b in open_batches if b.state == "submitted" for k in b.keys}
        done = store.done_keys(setup.scope_id, retry_failed=opts.retry_failed)
        state = PlanState()
        batches = sum(
            1 for _ in stream_batches(df, setup, state, done, in_flight, opts.chunk_rows, budget=budget)
        )
    keys = state.key_array()
    valid = len(keys) - keys.null_count
    unique = count_unique(keys)
    return PlanReport(
        rows=state.rows,
        skipped=state.rows - valid,
        cached=state.cached,
        duplicates=valid - unique,
        to_submit=len(state.planned),
        batches=batches,
        create_requests=batches,
        in_flight=state.in_flight,
        in_flight_batches=sum(b.state == "submitted" for b in open_batches),
        unresolved_batches=sum(b.state == "submitting" for b in open_batches),
        errors=tuple(state.errors[p] for p in sorted(state.errors)[:20]),
        held=state.held,
        estimated_cost=_estimate(budget),
        cost_basis=costs.basis(),
    )


def _estimate(budget: Budget) -> float | None:
    """The cost of the rows to submit, if every one of them had a price (nothing to send: 0)."""
    return budget.spent if budget.costed == budget.rows else None
