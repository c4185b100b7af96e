"""A finished frame run again reads its recorded keys instead of encoding every row
(``_manifest``): nothing is sent, and any change to the frame is noticed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from frame_batch._manifest import MIN_ROWS
from frame_batch.store.parts import COMPACT_AFTER
from frame_batch.testing import RespellEmulator

ROWS = MIN_ROWS


def frame(rows: int = ROWS) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "topic": [f"topic {i}" for i in range(rows)],
            "n": pd.array(range(rows), dtype="Int64"),
            "when": pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(range(rows), "h"),
            "kind": pd.Categorical(["a", "b"] * (rows // 2)),
        }
    )


def plans(cache: Path) -> list[Path]:
    return sorted((cache / "plans").glob("*/*.parquet"))


def test_an_unchanged_frame_is_answered_from_the_recorded_plan(tmp_path: Path, run_with: Any) -> None:
    """Rerun: 0 creates and the same frame. The rerun really joins by the recorded keys:
    with two of them swapped on disk, rows 0 and 1 swap their outputs."""
    df = frame()
    first = run_with(df, RespellEmulator(), batch_size=1000)
    (path,) = plans(tmp_path / "cache")

    emu = RespellEmulator()
    again = run_with(df, emu, batch_size=1000)
    assert again.summary.create_requests == 0
    assert not emu.charges()
    assert again.summary.cached == ROWS
    assert again.summary.unique_inputs == ROWS
    pd.testing.assert_frame_equal(again.frame, first.frame)

    table = pq.read_table(path)
    keys = table["key"].to_pylist()
    keys[0], keys[1] = keys[1], keys[0]
    pq.write_table(table.set_column(0, "key", pa.array(keys, pa.string())), path)
    swapped = run_with(df, RespellEmulator(), batch_size=1000).frame
    assert swapped["summary"].iloc[0] == first.frame["summary"].iloc[1]
    assert swapped["summary"].iloc[1] == first.frame["summary"].iloc[0]


def test_any_change_to_the_frame_is_planned_from_its_rows(tmp_path: Path, run_with: Any) -> None:
    """One edited cell sends exactly that row; a changed dtype or index is not taken for
    the recorded frame either (0 sends: its keys are stored, but they were recomputed)."""
    df = frame()
    run_with(df, RespellEmulator(), batch_size=1000)

    edited = df.copy()
    edited.loc[7, "topic"] = "something else"
    emu = RespellEmulator()
    result = run_with(edited, emu, batch_size=1000)
    assert sum(emu.charges().values()) == 1
    assert "something else" in result.frame["summary"].iloc[7]
    assert (result.frame["bulk_status"] == "succeeded").all()

    relabelled = df.set_axis(pd.RangeIndex(1, ROWS + 1))
    emu = RespellEmulator()
    out = run_with(relabelled, emu, batch_size=1000)
    assert not emu.charges()
    assert (out.frame["bulk_status"] == "succeeded").all()
    assert len(plans(tmp_path / "cache")) == 3  # each new frame's plan is recorded


def test_a_partly_run_frame_finishes_from_its_rows(tmp_path: Path, run_with: Any) -> None:
    """A plan recorded while rows were held back (max_rows) is not enough: the rest are sent."""
    df = frame()
    half = run_with(df, RespellEmulator(), batch_size=1000, max_rows=ROWS // 2)
    assert half.summary.pending == ROWS // 2
    emu = RespellEmulator()
    rest = run_with(df, emu, batch_size=1000)
    assert sum(emu.charges().values()) == ROWS // 2
    assert (rest.frame["bulk_status"] == "succeeded").all()


def test_frames_that_cannot_be_fingerprinted_safely_record_no_plan(tmp_path: Path, run_with: Any) -> None:
    """An object column of mixed values, and small frames, are always encoded."""
    mixed = frame().astype({"n": object})
    mixed.loc[3, "n"] = "three"
    run_with(mixed, RespellEmulator(), batch_size=1000)
    run_with(frame(50), RespellEmulator())
    assert plans(tmp_path / "cache") == []


def test_a_merged_store_is_joined_by_recorded_positions(tmp_path: Path, run_with: Any) -> None:
    """After a run whose parts were merged, the plan records where each row's result is in
    the merged part: the rerun reads positions, not keys (swapping two positions on disk
    swaps two rows' outputs); once the store changes, keys are looked up again."""
    df = frame()
    # A run stores what it collects in one part: COMPACT_AFTER - 1 runs of slices leave as
    # many parts, and the whole frame's run adds one for the rest and merges them all.
    step = ROWS // COMPACT_AFTER
    for start in range(0, step * (COMPACT_AFTER - 1), step):
        run_with(df.iloc[start : start + step], RespellEmulator(), batch_size=1000)
    first = run_with(df, RespellEmulator(), batch_size=1000).frame
    (path,) = plans(tmp_path / "cache")
    table = pq.read_table(path)
    assert table["row"].null_count == 0

    rows = table["row"].to_pylist()
    rows[0], rows[1] = rows[1], rows[0]
    pq.write_table(table.set_column(2, "row", pa.array(rows, pa.int32())), path)
    emu = RespellEmulator()
    swapped = run_with(df, emu, batch_size=100)
    assert not emu.charges()
    assert swapped.frame["summary"].iloc[0] == first["summary"].iloc[1]

    # Another frame's run adds a part: the recorded positions no longer apply.
    run_with(frame(4).assign(topic="another"), RespellEmulator())
    again = run_with(df, RespellEmulator(), batch_size=100)
    pd.testing.assert_frame_equal(again.frame, first)


def test_a_checkpoint_of_a_rerun_from_the_recorded_plan_has_every_row(tmp_path: Path, run_with: Any) -> None:
    """The keys of a recorded plan are read lazily; a checkpoint (the workbook's copy) still
    sees every row's key: its frame is the rerun's frame, nothing pending."""
    df = frame()
    run_with(df, RespellEmulator(), batch_size=100)
    seen: list[Any] = []
    again = run_with(df, RespellEmulator(), batch_size=100, checkpoint=seen.append)
    final = seen[-1]
    assert final.final
    pd.testing.assert_frame_equal(final.frame, again.frame)
    assert (final.frame["bulk_status"] == "succeeded").all()


def test_an_equal_frame_read_back_in_pieces_uses_the_recorded_plan(tmp_path: Path, run_with: Any) -> None:
    """The same values read back from Parquet in several row groups (other Arrow chunks, no
    null bitmaps) fingerprint alike: with two recorded keys swapped, the swap shows."""
    df = frame()
    first = run_with(df, RespellEmulator(), batch_size=1000).frame
    df.to_parquet(tmp_path / "frame.parquet", row_group_size=ROWS // 4)
    reread = pd.read_parquet(tmp_path / "frame.parquet")

    (path,) = plans(tmp_path / "cache")
    table = pq.read_table(path)
    keys = table["key"].to_pylist()
    keys[0], keys[1] = keys[1], keys[0]
    pq.write_table(table.set_column(0, "key", pa.array(keys, pa.string())), path)
    emu = RespellEmulator()
    again = run_with(reread, emu, batch_size=1000).frame
    assert not emu.charges()
    assert again["summary"].iloc[0] == first["summary"].iloc[1]
