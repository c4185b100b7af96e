"""Adaptive polling and read retries, on a fake clock: no real waiting, exact times.

The engine learns how long batches take and polls a new batch just before that; a batch
slower than expected falls back to polls at most ``poll_interval`` apart. A failed poll is
retried no later than the next poll would have come, unless the server says Retry-After.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import certifi
import httpx
import orjson
import pytest
from conftest import KEY, SPELL, stored_parts, topics

import frame_batch
from frame_batch import Respell, RetryPolicy
from frame_batch._engine import NEAR, PARKED, Engine, EngineOptions, EngineReport, PollTimer, RunContext
from frame_batch._http import ApiClient, _tls_context
from frame_batch._keys import row_key, scope_of
from frame_batch._pending import MAX_ROWS
from frame_batch._types import Batch, Progress, ProgressCallback
from frame_batch.store import Store
from frame_batch.testing import Faults, RespellEmulator

STEP = 0.125  # exact in binary: poll times add up without rounding


class FakeClock:
    """Time moves only when someone sleeps (one batch in flight: sleeps never overlap);
    each sleep ends ``late`` seconds late, like on a busy event loop."""

    def __init__(self, late: float = 0.0) -> None:
        self.now = 0.0
        self.late = late
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds + self.late
        await asyncio.sleep(0)


class Polls:
    """Every request the emulator answered: (time, route, group id). Each answer takes
    ``answer_time`` to come back (the clock moves on meanwhile), a create's the next of
    ``create_answer_times`` when given."""

    def __init__(
        self,
        emu: RespellEmulator,
        clock: FakeClock,
        answer_time: float = 0.0,
        create_answer_times: Iterator[float] | None = None,
        on_request: Callable[[str], None] | None = None,
    ) -> None:
        self.emu = emu
        self.on_request = on_request
        self.clock = clock
        self.answer_time = answer_time
        self.create_answer_times = create_answer_times or iter(())
        self.seen: list[tuple[float, str, str | None]] = []
        self.statuses: list[int] = []  # of the answers, in the order of ``seen``

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            request.read()
            route = request.url.path.rsplit("/", 1)[-1]
            group = orjson.loads(request.content).get("groupId") if route == "getBulkRuns" else None
            self.seen.append((self.clock.now, route, group))
            if self.on_request is not None:
                self.on_request(route)
            response = self.emu.handler(request)
            self.statuses.append(response.status_code)
            slow = next(self.create_answer_times, None) if route == "bulkStart" else None
            self.clock.now += self.answer_time if slow is None else slow
            return response

        return httpx.MockTransport(handle)

    def most_out(self) -> int:
        """The most batches created and not yet read done at any time (with no latency, every
        poll that is answered finds its batch done)."""
        out, most = 0, 0
        for (_, route, _), status in zip(self.seen, self.statuses, strict=True):
            out += (status == 200) * ((route == "bulkStart") - (route == "getBulkRuns"))
            most = max(most, out)
        return most

    def per_batch(self) -> list[list[float]]:
        """The times each batch was polled, batches in the order they were first polled."""
        times: dict[str, list[float]] = {}
        for moment, route, group in self.seen:
            if route == "getBulkRuns" and group is not None:
                times.setdefault(group, []).append(moment)
        return list(times.values())


def batches(count: int, rows: int = 3) -> Iterator[Batch]:
    scope = scope_of(*Respell(api_key=KEY).scope(SPELL))
    for b in range(count):
        payloads = tuple(orjson.dumps({"topic": f"t{b}-{r}"}) for r in range(rows))
        keys = tuple(row_key(scope, p) for p in payloads)
        yield Batch(f"batch-{b}", keys, payloads)


def run_engine(
    tmp_path: Path,
    emu: RespellEmulator,
    clock: FakeClock,
    work: Iterator[Batch],
    *,
    poll_interval: float,
    first_poll: float = STEP,
    policy: RetryPolicy | None = None,
    api_sleeps: list[float] | None = None,
    answer_time: float = 0.0,
    create_answer_times: Iterator[float] | None = None,
    on_request: Callable[[str], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[EngineReport, Polls]:
    """One batch in flight; ``sleep`` is the engine's own (the clock's by default)."""
    polls = Polls(emu, clock, answer_time, create_answer_times, on_request)
    provider = Respell(api_key=KEY)

    async def api_sleep(seconds: float) -> None:
        if api_sleeps is not None:
            api_sleeps.append(seconds)
        await clock.sleep(seconds)

    api = ApiClient(
        provider.http_config(),
        secrets=provider.secrets(),
        transport=polls.transport(),
        policy=policy or RetryPolicy.testing(),
        sleep=api_sleep,
        rng=random.Random(7),
    )
    store = Store(tmp_path / "cache")
    options = EngineOptions(max_in_flight=1, poll_interval=poll_interval, first_poll=first_poll)
    engine = Engine(
        RunContext(provider, SPELL, "scope", "print"),
        api,
        store,
        options,
        sleep=sleep or clock.sleep,
        clock=clock,
        progress=progress,
    )

    async def go() -> EngineReport:
        try:
            return await engine.run([], work)
        finally:
            await api.aclose()

    try:
        return asyncio.run(go()), polls
    finally:
        store.close()


# -- the engine, end to end -------------------------------------------------------------------
def test_later_batches_are_polled_near_when_earlier_ones_finished(tmp_path: Path) -> None:
    """Batches taking 1 s, polled every 0.125 s at first: 8 polls; once learned, about 2."""
    clock = FakeClock()
    emu = RespellEmulator(latency=1.0, clock=clock)
    report, polls = run_engine(tmp_path, emu, clock, batches(20), poll_interval=STEP)
    assert report.rows_collected == 60
    assert report.rows_failed == 0
    counts = [len(times) for times in polls.per_batch()]
    assert counts[0] == 8  # nothing learned yet: first_poll, then every poll_interval
    learned = counts[2:]
    assert all(1 <= n <= 3 for n in learned), counts
    assert sum(learned) / len(learned) <= 2.2, counts


def seventh_takes(emu: RespellEmulator, seconds: float) -> Iterator[Batch]:
    """Seven batches; the emulator's latency is ``seconds`` for the last (read at its create)."""
    for i, batch in enumerate(batches(7)):
        if i == 6:
            emu.latency = seconds
        yield batch


