"""Crash and resume over a real socket: SIGKILL a run at several moments, then finish it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pandas as pd
import pytest
from conftest import SPELL

import frame_batch
from frame_batch import Respell, RetryPolicy
from frame_batch.testing import RespellEmulator

pytestmark = pytest.mark.e2e
CHILD = Path(__file__).with_name("run_child.py")
ROWS = 60
OPTIONS = {"batch_size": 6, "max_in_flight": 3, "poll_interval": 0.05}


def start_child(url: str, cache: Path, options: dict[str, object] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [
        sys.executable,
        str(CHILD),
        url,
        str(cache),
        str(ROWS),
        json.dumps({**OPTIONS, **(options or {})}),
    ]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(condition: Callable[[], bool], child: subprocess.Popen[bytes], limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
        assert time.monotonic() < deadline, "the child never reached the moment to kill it"
        time.sleep(0.005)


def kill(child: subprocess.Popen[bytes]) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL


def parts(cache: Path) -> int:
    return len(list((cache / "results").rglob("part-*.parquet")))


def frame() -> pd.DataFrame:
    return pd.DataFrame({"topic": [f"topic {i}" for i in range(ROWS)], "n": list(range(ROWS))})


def uninterrupted(tmp_path: Path) -> pd.DataFrame:
    emu = RespellEmulator(failure_rate=0.1)  # failures depend on the input only: same rows fail
    return frame_batch.run(
        frame(),
        SPELL,
        provider=Respell(api_key="k"),
        transport=emu.transport(),
        cache=tmp_path / "clean",
        progress=False,
        retry=RetryPolicy.testing(),
        **OPTIONS,
    ).frame


def test_sigkill_at_three_moments_then_resume(tmp_path: Path) -> None:
    """Killed after a create, mid-collection and inside a create's answer: nothing lost or re-paid."""
    emu = RespellEmulator(latency=0.4, jitter=0.4, failure_rate=0.1, out_of_order=True)
    cache = tmp_path / "cache"
    with emu.serve() as server:
        # 1. right after the first batch was created (answer received or not)
        child = start_child(server.url, cache)
        wait_for(lambda: emu.create_requests >= 1, child)
        kill(child)
        # 2. once some batches have been stored (a part holds every batch collected in the
        # last second or so): others are collected and waiting to be stored with the next
        child = start_child(server.url, cache)
        wait_for(lambda: parts(cache) >= 1, child)
        kill(child)
        # 3. while the server holds a create's answer: the journal says 'submitting'
        emu.create_delay = 5.0
        before = emu.create_requests
        child = start_child(server.url, cache)
        wait_for(lambda: emu.create_requests > before, child)
        kill(child)
        emu.create_delay = 0.0
        # 4. run to completion
        child = start_child(server.url, cache)
        stdout, stderr = child.communicate(timeout=60)
        assert child.returncode == 0, stderr.decode()
    reported = set(json.loads(stdout.decode().strip().splitlines()[-1])["possibly_duplicated"])

    out = pd.read_parquet(tmp_path / "out.parquet")
    df = frame()
    charges = emu.charges()
    per_row = [charges[orjson.dumps(r, option=orjson.OPT_SORT_KEYS).decode()] for r in df.to_dict("records")]
    assert all(n >= 1 for n in per_row), "every row was charged (it has a result)"
    twice = {i for i, n in enumerate(per_row) if n > 1}
    assert twice <= reported, f"rows paid twice without being reported: {sorted(twice - reported)}"
    assert reported, "the kill inside a create's answer must be reported as possibly paid twice"
    assert len(reported) <= 2 * OPTIONS["batch_size"] * OPTIONS["max_in_flight"]
    assert out["bulk_status"].isin(["succeeded", "failed"]).all()
    expected = uninterrupted(tmp_path)
    assert_same_values(out.drop(columns=["bulk_run_id"]), expected.drop(columns=["bulk_run_id"]))


def assert_same_values(left: pd.DataFrame, right: pd.DataFrame) -> None:
    """Equal cell by cell, with every kind of missing value (None, NaN) taken as one."""

    def plain(df: pd.DataFrame) -> pd.DataFrame:
        return df.astype(object).where(df.notna(), None)

    pd.testing.assert_frame_equal(plain(left), plain(right))


def test_ctrl_c_leaves_the_run_resumable_without_cancelling(tmp_path: Path) -> None:
    """SIGINT stops the run, cancels nothing remotely, and a rerun finishes it paying nothing twice."""
    emu = RespellEmulator(latency=0.5)
    cache = tmp_path / "cache"
    with emu.serve() as server:
        child = start_child(server.url, cache)
        wait_for(lambda: emu.create_requests >= 2, child)
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=30)
        assert child.returncode != 0
        assert b"run the same call again to resume" in stderr
        assert emu.requests()["cancelBulk"] == 0
        creates = emu.create_requests
        child = start_child(server.url, cache)
        child.communicate(timeout=60)
        assert child.returncode == 0
    assert not emu.duplicates()
    assert creates < ROWS // OPTIONS["batch_size"]  # it was stopped part way
    assert emu.create_requests == ROWS // OPTIONS["batch_size"]  # each batch created once


def test_ctrl_c_with_cancel_on_interrupt_cancels_remote_batches(tmp_path: Path) -> None:
    """With cancel_on_interrupt=True, SIGINT asks the vendor to stop the batches in flight."""
    emu = RespellEmulator(latency=30.0)
    cache = tmp_path / "cache"
    with emu.serve() as server:
        child = start_child(server.url, cache, {"cancel_on_interrupt": True})
        wait_for(lambda: emu.create_requests >= 3, child)
        time.sleep(0.2)  # let the journal record the third answer
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=30)
        assert emu.requests()["cancelBulk"] >= 1
