"""Unit tests of the pure parts: keys, planning, retry rules, store, Respell state mapping."""

from __future__ import annotations

import asyncio
import os
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import KEY, SPELL

import frame_batch
from frame_batch import Respell, RetryPolicy
from frame_batch._http import ApiClient
from frame_batch._keys import row_key, row_keys, scope_of
from frame_batch._planning import BatchSizer, PlanState, plan_batches
from frame_batch._retry import is_retryable_exception, is_retryable_status, parse_retry_after
from frame_batch._types import BatchRef, EncodedChunk, RowResult
from frame_batch.store import Store
from frame_batch.testing import RespellEmulator


def payload(i: int, size: int = 0) -> bytes:
    return orjson.dumps({"i": i, "pad": "x" * size}, option=orjson.OPT_SORT_KEYS)


# -- keys -------------------------------------------------------------------------------------
def test_row_keys_depend_on_provider_workflow_version_and_content_only() -> None:
    """Same content and scope: same key; any change of scope or content: another key."""
    p = payload(1)
    base = row_key(scope_of("respell", "s1"), p)
    assert base == row_key(scope_of("respell", "s1"), payload(1))
    others = {
        row_key(scope_of("respell", "s2"), p),
        row_key(scope_of("parallel", "s1"), p),
        row_key(scope_of("respell", "s1", "v2"), p),
        row_key(scope_of("respell", "s1"), payload(2)),
    }
    assert base not in others
    assert len(others) == 4


def test_keys_of_a_chunk_are_the_keys_of_its_rows_and_stay_stable() -> None:
    """``row_keys`` gives each row's ``row_key`` (None for a bad row), and keys do not
    change between versions: a cache written before must still be found."""
    scope = scope_of("respell", "s1")
    payloads = [payload(1), None, payload(2), payload(1)]
    first, second = row_key(scope, payload(1)), row_key(scope, payload(2))
    assert row_keys(scope, payloads) == [first, None, second, first]
    assert row_keys(scope, [b'{"a":1}']) == ["4547fe1ae2d52965fa6e0f1c4fd2448f"]


# -- planning ---------------------------------------------------------------------------------
def plan(
    payloads: list[bytes | None], *, done: set[str] = frozenset(), max_rows: int = 3, max_bytes: int = 10_000
):  # type: ignore[assignment]
    state = PlanState()
    errors = {i: "bad" for i, p in enumerate(payloads) if p is None}
    chunks = [EncodedChunk(start=0, payloads=payloads, errors=errors)]
    scope = scope_of("respell", SPELL)
    batches = list(
        plan_batches(
            chunks,
            keys_of=partial(row_keys, scope),
            is_done=done.__contains__,
            max_rows=max_rows,
            max_bytes=max_bytes,
            state=state,
        )
    )
    return batches, state


def test_a_batch_size_cut_while_a_batch_is_out_sizes_the_next_one() -> None:
    """The size is read again after each batch leaves: a cut made meanwhile (a 413, a
    timeout) applies to the very next batch of the same chunk."""
    sizer = BatchSizer(4)
    payloads = [orjson.dumps({"i": i}) for i in range(12)]
    scope = scope_of("respell", SPELL)
    batches = plan_batches(
        [EncodedChunk(start=0, payloads=payloads, errors={})],
        keys_of=partial(row_keys, scope),
        is_done=set().__contains__,
        max_rows=sizer,
        max_bytes=10_000,
        state=PlanState(),
    )
    sizes = [len(next(batches).keys)]
    sizer.shrink(4)  # the first batch was refused: halve
    sizes += [len(b.keys) for b in batches]
    assert sizes == [4, 2, 2, 2, 2]


def test_planning_dedupes_skips_done_and_bad_rows_and_respects_row_limit() -> None:
    """Duplicates once, stored keys never, bad rows never; batches of at most max_rows."""
    rows: list[bytes | None] = [payload(i % 5) for i in range(10)] + [None]
    scope = scope_of("respell", SPELL)
    done = {row_key(scope, payload(0))}
    batches, state = plan(rows, done=done, max_rows=3)
    sent = [k for b in batches for k in b.keys]
    assert len(sent) == len(set(sent)) == 4
    assert [len(b.keys) for b in batches] == [3, 1]
    assert state.cached == 2
    assert state.key_list()[-1] is None
    assert 10 in state.errors
    assert len(state.keys) == 11