def test_a_batch_a_little_late_is_polled_again_soon_after_its_second_poll(tmp_path: Path) -> None:
    """Six 1 s batches teach the timer; the seventh takes 1.1 s. Its second poll (just past
    the expected time) finds it running: the third comes NEAR x 1 s later, not after a whole
    poll interval, and the batch is collected well before the interval would have ended."""
    clock = FakeClock()
    emu = RespellEmulator(latency=1.0, clock=clock)
    report, polls = run_engine(tmp_path, emu, clock, seventh_takes(emu, 1.1), poll_interval=0.5)
    assert report.rows_collected == 21
    late = polls.per_batch()[-1]
    created = max(moment for moment, route, _ in polls.seen if route == "bulkStart")
    assert len(late) >= 3
    assert late[2] - late[1] == pytest.approx(NEAR * (late[1] - created), rel=0.5)
    assert late[-1] - created < 1.1 + 0.1  # found done within ~0.1 s (not 1.1 + 0.5)


def test_a_batch_much_slower_than_expected_is_still_polled_every_poll_interval(tmp_path: Path) -> None:
    """Six 1 s batches teach the timer; the seventh takes 20 s: polled from ~0.9 s on, never
    more than poll_interval apart (send to send, though answers take 0.1 s), and collected."""
    clock = FakeClock()
    emu = RespellEmulator(latency=1.0, clock=clock)
    interval = 0.5
    work = seventh_takes(emu, 20.0)
    report, polls = run_engine(tmp_path, emu, clock, work, poll_interval=interval, answer_time=0.1)
    assert report.rows_collected == 21
    assert report.rows_failed == 0
    slow = polls.per_batch()[-1]
    created = max(moment for moment, route, _ in polls.seen if route == "bulkStart")
    assert 0.5 <= slow[0] - created <= 1.0  # near when the others finished, not at 20 s
    gaps = [b - a for a, b in itertools.pairwise(slow)]
    assert max(gaps) == pytest.approx(interval)  # not interval + the 0.1 s the answer took
    assert slow[-1] - created >= 20.0  # polled until it finished
    assert slow[-1] - created <= 20.0 + interval


