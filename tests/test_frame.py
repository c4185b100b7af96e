"""The accessor and frame_batch.run on the pandas side: indexes, columns, naming, purity."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import KEY, SPELL, topics

import frame_batch
from frame_batch import Respell, RetryPolicy
from frame_batch.testing import RespellEmulator

Runner = Callable[..., frame_batch.RunResult]


def nested(inputs: dict[str, object]) -> dict[str, object]:
    return {"company": {"name": inputs["topic"], "hq": {"city": "Oslo"}}, "tags": ["a", "b"], "topic": "out"}


def test_accessor_returns_a_new_frame_and_leaves_the_callers_untouched(tmp_path: Path) -> None:
    """df.bulk.run gives a new frame (same index and columns first); df is unchanged."""
    emu = RespellEmulator()
    df = topics(6)
    before = df.copy(deep=True)
    out = df.bulk.run(
        SPELL,
        provider=Respell(api_key=KEY),
        transport=emu.transport(),
        cache=tmp_path,
        progress=False,
        retry=RetryPolicy.testing(),
    )
    pd.testing.assert_frame_equal(df, before)
    assert out is not df
    assert list(out.columns[:2]) == ["topic", "n"]
    assert list(out.columns[-3:]) == ["bulk_status", "bulk_error", "bulk_run_id"]
    assert {"summary", "length"} <= set(out.columns)


def test_accessor_holds_no_state() -> None:
    """The accessor is a stateless shell: nothing but the frame, no instance dict."""
    df = topics(1)
    accessor = df.bulk
    assert not hasattr(accessor, "__dict__")
    assert type(accessor).__slots__ == ("_df",)


@pytest.mark.parametrize(
    "index",
    [
        pd.Index(["a", "a", "b", "c"], name="dup"),
        pd.MultiIndex.from_tuples([(1, "x"), (1, "y"), (2, "x"), (2, "y")], names=["i", "j"]),
        pd.date_range("2024-01-01", periods=4, tz="UTC"),
        pd.Index([10, 5, 10, 1]),
    ],
)
def test_any_index_is_kept(run_with: Runner, index: pd.Index) -> None:
    """Non-unique, MultiIndex, datetime and shuffled int indexes come back as they went in."""
    df = topics(4)
    df.index = index
    out = run_with(df, RespellEmulator(spells={SPELL: lambda x: {"echo": x["topic"]}})).frame
    assert out.index.equals(df.index)
    assert (out["echo"].to_numpy() == df["topic"].to_numpy()).all()


def test_nested_outputs_flatten_and_collisions_are_suffixed(run_with: Runner) -> None:
    """Nested maps become dotted columns; an output named like an input gets '_out'."""
    df = topics(3)
    out = run_with(df, RespellEmulator(spells={SPELL: nested})).frame
    assert {"company.name", "company.hq.city", "tags", "topic_out"} <= set(out.columns)
    assert (out["topic"] == df["topic"]).all()  # the input column was not overwritten
    assert (out["topic_out"] == "out").all()
    assert out["tags"].iloc[0] == ["a", "b"]


def test_identical_rows_are_sent_once_and_fanned_out(run_with: Runner) -> None:
    """Ten copies of two rows: two charges, ten filled rows."""
    emu = RespellEmulator()
    df = pd.concat([topics(2)] * 5, ignore_index=True)
    result = run_with(df, emu)
    assert sum(emu.charges().values()) == 2
    assert result.frame["bulk_status"].eq("succeeded").all()
    assert result.frame["summary"].nunique() == 2
    assert result.summary.unique_inputs == 2
    assert result.summary.submitted == 2


def test_inputs_mapping_renames_and_selects_columns(run_with: Runner) -> None:
    """inputs={'search_topic': 'topic'} sends only that column under the spell's name."""
    emu = RespellEmulator()
    run_with(topics(2), emu, inputs={"search_topic": "topic"})
    assert set(emu.charges()) == {'{"search_topic":"topic 0"}', '{"search_topic":"topic 1"}'}


def test_missing_input_column_fails_up_front_listing_columns(run_with: Runner) -> None:
    """A mapping to a missing column raises ColumnError naming the available columns; nothing sent."""
    emu = RespellEmulator()
    with pytest.raises(frame_batch.errors.ColumnError, match="columns are: 'topic', 'n'"):
        run_with(topics(2), emu, inputs={"search_topic": "topicz"})
    assert sum(emu.requests().values()) == 0