def test_planning_respects_the_byte_limit_and_rejects_oversized_rows() -> None:
    """A batch never exceeds max_bytes; a single row over it is skipped with a reason."""
    rows: list[bytes | None] = [payload(i, 300) for i in range(6)] + [payload(99, 5000)]
    batches, state = plan(rows, max_rows=100, max_bytes=1000)
    assert all(b.nbytes <= 1000 for b in batches)
    assert sum(len(b.keys) for b in batches) == 6
    assert "request limit" in state.errors[6]
    assert state.key_list()[6] is None


# -- retry rules ------------------------------------------------------------------------------
def test_retry_after_parsing() -> None:
    """Seconds, fractional seconds, HTTP dates, garbage and the past."""
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_retry_classification() -> None:
    """Reads retry 408/429/5xx and transport errors; creates only 429 and never-sent errors."""
    request = httpx.Request("POST", "http://x")
    for status in (408, 429, 500, 502, 503, 504):
        assert is_retryable_status(status, create=False)
    assert is_retryable_status(429, create=True)
    assert not is_retryable_status(500, create=True)
    assert not is_retryable_status(400, create=False)
    assert is_retryable_exception(httpx.ConnectError("x", request=request), create=True)
    assert not is_retryable_exception(httpx.ReadTimeout("x", request=request), create=True)
    assert not is_retryable_exception(httpx.RemoteProtocolError("x", request=request), create=True)
    assert is_retryable_exception(httpx.ReadTimeout("x", request=request), create=False)


def test_backoff_is_full_jitter_and_capped() -> None:
    """Waits stay within [0, min(maximum, initial * 2**attempt)]; Retry-After wins but is capped."""
    import random

    policy = RetryPolicy(initial=0.5, maximum=4.0, max_retry_after=30.0)
    rng = random.Random(1)
    waits = [policy.wait_for(a, None, rng) for a in range(10) for _ in range(20)]
    assert all(0.0 <= w <= 4.0 for w in waits)
    assert max(waits) > 2.0
    assert policy.wait_for(0, 12.0, rng) == 12.0
    assert policy.wait_for(0, 999.0, rng) == 30.0


# -- store ------------------------------------------------------------------------------------
def test_parts_are_atomic_and_rewriting_a_batch_replaces_it(tmp_path: Path) -> None:
    """A part lands complete under its final name, no temp file stays, a rewrite replaces it."""
    store = Store.open(tmp_path)
    store.parts.write("s", "b1", [RowResult("k1", "failed", error="x")])
    store.parts.write("s", "b1", [RowResult("k1", "succeeded", outputs={"a": 1})])
    files = sorted(p.name for p in (tmp_path / "results" / "s").iterdir())
    assert files == ["part-b1.parquet"]
    table = pq.read_table(tmp_path / "results" / "s" / "part-b1.parquet")
    assert table["status"].to_pylist() == ["succeeded"]
    store.close()


def test_leftover_temp_part_is_ignored(tmp_path: Path) -> None:
    """A half-written '.part-*.tmp' from a crash is never read as results."""
    store = Store.open(tmp_path)
    store.parts.write("s", "b1", [RowResult("k1", "succeeded", outputs={})])
    (tmp_path / "results" / "s" / ".part-b2.parquet.tmp").write_bytes(b"PAR1 garbage")
    assert store.done_keys("s") == {"k1"}
    store.close()


def test_latest_result_per_key_wins(tmp_path: Path) -> None:
    """A failed row retried later reads as its newest result; cancelled rows are not 'done'."""
    store = Store.open(tmp_path)
    store.parts.write("s", "b1", [RowResult("k1", "failed", error="x"), RowResult("k2", "cancelled")])
    assert store.done_keys("s") == {"k1"}
    assert store.done_keys("s", retry_failed=True) == set()
    store.parts.write("s", "b2", [RowResult("k1", "succeeded", outputs={"v": 2})])
    latest = store.latest("s").to_pylist()
    assert {r["key"]: r["status"] for r in latest} == {"k1": "succeeded", "k2": "cancelled"}
    store.close()