def test_time_is_counted_from_when_the_create_left_not_when_its_answer_came(tmp_path: Path) -> None:
    """Every other create answer comes 0.6 s late (a busy event loop, a slow gateway): the
    batch still finishes 1 s after its create left, and is polled then, not 0.6 s later."""
    clock = FakeClock()
    emu = RespellEmulator(latency=1.0, clock=clock)
    answers = itertools.cycle([0.0, 0.6])
    report, polls = run_engine(
        tmp_path, emu, clock, batches(16), poll_interval=STEP, create_answer_times=answers
    )
    assert report.rows_collected == 48
    created = [moment for moment, route, _ in polls.seen if route == "bulkStart"]
    learned = list(zip(created, polls.per_batch(), strict=True))[4:]
    late = [times[-1] - (sent + 1.0) for sent, times in learned]  # done poll after the finish
    assert all(0.0 <= lag <= STEP for lag in late), late
    assert sum(len(times) for _, times in learned) / len(learned) <= 2.5


def test_batches_that_finish_at_once_are_polled_once_at_first_poll(tmp_path: Path) -> None:
    """Zero latency: learning must not push the first poll later than first_poll, even when
    sleeps end late and answers take longer than first_poll to come back."""
    clock = FakeClock(late=0.003)
    emu = RespellEmulator(latency=0.0, clock=clock)
    work = batches(10)
    report, polls = run_engine(
        tmp_path, emu, clock, work, poll_interval=1.0, first_poll=0.001, answer_time=0.004
    )
    assert report.rows_collected == 30
    assert [len(times) for times in polls.per_batch()] == [1] * 10
    assert clock.sleeps == pytest.approx([0.001] * 10)


def test_each_first_retry_of_a_read_is_capped_and_retry_after_is_honoured(tmp_path: Path) -> None:
    """One 5xx per poll over many batches: every retry waits at most poll_interval; a 429
    saying Retry-After: 1.5 is waited out exactly, longer than poll_interval."""
    clock = FakeClock()
    emu = RespellEmulator(latency=0.0, clock=clock, faults=Faults(retry_after=1.5))
    waits: list[float] = []
    policy = RetryPolicy(initial=0.5, maximum=30.0)

    def work() -> Iterator[Batch]:
        for i, batch in enumerate(batches(9)):
            emu.inject("429" if i == 8 else "500", op="read", count=1)  # this batch's poll fails once
            yield batch

    report, polls = run_engine(
        tmp_path, emu, clock, work(), poll_interval=0.05, policy=policy, api_sleeps=waits
    )
    assert report.rows_collected == 27
    assert len(waits) == 8  # the 429's wait is the engine's: it may let the batch's slot go
    assert all(0.0 <= w <= 0.05 for w in waits), waits
    refused = polls.per_batch()[-1]
    assert refused[1] - refused[0] == pytest.approx(1.5)  # Retry-After, waited out exactly


def run_in_one_slot(cache: Path, handle: Callable[[httpx.Request], httpx.Response]) -> frame_batch.RunResult:
    """30 rows in batches of 10, one batch in flight at a time, through ``handle``."""
    return frame_batch.run(
        topics(30),
        SPELL,
        provider="respell",
        api_key=KEY,
        transport=httpx.MockTransport(handle),
        cache=cache,
        batch_size=10,
        max_in_flight=1,
        progress=False,
        retry=RetryPolicy.testing(),
        poll_interval=0.01,
    )


def assert_one_in_flight(routes: list[str]) -> None:
    """Creates and polls in the order sent: at most one batch created and not yet read done
    (with no latency, every poll finds its batch done)."""
    in_flight = 0
    for route in routes:
        in_flight += (route == "bulkStart") - (route == "getBulkRuns")
        assert 0 <= in_flight <= 1, routes


