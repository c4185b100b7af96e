"""Background jobs: ``df.bulk.submit(...)`` returns a ``Job`` at once; the run goes on.

A job runs its session on its own event loop in a worker thread, so it works the same in a
script and inside Jupyter's running loop (no nest_asyncio): the caller's loop is never
blocked or re-entered. The caller's thread reads the job through thread-safe paths only:
progress snapshots the engine hands over, and the stored result parts (immutable files).

One process, one job per cache (the cache lock allows no more). Submitting the same
workflow on an equal frame while its job runs returns that job (a double-clicked cell is
paid once); once it ended, submitting again resumes from the store (stored rows are never
paid again). ``attach(cache=...)`` reaches the job from a new kernel through its record.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import uuid
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from . import _jobfile, errors
from ._progress import TqdmProgress
from ._session import Outcome, RunResult, Session
from ._setup import DEFAULT_CACHE, Cache, RunOptions, resolve
from ._types import JobState, JobStatus, Progress, ProgressCallback, RunSummary

log = logging.getLogger("frame_batch")

_JOBS: dict[Path | None, list[Job]] = {}  # live jobs by cache root (None: cache=None)
_JOBS_LOCK = threading.Lock()


class Job:
    """A run going on in the background. ``status()``, ``wait()``, ``result()``, ``cancel()``.

    ``result()`` is the frame so far while it runs (rows not finished yet are ``pending``)
    and the final frame once it ended; ``wait()`` blocks until then and returns the
    summary; ``await job`` does the same without blocking a running loop.
    """

    def __init__(
        self,
        session: Session,
        *,
        root: Path | None,
        run: bool = True,
        progress: bool | ProgressCallback = False,
        ended_as: JobState = "finished",
    ) -> None:
        self.job_id = uuid.uuid4().hex[:12]
        self._session, self._root = session, root
        self._future: concurrent.futures.Future[RunResult] = concurrent.futures.Future()
        self._progress: Progress | None = None
        self._state: JobState = "starting"
        self._ended_as = ended_as  # a job only shown (attach): the state its record gives
        self._cancel_asked = False
        self._partial: pd.DataFrame | None = None  # a failed job's rows so far
        self._lock = threading.Lock()  # snapshot vs the end of the run (a temporary cache is deleted)
        self._callback = None if isinstance(progress, bool) else progress
        self._bar = (
            TqdmProgress(f"{session.setup.provider.name} {session.setup.workflow[:32]}")
            if progress is True
            else None
        )
        if self._bar is not None:
            self._bar(Progress(0, 0, 0, 0, 0))  # shown now, in the caller's cell, not from the worker
        session.progress = self._on_progress
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[RunResult] | None = None
        self._inner: asyncio.Future[Outcome] | None = None
        self._started = time.monotonic()
        # A job only shown (attach to one that ended) leaves the record as it was.
        self._record = (
            None
            if root is None or not run
            else _jobfile.record_of(self.job_id, session.setup.workflow, session.options)
        )
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._work, args=(ready, run), name="frame-batch-job", daemon=True
        )
        self._thread.start()
        ready.wait()

    # -- the worker thread ---------------------------------------------------------------
    def _work(self, ready: threading.Event, run: bool) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._main(run))
        self._state = "running" if run else self._state
        ready.set()
        try:
            result = self._loop.run_until_complete(self._task)
        except BaseException as exc:  # handed to wait()/result(), which re-raise it
            self._state = "failed"
            self._end(None, exc)
        else:
            self._state = "cancelled" if self._cancel_asked else self._ended_as
            self._end(result, None)
        finally:
            self._loop.close()

    async def _main(self, run: bool) -> RunResult:
        session = self._session
        if not run:
            return session.finish(session.view())
        if self._record is not None:
            await asyncio.to_thread(self._write_record, save_frame=True)
        # The run is an inner task: cancel() stops it, and this task still joins the results.
        self._inner = asyncio.ensure_future(session.execute())
        if self._cancel_asked:  # cancelled before the run began
            self._inner.cancel()
        try:
            outcome = await self._inner
        except asyncio.CancelledError:
            if not self._cancel_asked:
                raise
            outcome = session.stopped_outcome(
                "cancelled by job.cancel(): pending rows are sent when the same job is submitted again"
            )
        return session.finish(outcome)

    def _end(self, result: RunResult | None, error: BaseException | None) -> None:
        if self._bar is not None:
            self._bar.close()
        with self._lock:
            if error is not None:
                self._partial = self._safe_snapshot()
            self._session.close()
        if self._record is not None:
            self._write_record(save_frame=False, summary=str(result.summary) if result else repr(error))
        _forget(self)
        if error is not None:
            self._future.set_exception(error)
        else:
            assert result is not None
            self._future.set_result(result)

    def _write_record(self, *, save_frame: bool, summary: str = "") -> None:
        assert self._record is not None
        assert self._root is not None
        record = self._record
        try:
            if save_frame:
                record = replace(
                    record, frame=_jobfile.save_frame(self._root, record.job_id, self._session.df)
                )
            state = "running" if self._state == "starting" else self._state
            self._record = record = replace(record, state=state, summary=summary)
            _jobfile.write(self._root, record)
        except OSError as exc:  # the run matters more than its record
            log.warning("could not write the job record in %s: %s", self._root, exc)

    def _on_progress(self, progress: Progress) -> None:
        self._progress = progress
        if self._bar is not None:
            self._bar(progress)
        if self._callback is not None:
            self._callback(progress)

    def _same_as(self, df: pd.DataFrame, workflow: str, options: RunOptions) -> bool:
        """The same call again (a re-run cell): same workflow, inputs, limits, equal frame."""
        mine = self._session
        setup = resolve(df, workflow, options)
        same_call = (setup.scope_id, setup.pairs) == (mine.setup.scope_id, mine.setup.pairs) and (
            options.max_rows,
            options.max_cost,
            options.retry_failed,
        ) == (mine.options.max_rows, mine.options.max_cost, mine.options.retry_failed)
        return same_call and (df is mine.df or df.equals(mine.df))

    def _safe_snapshot(self) -> pd.DataFrame | None:
        try:
            return self._session.snapshot()
        except Exception:  # a failed run's partial frame is a courtesy, not a second failure
            return None

    # -- the caller's side ----------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._future.done()

    def status(self) -> JobStatus:
        """Counts, rows per second and time left, now."""
        summary, p = self.summary, self._progress
        elapsed = summary.elapsed_s if summary is not None else time.monotonic() - self._started
        if p is not None:
            done, total, failed, in_flight = p.done, p.total, p.failed, p.batches_in_flight
        elif summary is not None:  # ended with nothing to run (attached, or all cached)
            done = total = summary.rows - summary.pending - summary.cached - summary.skipped
            failed, in_flight = summary.failed, 0
        else:
            done = total = failed = in_flight = 0
        rate = done / elapsed if done and elapsed > 0 else None
        eta = (total - done) / rate if rate and self._state == "running" else None
        failure = self._future.exception() if self._future.done() else None
        return JobStatus(
            state=self._state,
            rows=len(self._session.df),
            to_run=total,
            done=done,
            failed=failed,
            cached=self._session.state.cached,
            batches_in_flight=in_flight,
            elapsed_s=elapsed,
            rows_per_s=rate,
            eta_s=eta,
            error=None if failure is None else str(failure),
        )

    def result(self) -> pd.DataFrame:
        """The final frame once the job ended; until then the frame so far (unfinished rows
        are ``pending``). A failed job gives the rows it stored before it failed (``wait()``
        re-raises its error)."""
        if self._future.done():
            if self._future.exception() is not None and self._partial is not None:
                return self._partial
            return self._future.result().frame
        with self._lock:
            if not self._future.done():
                return self._session.snapshot()
        return self.result()

    def wait(self, timeout: float | None = None) -> RunSummary:
        """Block until the job ends; its summary. ``TimeoutError`` after ``timeout`` seconds
        (the job goes on). A failed job re-raises its error."""
        try:
            return self._future.result(timeout).summary
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"the job is still running after {timeout}s ({self.status()}); "
                "job.result() gives the rows done so far"
            ) from None

    @property
    def summary(self) -> RunSummary | None:
        """The run's summary once it ended, else None."""
        return self._future.result().summary if self._future.done() and not self._future.exception() else None

    def __await__(self) -> Generator[Any, None, RunSummary]:
        return self._finished().__await__()

    async def _finished(self) -> RunSummary:
        return (await asyncio.wrap_future(self._future)).summary

    def cancel(self, *, remote: bool = True, timeout: float = 60.0) -> RunSummary:
        """Stop submitting; with ``remote`` ask the vendor to stop what is in flight (where its
        API allows). Returns once the job wound down; the store stays resumable."""
        if not self._future.done():
            self._cancel_asked = True
            self._loop.call_soon_threadsafe(self._stop, remote)
        return self.wait(timeout)

    def _stop(self, remote: bool) -> None:
        self._session.stop(cancel_remote=remote)
        if self._inner is not None:
            self._inner.cancel()

    # -- display ---------------------------------------------------------------------
    def __repr__(self) -> str:
        setup = self._session.setup
        return f"<frame_batch.Job {setup.provider.name} {setup.workflow!r} — {self.status()}>"

    def _repr_html_(self) -> str:
        from ._display import status_html, summary_html

        summary = self.summary
        return summary_html(summary) if summary is not None else status_html(self.status())


