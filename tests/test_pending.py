"""Collected batches whose results the vendor keeps are stored together, one part for several.

They wait at most ``MAX_AGE`` seconds or ``MAX_ROWS`` rows, are stored at once when no other
batch is in flight, and are stored however the run ends; each row keeps its own batch id,
and every batch of a part is journaled collected.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow.parquet as pq
import pytest
from conftest import KEY, SPELL, HandClock, stored_parts, topics

import frame_batch
from frame_batch import Respell, RetryPolicy, errors
from frame_batch._pending import MAX_AGE, PendingResults
from frame_batch._types import RowResult
from frame_batch.store import Store
from frame_batch.store.parts import COMPACT_AFTER
from frame_batch.testing import RespellEmulator


def part_tables(cache: Path) -> list[Any]:
    return [pq.read_table(p) for p in sorted((cache / "results").rglob("part-*.parquet"))]


# -- PendingResults on its own ----------------------------------------------------------------
def test_waiting_batches_become_one_part_with_each_rows_batch_id(tmp_path: Path) -> None:
    clock = HandClock()
    store = Store(tmp_path / "cache")
    for batch_id in ("b1", "b2", "b3"):
        store.journal.begin(
            batch_id, (f"{batch_id}-k",), scope="s", provider="p", workflow="w", fingerprint="f"
        )
        store.journal.submitted(batch_id, f"remote-{batch_id}")
    pending = PendingResults(store, "s", clock, max_rows=10, max_age=1.0)
    pending.add("b1", [RowResult("b1-k", "succeeded", outputs={"v": 1})])
    pending.add("b2", [RowResult("b2-k", "failed", error="no")])
    assert not pending.due()
    assert stored_parts(tmp_path / "cache") == 0  # nothing written while they wait
    pending.add("b3", [RowResult("b3-k", "succeeded", outputs={"v": 3})])
    pending.flush()
    (table,) = part_tables(tmp_path / "cache")
    assert table["key"].to_pylist() == ["b1-k", "b2-k", "b3-k"]
    assert table["batch_id"].to_pylist() == ["b1", "b2", "b3"]
    assert store.journal.counts() == {"collected": 3}
    assert store.open_batches("s") == []
    pending.flush()  # nothing waits: no empty part
    assert stored_parts(tmp_path / "cache") == 1
    store.close()


def test_batches_are_due_by_rows_or_by_the_age_of_the_oldest(tmp_path: Path) -> None:
    clock = HandClock()
    store = Store(tmp_path / "cache")
    pending = PendingResults(store, "s", clock, max_rows=4, max_age=1.0)
    assert not pending.due()
    pending.add("b1", [RowResult("k1", "succeeded"), RowResult("k2", "succeeded")])
    clock.now = 0.9
    pending.add("b2", [RowResult("k3", "succeeded")])
    assert not pending.due()
    clock.now = 1.0  # the oldest (b1) has waited max_age, though b2 only 0.1 s
    assert pending.due()
    pending.flush()
    assert pending.rows == 0
    assert not pending.due()
    pending.add("b3", [RowResult(f"r{i}", "succeeded") for i in range(4)])
    assert pending.due()  # max_rows reached at once
    store.close()


# -- in a run ---------------------------------------------------------------------------------
def test_batches_collected_while_others_are_out_share_parts(tmp_path: Path, run_with: Any) -> None:
    """Eight batches, four in flight: fewer parts than batches, every batch journaled
    collected, every row stored under the batch that carried it."""
    emu = RespellEmulator(latency=0.02)
    result = run_with(topics(24), emu, batch_size=3, max_in_flight=4)
    assert result.summary.succeeded == 24
    tables = part_tables(tmp_path / "cache")
    assert 1 <= len(tables) < 8
    store = Store(tmp_path / "cache")
    assert store.journal.counts() == {"collected": 8}
    ids = {b for t in tables for b in t["batch_id"].to_pylist()}
    assert len(ids) == 8  # each row keeps its own batch's id
    per_batch = [sum(b == i for t in tables for b in t["batch_id"].to_pylist()) for i in ids]
    assert per_batch == [3] * 8
    store.close()


def run_through(handle: Any, cache: Path, rows: int, **options: Any) -> frame_batch.RunResult:
    """``rows`` topics in batches of 2, two in flight, through ``handle`` (an httpx handler)."""
    options = {"progress": False, "batch_size": 2, "max_in_flight": 2, "poll_interval": 0.01, **options}
    provider = Respell(api_key=KEY)
    transport = httpx.MockTransport(handle)
    return frame_batch.run(
        topics(rows),
        SPELL,
        provider=provider,
        transport=transport,
        cache=cache,
        retry=RetryPolicy.testing(),
        **options,
    )


def test_a_batch_collected_early_is_stored_while_a_slow_one_is_still_out(tmp_path: Path) -> None:
    """Two batches: one done at once, one taking ~MAX_AGE + 0.6 s. The first is stored once it
    has waited MAX_AGE, not when the slow one is done."""
    emu = RespellEmulator()
    seen: list[tuple[str, int]] = []  # (route, parts on disk) at each request

    def handle(request: httpx.Request) -> httpx.Response:
        route = request.url.path.rsplit("/", 1)[-1]
        if route == "bulkStart":
            emu.latency = 0.0 if not any(r == "bulkStart" for r, _ in seen) else MAX_AGE + 0.6
        seen.append((route, stored_parts(tmp_path / "cache")))
        return emu.handler(request)

    result = run_through(handle, tmp_path / "cache", 4, poll_interval=0.05)
    assert result.summary.succeeded == 4
    polls = [parts for route, parts in seen if route == "getBulkRuns"]
    assert polls[-1] == 1, seen  # the fast batch's part was there before the slow one was done
    assert stored_parts(tmp_path / "cache") == 2


def test_collected_batches_are_stored_when_the_run_fails(tmp_path: Path) -> None:
    """A create refused for good (401) ends the run with an error; the batches read done
    before it are stored on the way out, not left waiting in memory."""
    emu = RespellEmulator()
    creates = 0
    read_done: set[str] = set()  # the inputs of runs the client was told are finished

    def handle(request: httpx.Request) -> httpx.Response:
        nonlocal creates
        if request.url.path.endswith("/bulkStart"):
            creates += 1
            if creates == 4:
                return httpx.Response(401, json={"error": "key revoked"})
        response = emu.handler(request)
        if request.url.path.endswith("/getBulkRuns"):
            runs = orjson.loads(response.content)["runs"]
            if all(run["state"] != "running" for run in runs):
                read_done.update(run["inputs"]["topic"] for run in runs)
        return response

    with pytest.raises(errors.AuthenticationError):
        run_through(handle, tmp_path / "cache", 12)
    assert len(read_done) >= 2  # at least one batch came back before the refused create
    stored = {key for t in part_tables(tmp_path / "cache") for key in t["key"].to_pylist()}
    assert len(stored) == len(read_done)
    # The rerun polls the batch left in flight and pays only for rows never sent: none twice.
    again = run_through(emu.handler, tmp_path / "cache", 12)
    assert again.summary.succeeded == 12
    assert again.summary.cached == len(read_done)
    assert emu.duplicates() == {}


# -- a crash between a shared part and its journal commit -------------------------------------
def test_every_batch_of_a_part_is_closed_from_its_rows_not_only_the_one_it_is_named_after(
    tmp_path: Path,
) -> None:
    """A part written for b1 and b2 whose commit never came: both are closed from it. The
    partial parts of a batch still out leave it open, before and after a merge of them."""
    store = Store(tmp_path / "cache")
    for batch_id in ("b1", "b2", "b3", "b4"):
        store.journal.begin(
            batch_id, (f"{batch_id}-k",), scope="s", provider="p", workflow="w", fingerprint="f"
        )
        store.journal.submitted(batch_id, f"remote-{batch_id}")
    store.parts.write_batches(
        "s", [("b1", [RowResult("b1-k", "succeeded")]), ("b2", [RowResult("b2-k", "succeeded")])]
    )
    store.write_partial("s", "b3", 0, [RowResult("b3-k", "succeeded")])
    assert [b.batch_id for b in store.open_batches("s")] == ["b3", "b4"]
    assert store.journal.counts() == {"collected": 2, "submitted": 2}
    for n in range(COMPACT_AFTER):
        store.write_partial("s", "b4", n, [RowResult(f"b4-k{n}", "succeeded")])
    assert store.compact("s") is not None  # b3's and b4's rows are now in a merged part
    assert [b.batch_id for b in store.open_batches("s")] == ["b3", "b4"]
    store.close()


def test_a_rerun_after_that_crash_polls_none_of_the_parts_batches_again(
    tmp_path: Path, run_with: Any
) -> None:
    """Every batch of the run reopened as a crash before the journal commits leaves them: the
    rerun finds all of them in the parts and sends no request for them."""
    emu = RespellEmulator(latency=0.02)
    first = run_with(topics(24), emu, batch_size=3, max_in_flight=4)
    assert any(len(set(t["batch_id"].to_pylist())) > 1 for t in part_tables(tmp_path / "cache"))
    with sqlite3.connect(tmp_path / "cache" / "journal.sqlite3") as db:
        db.execute("UPDATE batches SET state = 'submitted' WHERE state = 'collected'")
    routes: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        routes.append(request.url.path.rsplit("/", 1)[-1])
        return emu.handler(request)

    again = run_through(handle, tmp_path / "cache", 24, batch_size=3)
    assert routes == []
    assert again.summary.cached == 24
    assert again.frame["bulk_status"].tolist() == first.frame["bulk_status"].tolist()