def test_a_done_batch_lets_the_next_create_leave_before_its_part_is_written(tmp_path: Path) -> None:
    """One slot. Respell keeps a bulk run's results (a crash before they are stored loses
    nothing: they are read again), so a batch read done lets its slot go at once, and its
    results may wait to be stored with the next batch's (``_pending``). When they are due
    (here: each batch is ``MAX_ROWS`` rows), the next create leaves before the part is
    written: a part costs fsyncs that would hold that create back."""
    clock = FakeClock()
    emu = RespellEmulator(latency=0.0, clock=clock)
    cache = tmp_path / "cache"
    parts_at_create: list[int] = []

    def watch(route: str) -> None:
        if route == "bulkStart":
            parts_at_create.append(stored_parts(cache))

    work = batches(3, rows=MAX_ROWS)
    report, polls = run_engine(tmp_path, emu, clock, work, poll_interval=STEP, on_request=watch)
    assert report.rows_collected == 3 * MAX_ROWS
    assert parts_at_create == [0, 0, 1]  # batch 1 is written after create 2 left, before create 3
    assert stored_parts(cache) == 3
    assert_one_in_flight([route for _, route, _ in polls.seen])


def test_halves_of_a_refused_batch_take_the_slot_in_turn(tmp_path: Path) -> None:
    """One slot. Creates of more than 5 rows are refused as too large (413): each batch of 10
    is sent again as halves, one after the other in its slot. A half read done lets the slot
    go early (before its part is written), so the next half must take the slot again: two
    batches are never in flight, and every row is paid once."""
    emu = RespellEmulator(latency=0.0)
    routes: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        route = request.url.path.rsplit("/", 1)[-1]
        if route == "bulkStart" and len(orjson.loads(request.content)["inputs"]) > 5:
            return httpx.Response(413, json={"message": "too many inputs"})
        routes.append(route)
        return emu.handler(request)

    result = run_in_one_slot(tmp_path / "cache", handle)
    assert result.summary.succeeded == 30
    assert not emu.duplicates()
    assert routes.count("bulkStart") >= 6  # 413s are not in routes: halves of every batch
    assert_one_in_flight(routes)


def test_a_refused_create_lets_its_slot_go_while_it_waits(tmp_path: Path) -> None:
    """One slot; the first batch's create is refused (429, Retry-After: 7). Its wait ends only
    once another batch has been created and collected in that slot, which a batch holding its
    slot through the wait would never allow (this test would hang, then time out). At no
    time are two batches submitted and not yet collected."""
    emu = RespellEmulator(latency=0.0, faults=Faults(retry_after=7.0))
    emu.inject("429", op="create", count=1)
    provider = Respell(api_key=KEY)
    seen: list[tuple[str, int]] = []  # (route, status) in the order answered
    collected = asyncio.Event()

    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        response = emu.handler(request)
        seen.append((request.url.path.rsplit("/", 1)[-1], response.status_code))
        return response

    async def sleep(seconds: float) -> None:
        if seconds == 7.0:  # the refused create's wait: over once another batch is done
            await asyncio.wait_for(collected.wait(), timeout=10)
        await asyncio.sleep(0)

    store = Store(tmp_path / "cache")
    api = ApiClient(
        provider.http_config(),
        secrets=provider.secrets(),
        transport=httpx.MockTransport(handle),
        policy=RetryPolicy(initial=0.0, maximum=0.0),
    )
    options = EngineOptions(max_in_flight=1, poll_interval=0.0, first_poll=0.0)
    engine = Engine(
        RunContext(provider, SPELL, "scope", "print"),
        api,
        store,
        options,
        sleep=sleep,
        progress=lambda p: collected.set() if p.done else None,
    )

    async def go() -> EngineReport:
        try:
            return await engine.run([], batches(3))
        finally:
            await api.aclose()

    try:
        report = asyncio.run(go())
    finally:
        store.close()
    assert report.rows_collected == 9
    assert report.rows_failed == 0
    assert seen[0] == ("bulkStart", 429)
    assert seen[1] == ("bulkStart", 200)  # another batch took the slot during the wait
    in_flight = 0
    for route, status in seen:  # every poll here finds its batch done (no latency)
        in_flight += (route == "bulkStart" and status == 200) - (route == "getBulkRuns")
        assert 0 <= in_flight <= 1, seen
    assert [r for r, s in seen if r == "bulkStart" and s == 200] == ["bulkStart"] * 3
    assert api.retries == 1


