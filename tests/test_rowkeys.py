"""Row keys held without a Python object per row (``_rowkeys``), planning across chunks with
them, and the join that takes the stored results apart column by column (``Handover``)."""

from __future__ import annotations

import hashlib
import threading
from functools import partial

import orjson
import pandas as pd
import pyarrow as pa
import pytest
from conftest import SPELL

from frame_batch._join import Handover, join_results
from frame_batch._keys import row_key, row_keys, scope_of
from frame_batch._memory import RELEASE_FROM_ROWS, release, release_if_grown
from frame_batch._planning import PlanState, plan_batches
from frame_batch._rowkeys import KeySet, RowKeys, all_distinct, count_unique
from frame_batch._types import EncodedChunk
from frame_batch.store import newest_per_key


def key(i: int) -> str:
    return hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest()


# -- KeySet -------------------------------------------------------------------------------
def test_keyset_finds_sealed_keys_across_merged_runs_and_nothing_else() -> None:
    """Ten seals of growing size merge into a few runs; every sealed key is found, no other."""
    keys = KeySet()
    added: list[str] = []
    for round_ in range(10):
        batch = [key(i) for i in range(len(added), len(added) + 3 * (round_ + 1))]
        for k in batch:
            keys.add(k)
        assert len(keys) == len(added) + len(batch)
        keys.seal()
        added += batch
    assert len(keys) == len(added) == 165
    assert len(keys._runs) < 10  # runs were merged
    assert keys.contains(added).all()
    assert not keys.contains([key(i) for i in range(1000, 1100)]).any()
    assert keys.contains([]).shape == (0,)


def test_keyset_tells_apart_keys_that_share_their_first_eight_bytes() -> None:
    """The search is on the high half; equal halves with different low halves must not match."""
    keys = KeySet()
    same_high = ["ab" * 8 + f"{i:016x}" for i in range(5)]
    for k in same_high[:3]:
        keys.add(k)
    keys.seal()
    assert keys.contains(same_high).tolist() == [True, True, True, False, False]


def test_keyset_refuses_keys_of_another_shape() -> None:
    keys = KeySet()
    keys.add("k1")
    with pytest.raises(ValueError, match="hex characters"):
        keys.seal()


# -- RowKeys ------------------------------------------------------------------------------
def test_row_keys_read_the_same_before_and_after_sealing() -> None:
    rows = RowKeys()
    rows.current.extend([key(0), None, key(1)])
    assert rows.to_list() == [key(0), None, key(1)]
    rows.seal()
    rows.current.extend([key(2), None])
    assert len(rows) == 5
    assert rows.to_list()[1] is None
    assert rows.to_list()[3] == key(2)
    assert rows.to_list()[-1] is None
    assert rows.to_list() == [key(0), None, key(1), key(2), None]
    assert rows.array().to_pylist() == rows.to_list()
    assert rows.array().type == pa.string()


def test_row_keys_read_from_another_thread_while_sealing_never_lose_or_repeat_a_row() -> None:
    """A reader sees a prefix of the rows in order, whatever moment it reads at."""
    rows = RowKeys()
    expected = [key(i) for i in range(2000)]
    stop = threading.Event()
    seen: list[list[str | None]] = []

    def read() -> None:
        while not stop.is_set():
            seen.append(rows.to_list())

    reader = threading.Thread(target=read)
    reader.start()
    for start in range(0, 2000, 100):
        for k in expected[start : start + 100]:
            rows.current.append(k)
        rows.seal()
    stop.set()
    reader.join()
    assert rows.to_list() == expected
    assert seen
    assert all(view == expected[: len(view)] for view in seen)


# -- counting and checking keys in bulk ------------------------------------------------------
def test_count_unique_with_and_without_positions_agree() -> None:
    keys = pa.array([key(0), key(1), key(0), None, key(2), key(2), key(3)])
    # stored: key(1) at 0, key(0) at 1; key(2) and key(3) have no stored result
    positions = pa.array([1, 0, 1, None, None, None, None], pa.int32())
    assert count_unique(keys) == count_unique(keys, positions) == 4


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (pa.array([key(i) for i in range(1000)]), True),
        (pa.array([key(i) for i in range(1000)] + [key(7)]), False),
        (pa.chunked_array([[key(1), key(2)], [key(3)], [key(2)]]), False),
        (pa.chunked_array([[key(1), key(2)], [key(3)]]), True),
        (pa.array(["k1", "k2", "k1"]), False),  # not row keys: Arrow's exact count
        (pa.array(["k1", "k2"]), True),
        (pa.array([key(1)] * 2).slice(1), True),
    ],
)
def test_all_distinct(keys: pa.Array, expected: bool) -> None:
    assert all_distinct(keys) is expected


