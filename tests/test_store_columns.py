"""Result parts hold outputs as columns; old parts (one JSON text per row) still resume;
many parts are merged into one when a run ends."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import topics

import frame_batch
from frame_batch import VectorShift
from frame_batch._join import join_results
from frame_batch._types import RowResult
from frame_batch.store import Store
from frame_batch.store.columns import output_columns
from frame_batch.store.parts import COMPACT_AFTER
from frame_batch.testing import RespellEmulator, VectorShiftEmulator

ODD: dict[str, Any] = {
    "text": "x",
    "count": 3,
    "ratio": 0.5,
    "flag": True,
    "tags": ["a", "b"],
    "empty": {},
    "nested": {"city": "Oslo", "deep": {"n": 1}},
    "big": 2**62,
    "nothing": None,
}


def _joined(store: Store, keys: list[str | None]) -> pd.DataFrame:
    frame, _ = join_results(pd.DataFrame({"q": range(len(keys))}), keys, {}, store.latest("s"))
    return frame


def test_every_json_value_survives_a_part(tmp_path: Path) -> None:
    """Strings, ints, floats, booleans, lists, empty maps, nested maps, large ints and nulls
    come back as the vendor sent them (nested maps flattened with a dot)."""
    store = Store.open(tmp_path)
    store.parts.write("s", "b1", [RowResult("k1", "succeeded", outputs=ODD), RowResult("k2", "failed")])
    row = _joined(store, ["k1", "k2"]).iloc[0]
    assert (row["text"], row["count"], row["ratio"], row["flag"]) == ("x", 3, 0.5, True)
    assert row["tags"] == ["a", "b"]
    assert row["empty"] == {}
    assert (row["nested.city"], row["nested.deep.n"]) == ("Oslo", 1)
    assert row["big"] == 2**62
    assert row["nothing"] is None
    names = pq.read_schema(tmp_path / "results" / "s" / "part-b1.parquet").names
    assert {"o:text", "o:count", "j:tags", "o:big"} <= set(names)  # typed where one type fits
    store.close()


def test_an_output_typed_differently_in_two_parts_keeps_every_value(tmp_path: Path) -> None:
    """Text in one batch, numbers in another: both kept as sent; ints and floats widen."""
    store = Store.open(tmp_path)
    store.parts.write("s", "b1", [RowResult("k1", "succeeded", outputs={"v": "about 40", "n": 1})])
    store.parts.write("s", "b2", [RowResult("k2", "succeeded", outputs={"v": 3, "n": 2.5})])
    store.parts.write("s", "b3", [RowResult("k3", "succeeded", outputs={"other": True})])
    frame = _joined(store, ["k1", "k2", "k3"])
    assert frame["v"].tolist()[:2] == ["about 40", 3]
    assert frame["n"].tolist()[:2] == [1.0, 2.5]
    assert frame["other"].tolist()[2] is True
    assert pd.isna(frame["v"].iloc[2])
    assert pd.isna(frame["other"].iloc[0])
    store.close()


def _legacy_part(path: Path, rows: list[tuple[str, str, dict[str, Any]]]) -> None:
    """A part as earlier versions wrote it: the output map as JSON text in ``outputs``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "key": [k for k, _, _ in rows],
            "status": ["succeeded"] * len(rows),
            "error": pa.array([None] * len(rows), pa.string()),
            "run_id": [r for _, r, _ in rows],
            "outputs": [orjson.dumps(o).decode() for _, _, o in rows],
            "batch_id": ["old"] * len(rows),
            "finished_at": [1.0] * len(rows),
        }
    )
    pq.write_table(table, path)


def test_a_cache_written_by_an_earlier_version_resumes_without_paying_again(
    tmp_path: Path, run_with: Any
) -> None:
    """Run once, rewrite its parts in the old layout, run again: 0 creates, same outputs."""
    df = topics(12)
    first = run_with(df, RespellEmulator()).frame
    cache = tmp_path / "cache"
    store = Store.open(cache)
    latest = store.latest(next(p.name for p in (cache / "results").iterdir()))
    scope_dir = next((cache / "results").iterdir())
    store.close()
    for part in scope_dir.glob("part-*.parquet"):
        part.unlink()
    columns = (latest[c].to_pylist() for c in ("key", "run_id", "o:summary", "o:length"))
    rows = [(k, r, {"summary": s, "length": n}) for k, r, s, n in zip(*columns, strict=True)]
    _legacy_part(scope_dir / "part-old.parquet", rows)

    emu = RespellEmulator()
    again = run_with(df, emu)
    assert again.summary.create_requests == 0
    assert not emu.charges()
    pd.testing.assert_frame_equal(again.frame, first)