def test_a_batch_whose_read_is_refused_lets_its_slot_go_once_it_is_due(tmp_path: Path) -> None:
    """One slot; batches take 1 s. The fourth batch's first poll (at ~0.9 s, just before it is
    due) is refused with Retry-After: 7. It keeps its slot until it is due, then lets it go:
    the vendor runs nothing of it. The fifth batch is created and collected during the wait,
    which a batch holding its slot through the wait would never allow (the wait ends only
    then: this test would hang, then time out)."""
    clock = FakeClock()
    emu = RespellEmulator(latency=1.0, clock=clock, faults=Faults(retry_after=7.0))
    fifth_done = asyncio.Event()

    def work() -> Iterator[Batch]:
        for i, batch in enumerate(batches(5)):
            if i == 3:
                emu.inject("429", op="read", count=1)  # the next read is this batch's first poll
            yield batch

    async def sleep(seconds: float) -> None:
        if seconds > 5.0:  # the rest of the refused read's wait
            await asyncio.wait_for(fifth_done.wait(), timeout=10)
        await clock.sleep(seconds)

    def progress(p: Progress) -> None:
        if p.done == 12:  # batches 1-3 and 5
            fifth_done.set()

    policy = RetryPolicy(initial=0.0, maximum=0.0)  # Retry-After is waited out, nothing else
    report, polls = run_engine(
        tmp_path, emu, clock, work(), poll_interval=STEP, policy=policy, sleep=sleep, progress=progress
    )
    assert report.rows_collected == 15
    assert report.rows_failed == 0
    groups = list(dict.fromkeys(group for _, _, group in polls.seen if group is not None))
    fourth = [i for i, (_, _, group) in enumerate(polls.seen) if group == groups[3]]
    fifth_create = [i for i, (_, route, _) in enumerate(polls.seen) if route == "bulkStart"][4]
    assert len(fourth) == 2  # refused, then done
    assert fourth[0] < fifth_create < fourth[1]  # created while the fourth waited
    refused_at, created_at = polls.seen[fourth[0]][0], polls.seen[fifth_create][0]
    assert created_at - refused_at >= 0.05  # not at once: the fourth was still due to finish


def test_batches_whose_reads_are_all_refused_stop_taking_new_slots(tmp_path: Path) -> None:
    """One slot; after the first batch, every read is refused for a while. Refused batches
    that are due let their slot go, but only while fewer than PARKED x max_in_flight batches
    are out: then the slot is kept, and no more batches start until reads are answered."""
    clock = FakeClock()
    emu = RespellEmulator(latency=0.0, clock=clock, faults=Faults(retry_after=1.0))

    def work() -> Iterator[Batch]:
        for i, batch in enumerate(batches(8)):
            if i == 1:
                emu.inject("429", op="read", count=15)
            yield batch

    policy = RetryPolicy(attempts=20, initial=0.0, maximum=0.0)  # one read may be refused often
    report, polls = run_engine(tmp_path, emu, clock, work(), poll_interval=STEP, policy=policy)
    assert report.rows_collected == 24
    assert polls.statuses.count(429) == 15
    assert polls.most_out() == PARKED  # reached (refused batches let their slot go), never passed


# -- the parts --------------------------------------------------------------------------------
def test_poll_timer_learns_from_the_polls_of_finished_batches() -> None:
    timer = PollTimer(first_poll=0.25, poll_interval=5.0)
    assert (timer.first_wait(), timer.first_interval()) == (0.25, 0.25)  # nothing learned yet
    timer.learn(0.25, running_at=9.0, done_at=11.0)  # finished between 9 s and 11 s
    assert 9.0 < timer.expected <= 11.0
    assert timer.first_wait() == pytest.approx(0.9 * timer.expected)  # a little before
    assert timer.first_interval() == pytest.approx(0.15 * timer.expected)  # the next just after
    before = timer.expected
    timer.learn(9.0, running_at=19.0, done_at=21.0)  # one slower batch moves it, not all the way
    assert before < timer.expected < 15.0


