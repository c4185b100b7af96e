"""The run engine: submit -> record -> poll -> collect -> store. Knows nothing about pandas.

Rules this module keeps (DESIGN §4):
- The journal says ``submitting`` before a create request leaves and ``submitted`` (with the
  remote id) as soon as it returns; a batch's results are stored before it is marked collected.
- At most ``max_in_flight`` batches are submitted-but-not-collected at once. A batch whose
  create was refused (429: nothing started) lets its slot go while it waits to send again.
  A batch whose read was refused (429) lets its slot go once it is due (the time batches
  take has passed: the vendor should be done with it), and is read without one after the
  wait: a ``Retry-After`` of seconds would otherwise keep a finished batch's place. Only
  while fewer than ``PARKED`` x ``max_in_flight`` batches are out, so a run whose reads
  are all refused stops starting batches.
  A collected batch whose results the vendor keeps (``BatchPoll.kept``) lets its slot go
  before they are stored, and the store waits until the create that takes the slot has left
  (``_creates_first``): storing blocks the event loop for a few ms (fsyncs), and a create
  sent after it starts its batch that much later. Such results also wait to be stored with
  other batches' as one part (``PendingResults``), and are stored whenever the run ends.
  Results that exist only in this process (a synchronous call's answer) are stored first,
  on their own: a crash must not lose paid rows.
- Submitting is stage (journaled) then create, so a lost answer can be looked for. A create
  whose answer was lost is reconciled through the provider: adopted when found, sent again
  when certainly absent. When the provider cannot tell, ``on_ambiguous`` decides:
  ``"resubmit"`` sends the rows again and records them as possibly paid twice, ``"fail"``
  marks them failed and sends nothing more.
- A request refused as too large (413) certainly ran nothing: it is split in halves and
  sent again (a single row that is still too large fails alone). A request that ran out of
  time (504, read timeout) is a lost answer like any other, and also makes later batches
  smaller (``BatchSizer``), resent rows included.
- Rows are matched to results by key; a batch that ends with rows missing from the vendor's
  answer gets a failed result for each of them (no row is silently dropped).
- Polling adapts (``PollTimer``): a new batch is first polled shortly before the time the
  run's earlier batches took, then polls come at most ``poll_interval`` apart.
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
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Literal

from . import errors
from ._http import AmbiguousCreate, ApiClient, on_refused, on_send
from ._pending import PendingResults
from ._planning import BatchSizer, split
from ._types import Batch, BatchPoll, BatchRef, Progress, ProgressCallback, RowResult
from .providers.base import Provider
from .store import JournalBatch, Store

log = logging.getLogger("frame_batch")

OnAmbiguous = Literal["resubmit", "fail"]
NOT_FOUND = "create answer lost; reconciled: nothing was created, rows sent again"

# Adaptive polling (PollTimer). A poll that finds a batch still running costs a request
# (about 1 ms of client CPU at 16 in flight), one that comes late leaves a finished batch
# holding its slot: aim a little early, then poll at short intervals.
AIM = 0.9  # first poll at this fraction of the expected time from create sent to batch done
AFTER = 0.15  # then polls this fraction of it apart: the second comes just after the expected time
# A batch still running at that second poll is due any moment: the next poll comes this
# fraction of the expected time later, not a whole interval (at 200 ms batches and 20 ms
# intervals, the B=100, C=16 cell gained ~1 point of efficiency for ~0.1 more polls a batch).
NEAR = 0.02
WEIGHT = 0.2  # of the newest batch in the expected time (EWMA): about the last 10 batches count
DONE_EARLY = 0.75  # a batch done at its first poll counts as taking this fraction of the time to it
# A batch seen running then done counts as having finished this far into that interval: the
# first poll is aimed early, and the midpoint would pull the expectation down batch after batch.
WITHIN = 0.75
# A collected batch's store waits at most this many event-loop turns for the create that
# takes its slot to leave (it needs about three: the run loop, the batch's task, the send).
CREATE_TURNS = 8
# A batch waiting out a refused read (429) lets its slot go once it is due (see
# ``Engine._read_refused``), while fewer than PARKED x ``max_in_flight`` batches are out: 3, as
# at 5% of reads refused with ``Retry-After: 1`` (5 batch times) 2x was often full.
PARKED = 3
# While a batch's due time is unknown (nothing learned yet) or too many are out, a refused
# read's wait looks again this many times whether it may let the slot go.
RECHECKS = 8


@dataclass(frozen=True, slots=True)
class EngineOptions:
    max_in_flight: int
    poll_interval: float
    first_poll: float
    deadline: float | None = None  # seconds from start; None = wait as long as it takes
    on_ambiguous: OnAmbiguous = "resubmit"
    cancel_on_interrupt: bool = False
    max_ambiguous_resubmits: int = 3
    reconcile_delay: float = 0.0  # seconds to wait before looking for a lost create's work


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
    attention: set[str] = field(default_factory=set)  # messages for the user, each logged once
    adopted_batches: int = 0
    shrunk: int = 0  # times the batch size was cut after a 413 or a timeout


class PollTimer:
    """When to poll a batch: learned from the batches collected so far in this run.

    With nothing learned yet (the first batches; batches resumed from an earlier run, whose
    start was not seen) a batch is polled ``first_poll`` after its create answered, then at
    intervals doubling up to ``poll_interval``. Once batches have been collected, a new
    batch is first polled at ``AIM`` x the expected time from its create request leaving to
    the batch done (never sooner than ``first_poll`` after the answer; polls before then
    would find it running), then at intervals starting at ``AFTER`` x that time and doubling
    up to ``poll_interval``; one still running at its second poll is polled again ``NEAR`` x
    that time later, as it should be done any moment. So ``poll_interval`` stays the longest
    wait between two polls of a batch: one much slower than expected is still polled that
    often. One much faster is noticed at its first poll, and pulls the expected time down for
    the next ones.
    """

    def __init__(self, first_poll: float, poll_interval: float) -> None:
        self.first_poll = max(first_poll, 0.0)
        self.poll_interval = poll_interval
        self.expected: float | None = None  # seconds from a create request leaving to its batch done

    def first_wait(self, elapsed: float = 0.0) -> float:
        """The wait before a new batch's first poll, ``elapsed`` seconds after its create left
        (now that it answered): never less than ``first_poll``."""
        if self.expected is None:
            return self.first_poll
        return max(self.first_poll, AIM * self.expected - elapsed)

    def first_interval(self) -> float:
        """The wait after the first poll, when that poll found the batch running: short, as
        the batch should be about done (not ``first_poll``, which may be as long as it took)."""
        if self.expected is None:
            return self.first_poll
        return min(self.poll_interval, AFTER * self.expected)

    def overdue_interval(self, interval: float) -> float:
        """The wait after the second poll also found the batch running: that poll came just
        after the expected time, so the batch should be done any moment."""
        return interval if self.expected is None else min(interval, NEAR * self.expected)

    def next_interval(self, interval: float) -> float:
        return min(max(interval * 2, 0.05), self.poll_interval)

    def learn(self, first_poll_at: float, running_at: float | None, done_at: float) -> None:
        """Learn from one batch's polls (seconds after its create left): ``first_poll_at``
        when its first poll was due, ``running_at`` when the last poll that found it running
        left (None: the first poll found it done), ``done_at`` when the one that found it
        done left.
        """
        if running_at is None:
            # Done by the first poll, perhaps long before: a little less than the planned
            # time (not the measured one, which a late wake-up could only make longer).
            sample = first_poll_at * DONE_EARLY
        else:
            sample = running_at + WITHIN * max(done_at - running_at, 0.0)
        expected = self.expected
        self.expected = sample if expected is None else expected + WEIGHT * (sample - expected)


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
        sizer: BatchSizer | None = None,
        checkpoint: Callable[[], Awaitable[None]] | None = None,
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
        self._sizer = sizer or BatchSizer(1_000_000)  # without one, nothing adapts
        # Awaited before a create leaves and after its answer is journaled, so a copy of the
        # journal kept elsewhere (the workbook's checkpoint) never lags behind a paid request.
        self._checkpoint = checkpoint
        self._slots = asyncio.Semaphore(options.max_in_flight)
        self._in_flight: dict[str, BatchRef] = {}
        self._staged: dict[str, str] = {}  # batch id -> staged id, while its create is in flight
        self._sent_at: dict[str, float] = {}  # batch id -> when its (answered) create request left
        self._unsent: set[_Slot] = set()  # slots of new batches whose create has not left yet
        self._pending = PendingResults(store, ctx.scope_id, clock)  # collected, kept, not stored yet
        self._out = 0  # batches being sent, polled or stored (each in its own task)
        self._group: asyncio.TaskGroup | None = None  # the run's tasks, while it runs
        self._store_later: asyncio.Task[None] | None = None  # stores ``_pending`` when it is due
        self.timer = PollTimer(options.first_poll, options.poll_interval)
        if api.first_read_retry is None:  # a failed poll is retried by when the next one would come
            api.first_read_retry = options.poll_interval

    # -- the run ------------------------------------------------------------------------
    async def prepare(self, open_batches: Iterable[JournalBatch]) -> list[BatchRef]:
        """Sort out what an earlier run left open; return the batches to poll.

        A ``submitting`` batch may or may not have reached the vendor. The provider looks
        for it (adopted when found, planned again when certainly absent); when it cannot
        tell, ``on_ambiguous`` decides, before any planning, so its rows are either planned
        again (resubmit) or stored as failed (fail).
        """
        refs: list[BatchRef] = []
        for jb in open_batches:
            if jb.state == "submitted" and jb.remote_id:
                refs.append(BatchRef(jb.batch_id, jb.remote_id, jb.keys))
                continue
            found = await self.ctx.provider.reconcile(
                self.api, self.ctx.workflow, jb.batch_id, jb.keys, jb.remote_id
            )
            if found.remote_id is not None:
                self._adopted(jb.batch_id, found.remote_id)
                refs.append(BatchRef(jb.batch_id, found.remote_id, jb.keys))
            elif found.absent:
                self.store.journal.rejected(jb.batch_id, NOT_FOUND)
            else:
                self._unresolved(
                    jb.batch_id, jb.keys, "the run stopped while this batch's create request was in flight"
                )
        self.report.resumed_batches = len(refs)
        return refs

    async def run(self, resumed: list[BatchRef], batches: Iterator[Batch]) -> EngineReport:
        """Poll ``resumed`` and submit ``batches`` (consumed lazily) until all are collected.
        However the run ends, the results collected are stored before this returns."""
        try:
            report = await self._run(resumed, batches)
        except BaseException:
            self._store_pending_quietly()
            raise
        self._store_pending()
        return report

    def _store_pending_quietly(self) -> None:
        """On the way out with an error: store what was collected, but keep that error (a
        failure here leaves the batches ``submitted``, polled again by the next run)."""
        rows = self._pending.rows
        try:
            self._store_pending()
        except Exception as exc:
            log.warning("could not store %d collected rows (%s); the next run polls them again", rows, exc)

    async def _run(self, resumed: list[BatchRef], batches: Iterator[Batch]) -> EngineReport:
        timeout = asyncio.timeout(self.options.deadline) if self.options.deadline is not None else None
        try:
            async with timeout or contextlib.nullcontext(), asyncio.TaskGroup() as group:
                self._group = group
                for ref in resumed:
                    await self._slots.acquire()
                    slot = _Slot(self._slots)
                    _spawn(group, self._guarded(partial(self._track, ref, slot, since=None), slot))
                while True:
                    # The slot first, then the batch: it is formed at the size current now.
                    await self._slots.acquire()
                    batch = next(batches, None)
                    if batch is None:
                        self._slots.release()
                        break
                    slot = _Slot(self._slots)
                    self._unsent.add(slot)
                    _spawn(group, self._guarded(partial(self._submit_and_track, batch, slot), slot))
                    # Taking a free slot does not yield: without this, every slot would be
                    # filled (and the rows for them encoded) before the first create left.
                    await asyncio.sleep(0)
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

    async def _guarded(self, work: Callable[[], Awaitable[None]], slot: _Slot) -> None:
        # ``work`` is a callable, not a coroutine: a task cancelled before it starts would
        # otherwise leave a coroutine that was never awaited.
        self._out += 1
        try:
            await work()
            if self._out == 1:  # the last batch out (ended without storing, e.g. failed): store
                self._store_pending()  # what waits now, not when the timer would
        finally:
            self._out -= 1
            self._unsent.discard(slot)  # it will send no create now, if it had not yet
            slot.release()

    async def _creates_first(self) -> None:
        """Yield until no batch holds a slot without having sent its create (at most
        ``CREATE_TURNS`` event-loop turns): a slot just let go is taken by the run loop in
        the first turn, and the create leaves a couple of turns later."""
        for _ in range(CREATE_TURNS):
            await asyncio.sleep(0)
            if not self._unsent:
                return

    # -- one batch ----------------------------------------------------------------------
    async def _submit_and_track(self, batch: Batch, slot: _Slot) -> None:
        if len(batch.keys) > self._sizer():  # formed before the size was cut
            sent: BatchRef | list[Batch] | None = split(batch, self._sizer())
        else:
            sent = await self._submit(batch, slot)
        if isinstance(sent, BatchRef):
            since = self._sent_at.pop(sent.batch_id, None)
            await self._track(sent, slot, since=self._clock() if since is None else since)
        elif sent is not None:
            for part in sent:  # in turn, in this batch's slot: they replace it
                if not slot.held:  # let go by the part collected before
                    await slot.acquire()
                await self._submit_and_track(part, slot)

    async def _submit(self, batch: Batch, slot: _Slot) -> BatchRef | list[Batch] | None:
        """Send ``batch``: its ref, smaller batches to send instead, or None (nothing to poll)."""
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
            try:
                remote_id = await self._create(batch, slot)
            except errors.RequestTooLarge as exc:
                return self._too_large(batch, exc)
            except AmbiguousCreate as exc:
                if exc.slow:
                    self._shrink(batch, exc.reason)
                found, send_again = await self._after_lost_answer(batch, exc)
                if found is None:
                    if not send_again:
                        return None
                    if len(batch.keys) > self._sizer():
                        return split(batch, self._sizer())
                    batch = replace(batch, batch_id=uuid.uuid4().hex)
                    continue
                remote_id = found
            except (errors.ProviderError, errors.TransportError) as exc:
                journal.rejected(batch.batch_id, type(exc).__name__)
                raise
            journal.submitted(batch.batch_id, remote_id)
            if self._checkpoint is not None:
                await self._checkpoint()
            self._sizer.succeeded(len(batch.keys))
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

    def _too_large(self, batch: Batch, exc: errors.RequestTooLarge) -> list[Batch] | None:
        """A 413 ran nothing: send the rows again in halves; a lone row fails by itself."""
        self.store.journal.rejected(batch.batch_id, "HTTP 413: split and sent again")
        if len(batch.keys) > 1:
            return split(batch, self._shrink(batch, "HTTP 413", hard=True))
        message = f"{exc} (this row alone is too large for one request)"
        results = [RowResult(batch.keys[0], "failed", error=message)]
        self.store.write_results(self.ctx.scope_id, batch.batch_id, results)
        self._collected(results)
        return None

    def _shrink(self, batch: Batch, why: str, *, hard: bool = False) -> int:
        before = self._sizer()
        size = self._sizer.shrink(len(batch.keys), hard=hard)
        self.report.shrunk += 1
        # Batches in flight together often fail together: say it once per new size.
        (log.warning if size < before else log.debug)(
            "%s: a request of %d rows was too large or too slow (%s); sending at most %d rows per request",
            self.ctx.provider.name,
            len(batch.keys),
            why[:120],
            size,
        )
        return size

    async def _after_lost_answer(self, batch: Batch, exc: AmbiguousCreate) -> tuple[str | None, bool]:
        """Reconcile a create whose answer was lost: (remote id to adopt, send the rows again?).

        The short wait first lets a request the server is still processing show up before
        we look for it.
        """
        if self.options.reconcile_delay > 0:
            await self._sleep(self.options.reconcile_delay)
        found = await self.ctx.provider.reconcile(
            self.api, self.ctx.workflow, batch.batch_id, batch.keys, self._staged.pop(batch.batch_id, None)
        )
        if found.remote_id is not None:
            self._adopted(batch.batch_id, found.remote_id)
            return found.remote_id, False
        if found.absent:
            self.store.journal.rejected(batch.batch_id, NOT_FOUND)
            return None, True
        why = f"the create request's answer was lost ({exc.reason})"
        return None, self._unresolved(batch.batch_id, batch.keys, why)

    def _adopted(self, batch_id: str, remote_id: str) -> None:
        self.report.adopted_batches += 1
        log.info("found batch %s made by a create whose answer was lost: adopted, not sent again", remote_id)

    async def _create(self, batch: Batch, slot: _Slot) -> str:
        """Stage, journal the staged id, then send the create.

        While a refused create (429) waits to be sent again, ``slot`` is let go: nothing of
        it runs at the vendor, so another batch may take the place meanwhile.

        A cancellation (Ctrl-C, deadline) waits for a create in flight to answer first:
        abandoning it would leave it ambiguous (possibly paid twice on the next run);
        waiting lets the journal record the remote id instead.
        """
        provider, workflow = self.ctx.provider, self.ctx.workflow
        staged = await provider.stage(self.api, workflow, batch)
        if staged is not None:
            self.store.journal.staged(batch.batch_id, staged)
            self._staged[batch.batch_id] = staged
        if self._checkpoint is not None:
            await self._checkpoint()
        leaving: list[float] = []

        def left() -> None:
            leaving.append(self._clock())
            self._unsent.discard(slot)  # its first create has left: see ``_creates_first``

        # The task copies the context, both hooks included.
        with on_send(left), on_refused(partial(self._refused, slot)):
            task = asyncio.ensure_future(provider.submit(self.api, workflow, batch, staged))
        try:
            remote_id = await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                remote_id = await task
                self.store.journal.submitted(batch.batch_id, remote_id)
                log.info("recorded batch %s created while stopping", remote_id)
            raise
        self._staged.pop(batch.batch_id, None)
        if leaving:
            self._sent_at[batch.batch_id] = leaving[-1]  # the batch started about then
        return remote_id

    async def _refused(self, slot: _Slot, seconds: float) -> None:
        """A create was refused: wait ``seconds`` without holding ``slot``, then take one again."""
        slot.release()
        await self._sleep(seconds)
        await slot.acquire()

    async def _read_refused(self, slot: _Slot, started: float, seconds: float) -> None:
        """A read was refused: wait ``seconds``. Once the batch is due (expected done), it lets
        ``slot`` go for the rest of the wait: the vendor runs nothing of it, so another batch
        may start. Only while fewer than ``PARKED`` x ``max_in_flight`` batches are out: a run
        whose reads are all refused must not start batch after batch. Until the run has
        learned how long batches take (or while too many are out), it looks again every
        ``seconds / RECHECKS`` (at least ``poll_interval``)."""
        end = self._clock() + seconds
        step = max(self.options.poll_interval, seconds / RECHECKS)
        while slot.held and (left := end - self._clock()) > 0:
            expected = self.timer.expected
            due = None if expected is None else started + expected - self._clock()
            if due is not None and due <= 0 and len(self._in_flight) < PARKED * self.options.max_in_flight:
                slot.release()
                break
            await self._sleep(min(left, due if due is not None and due > 0 else step))
        if (left := end - self._clock()) > 0:
            await self._sleep(left)

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

    async def _track(self, ref: BatchRef, slot: _Slot, *, since: float | None) -> None:
        """Poll until every row has a terminal result, then store the results.

        ``since``: when the batch's create request left, so the timer knows when to poll it
        and learns from it; None for a batch resumed from an earlier run, polled at once.
        Times are those requests *leave*: a busy event loop delays answers, not the batch.
        While some rows wait on the user (``attention``), the rows already finished are
        stored at once, so a deadline or Ctrl-C does not leave them pending with them.
        """
        timer = self.timer
        now = self._clock()
        started = now if since is None else since
        wait = 0.0 if since is None else timer.first_wait(now - started)
        interval = timer.first_poll if since is None else timer.first_interval()
        first_poll_at = now - started + wait
        learn = since is not None
        self._in_flight[ref.batch_id] = ref
        stored: set[str] = set()
        running_at: float | None = None
        running = 0  # polls that found the batch running
        refused = partial(self._read_refused, slot, started)  # how a poll refused with 429 waits
        while True:
            if wait > 0:
                await self._sleep(wait)
            sent = self._clock() - started
            with on_refused(refused):
                poll = await self.ctx.provider.poll(self.api, self.ctx.workflow, ref)
            self._note(poll)
            if poll.done:
                break
            running_at = sent  # it was still running when that poll left, at least
            running += 1
            if poll.attention:
                learn = False  # waiting on the user: how long it takes says nothing of the next ones
                self._store_partial(ref, [r for r in poll.results if r.key not in stored], stored)
            if running == 2 and since is not None:  # that poll came just after it was expected done
                interval = timer.overdue_interval(interval)
            # Polls leave `interval` apart: the time the answer took counts.
            wait = max(sent + interval - (self._clock() - started), 0.0)
            interval = timer.next_interval(interval)
        if learn:
            timer.learn(first_poll_at, running_at, sent)
        results = [r for r in _complete(ref, poll.results, self.ctx.provider.name) if r.key not in stored]
        if not poll.kept:  # an answer that exists only here is stored before anything else
            self._store(ref, results)
            return
        slot.release()  # the vendor is done with the batch and keeps its results: the next create first
        try:
            await self._creates_first()
        finally:  # cancelled meanwhile (Ctrl-C, the deadline): ``run`` stores them on its way out
            self._hold(ref, results)

    def _store(self, ref: BatchRef, results: list[RowResult]) -> None:
        self.store.write_results(self.ctx.scope_id, ref.batch_id, results)
        del self._in_flight[ref.batch_id]
        self._collected(results)

    def _hold(self, ref: BatchRef, results: list[RowResult]) -> None:
        """Results the vendor keeps: stored with other batches' (``PendingResults``), at once
        when no other batch is out (none would come to be stored with them; the next batch's
        task has started by now, if there is one: see ``_creates_first``)."""
        self._pending.add(ref.batch_id, results)
        del self._in_flight[ref.batch_id]
        if self._out <= 1 or self._pending.due():
            self._store_pending()
        elif self._store_later is None and self._group is not None:
            later = self._store_when_due()
            try:
                self._store_later = self._group.create_task(later)
            except RuntimeError:  # the run is ending (an error, Ctrl-C): ``run`` stores them
                later.close()

    async def _store_when_due(self) -> None:
        """Store what waits in ``_pending`` once the oldest has waited ``max_age``, whatever
        the other batches do (they may all be waiting on a slow create, or a Retry-After).
        A real wait, not the injected ``sleep``: it is cancelled when the results are stored
        sooner, and a test's fake clock must not move for it."""
        await asyncio.sleep(self._pending.max_age)
        self._store_later = None
        self._store_pending()

    def _store_pending(self) -> None:
        """Store the results waiting in ``_pending``; only then are they counted as collected,
        so the progress and a snapshot of the run (``Job.result``) agree."""
        later, self._store_later = self._store_later, None
        if later is not None and later is not asyncio.current_task():
            later.cancel()
        stored = self._pending.flush()
        if stored:
            self._collected(*(results for _, results in stored))

    def _note(self, poll: BatchPoll) -> None:
        """Log each undocumented state and each message for the user once per run."""
        name = self.ctx.provider.name
        for state in set(poll.unknown) - self.report.unknown_states:
            self.report.unknown_states.add(state)
            log.warning("%s reported an undocumented state %r; still waiting for it", name, state)
        for message in set(poll.attention) - self.report.attention:
            self.report.attention.add(message)
            log.warning("%s: %s", name, message)

    def _store_partial(self, ref: BatchRef, fresh: list[RowResult], stored: set[str]) -> None:
        if not fresh:
            return
        self.store.write_partial(self.ctx.scope_id, ref.batch_id, len(stored), fresh)
        stored.update(r.key for r in fresh)
        self._collected(fresh)

    def _collected(self, *groups: list[RowResult]) -> None:
        for results in groups:
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


class _Slot:
    """One batch's place among the ``max_in_flight``: released once, whatever happens, and
    let go while the batch's refused create waits (a cancelled wait holds nothing) and once
    the batch is read done (before its results are written, when the vendor keeps them)."""

    __slots__ = ("_held", "_slots")

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots = slots
        self._held = True  # taken by the run loop before the batch's task starts

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.release()

    async def acquire(self) -> None:
        await self._slots.acquire()
        self._held = True


def _complete(ref: BatchRef, results: Iterable[RowResult], provider: str) -> list[RowResult]:
    """One result per key of ``ref``, in sent order; a key the vendor left out gets a failure."""
    by_key = {r.key: r for r in results}
    missing = f"{provider} finished the batch without a result for this row"
    return [by_key.get(key) or RowResult(key, "failed", error=missing) for key in ref.keys]


def _spawn(group: asyncio.TaskGroup, work: Coroutine[Any, Any, None]) -> None:
    """Start ``work`` in ``group``; if the group is already shutting down, close it unrun."""
    try:
        group.create_task(work)
    except RuntimeError:
        work.close()  # another batch failed a moment ago: its error is the one to raise
        raise


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
