"""Background jobs (``df.bulk.submit``), attach, cost guards and preview, against the emulators."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import KEY, SPELL, topics

import frame_batch
from frame_batch import RetryPolicy, errors
from frame_batch.testing import ParallelEmulator, RespellEmulator

HERE = Path(__file__).parent


def gated(gate: threading.Event, open_rows: int) -> Callable[[dict[str, object]], dict[str, object]]:
    """A spell that answers the first ``open_rows`` rows at once and holds the rest at the gate."""

    def spell(inputs: dict[str, object]) -> dict[str, object]:
        if int(str(inputs["n"])) >= open_rows:
            gate.wait(30)
        return {"answer": f"about {inputs['topic']}"}

    return spell


def options(tmp_path: Path, emu: RespellEmulator | ParallelEmulator, **more: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "provider": "respell",
        "api_key": KEY,
        "transport": emu.transport(),
        "cache": tmp_path / "cache",
        "progress": False,
        "retry": RetryPolicy.testing(),
        "poll_interval": 0.01,
    }
    return base | more


def served(tmp_path: Path, url: str, **more: Any) -> dict[str, Any]:
    """``options`` for an emulator served on loopback: a gated create then holds the server's
    thread, not the run's (in process, the transport would run the gate in the job's loop)."""
    dropped = ("transport", "provider", "api_key")  # the provider object carries the URL and key
    base = {k: v for k, v in options(tmp_path, RespellEmulator()).items() if k not in dropped}
    return base | {"provider": frame_batch.Respell(base_url=url, api_key=KEY)} | more


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(2000):  # bounded: about 20 s
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def test_submit_inside_a_running_loop_returns_at_once_and_gives_partial_rows(tmp_path: Path) -> None:
    """In a running loop (as in Jupyter): submit returns before the work is done, the loop keeps
    serving other tasks, result() gives partial rows mid-run and the full frame at the end."""
    gate = threading.Event()
    emu = RespellEmulator(spells={SPELL: gated(gate, open_rows=10)})
    df = topics(40)

    async def notebook(url: str) -> None:
        job = df.bulk.submit(SPELL, **served(tmp_path, url, batch_size=10, max_in_flight=1))
        assert not job.done  # the gate holds rows 10+: returning at all proves submit did not wait
        ticks = 0

        async def other_cell_work() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        ticker = asyncio.create_task(other_cell_work())
        await until(lambda: job.status().done >= 10, "first batch done")
        mid = job.result()
        assert mid["bulk_status"].value_counts().to_dict() == {"succeeded": 10, "pending": 30}
        assert mid.loc[:9, "answer"].tolist() == [f"about topic {i}" for i in range(10)]
        assert not job.done
        assert ticks > 0
        seen = ticks
        gate.set()
        summary = await job
        assert ticks > seen
        ticker.cancel()
        assert summary.succeeded == 40
        final = job.result()
        assert final["bulk_status"].eq("succeeded").all()
        assert final["answer"].tolist() == [f"about topic {i}" for i in range(40)]
        assert final[["topic", "n"]].equals(df)

    with emu.serve() as server:
        asyncio.run(notebook(server.url))
    assert not emu.duplicates()


def test_the_same_submit_twice_is_charged_once(tmp_path: Path) -> None:
    """A double-clicked cell: the second submit returns the running job; after it ended, the
    same call resumes from the store with zero create requests."""
    gate = threading.Event()
    emu = RespellEmulator(spells={SPELL: gated(gate, open_rows=5)})
    df = topics(20)
    opts = options(tmp_path, emu, batch_size=5)
    first = df.bulk.submit(SPELL, **opts)
    second = topics(20).bulk.submit(SPELL, **opts)  # an equal frame, built again by the cell
    assert second is first
    gate.set()
    first.wait(timeout=30)
    assert sum(emu.charges().values()) == 20
    assert not emu.duplicates()
    creates = emu.create_requests
    again = df.bulk.submit(SPELL, **opts)
    assert again is not first
    summary = again.wait(timeout=30)
    assert (summary.create_requests, emu.create_requests, summary.cached) == (0, creates, 20)
    assert sum(emu.charges().values()) == 20
    assert not emu.duplicates()


def test_a_different_job_on_a_busy_cache_is_refused_clearly(tmp_path: Path) -> None:
    gate = threading.Event()
    emu = RespellEmulator(spells={SPELL: gated(gate, open_rows=0)})
    job = topics(5).bulk.submit(SPELL, **options(tmp_path, emu))
    try:
        with pytest.raises(errors.ConfigError, match="already running on the cache"):
            topics(6).bulk.submit(SPELL, **options(tmp_path, emu))
    finally:
        gate.set()
        job.wait(timeout=30)


def test_bad_arguments_fail_at_submit(tmp_path: Path) -> None:
    emu = RespellEmulator()
    with pytest.raises(errors.ColumnError, match="column 'nope' not found"):
        topics(3).bulk.submit(SPELL, **options(tmp_path, emu, inputs={"topic": "nope"}))
    with pytest.raises(errors.ConfigError, match="provider= is required"):
        frame_batch.submit(topics(3), SPELL)


def test_cancel_stops_submitting_and_leaves_the_store_resumable(tmp_path: Path) -> None:
    gate = threading.Event()
    emu = RespellEmulator(spells={SPELL: gated(gate, open_rows=10)}, latency=0.05)
    df = topics(40)
    with emu.serve() as server:
        job = df.bulk.submit(SPELL, **served(tmp_path, server.url, batch_size=10, max_in_flight=1))
        asyncio.run(until(lambda: job.status().done >= 10, "first batch done"))
        threading.Timer(0.2, gate.set).start()  # the create held at the gate answers, then we stop
        summary = job.cancel(remote=False, timeout=30)
    assert job.status().state == "cancelled"
    assert any("cancelled by job.cancel()" in n for n in summary.notes)
    assert summary.pending > 0
    assert summary.succeeded >= 10
    charged = sum(emu.charges().values())
    assert charged < 40  # submission stopped
    rest = frame_batch.run(df, SPELL, **options(tmp_path, emu, batch_size=10))
    assert rest.frame["bulk_status"].eq("succeeded").all()
    assert sum(emu.charges().values()) == 40
    assert not emu.duplicates()


def test_a_failed_job_reraises_and_keeps_the_partial_frame(tmp_path: Path) -> None:
    """A run error (here a revoked key after the first batches) re-raises from wait(); result()
    still gives the rows stored before it."""
    emu = RespellEmulator()
    df = topics(20)
    frame_batch.run(df.head(10), SPELL, **options(tmp_path, emu))  # stored by an earlier run
    emu_refusing = RespellEmulator(api_keys={"other-key"})
    job = df.bulk.submit(SPELL, **options(tmp_path, emu_refusing))
    with pytest.raises(errors.AuthenticationError):
        job.wait(timeout=30)
    assert job.status().state == "failed"
    assert "key" in (job.status().error or "")
    assert "failed" in repr(job)
    partial = job.result()
    assert partial["bulk_status"].value_counts().to_dict() == {"succeeded": 10, "pending": 10}


def test_status_repr_and_html_show_progress_and_errors_by_kind(tmp_path: Path) -> None:
    emu = RespellEmulator(failure_rate=1.0)
    df = topics(12)
    df.loc[3, "topic"] = "<b>bold</b>"
    job = df.bulk.submit(SPELL, **options(tmp_path, emu, batch_size=4))
    summary = job.wait(timeout=30)
    status = job.status()
    assert (status.state, status.done, status.failed, status.to_run) == ("finished", 12, 12, 12)
    assert "finished: 12/12 rows done (12 failed)" in repr(job)
    html = job._repr_html_()
    assert "errors by kind" in html
    assert "12 × " in html
    assert summary.errors
    assert summary.errors[0][1] == 12
    assert "<b>bold</b>" not in summary._repr_html_()  # vendor text is escaped


def test_attach_from_a_new_kernel_resumes_a_job_whose_kernel_died(tmp_path: Path) -> None:
    """A kernel submits a job and is killed mid-run; attach(cache=...) in another process carries
    it on: in-flight batches are polled, the rest sent, nothing paid twice."""
    emu = RespellEmulator(latency=0.1)
    cache = tmp_path / "cache"
    rows = 120  # 24 batches one at a time, ~3 s: the first rows count as done once stored (~1 s)
    with emu.serve() as server:
        child = subprocess.Popen(
            [sys.executable, str(HERE / "job_child.py"), server.url, str(cache), str(rows), "10"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
        before = sum(emu.charges().values())
        assert 10 <= before < rows
        job = frame_batch.attach(cache=cache, api_key="child-key", retry=RetryPolicy.testing())
        summary = job.wait(timeout=60)
        assert summary.succeeded == rows
        assert job.result()["summary"].notna().all()
        charges = emu.charges()
        assert len(charges) == rows  # every row ran
        # A kill can land while a create is in flight: any row paid twice was reported as such.
        assert len(emu.duplicates()) <= summary.possibly_duplicated
        creates = emu.create_requests
        ended = frame_batch.attach(cache=cache, api_key="child-key")  # an ended job: shown, not run
        assert ended.wait(timeout=30).succeeded == rows
        assert emu.create_requests == creates


def test_attach_without_a_job_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="no job is recorded"):
        frame_batch.attach(cache=tmp_path / "nothing")


def test_max_rows_stops_submission_and_a_later_run_finishes_without_duplicates(tmp_path: Path) -> None:
    emu = RespellEmulator()
    df = topics(50)
    held = frame_batch.run(df, SPELL, **options(tmp_path, emu, batch_size=10, max_rows=15))
    assert sum(emu.charges().values()) == 15
    assert held.summary.pending == 35
    assert held.summary.succeeded == 15
    assert any("max_rows=15 reached: 35 rows were not sent" in n for n in held.summary.notes)
    assert held.frame["bulk_status"].tolist()[:15] == ["succeeded"] * 15
    rest = frame_batch.run(df, SPELL, **options(tmp_path, emu, batch_size=10))
    assert rest.summary.succeeded == 50
    assert rest.summary.cached == 15
    assert sum(emu.charges().values()) == 50
    assert not emu.duplicates()


def test_max_cost_stops_at_the_parallel_list_price_and_a_later_run_finishes(tmp_path: Path) -> None:
    emu = ParallelEmulator()
    df = pd.DataFrame({"company": [f"company {i}" for i in range(30)]})
    opts = options(tmp_path, emu, provider="parallel", processor="core", batch_size=10)  # $0.025 a run
    plan = df.bulk.plan("task", **opts, max_cost=0.3)
    assert (plan.to_submit, plan.held, plan.estimated_cost) == (12, 18, pytest.approx(0.3))
    held = frame_batch.run(df, "task", **opts, max_cost=0.3)
    assert emu.cost() == pytest.approx(0.3)
    assert held.summary.pending == 18
    assert held.summary.estimated_cost == pytest.approx(0.3)
    frame_batch.run(df, "task", **opts)
    assert emu.cost() == pytest.approx(0.75)
    assert not emu.duplicates()


def test_max_cost_needs_a_price_and_cost_per_row_feeds_the_history(tmp_path: Path) -> None:
    emu = RespellEmulator()
    df = topics(20)
    with pytest.raises(errors.ConfigError, match="cost_per_row="):
        frame_batch.run(df, SPELL, **options(tmp_path, emu, max_cost=5))
    assert emu.create_requests == 0
    frame_batch.run(df, SPELL, **options(tmp_path, emu, max_cost=10, cost_per_row=2))
    assert sum(emu.charges().values()) == 5
    plan = df.bulk.plan(SPELL, **options(tmp_path, emu))  # no price given: the history has one
    assert plan.to_submit == 15
    assert plan.estimated_cost == pytest.approx(30)
    assert "history" in plan.cost_basis
    assert "estimated cost 30" in str(plan)
    unknown = df.bulk.plan(SPELL, **options(tmp_path / "fresh", emu))
    assert unknown.estimated_cost is None
    assert "cost unknown" in str(unknown)


def test_preview_runs_a_few_rows_that_the_full_run_does_not_pay_again(tmp_path: Path) -> None:
    emu = RespellEmulator()
    df = topics(30)
    first = df.bulk.preview(SPELL, n=5, **options(tmp_path, emu))
    assert len(first) == 5
    assert first["bulk_status"].eq("succeeded").all()
    out = frame_batch.run(df, SPELL, **options(tmp_path, emu))
    assert out.summary.cached == 5
    assert sum(emu.charges().values()) == 30
    assert not emu.duplicates()
    with pytest.raises(ValueError, match="positive"):
        df.bulk.preview(SPELL, n=0, **options(tmp_path, emu))