def test_poll_timer_done_at_first_poll_only_pulls_the_expectation_down() -> None:
    timer = PollTimer(first_poll=0.25, poll_interval=5.0)
    timer.learn(0.25, running_at=59.0, done_at=61.0)
    seen = [timer.first_wait()]
    for _ in range(30):  # batches now finish at once; the poll is answered late (busy loop)
        timer.learn(seen[-1], running_at=None, done_at=seen[-1] + 3.0)
        seen.append(timer.first_wait())
    assert all(b < a for a, b in itertools.pairwise(seen) if a > 0.25)
    assert seen[-1] < 0.25 * seen[0]  # following the faster batches, never stuck


def test_poll_timer_never_polls_sooner_than_first_poll_or_further_apart_than_poll_interval() -> None:
    timer = PollTimer(first_poll=0.25, poll_interval=5.0)
    timer.learn(0.25, running_at=0.0, done_at=0.01)  # batches finish at once
    assert timer.first_wait() == 0.25
    timer.learn(0.25, running_at=999.0, done_at=1001.0)
    assert timer.first_interval() == 5.0
    assert timer.next_interval(5.0) == 5.0
    assert timer.next_interval(0.25) == 0.5


def test_after_an_early_first_poll_the_next_comes_soon_not_first_poll_later(tmp_path: Path) -> None:
    """first_poll = poll_interval = 0.5 s and 1 s batches: once learned, a batch found
    running just before 1 s is polled again about 0.15 s later, not 0.5 s later."""
    clock = FakeClock()
    emu = RespellEmulator(latency=1.0, clock=clock)
    report, polls = run_engine(tmp_path, emu, clock, batches(12), poll_interval=0.5, first_poll=0.5)
    assert report.rows_collected == 36
    created = [moment for moment, route, _ in polls.seen if route == "bulkStart"]
    learned = list(zip(created, polls.per_batch(), strict=True))[3:]
    late = [times[-1] - (sent + 1.0) for sent, times in learned]
    assert all(0.0 <= lag <= 0.2 for lag in late), late


def test_a_reads_backoff_starts_at_the_poll_interval_and_grows_into_the_schedule() -> None:
    """first = 0.02 s: ceilings 0.02, 0.08, 0.32 ... until the standard schedule is lower."""
    rng = random.Random(3)
    policy = RetryPolicy(initial=0.5, maximum=30.0, max_retry_after=120.0)

    def draws(attempt: int, first: float | None = 0.02) -> list[float]:
        return [policy.wait_for(attempt, None, rng, first=first) for _ in range(300)]

    for attempt, ceiling in enumerate([0.02, 0.08, 0.32, 1.28, 5.12, 16.0, 30.0]):
        waits = draws(attempt)
        assert max(waits) <= ceiling, attempt
        assert max(waits) > 0.8 * ceiling, attempt  # it draws from the whole range up to it
    # The whole schedule still rides out about a minute of outage.
    assert sum(min(0.5 * 2**n, 0.02 * 4**n, 30.0) for n in range(policy.attempts - 1)) > 50
    # A long poll interval (the vendors' defaults are seconds) leaves the schedule unchanged.
    assert 0.5 < max(draws(1, first=5.0)) <= 1.0
    uncapped = draws(0, first=None)
    assert max(uncapped) > 0.1  # creates, and clients without a poll interval: unchanged
    assert policy.wait_for(1, 1.5, rng, first=0.02) == 1.5  # Retry-After wins over the cap


def test_the_tls_context_is_built_once_per_thread_and_ca_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    default = _tls_context()
    assert _tls_context() is default
    elsewhere: list[ssl.SSLContext] = []
    thread = threading.Thread(target=lambda: elsewhere.append(_tls_context()))
    thread.start()
    thread.join()
    assert elsewhere[0] is not default  # httpcore sets ALPN on it per connection: not shared
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    custom = _tls_context()
    assert custom is not default
    assert _tls_context() is custom
