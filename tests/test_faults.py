"""Faults on reads (429 with Retry-After, 5xx, dropped connections) and shuffled answers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from conftest import SPELL, topics

import frame_batch
from frame_batch import Respell, RetryPolicy
from frame_batch.testing import Faults, RespellEmulator

Runner = Callable[..., frame_batch.RunResult]


def echo(inputs: dict[str, object]) -> dict[str, object]:
    return {"echo": inputs["topic"], "n_plus_one": int(inputs["n"]) + 1}  # type: ignore[call-overload]


def assert_every_row_right(df: pd.DataFrame, out: pd.DataFrame) -> None:
    assert out["bulk_status"].eq("succeeded").all()
    assert (out["echo"] == df["topic"]).all()
    assert (out["n_plus_one"] == df["n"] + 1).all()


def test_random_read_faults_in_process(run_with: Runner) -> None:
    """30% of reads fail (429, 5xx, drops) and answers are shuffled: every row is still right."""
    faults = Faults(rate_429=0.1, retry_after=0.0, rate_5xx=0.1, rate_drop=0.1, on="reads", seed=7)
    emu = RespellEmulator(faults=faults, out_of_order=True, spells={SPELL: echo})
    df = topics(300)
    out = run_with(df, emu, batch_size=5).frame
    assert_every_row_right(df, out)
    assert not emu.duplicates()
    seen = emu.requests()
    assert seen["fault:429"]
    assert seen["fault:drop"]
    assert seen["fault:500"] + seen["fault:503"]


@pytest.mark.e2e
def test_read_faults_over_a_real_socket(tmp_path: Path) -> None:
    """Dropped connections and errors over a loopback socket are retried to completion."""
    faults = Faults(rate_429=0.1, retry_after=0.01, rate_5xx=0.1, rate_drop=0.15, on="reads", seed=3)
    emu = RespellEmulator(faults=faults, out_of_order=True, latency=0.05, spells={SPELL: echo})
    df = topics(80)
    with emu.serve() as server:
        result = frame_batch.run(
            df,
            SPELL,
            provider=Respell(api_key="k", base_url=server.url),
            cache=tmp_path / "c",
            progress=False,
            retry=RetryPolicy(initial=0.01, maximum=0.05),
            batch_size=8,
            poll_interval=0.02,
        )
    assert_every_row_right(df, result.frame)
    assert emu.requests()["fault:drop"] > 0
    assert not emu.duplicates()


def test_rate_limited_creates_are_retried_without_double_charge(run_with: Runner) -> None:
    """A 429 refusal of a create is retried: the server did not take the batch."""
    emu = RespellEmulator(spells={SPELL: echo})
    emu.inject("429", op="create", count=3)
    df = topics(20)
    out = run_with(df, emu, batch_size=5).frame
    assert_every_row_right(df, out)
    assert not emu.duplicates()
    assert emu.create_requests == 4


def test_persistent_outage_raises_and_leaves_the_run_resumable(run_with: Runner) -> None:
    """Reads failing beyond the retry budget raise ServerError; the rerun polls, not resends."""
    emu = RespellEmulator(spells={SPELL: echo})
    emu.inject("503", op="read", count=1000)
    df = topics(10)
    with pytest.raises(frame_batch.errors.ServerError, match="run again to resume"):
        run_with(df, emu, retry=RetryPolicy(initial=0.0, maximum=0.0, budget=50))
    creates = emu.create_requests
    assert creates == 1
    emu.clear_faults()  # the outage is over
    out = run_with(df, emu).frame
    assert_every_row_right(df, out)
    assert emu.create_requests == creates