def test_many_parts_are_merged_when_a_run_ends_and_a_rerun_reads_the_one(
    tmp_path: Path, run_with: Any
) -> None:
    """More than COMPACT_AFTER batches leave one merged part; the rerun pays nothing and
    gives the same frame; old parts left by a crash mid-merge read as the same results."""
    df = topics(COMPACT_AFTER + 8)
    # A run stores the few rows it collects as one part: COMPACT_AFTER - 1 runs of one row
    # each, then the whole frame, whose end finds COMPACT_AFTER parts or more and merges them.
    for row in range(COMPACT_AFTER - 1):
        run_with(df.iloc[row : row + 1], RespellEmulator())
    first = run_with(df, RespellEmulator(), batch_size=1)
    scope_dir = next((tmp_path / "cache" / "results").iterdir())
    parts = list(scope_dir.glob("part-*.parquet"))
    assert [p.name.startswith("part-merged-") for p in parts] == [True]

    emu = RespellEmulator()
    again = run_with(df, emu)
    assert again.summary.create_requests == 0
    assert not emu.charges()
    pd.testing.assert_frame_equal(again.frame, first.frame)

    # A crash between publishing the merged part and removing the old ones leaves both.
    shutil.copy(parts[0], scope_dir / "part-left-over.parquet")
    store = Store.open(tmp_path / "cache")
    latest = store.latest(scope_dir.name)
    assert latest.num_rows == len(df)
    assert len(latest["key"].unique()) == len(df)
    store.close()


def test_a_run_under_the_merge_threshold_keeps_its_parts(tmp_path: Path, run_with: Any) -> None:
    df = topics(3)
    for row in range(3):  # three runs, each storing one new row in a part
        result = run_with(df.iloc[: row + 1], RespellEmulator(), batch_size=1)
    scope_dir = next((tmp_path / "cache" / "results").iterdir())
    assert len(list(scope_dir.glob("part-*.parquet"))) == 3
    assert (result.frame["bulk_status"] == "succeeded").all()


def test_a_batch_stored_but_not_journaled_keeps_its_results(tmp_path: Path) -> None:
    """A crash between writing a batch's part and journaling it leaves the batch open. The
    rerun closes it from the part: for VectorShift, whose answer came with the create and
    cannot be polled, the paid rows keep their outputs (not stored over as lost)."""
    df = pd.DataFrame({"q": [f"row {i}" for i in range(3)]})

    def run(emu: VectorShiftEmulator) -> Any:
        provider = VectorShift(base_url="http://vs.test/v1", api_key="k")
        return frame_batch.run(
            df, "p1", provider=provider, cache=tmp_path / "c", transport=emu.transport(), progress=False
        )

    first = run(VectorShiftEmulator())
    with sqlite3.connect(tmp_path / "c" / "journal.sqlite3") as db:  # the state a crash leaves
        db.execute("UPDATE batches SET state = 'submitted' WHERE state = 'collected'")
    emu = VectorShiftEmulator()
    again = run(emu)
    assert not emu.charges()
    assert (again.frame["bulk_status"] == "succeeded").all()
    pd.testing.assert_frame_equal(again.frame, first.frame)


@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        # flat maps of plain types: one Arrow call; None and {} rows are nulls
        (
            [{"a": 1, "b": "x"}, None, {}],
            {"o:a": (pa.int64(), [1, None, None]), "o:b": (pa.string(), ["x", None, None])},
        ),
        # first-seen order; ints and floats in one output widen to float
        (
            [{"b": 1}, {"a": 2.5, "b": 2.5}],
            {"o:b": (pa.float64(), [1.0, 2.5]), "o:a": (pa.float64(), [None, 2.5])},
        ),
        # bools among numbers keep JSON's distinction
        ([{"a": True}, {"a": 1}], {"j:a": (pa.string(), ["true", "1"])}),
        # nested maps are flattened; a None where a map was is its own output
        (
            [{"a": {"b": 1}}, {"a": None}],
            {"o:a.b": (pa.int64(), [1, None]), "o:a": (pa.null(), [None, None])},
        ),
        ([{"a": [1]}, {"a": None}], {"j:a": (pa.string(), ["[1]", None])}),
        (["x", "y"], {"o:output": (pa.string(), ["x", "y"])}),
        ([None, None], {}),
    ],
)
def test_output_columns_lay_out_each_kind_of_output(outputs: list[Any], expected: dict[str, Any]) -> None:
    columns = output_columns(outputs)
    assert list(columns) == list(expected)
    assert {name: (array.type, array.to_pylist()) for name, array in columns.items()} == expected