# -- submit and attach -----------------------------------------------------------------------
def submit(df: pd.DataFrame, workflow: str, **options: Any) -> Job:
    """Start ``frame_batch.run(df, workflow, **options)`` in the background; return its ``Job``.

    Arguments are checked and the cache is locked before this returns (bad input fails
    here); nothing else waits. While the job runs, the same call again returns it.
    """
    opts = RunOptions.of(options)
    root = _root(opts.cache)
    with _JOBS_LOCK:
        running = [job for job in _JOBS.get(root, []) if not job.done]
        for job in running:
            if job._same_as(df, workflow, opts):
                log.info("this job is already running: returning it (nothing is sent twice)")
                return job
        if running and root is not None:
            raise errors.ConfigError(
                f"a job is already running on the cache {root} ({running[0]!r}); wait for it "
                "(job.wait()), cancel it (job.cancel()), or pass another cache="
            )
        session = Session(df, workflow, replace(opts, progress=False))
        job = Job(session, root=root, progress=opts.progress)
        _JOBS.setdefault(root, []).append(job)
        return job


def attach(
    cache: Cache = DEFAULT_CACHE, *, frame: pd.DataFrame | None = None, resume: bool = True, **options: Any
) -> Job:
    """The job of ``cache``: the one running in this process, else the last one recorded there.

    From a new kernel: a job that was still running when its kernel stopped carries on (its
    batches in flight are polled, not sent again; the rest is sent within its limits) unless
    ``resume=False``; a job that ended is shown as it ended, with nothing sent. ``frame=`` and
    options (the API key, a pydantic ``output_schema``...) fill in what the record lacks.
    """
    root = _root(cache)
    if root is None:
        raise errors.ConfigError(
            "attach needs the job's cache directory; cache=None keeps nothing to attach to"
        )
    with _JOBS_LOCK:
        live = [job for job in _JOBS.get(root, []) if not job.done]
        if live:
            return live[-1]
        record = _jobfile.read(root)
        df = frame if frame is not None else _jobfile.load_frame(root, record)
        if df is None:
            raise errors.ConfigError(
                f"the frame of job {record.job_id} was not saved (Parquet could not hold it); pass it: "
                "frame_batch.attach(cache=..., frame=df)"
            )
        opts = RunOptions.of({**_jobfile.options_for(record, options), "cache": cache})
        run = resume and record.state == "running"
        session = Session(df, record.workflow, replace(opts, progress=False))
        ended: JobState = "cancelled" if record.state == "cancelled" else "finished"
        job = Job(session, root=root, run=run, progress=opts.progress if run else False, ended_as=ended)
        _JOBS.setdefault(root, []).append(job)
    if not run:
        job.wait()  # only shown: joining the stored results is quick, and nothing is sent
    return job


def _root(cache: Cache) -> Path | None:
    return None if cache is None else Path(cache).expanduser().resolve()


def _forget(job: Job) -> None:
    with _JOBS_LOCK:
        jobs = _JOBS.get(job._root, [])
        if job in jobs:
            jobs.remove(job)
