"""``frame_batch.run`` and ``frame_batch.plan``: frame -> rows -> engine -> frame.

This is the only module that holds a DataFrame and the engine at once. It resolves the
provider and the input columns (so bad arguments fail before anything is sent), opens the
store, plans lazily (chunks are encoded as the engine asks for batches), runs the engine,
and joins the stored results back by key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import httpx
import numpy as np
import pandas as pd

from . import errors
from ._checkpoint import Checkpoint, Checkpointer, CheckpointIds, seed
from ._encode import encode_frame, resolve_inputs
from ._engine import Engine, EngineOptions, OnAmbiguous, RunContext
from ._files import FileInputs, FileOutputs, FileReader, check_file_outputs
from ._http import ApiClient
from ._join import join_results
from ._keys import fingerprint, row_key, scope_of
from ._planning import BatchSizer, PlanState, plan_batches
from ._progress import TqdmProgress
from ._retry import RetryPolicy
from ._sync import run_sync
from ._types import Batch, ProgressCallback, ProviderLimits, RunSummary
from .providers import Provider, resolve_provider
from .store import Store

log = logging.getLogger("frame_batch")

DEFAULT_CACHE = ".frame_batch"
"""The default ``cache=``: a ``.frame_batch/`` directory in the current working directory."""
FILE_CHUNK_ROWS = 64  # rows encoded at once when cells may name files to read

Inputs = Mapping[str, Hashable] | Sequence[str] | None
Cache = str | os.PathLike[str] | None


@dataclass(frozen=True, slots=True)
class RunResult:
    """The enriched frame, what the run did, and the rows that may have been paid twice."""

    frame: pd.DataFrame
    summary: RunSummary
    possibly_duplicated: pd.Index

    def __iter__(self) -> Iterator[Any]:  # ``out, summary = frame_batch.run(...)``
        yield self.frame
        yield self.summary


@dataclass(frozen=True, slots=True)
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
        return text


@dataclass(frozen=True, slots=True)
class _Setup:
    provider: Provider
    workflow: str
    pairs: tuple[tuple[str, Hashable], ...]
    limits: ProviderLimits
    scope: bytes
    scope_id: str
    files: FileInputs | None  # None: the provider takes no files (bytes cells are row errors)


def _setup(
    df: pd.DataFrame,
    workflow: str,
    provider: str | Provider,
    inputs: Inputs,
    *,
    api_key: str | None,
    base_url: str | None,
    batch_size: int | None,
    max_bytes: int | None,
    max_in_flight: int | None,
    poll_interval: float | None,
    provider_options: Mapping[str, Any],
    files: FileOptions,
) -> _Setup:
    if not isinstance(df, pd.DataFrame):
        raise errors.InputError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if not isinstance(workflow, str) or not workflow.strip():
        raise errors.ConfigError("workflow must be a non-empty string (the spell / pipeline / task id)")
    prov = resolve_provider(provider, api_key=api_key, base_url=base_url, **provider_options)
    pairs = resolve_inputs(df, inputs)
    limits = _limits(prov.limits, batch_size, max_bytes, max_in_flight, poll_interval)
    scope_parts = prov.scope(workflow)
    scope_id = fingerprint("scope", *scope_parts)
    return _Setup(prov, workflow, pairs, limits, scope_of(*scope_parts), scope_id, _file_inputs(prov, files))


@dataclass(frozen=True, slots=True)
class FileOptions:
    """The run's file options as given (checked against the provider in ``_file_inputs``)."""

    root: str | os.PathLike[str] | None = None
    inputs: object = None
    max_bytes: int | None = None

    @property
    def given(self) -> bool:
        return self.root is not None or self.inputs is not None or self.max_bytes is not None


def _file_inputs(provider: Provider, options: FileOptions) -> FileInputs | None:
    if not provider.accepts_files:
        if options.given:
            raise errors.ConfigError(
                f"file_root/file_inputs/max_file_bytes apply to providers that take files; "
                f"{provider.name} takes none"
            )
        return None
    return FileInputs.from_options(options.root, options.inputs, options.max_bytes)


def _stream_batches(
    df: pd.DataFrame,
    setup: _Setup,
    state: PlanState,
    done: set[str],
    in_flight: set[str],
    chunk_rows: int,
    sizer: BatchSizer | None = None,
) -> Iterator[Batch]:
    """The frame, encoded chunk by chunk and planned into batches (lazily)."""
    if setup.files is not None and setup.files.root is not None:
        chunk_rows = min(chunk_rows, FILE_CHUNK_ROWS)  # files are read while a chunk is encoded
    return plan_batches(
        encode_frame(df, setup.pairs, chunk_rows=chunk_rows, files=setup.files),
        key_of=partial(row_key, setup.scope),
        is_done=done.__contains__,
        in_flight=in_flight.__contains__,
        max_rows=sizer or setup.limits.max_rows_per_batch,
        max_bytes=setup.limits.max_bytes_per_batch,
        max_chars=setup.limits.max_row_chars,
        state=state,
    )