def test_newest_per_key_keeps_the_newest_of_a_key_stored_twice() -> None:
    """The distinct check decides whether rows are dropped: a repeat must be caught."""
    rows = [(key(1), 1.0, "failed"), (key(2), 1.0, "succeeded"), (key(1), 2.0, "succeeded")]
    table = pa.table(
        {"key": [r[0] for r in rows], "finished_at": [r[1] for r in rows], "status": [r[2] for r in rows]}
    )
    latest = newest_per_key(table)
    assert sorted(zip(latest["key"].to_pylist(), latest["status"].to_pylist(), strict=True)) == sorted(
        [(key(1), "succeeded"), (key(2), "succeeded")]
    )


# -- planning across chunks ------------------------------------------------------------------
def payload(i: int, size: int = 0) -> bytes:
    return orjson.dumps({"i": i, "pad": "x" * size}, option=orjson.OPT_SORT_KEYS)


def test_planning_dedupes_across_chunks_and_keeps_positions() -> None:
    """A row repeated in a later chunk is planned once; positions count across chunks."""
    scope = scope_of("respell", SPELL)
    chunk_rows: list[list[bytes | None]] = [
        [payload(0), payload(1), None],
        [payload(1), payload(2, 5000), payload(0)],
        [payload(3), payload(2, 5000), payload(3)],
    ]
    chunks, start = [], 0
    for rows in chunk_rows:
        errors = {start + i: "bad" for i, p in enumerate(rows) if p is None}
        chunks.append(EncodedChunk(start=start, payloads=rows, errors=errors))
        start += len(rows)
    state = PlanState()
    batches = list(
        plan_batches(
            chunks,
            keys_of=partial(row_keys, scope),
            is_done=lambda k: False,
            max_rows=100,
            max_bytes=1000,
            state=state,
        )
    )
    sent = [k for b in batches for k in b.keys]
    assert sent == [row_key(scope, payload(i)) for i in (0, 1, 3)]
    assert len(state.planned) == 3
    keys = state.key_list()
    assert len(keys) == state.rows == 9
    assert keys[2] is None
    assert keys[4] is None
    assert keys[7] is None
    assert "request limit" in state.errors[4]
    assert "request limit" in state.errors[7]
    assert keys[3] == keys[1]
    assert keys[5] == keys[0]
    assert keys[8] == keys[6]
    assert state.key_array().to_pylist() == keys


# -- the join takes handed-over results apart --------------------------------------------------
def stored_results() -> pa.Table:
    return pa.table(
        {
            "key": [key(1), key(0)],
            "status": ["succeeded", "failed"],
            "error": [None, "boom"],
            "run_id": ["r1", "r0"],
            "o:summary": ["one", None],
        }
    )


def test_a_handed_over_table_joins_as_the_table_would_and_is_let_go() -> None:
    df = pd.DataFrame({"q": [0, 1, 2]})
    keys = [key(0), key(1), None]
    plain, plain_status = join_results(df, keys, {2: "bad cell"}, stored_results())
    held = Handover(stored_results())
    handed, handed_status = join_results(df, keys, {2: "bad cell"}, held)
    pd.testing.assert_frame_equal(plain, handed)
    assert list(plain_status) == list(handed_status) == ["failed", "succeeded", "skipped"]
    with pytest.raises(RuntimeError, match="joined already"):
        held.table  # noqa: B018


def test_release_returns_and_can_be_asked_often() -> None:
    """Giving memory back is safe at any moment (no error, nothing freed that is used)."""
    table = pa.table({"x": list(range(100_000))})
    for rows in (10, RELEASE_FROM_ROWS):
        release(rows)
        release_if_grown(rows, step=0)
        release_if_grown(rows)
    assert table["x"][99_999].as_py() == 99_999


@pytest.mark.parametrize("chunks", [1, 3, 100])
def test_the_join_reads_results_in_any_number_of_chunks(chunks: int) -> None:
    """One chunk per stored part (many), a merged part's row groups (few): the same frame."""
    rows = 300
    table = pa.table(
        {
            "key": [key(i) for i in range(rows)],
            "status": ["succeeded"] * rows,
            "error": pa.nulls(rows, pa.string()),
            "run_id": [f"r{i}" for i in range(rows)],
            "o:n": list(range(rows)),
        }
    )
    step = -(-rows // chunks)
    split = pa.Table.from_batches(table.to_batches(max_chunksize=step))
    assert split["key"].num_chunks == chunks
    df = pd.DataFrame({"q": range(rows)})
    keys = [key(rows - 1 - i) for i in range(rows)]  # reversed: every row is looked up
    frame, status = join_results(df, keys, {}, Handover(split))
    assert frame["n"].tolist() == list(range(rows - 1, -1, -1))
    assert frame["bulk_run_id"].tolist() == [f"r{rows - 1 - i}" for i in range(rows)]
    assert set(status) == {"succeeded"}
