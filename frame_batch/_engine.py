"""The run engine: submit -> record -> poll -> collect -> store. Knows nothing about pandas.

Rules this module keeps (DESIGN §4):
- The journal says ``submitting`` before a create request leaves and ``submitted`` (with the
  remote id) as soon as it returns; a batch's results are stored before it is marked collected.
- At most ``max_in_flight`` batches are submitted-but-not-collected at once.
- A create whose answer was lost is reconciled through the provider; when the provider cannot
  tell, ``on_ambiguous`` decides: ``"resubmit"`` sends the rows again and records them as
  possibly paid twice, ``"fail"`` marks them failed and sends nothing more.
- Rows are matched to results by key; a batch that ends with rows missing from the vendor's
  answer gets a failed result for each of them (no row is silently dropped).
- An overall deadline stops waiting and leaves unfinished batches resumable. A cancellation
  (Ctrl-C) leaves the journal consistent, and asks the vendor to stop only when the user
  asked for that (``cancel_on_interrupt``).
Clock, sleep and the progress callback are injected, so tests run without real waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

from . import errors
from ._http import AmbiguousCreate, ApiClient
from ._types import Batch, BatchRef, Progress, ProgressCallback, RowResult
from .providers.base import Provider
from .store import JournalBatch, Store

log = logging.getLogger("frame_batch")

OnAmbiguous = Literal["resubmit", "fail"]


@dataclass(frozen=True, slots=True)
class EngineOptions:
    max_in_flight: int
    poll_interval: float
    first_poll: float
    deadline: float | None = None  # seconds from start; None = wait as long as it takes
    on_ambiguous: OnAmbiguous = "resubmit"
    cancel_on_interrupt: bool = False
    max_ambiguous_resubmits: int = 3


@dataclass(frozen=True, slots=True)
class RunContext:
    """Everything the engine needs to address one workflow in the store and the journal."""

    provider: Provider
    workflow: str
    scope_id: str
    fingerprint: str


@dataclass(slots=True)
class EngineReport:
    """Counters the engine fills as it goes; read after ``run`` returns or raises."""

    batches_submitted: int = 0
    rows_collected: int = 0
    rows_failed: int = 0
    timed_out: bool = False
    resumed_batches: int = 0
    unknown_states: set[str] = field(default_factory=set)


class Engine:
    def __init__(
        self,
        ctx: RunContext,
        api: ApiClient,
        store: Store,
        options: EngineOptions,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        progress: ProgressCallback | None = None,
        total: Callable[[], int] = lambda: 0,
    ) -> None:
        self.ctx = ctx
        self.api = api
        self.store = store
        self.options = options
        self.report = EngineReport()
        self._sleep = sleep
        self._clock = clock
        self._progress = progress
        self._total = total
        self._slots = asyncio.Semaphore(options.max_in_flight)
        self._in_flight: dict[str, BatchRef] = {}

    # -- the run ------------------------------------------------------------------------
    async def prepare(self, open_batches: Iterable[JournalBatch]) -> list[BatchRef]:
        """Sort out what an earlier run left open; return the batches to poll.

        A ``submitting`` batch may or may not have reached the vendor. It is reconciled
        when the provider can; otherwise ``on_ambiguous`` decides, before any planning, so
        its rows are either planned again (resubmit) or stored as failed (fail).
        """
        refs: list[BatchRef] = []
        for jb in open_batches:
            if jb.state == "submitted" and jb.remote_id:
                refs.append(BatchRef(jb.batch_id, jb.remote_id, jb.keys))
                continue
            remote_id = await self.ctx.provider.reconcile(self.api, self.ctx.workflow, jb.batch_id, jb.keys)
            if remote_id is not None:
                self.store.journal.submitted(jb.batch_id, remote_id)
                refs.append(BatchRef(jb.batch_id, remote_id, jb.keys))
            else:
                self._unresolved(
                    jb.batch_id, jb.keys, "the run stopped while this batch's create request was in flight"
                )
        self.report.resumed_batches = len(refs)
        return refs

    async def run(self, resumed: list[BatchRef], batches: Iterator[Batch]) -> EngineReport:
        """Poll ``resumed`` and submit ``batches`` (consumed lazily) until all are collected."""
        timeout = asyncio.timeout(self.options.deadline) if self.options.deadline is not None else None
        try:
            async with timeout or contextlib.nullcontext(), asyncio.TaskGroup() as group:
                for ref in resumed:
                    await self._slots.acquire()
                    group.create_task(self._guarded(self._track(ref, first_wait=0.0)))
                for batch in batches:
                    await self._slots.acquire()
                    group.create_task(self._guarded(self._submit_and_track(batch)))
        except TimeoutError:
            self.report.timed_out = True
            log.warning(
                "deadline reached: %d batches left in flight, run again to resume", len(self._in_flight)
            )
        except asyncio.CancelledError:
            if self.options.cancel_on_interrupt:
                await self._cancel_in_flight()
            raise
        except BaseExceptionGroup as group_error:
            raise _first_error(group_error) from None
        return self.report

    async def _guarded(self, work: Awaitable[None]) -> None:
        try:
            await work
        finally:
            self._slots.release()

    # -- one batch ----------------------------------------------------------------------
    async def _submit_and_track(self, batch: Batch) -> None:
        ref = await self._submit(batch)
        if ref is not None:
            await self._track(ref, first_wait=self.options.first_poll)

    async def _submit(self, batch: Batch) -> BatchRef | None:
        journal = self.store.journal
        for _ in range(self.options.max_ambiguous_resubmits + 1):
            journal.begin(
                batch.batch_id,
                batch.keys,
                scope=self.ctx.scope_id,
                provider=self.ctx.provider.name,
                workflow=self.ctx.workflow,
                fingerprint=self.ctx.fingerprint,
            )
            remote_id: str | None
            try:
                remote_id = await self._create(batch)
            except AmbiguousCreate as exc:
                remote_id = await self.ctx.provider.reconcile(
                    self.api, self.ctx.workflow, batch.batch_id, batch.keys
                )
                if remote_id is None:
                    why = f"the create request's answer was lost ({exc.reason})"
                    if not self._unresolved(batch.batch_id, batch.keys, why):
                        return None
                    batch = replace(batch, batch_id=uuid.uuid4().hex)
                    continue
            except (errors.ProviderError, errors.TransportError) as exc:
                journal.rejected(batch.batch_id, type(exc).__name__)
                raise
            journal.submitted(batch.batch_id, remote_id)
            self.report.batches_submitted += 1
            ref = BatchRef(batch.batch_id, remote_id, batch.keys)
            self._in_flight[batch.batch_id] = ref
            self._notify()
            return ref
        raise errors.TransportError(
            f"{self.ctx.provider.name} lost the answer to {self.options.max_ambiguous_resubmits + 1} create "
            "requests in a row; the connection is unreliable. Rows sent are recorded as possibly paid "
            "twice; run again later to resume",
            provider=self.ctx.provider.name,
        )

    async def _create(self, batch: Batch) -> str:
        """Send the create; a cancellation (Ctrl-C, deadline) waits for its answer first.

        Abandoning a create in flight would leave it ambiguous (possibly paid twice on the
        next run); waiting for the answer lets the journal record the remote id instead.
        """
        task = asyncio.ensure_future(self.ctx.provider.submit(self.api, self.ctx.workflow, batch))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                remote_id = await task
                self.store.journal.submitted(batch.batch_id, remote_id)
                log.info("recorded batch %s created while stopping", remote_id)
            raise

    def _unresolved(self, batch_id: str, keys: tuple[str, ...], why: str) -> bool:
        """Apply ``on_ambiguous`` to a create that may have been paid; True = send again."""
        name = self.ctx.provider.name
        if self.options.on_ambiguous == "resubmit":
            log.warning(
                "%s; %d rows will be sent again and are reported as possibly paid twice", why, len(keys)
            )
            self.store.journal.ambiguous(batch_id, keys, why, record_duplicates=True)
            return True
        message = (
            f"{why}: the rows may have started on {name}, but frame-batch cannot find them "
            "(on_ambiguous='fail'). Check the vendor's dashboard; run with retry_failed=True "
            "to send them again"
        )
        self.store.journal.ambiguous(batch_id, keys, why, record_duplicates=False)
        self.store.write_results(
            self.ctx.scope_id, batch_id, [RowResult(key, "failed", error=message) for key in keys]
        )
        return False

    async def _track(self, ref: BatchRef, *, first_wait: float) -> None:
        """Poll until every row has a terminal result, then store the results."""
        wait = first_wait
        interval = max(self.options.first_poll, 0.0)
        self._in_flight[ref.batch_id] = ref
        while True:
            if wait > 0:
                await self._sleep(wait)
            poll = await self.ctx.provider.poll(self.api, self.ctx.workflow, ref)
            for state in set(poll.unknown) - self.report.unknown_states:
                self.report.unknown_states.add(state)
                log.warning(
                    "%s reported an undocumented state %r; still waiting for it",
                    self.ctx.provider.name,
                    state,
                )
            if poll.done:
                break
            wait = interval
            interval = min(max(interval * 2, 0.05), self.options.poll_interval)
        results = _complete(ref, poll.results, self.ctx.provider.name)
        self.store.write_results(self.ctx.scope_id, ref.batch_id, results)
        del self._in_flight[ref.batch_id]
        self.report.rows_collected += len(results)
        self.report.rows_failed += sum(r.status != "succeeded" for r in results)
        self._notify()

    async def _cancel_in_flight(self) -> None:
        """Ask the vendor to stop every batch still running (Ctrl-C with cancel_on_interrupt)."""
        for ref in list(self._in_flight.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.shield(self.ctx.provider.cancel(self.api, self.ctx.workflow, ref)), timeout=10
                )
                log.warning("asked %s to cancel batch %s", self.ctx.provider.name, ref.remote_id)

    def _notify(self) -> None:
        if self._progress is None:
            return
        self._progress(
            Progress(
                total=self._total(),
                done=self.report.rows_collected,
                failed=self.report.rows_failed,
                batches_submitted=self.report.batches_submitted,
                batches_in_flight=len(self._in_flight),
            )
        )


def _complete(ref: BatchRef, results: Iterable[RowResult], provider: str) -> list[RowResult]:
    """One result per key of ``ref``, in sent order; a key the vendor left out gets a failure."""
    by_key = {r.key: r for r in results}
    missing = f"{provider} finished the batch without a result for this row"
    return [by_key.get(key) or RowResult(key, "failed", error=missing) for key in ref.keys]


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to show from a task group: our own errors first, then anything else."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, errors.FrameBatchError):
            return leaf
    return leaves[0]