def test_journal_lifecycle_and_lock(tmp_path: Path) -> None:
    """submitting -> submitted -> collected; open batches listed; a second run is locked out."""
    store = Store.open(tmp_path)
    journal = store.journal
    journal.begin("b1", ("k1", "k2"), scope="s", provider="respell", workflow="w", fingerprint="f")
    journal.begin("b2", ("k3",), scope="s", provider="respell", workflow="w", fingerprint="f")
    journal.submitted("b1", "remote-1")
    open_batches = {b.batch_id: b for b in journal.open_batches("s")}
    assert open_batches["b1"].state == "submitted"
    assert open_batches["b1"].remote_id == "remote-1"
    assert open_batches["b2"].state == "submitting"
    assert open_batches["b2"].keys == ("k3",)
    store.write_results("s", "b1", [RowResult("k1", "succeeded"), RowResult("k2", "succeeded")])
    assert [b.batch_id for b in journal.open_batches("s")] == ["b2"]
    journal.ambiguous("b2", ("k3",), "lost", record_duplicates=True)
    assert journal.possible_duplicates() == {"k3"}
    assert journal.open_batches("s") == []
    store.acquire()
    other = Store.open(tmp_path)
    with pytest.raises(Exception, match="another run is using the cache"):
        other.acquire(timeout=0.1)
    store.close()
    other.acquire(timeout=1.0)
    other.close()


def test_corrupt_journal_is_a_clear_store_error(tmp_path: Path) -> None:
    """A damaged journal file raises StoreError saying what to do."""
    (tmp_path / "results").mkdir()
    (tmp_path / "journal.sqlite3").write_bytes(b"this is not a database" * 100)
    from frame_batch.errors import StoreError

    with pytest.raises(StoreError, match="move the cache directory aside"):
        Store.open(tmp_path)


def test_journal_survives_in_wal_mode(tmp_path: Path) -> None:
    """The journal runs in WAL mode with full sync (a committed 'submitting' survives a crash)."""
    store = Store.open(tmp_path)
    mode = store.journal._db.execute("PRAGMA journal_mode").fetchone()[0]
    sync = store.journal._db.execute("PRAGMA synchronous").fetchone()[0]
    assert (mode, sync) == ("wal", 2)
    store.close()
    assert os.path.exists(tmp_path / "journal.sqlite3")


# -- Respell adapter ----------------------------------------------------------------------------
def poll_once(runs: list[Any], keys: tuple[str, ...]) -> object:
    return poll_answer(orjson.dumps({"runs": runs}), keys)


def poll_answer(content: bytes, keys: tuple[str, ...]) -> object:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=content, headers={"content-type": "application/json"})

    provider = Respell(api_key=KEY)

    async def go() -> object:
        api = ApiClient(provider.http_config(), secrets=(KEY,), transport=httpx.MockTransport(answer))
        try:
            return await provider.poll(api, SPELL, BatchRef("b", "r", keys))
        finally:
            await api.aclose()

    return asyncio.run(go())


def test_unknown_states_keep_the_batch_open_and_never_succeed() -> None:
    """An undocumented state is reported as unknown, the batch is not done, no success."""
    poll = poll_once(
        [{"index": 0, "state": "success", "outputs": {}}, {"index": 1, "state": "frobnicating"}], ("k0", "k1")
    )
    assert not poll.done  # type: ignore[attr-defined]
    assert poll.unknown == ("frobnicating",)  # type: ignore[attr-defined]
    assert [r.key for r in poll.results] == ["k0"]  # type: ignore[attr-defined]


def test_runs_are_matched_by_index_else_by_their_echoed_inputs() -> None:
    """A run's row is its index; without one (a bool is none) its echoed inputs; any spelling
    of success counts, a non-map output is empty, a numeric run id becomes text."""
    scope = scope_of(*Respell(api_key=KEY).scope(SPELL))
    keys = tuple(row_key(scope, payload) for payload in (b'{"a":1}', b'{"a":2}', b'{"a":3}'))
    runs: list[dict[str, object]] = [
        {"index": True, "inputs": {"a": 3}, "state": "SUCCESS", "id": 7, "outputs": {"x": 3}},
        {"inputs": {"a": 1}, "state": "success", "outputs": "not a map"},
        {"index": 1, "state": "success", "runId": "r-2", "outputs": {"x": 2}},
    ]
    poll = poll_once(runs, keys)
    got = {r.key: (r.status, r.outputs, r.run_id) for r in poll.results}  # type: ignore[attr-defined]
    assert got == {
        keys[2]: ("succeeded", {"x": 3}, "7"),
        keys[0]: ("succeeded", {}, None),
        keys[1]: ("succeeded", {"x": 2}, "r-2"),
    }
    assert poll.done  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "content", [b"<html>502 Bad Gateway</html>", b"[]", b'{"runs": "none"}', b'{"runs": {"0": {}}}', b"{}"]
)
def test_an_answer_without_a_runs_list_keeps_the_batch_open(content: bytes) -> None:
    """Not JSON, not an object, or no list of runs: nothing is read, the batch stays open."""
    poll = poll_answer(content, ("k0",))
    assert not poll.done  # type: ignore[attr-defined]
    assert poll.results == ()  # type: ignore[attr-defined]
    assert poll.unknown == ("<no runs list in getBulkRuns answer>",)  # type: ignore[attr-defined]


