"""DESIGN §4: one test (at least) per invariant, each able to catch its violation."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd
import pytest
from conftest import KEY, SPELL, HandClock, topics

import frame_batch
from frame_batch import Respell, RetryPolicy
from frame_batch._http import AmbiguousCreate, ApiClient
from frame_batch.testing import RespellEmulator

Runner = Callable[..., frame_batch.RunResult]
STATES = {"succeeded", "failed", "cancelled", "skipped", "pending"}


def canonical(row: dict[str, Any]) -> str:
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS).decode()


def charges_by_row(emu: RespellEmulator, df: pd.DataFrame) -> list[int]:
    charges = emu.charges()
    return [charges[canonical(row)] for row in df.to_dict("records")]


# -- 1. every row ends in exactly one state --------------------------------------------
def test_every_row_ends_in_exactly_one_known_state(run_with: Runner) -> None:
    """Good, failing, bad-input and duplicate rows each end with one status; none is lost."""
    emu = RespellEmulator(failure_rate=0.3)
    df = topics(40)
    df["n"] = df["n"].astype(float)
    df.loc[7, "n"] = math.inf  # a bad cell: skipped with a reason
    df = pd.concat([df, df.iloc[[3]]])  # a duplicate row
    out = run_with(df, emu).frame
    assert len(out) == len(df)
    assert set(out["bulk_status"]) <= STATES
    assert out["bulk_status"].notna().all()
    assert (out["bulk_status"] == "skipped").sum() == 1
    assert set(out["bulk_status"]) >= {"succeeded", "failed"}
    not_ok = out[out["bulk_status"] != "succeeded"]
    assert not_ok["bulk_error"].map(lambda e: isinstance(e, str) and len(e) > 0).all()


def test_rows_unfinished_at_the_deadline_are_pending_and_resumable(run_with: Runner) -> None:
    """A deadline leaves rows 'pending' (not lost, not failed) and a rerun finishes them."""
    clock = HandClock()
    emu = RespellEmulator(latency=100.0, clock=clock)
    df = topics(12)
    first = run_with(df, emu, timeout=0.3, batch_size=5)
    assert set(first.frame["bulk_status"]) == {"pending"}
    assert first.summary.pending == 12
    assert not first.summary.complete
    clock.now = 1000.0
    second = run_with(df, emu, batch_size=5, timeout=20)  # a resubmission would wait forever
    assert set(second.frame["bulk_status"]) == {"succeeded"}
    assert emu.create_requests == 3  # the rerun polled; it did not resubmit


# -- 2. a stored row is never submitted again --------------------------------------------
def test_stored_rows_are_never_submitted_again(run_with: Runner) -> None:
    """Reorder, filter, append and edit: only new or edited rows are charged."""
    emu = RespellEmulator()
    df = topics(30)
    run_with(df, emu)
    changed = df.iloc[::-1].iloc[5:].copy()  # reversed, 5 rows dropped
    changed.loc[changed.index[0], "topic"] = "edited"
    changed = pd.concat([changed, pd.DataFrame({"topic": ["new a", "new b"], "n": [100, 101]})])
    out = run_with(changed, emu).frame
    assert set(out["bulk_status"]) == {"succeeded"}
    assert not emu.duplicates()
    assert sum(emu.charges().values()) == 30 + 3  # the edited row and two new rows


def test_retry_failed_resends_only_failed_rows(run_with: Runner) -> None:
    """Failed rows are final by default; retry_failed=True sends just those again."""
    emu = RespellEmulator(failure_rate=0.5)
    df = topics(20)
    first = run_with(df, emu).frame
    failed = int((first["bulk_status"] == "failed").sum())
    assert failed > 0
    run_with(df, emu)
    assert sum(emu.charges().values()) == 20
    run_with(df, emu, retry_failed=True)
    assert sum(emu.charges().values()) == 20 + failed


# -- 3. a restart polls; ambiguous creates are reconciled or reported -------------------
def test_restart_polls_submitted_batches_instead_of_resubmitting(tmp_path: Path, run_with: Runner) -> None:
    """Batches recorded as submitted are polled by the next run, with zero new creates."""
    clock = HandClock()
    emu = RespellEmulator(latency=50.0, clock=clock)
    df = topics(9)
    run_with(df, emu, timeout=0.2, batch_size=3)
    assert emu.create_requests == 3
    clock.now = 60.0
    out = run_with(df, emu, batch_size=3, timeout=20).frame  # a resubmission would wait forever
    assert emu.create_requests == 3
    assert out["bulk_status"].eq("succeeded").all()


def test_lost_create_answer_is_resubmitted_and_reported(run_with: Runner) -> None:
    """on_ambiguous='resubmit': the rows are sent again and reported as possibly paid twice."""
    emu = RespellEmulator()
    emu.inject("drop", op="create")  # the server charges the batch, the answer is lost
    df = topics(10)
    result = run_with(df, emu, batch_size=5, max_in_flight=1)
    assert result.frame["bulk_status"].eq("succeeded").all()
    charged = charges_by_row(emu, df)
    reported = set(result.possibly_duplicated)
    assert reported == {i for i, n in enumerate(charged) if n > 1}
    assert len(reported) == 5
    assert result.summary.possibly_duplicated == 5


def test_lost_create_answer_fails_rows_under_the_fail_policy(run_with: Runner) -> None:
    """on_ambiguous='fail': the rows fail with an explanation and are not sent again."""
    emu = RespellEmulator()
    emu.inject("drop", op="create")
    df = topics(10)
    result = run_with(df, emu, batch_size=5, max_in_flight=1, on_ambiguous="fail")
    statuses = result.frame["bulk_status"].tolist()
    assert statuses.count("failed") == 5
    assert statuses.count("succeeded") == 5
    assert not emu.duplicates()
    assert (
        result.frame.loc[result.frame["bulk_status"] == "failed", "bulk_error"]
        .str.contains("on_ambiguous")
        .all()
    )
    assert result.summary.possibly_duplicated == 0


def test_server_error_on_create_is_treated_as_ambiguous(run_with: Runner) -> None:
    """A 5xx answer to a create is never blindly resent: it goes through the ambiguous policy."""
    emu = RespellEmulator()
    emu.inject("500", op="create")
    result = run_with(topics(4), emu, on_ambiguous="fail")
    assert result.frame["bulk_status"].eq("failed").all()
    assert emu.create_requests == 0  # the 500 was injected before the work: nothing charged


# -- 4. joined by key, never by position --------------------------------------------------
def test_results_join_by_key_when_answers_come_out_of_order(run_with: Runner) -> None:
    """Each row gets the output computed from its own inputs even with shuffled answers."""
    emu = RespellEmulator(
        out_of_order=True, spells={SPELL: lambda x: {"echo": x["topic"], "twice": x["n"] * 2}}
    )
    df = topics(50).sample(frac=1.0, random_state=3)  # shuffled index too
    out = run_with(df, emu, batch_size=7).frame
    assert (out["echo"] == df["topic"]).all()
    assert (out["twice"] == df["n"] * 2).all()
    assert out.index.equals(df.index)


def test_runs_matched_by_echoed_inputs_when_no_index_is_given() -> None:
    """Without an index field, runs are matched through their echoed inputs, not their order."""
    from frame_batch._keys import row_key, scope_of
    from frame_batch._types import BatchRef
    from frame_batch.providers.respell import _read_answer

    scope = scope_of("respell", SPELL, "")
    payloads = [orjson.dumps({"topic": t}, option=orjson.OPT_SORT_KEYS) for t in ("a", "b", "c")]
    keys = tuple(row_key(scope, p) for p in payloads)
    runs = [
        {"state": "success", "inputs": {"topic": t}, "outputs": {"o": t.upper()}} for t in ("c", "a", "b")
    ]
    poll = _read_answer(orjson.dumps({"runs": runs}), BatchRef("b1", "r1", keys), scope)
    assert poll.done
    by_key = {r.key: r.outputs for r in poll.results}
    assert [by_key[k] for k in keys] == [{"o": "A"}, {"o": "B"}, {"o": "C"}]


# -- 5. keys never reach the store, outputs, logs or errors (see test_secrets.py) -------------
def test_api_key_is_not_in_the_journal_or_parts(tmp_path: Path, run_with: Runner) -> None:
    """A distinctive key appears in no file of the cache directory."""
    secret = "sk-live-SENTINEL-9f8e7d6c5b4a"
    run_with(topics(5), RespellEmulator(), api_key=secret)
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


# -- 6. a bad cell fails its row before anything is sent -------------------------------------
def test_bad_cell_is_a_row_error_and_never_sent(run_with: Runner) -> None:
    """An inf cell skips its row with row/column/type in the error; its batch still runs."""
    emu = RespellEmulator()
    df = pd.DataFrame({"topic": ["a", "b", "c"], "score": [1.0, math.inf, 3.0]}, index=["x", "y", "z"])
    out = run_with(df, emu).frame
    assert out["bulk_status"].tolist() == ["succeeded", "skipped", "succeeded"]
    error = out.loc["y", "bulk_error"]
    assert "'score'" in error
    assert "inf" in error
    assert "'y'" in error
    sent = set(emu.charges())
    assert len(sent) == 2
    assert not any("Infinity" in s or '"b"' in s for s in sent)


# -- 7. resuming a finished run sends zero creates ------------------------------------------
def test_resuming_a_finished_run_sends_zero_create_requests(run_with: Runner) -> None:
    """The second run of the same call is served from the store: no create, same frame."""
    emu = RespellEmulator(failure_rate=0.2)
    df = topics(25)
    first = run_with(df, emu, batch_size=10)
    creates = emu.create_requests
    second = run_with(df, emu, batch_size=10)
    assert emu.create_requests == creates
    assert second.summary.create_requests == 0
    assert emu.requests()["getBulkRuns"] > 0  # it did talk to the server the first time
    pd.testing.assert_frame_equal(first.frame, second.frame)


# -- 8. reads retried with backoff and Retry-After; creates only when never sent ---------------
def _client(emu: RespellEmulator, sleeps: list[float], policy: RetryPolicy) -> ApiClient:
    provider = Respell(api_key=KEY)

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return ApiClient(
        provider.http_config(),
        secrets=provider.secrets(),
        transport=emu.transport(),
        policy=policy,
        sleep=sleep,
    )


def test_reads_are_retried_and_honour_retry_after() -> None:
    """A 429 on a read waits exactly Retry-After; a 5xx and a dropped read are retried too."""
    emu = RespellEmulator()
    emu.inject("429", op="read")
    emu.inject("503", op="read")
    emu.inject("drop", op="read")
    sleeps: list[float] = []

    async def go() -> httpx.Response:
        api = _client(emu, sleeps, RetryPolicy(initial=0.5, maximum=4.0))
        try:
            created = await api.create(
                "POST", "/spells/bulkStart", content=b'{"spellId":"s","inputs":[{"a":1}]}'
            )
            return await api.read("POST", "/spells/getBulkRuns", json={"groupId": created.json()["runId"]})
        finally:
            await api.aclose()

    response = asyncio.run(go())
    assert response.status_code == 200
    assert len(sleeps) == 3
    assert sleeps[0] == pytest.approx(1.0)  # the emulator's Retry-After
    assert all(0.0 <= s <= 4.0 for s in sleeps[1:])


def test_creates_are_retried_only_when_never_sent() -> None:
    """A connect failure is retried (charged once); a lost answer raises AmbiguousCreate."""
    emu = RespellEmulator()
    emu.inject("drop_before", op="create")
    sleeps: list[float] = []
    body = b'{"spellId":"s","inputs":[{"a":1}]}'

    async def go() -> None:
        api = _client(emu, sleeps, RetryPolicy.testing())
        try:
            await api.create("POST", "/spells/bulkStart", content=body)
            assert emu.create_requests == 1
            assert api.create_requests == 1
            emu.inject("drop", op="create")
            with pytest.raises(AmbiguousCreate):
                await api.create("POST", "/spells/bulkStart", content=body)
            assert emu.create_requests == 2  # charged, but never resent
        finally:
            await api.aclose()

    asyncio.run(go())
    assert len(sleeps) == 1


def test_retry_budget_stops_an_outage_from_multiplying_load() -> None:
    """With the budget spent, a failing read raises instead of retrying forever."""
    emu = RespellEmulator()
    emu.inject("503", op="read", count=100)
    sleeps: list[float] = []

    async def go() -> None:
        api = _client(emu, sleeps, RetryPolicy(initial=0.0, maximum=0.0, attempts=50, budget=20))
        try:
            with pytest.raises(frame_batch.errors.ServerError):
                await api.read("POST", "/spells/getBulkRuns", json={"groupId": "x"})
        finally:
            await api.aclose()

    asyncio.run(go())
    assert len(sleeps) == 4  # 20 tokens / 5 per retry