def test_duplicate_column_names_fail_up_front(run_with: Runner) -> None:
    """Duplicate column names raise before anything is sent."""
    emu = RespellEmulator()
    df = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(frame_batch.errors.ColumnError):
        run_with(df, emu)
    assert sum(emu.requests().values()) == 0


def test_bad_options_are_config_errors(run_with: Runner) -> None:
    """Unknown provider, zero batch size, bad policy: ConfigError with the valid choices."""
    emu = RespellEmulator()
    with pytest.raises(frame_batch.errors.ConfigError, match="choose one of: parallel, respell, vectorshift"):
        frame_batch.run(topics(1), SPELL, provider="respel", api_key=KEY)
    with pytest.raises(frame_batch.errors.ConfigError, match="batch_size"):
        run_with(topics(1), emu, batch_size=0)
    with pytest.raises(frame_batch.errors.ConfigError, match="on_ambiguous"):
        run_with(topics(1), emu, on_ambiguous="maybe")
    with pytest.raises(frame_batch.errors.InputError, match="DataFrame"):
        frame_batch.run([1, 2], SPELL, provider="respell", api_key=KEY)  # type: ignore[arg-type]


def test_plan_is_a_dry_run(tmp_path: Path, run_with: Runner) -> None:
    """plan() counts cached / to submit / batches and sends nothing, even without a key."""
    emu = RespellEmulator()
    df = topics(25)
    report = df.bulk.plan(SPELL, provider="respell", cache=tmp_path / "cache", batch_size=10)
    assert (report.to_submit, report.batches, report.cached) == (25, 3, 0)
    run_with(df.iloc[:12], emu, batch_size=10)
    report = df.bulk.plan(SPELL, provider="respell", cache=tmp_path / "cache", batch_size=10)
    assert (report.cached, report.to_submit, report.batches) == (12, 13, 2)
    assert "12 cached" in str(report)
    assert emu.create_requests == 2


def test_progress_callback_and_summary(run_with: Runner) -> None:
    """A progress callable gets growing snapshots ending at total == done."""
    seen: list[frame_batch.Progress] = []
    result = run_with(topics(30), RespellEmulator(failure_rate=0.2), batch_size=10, progress=seen.append)
    assert seen
    assert seen[-1].done == seen[-1].total == 30
    assert seen[-1].failed == result.summary.failed > 0
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    out, summary = result
    assert summary.succeeded + summary.failed == 30
    assert len(out) == 30


def test_progress_false_is_silent(run_with: Runner, capsys: pytest.CaptureFixture[str]) -> None:
    """progress=False prints nothing at all."""
    run_with(topics(5), RespellEmulator(), progress=False)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


def test_tqdm_progress_shows_a_bar(run_with: Runner, capsys: pytest.CaptureFixture[str]) -> None:
    """progress=True draws a tqdm bar and prints the summary line."""
    run_with(topics(5), RespellEmulator(), progress=True)
    err = capsys.readouterr().err
    assert "respell" in err
    assert "5/5" in err
    assert "5 succeeded" in err


def test_no_cache_runs_and_leaves_nothing(run_with: Runner, tmp_path: Path) -> None:
    """cache=None works with a throwaway store and says nothing resumes."""
    result = run_with(topics(3), RespellEmulator(), cache=None)
    assert result.frame["bulk_status"].eq("succeeded").all()
    assert result.summary.cache_dir is None


def test_numpy_values_in_outputs_are_typed_columns(run_with: Runner) -> None:
    """Numeric outputs become numeric columns (not object)."""
    out = run_with(topics(4), RespellEmulator(spells={SPELL: lambda x: {"score": 0.5, "k": 3}})).frame
    assert out["score"].dtype == np.float64
    assert out["k"].dtype == np.int64


def test_run_inside_a_running_event_loop(tmp_path: Path) -> None:
    """Called from code already inside an event loop (as in Jupyter), run() still completes."""
    import asyncio

    emu = RespellEmulator()

    async def notebook_cell() -> pd.DataFrame:
        asyncio.get_running_loop()  # we are inside a loop, like IPython's
        return frame_batch.run(
            topics(5),
            SPELL,
            provider=Respell(api_key=KEY),
            transport=emu.transport(),
            cache=tmp_path,
            progress=False,
            poll_interval=0.01,
        ).frame

    out = asyncio.run(notebook_cell())
    assert out["bulk_status"].eq("succeeded").all()