def test_runs_that_are_not_objects_are_skipped_and_unknown_fields_ignored() -> None:
    """Items of ``runs`` that are not objects are passed over; the runs around them are read,
    whatever extra fields (nested or not) they carry."""
    runs = [
        "run 0",
        None,
        {"index": 0, "state": "success", "outputs": {"x": 1}, "extra": {"deep": [1, {"a": None}]}},
        [1, 2],
        3.5,
        {"index": 1, "trace": "…", "state": "failed", "message": "bad input", "id": 12},
    ]
    poll = poll_once(runs, ("k0", "k1"))
    got = {r.key: (r.status, r.outputs, r.error, r.run_id) for r in poll.results}  # type: ignore[attr-defined]
    assert got == {"k0": ("succeeded", {"x": 1}, None, None), "k1": ("failed", None, "bad input", "12")}
    assert poll.done  # type: ignore[attr-defined]


def test_an_integer_beyond_64_bits_in_an_answer_is_stored_as_orjson_reads_it(tmp_path: Path) -> None:
    """A run's output (or echoed input) holding an integer too wide for 64 bits is no error:
    the output is kept as the float orjson would read; the input just matches no row (ours
    are sent as orjson's JSON), so such a run falls back to its position."""
    emu = RespellEmulator()
    wide = 123456789012345678901234567890

    def handle(request: httpx.Request) -> httpx.Response:
        response = emu.handler(request)
        if not request.url.path.endswith("getBulkRuns"):
            return response
        body = response.read().replace(b'"length":', f'"wide":{wide},"length":'.encode())
        body = body.replace(b'"index":', b'"at":').replace(b'"inputs":{', f'"inputs":{{"w":{wide},'.encode())
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    df = pd.DataFrame({"topic": ["a", "b", "c"]})
    result = frame_batch.run(
        df, SPELL, provider=Respell(api_key=KEY), transport=httpx.MockTransport(handle),
        cache=tmp_path / "cache", progress=False, poll_interval=0.01, retry=RetryPolicy.testing(),
    )  # fmt: skip
    assert result.summary.succeeded == 3
    assert result.frame["wide"].tolist() == [float(wide)] * 3
    assert result.frame["summary"].tolist() == ["Summary: a", "Summary: b", "Summary: c"]


def test_failed_runs_carry_the_vendor_message() -> None:
    """A failed run becomes a failed row with Respell's message and run id."""
    poll = poll_once(
        [{"index": 0, "id": "run-9", "state": "failed", "error": "Spell step 3 timed out"}], ("k0",)
    )
    (result,) = poll.results  # type: ignore[attr-defined]
    assert (result.status, result.error, result.run_id) == ("failed", "Spell step 3 timed out", "run-9")


@pytest.mark.parametrize("field", ["runId", "bulkRunId", "groupId"])
def test_bulk_id_is_read_from_any_documented_field(field: str) -> None:
    """bulkStart's id is accepted under runId, bulkRunId or groupId."""
    from frame_batch._types import Batch

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={field: "bulk-42"})

    provider = Respell(api_key=KEY)

    async def go() -> str:
        api = ApiClient(provider.http_config(), secrets=(KEY,), transport=httpx.MockTransport(answer))
        try:
            return await provider.submit(api, SPELL, Batch("b", ("k",), (b'{"a":1}',)), None)
        finally:
            await api.aclose()

    assert asyncio.run(go()) == "bulk-42"


def test_submit_body_is_valid_json_with_the_rows_spliced_in() -> None:
    """The bulkStart body parses and carries spellId plus the rows in order."""
    from frame_batch._types import Batch

    bodies: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        assert request.headers["authorization"] == f"Bearer {KEY}"
        return httpx.Response(200, json={"runId": "x"})

    provider = Respell(api_key=KEY)

    async def go() -> None:
        api = ApiClient(provider.http_config(), secrets=(KEY,), transport=httpx.MockTransport(answer))
        try:
            batch = Batch("b", ("k1", "k2"), (b'{"a":1}', b'{"a":"\\u00e9"}'))
            await provider.submit(api, 'we"ird', batch, None)
        finally:
            await api.aclose()

    asyncio.run(go())
    assert orjson.loads(bodies[0]) == {"spellId": 'we"ird', "inputs": [{"a": 1}, {"a": "é"}]}