def _limits(
    base: ProviderLimits,
    batch_size: int | None,
    max_bytes: int | None,
    in_flight: int | None,
    poll: float | None,
) -> ProviderLimits:
    for name, value in (("batch_size", batch_size), ("max_bytes", max_bytes), ("max_in_flight", in_flight)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise errors.ConfigError(f"{name} must be a positive integer, not {value!r}")
    if poll is not None and not poll > 0:
        raise errors.ConfigError(f"poll_interval must be a positive number of seconds, not {poll!r}")
    cap = base.hard_max_rows
    if batch_size is not None and cap is not None and batch_size > cap:
        raise errors.ConfigError(
            f"batch_size={batch_size} is more than this provider accepts per request ({cap}); "
            f"pass batch_size={cap} or less"
        )
    return replace(
        base,
        max_rows_per_batch=batch_size or base.max_rows_per_batch,
        max_bytes_per_batch=max_bytes or base.max_bytes_per_batch,
        poll_interval=poll or base.poll_interval,
        first_poll=min(base.first_poll, poll or base.poll_interval),
        max_in_flight=in_flight or base.max_in_flight,
    )


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
    chunk_rows: int = 10_000,
    file_root: str | os.PathLike[str] | None = None,
    file_inputs: str | Sequence[str] | None = None,
    max_file_bytes: int | None = None,
    file_outputs: FileOutputs = "path",
    checkpoint: Callable[[Checkpoint], None] | None = None,
    checkpoint_every: float = 30.0,
    resume_from: pd.DataFrame | None = None,
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
    """
    output_files = check_file_outputs(file_outputs)
    setup = _setup(
        df,
        workflow,
        provider,
        inputs,
        api_key=api_key,
        base_url=base_url,
        batch_size=batch_size,
        max_bytes=max_bytes,
        max_in_flight=max_in_flight,
        poll_interval=poll_interval,
        provider_options=provider_options,
        files=FileOptions(file_root, file_inputs, max_file_bytes),
    )
    if on_ambiguous not in ("resubmit", "fail"):
        raise errors.ConfigError(f"on_ambiguous must be 'resubmit' or 'fail', not {on_ambiguous!r}")
    if timeout is not None and not timeout > 0:
        raise errors.ConfigError(f"timeout must be a positive number of seconds, not {timeout!r}")
    http = setup.provider.http_config()  # resolves the API key: fails here, before any work
    options = EngineOptions(
        max_in_flight=setup.limits.max_in_flight,
        poll_interval=setup.limits.poll_interval,
        first_poll=setup.limits.first_poll,
        deadline=timeout,
        on_ambiguous=on_ambiguous,
        cancel_on_interrupt=cancel_on_interrupt,
        reconcile_delay=setup.limits.reconcile_delay,
    )
    bar = TqdmProgress(f"{setup.provider.name} {workflow[:32]}") if progress is True else None
    callback: ProgressCallback | None = bar if bar is not None else (progress or None)  # type: ignore[assignment]
    started = time.monotonic()
    store = Store.open(cache)
    try:
        store.acquire()
        state = PlanState()
        ids = CheckpointIds(
            setup.scope_id, setup.provider.name, workflow, fingerprint(setup.scope_id, setup.pairs)
        )
        if resume_from is not None:
            added = seed(store, ids, resume_from)
            log.info("from the checkpoint: %d stored results and %d open batches added to the cache", *added)
        reader = FileReader(store.files, "bytes" if store.temporary else output_files)
        shape = setup.provider.output_shape(workflow)
        saver = (
            None
            if checkpoint is None
            else Checkpointer(store, ids, df, state, shape, reader, checkpoint, checkpoint_every)
        )

        async def execute() -> tuple[int, Any, Any]:
            api = ApiClient(
                http,
                secrets=setup.provider.secrets(),
                transport=transport,
                policy=retry,
                max_connections=max(4, setup.limits.max_in_flight * 2),
                creates_per_minute=setup.limits.max_creates_per_minute,
            )
            in_flight: set[str] = set()
            sizer = BatchSizer(setup.limits.max_rows_per_batch)
            engine = Engine(
                RunContext(setup.provider, workflow, setup.scope_id, ids.fingerprint),
                api,
                store,
                options,
                progress=callback,
                # Unique rows needing a remote result: exact once planning has seen every row,
                # an upper bound before (rows not yet planned count as needing one).
                total=lambda: len(in_flight) + len(state.planned) + (len(df) - state.rows),
                sizer=sizer,
                checkpoint=None if saver is None else saver.sync,
            )
            try:
                refs = await engine.prepare(store.journal.open_batches(setup.scope_id))
                in_flight.update(k for ref in refs for k in ref.keys)
                stored, written = store.latest(setup.scope_id), store.parts_written
                done = store.done_keys(setup.scope_id, retry_failed=retry_failed, latest=stored)
                batches = _stream_batches(df, setup, state, done, in_flight, chunk_rows, sizer)
                async with saver.periodic() if saver else contextlib.nullcontext():
                    report = await engine.run(refs, batches)
                if saver is not None:
                    await saver.write(final=True)
                # Nothing written since (a resumed, finished run): the table read above is current.
                if store.parts_written != written:
                    stored = store.latest(setup.scope_id)
                return api.create_requests, report, stored
            finally:
                await api.aclose()

        try:
            create_requests, report, stored = run_sync(execute)
        except KeyboardInterrupt:
            where = (
                "a temporary cache (cache=None): nothing to resume" if store.temporary else str(store.root)
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
        frame, status = join_results(df, state.keys, state.errors, stored, shape, files=reader)
        summary, dup_index = _summarize(df, status, state, store, create_requests, report, started)
    finally:
        store.close()
    if progress:
        print(summary, file=sys.stderr)
    return RunResult(frame, summary, dup_index)


def _summarize(
    df: pd.DataFrame,
    status: np.ndarray,
    state: PlanState,
    store: Store,
    creates: int,
    report: Any,
    started: float,
) -> tuple[RunSummary, pd.Index]:
    counts = Counter(status.tolist())
    dups = store.journal.possible_duplicates()
    flags = [k is not None and k in dups for k in state.keys]
    notes: list[str] = []
    if report.timed_out:
        notes.append("the deadline (timeout=) was reached: pending rows resume on the next run")
    notes.extend(sorted(report.attention))
    if report.shrunk:
        notes.append(f"requests were too large or too slow {report.shrunk} times: batches were made smaller")
    if report.unknown_states:
        notes.append(f"undocumented states seen: {', '.join(sorted(report.unknown_states))}")
    summary = RunSummary(
        rows=len(df),
        unique_inputs=len({k for k in state.keys if k is not None}),
        cached=state.cached,
        submitted=len(state.planned),
        succeeded=int(counts.get("succeeded", 0)),
        failed=int(counts.get("failed", 0)),
        cancelled=int(counts.get("cancelled", 0)),
        skipped=int(counts.get("skipped", 0)),
        pending=int(counts.get("pending", 0)),
        create_requests=creates,
        batches=report.batches_submitted,
        possibly_duplicated=sum(flags),
        elapsed_s=time.monotonic() - started,
        cache_dir=None if store.temporary else str(store.root),
        notes=tuple(notes),
    )
    return summary, df.index[flags]


def plan(
    df: pd.DataFrame,
    workflow: str,
    *,
    provider: str | Provider,
    inputs: Inputs = None,
    cache: Cache = DEFAULT_CACHE,
    api_key: str | None = None,
    base_url: str | None = None,
    batch_size: int | None = None,
    max_bytes: int | None = None,
    retry_failed: bool = False,
    chunk_rows: int = 10_000,
    file_root: str | os.PathLike[str] | None = None,
    file_inputs: str | Sequence[str] | None = None,
    max_file_bytes: int | None = None,
    **provider_options: Any,
) -> PlanReport:
    """What ``run`` would do now: rows cached, to submit, batches, requests. Sends nothing."""
    setup = _setup(
        df,
        workflow,
        provider,
        inputs,
        api_key=api_key,
        base_url=base_url,
        batch_size=batch_size,
        max_bytes=max_bytes,
        max_in_flight=None,
        poll_interval=None,
        provider_options=provider_options,
        files=FileOptions(file_root, file_inputs, max_file_bytes),
    )
    with Store.open(cache) as store:
        open_batches = store.journal.open_batches(setup.scope_id)
        in_flight = {k for b in open_batches if b.state == "submitted" for k in b.keys}
        done = store.done_keys(setup.scope_id, retry_failed=retry_failed)
        state = PlanState()
        batches = sum(1 for _ in _stream_batches(df, setup, state, done, in_flight, chunk_rows))
    valid = sum(k is not None for k in state.keys)
    unique = len({k for k in state.keys if k is not None})
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
    )
