"""VectorShift adaptive chunks (413, 504, timeouts) and background runs, against the emulator."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

import frame_batch
from frame_batch import RetryPolicy
from frame_batch._http import ApiClient
from frame_batch._planning import BatchSizer
from frame_batch._types import Batch, BatchRef
from frame_batch.errors import ConfigError
from frame_batch.providers import VectorShift
from frame_batch.testing import VectorShiftEmulator

KEY = "vectorshift-test-key"
PIPE = "64b2f0c1e4b0a1b2c3d4e5f6"
CHILD = Path(__file__).with_name("run_child.py")


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"topic": [f"topic {i}" for i in range(n)]})


def run(df: pd.DataFrame, emu: VectorShiftEmulator, tmp_path: Path, **options: Any) -> frame_batch.RunResult:
    options.setdefault("cache", tmp_path / "cache")
    if "base_url" not in options:
        options.setdefault("transport", emu.transport())
    return frame_batch.run(
        df, PIPE, provider="vectorshift", api_key=KEY, progress=False, retry=RetryPolicy.testing(), **options
    )


def sizes(seen: list[httpx.Request]) -> list[int]:
    return [len(json.loads(r.content)["runs"]) for r in seen if r.url.path.endswith("bulk-run")]


class Recording(httpx.AsyncBaseTransport):
    """The emulator's in-process transport (which never sleeps), keeping every request."""

    def __init__(self, emu: VectorShiftEmulator, seen: list[httpx.Request]) -> None:
        self.inner = emu.transport()
        self.seen = seen

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.seen.append(request)
        return await self.inner.handle_async_request(request)


# -- the sizer ---------------------------------------------------------------------------------


def test_the_sizer_halves_on_trouble_and_grows_back_after_successes() -> None:
    sizer = BatchSizer(10, grow_after=2)
    assert sizer() == 10
    assert sizer.shrink(10) == 5
    assert sizer.shrink(10) == 5  # a second batch of the same wave changes nothing more
    sizer.succeeded(5)
    sizer.succeeded(3)  # a short last batch says nothing about the size
    assert sizer() == 5
    sizer.succeeded(5)
    assert sizer() == 10  # two full successes in a row: doubled, capped at the ceiling
    assert sizer.shrink(7, hard=True) == 3  # a 413 at 7 rows
    for _ in range(8):
        sizer.succeeded(sizer())
    assert sizer() == 6  # grows back, but never to the refused size again
    assert sizer.shrink(1) == 1


# -- 413 -----------------------------------------------------------------------------------------


def test_a_413_splits_the_batch_and_pays_nothing_twice(tmp_path: Path) -> None:
    """Too many runs per call: halves are sent (nothing ran), later batches stay small."""
    emu = VectorShiftEmulator(max_bulk_rows=3)
    answers: list[tuple[int, int]] = []  # (runs sent, HTTP status)

    def handle(request: httpx.Request) -> httpx.Response:
        response = emu.handler(request)
        answers.append((len(json.loads(request.read())["runs"]), response.status_code))
        return response

    result = run(frame(30), emu, tmp_path, transport=httpx.MockTransport(handle), max_in_flight=1)
    assert (result.frame["bulk_status"] == "succeeded").all()
    assert (result.frame["output"] == "Processed: " + result.frame["topic"]).all()
    assert emu.duplicates() == {}
    assert result.summary.possibly_duplicated == 0
    assert answers[:3] == [(10, 413), (5, 413), (2, 200)]  # refused, refused, then fits
    refused = [size for size, status in answers if status == 413]
    assert refused == sorted(set(refused), reverse=True)  # never asks for a refused size again
    assert sum(size for size, status in answers if status == 200) == 30  # every row ran once
    assert any("too large or too slow" in note for note in result.summary.notes)


def test_a_single_row_still_too_large_fails_alone(tmp_path: Path) -> None:
    """A 413 for one row fails that row with the vendor's message; the run goes on."""
    emu = VectorShiftEmulator()

    def refuse_big(request: httpx.Request) -> httpx.Response:
        request.read()
        if b"huge" in request.content:
            return httpx.Response(413, json={"status": "failed", "error": "Payload too large"})
        return emu.handler(request)

    df = pd.DataFrame({"topic": ["small", "huge " * 10, "fine"]})
    result = run(df, emu, tmp_path, transport=httpx.MockTransport(refuse_big))
    assert result.frame["bulk_status"].tolist() == ["succeeded", "failed", "succeeded"]
    assert "Payload too large" in result.frame.loc[1, "bulk_error"]
    assert "alone is too large" in result.frame.loc[1, "bulk_error"]
    assert emu.duplicates() == {}


# -- 504 and timeouts ----------------------------------------------------------------------------


def test_a_504_shrinks_the_chunks_and_reports_the_resent_rows(tmp_path: Path) -> None:
    """Calls too slow for the gateway: smaller calls follow; resent rows are reported."""
    emu = VectorShiftEmulator(latency=1.0, bulk_timeout=4.5)  # 5 rows or more time out
    seen: list[httpx.Request] = []
    result = run(frame(20), emu, tmp_path, transport=Recording(emu, seen), max_in_flight=1)
    assert (result.frame["bulk_status"] == "succeeded").all()
    assert sizes(seen)[:3] == [10, 5, 2]
    assert max(sizes(seen)[3:]) <= 4  # grown back from 2 to 4, not to a size that times out
    twice = {k for k, n in emu.charges().items() if n > 1}
    assert twice == set()  # this gateway ran nothing; the run could not know that
    assert result.summary.possibly_duplicated == 10  # the first call's rows, sent again
    assert emu.duplicates() == {}


@pytest.mark.e2e
def test_a_client_timeout_shrinks_the_chunks_over_a_socket(tmp_path: Path) -> None:
    """A bulk call longer than ``timeout=``: smaller calls follow; paid-twice rows are flagged."""
    emu = VectorShiftEmulator(latency=0.1)  # 10 rows take 1 s, 2 rows 0.2 s
    with emu.serve() as server:
        result = run(
            frame(12), emu, tmp_path, base_url=server.url + "/v1", request_timeout=0.45, max_in_flight=1
        )
    assert (result.frame["bulk_status"] == "succeeded").all()
    twice = {json.loads(k)["topic"] for k, n in emu.charges().items() if n > 1}
    flagged = set(result.frame.loc[result.possibly_duplicated, "topic"])
    assert twice <= flagged  # nothing paid twice that the run did not report
    assert twice  # the cut calls kept running on the server
    assert len(emu.charges()) == 12


# -- background runs ----------------------------------------------------------------------------


def test_background_runs_wait_out_the_result_lag(tmp_path: Path) -> None:
    """mode="background": one run per row, polled until its result shows up after completion."""
    emu = VectorShiftEmulator(latency=0.05, result_lag=0.2, lagging_result="empty")
    result = run(frame(6), emu, tmp_path, mode="background", poll_interval=0.02)
    out = result.frame
    assert (out["bulk_status"] == "succeeded").all()
    assert (out["output"] == "Processed: " + out["topic"]).all()  # not the empty early result
    assert emu.requests()["run"] == 6
    assert emu.requests()["run_status"] > 6
    assert emu.duplicates() == {}
    again = run(frame(6), emu, tmp_path, mode="background", poll_interval=0.02)
    assert again.summary.create_requests == 0


def test_background_states_are_mapped_from_either_vocabulary(tmp_path: Path) -> None:
    """The guide's running/succeeded and the SDK's in_progress/completed both work; a failure
    is that row's error."""
    for names in ("sdk", "guide"):
        emu = VectorShiftEmulator(latency=0.02, status_names=names, failure_rate=0.3, seed=3)
        out = run(frame(10), emu, tmp_path / names, mode="background", poll_interval=0.02).frame
        failed = out[out["bulk_status"] == "failed"]
        assert 0 < len(failed) < 10
        assert failed["bulk_error"].str.contains("emulated failure").all()
        assert set(out["bulk_status"]) == {"succeeded", "failed"}


def test_a_result_that_never_appears_fails_the_row_after_result_wait(tmp_path: Path) -> None:
    emu = VectorShiftEmulator(latency=0.0, result_lag=3600)
    out = run(frame(2), emu, tmp_path, mode="background", poll_interval=0.02, result_wait=0.2).frame
    assert (out["bulk_status"] == "failed").all()
    assert out["bulk_error"].str.contains("no result appeared within 0.2 s").all()


def test_an_undocumented_state_keeps_the_row_waiting_and_is_reported(tmp_path: Path) -> None:
    emu = VectorShiftEmulator()
    polls = {"n": 0}

    def odd_state(request: httpx.Request) -> httpx.Response:
        if "/run/status/" in request.url.path:
            polls["n"] += 1
            if polls["n"] < 3:
                return httpx.Response(200, json={"task_id": "t", "status": "warming_up"})
        return emu.handler(request)

    result = run(
        frame(1),
        emu,
        tmp_path,
        mode="background",
        poll_interval=0.02,
        transport=httpx.MockTransport(odd_state),
    )
    assert result.frame["bulk_status"].tolist() == ["succeeded"]
    assert any("warming_up" in note for note in result.summary.notes)


def test_background_mode_takes_one_row_per_batch() -> None:
    with pytest.raises(ConfigError, match="batch_size=2 is more than"):
        frame_batch.plan(frame(4), PIPE, provider="vectorshift", mode="background", batch_size=2, cache=None)
    with pytest.raises(ConfigError, match="mode must be"):
        VectorShift(mode="later")  # type: ignore[arg-type]


def test_cancel_terminates_a_background_run() -> None:
    """The adapter's cancel sends terminate; the run then reads as cancelled."""
    emu = VectorShiftEmulator(latency=30.0)
    provider = VectorShift(api_key=KEY, mode="background", base_url="http://vs.test/v1")

    async def scenario() -> str:
        api = ApiClient(provider.http_config(), secrets=provider.secrets(), transport=emu.transport())
        try:
            batch = Batch("b1", ("k1",), (b'{"topic":"x"}',))
            remote = await provider.submit(api, PIPE, batch, None)
            ref = BatchRef("b1", remote, batch.keys)
            assert not (await provider.poll(api, PIPE, ref)).done
            await provider.cancel(api, PIPE, ref)
            poll = await provider.poll(api, PIPE, ref)
            assert poll.done
            return poll.results[0].status
        finally:
            await api.aclose()

    assert asyncio.run(scenario()) == "cancelled"
    assert emu.requests()["terminate"] == 1


@pytest.mark.e2e
def test_ctrl_c_with_cancel_on_interrupt_terminates_background_runs(tmp_path: Path) -> None:
    """SIGINT with cancel_on_interrupt=True: every background run in flight is terminated."""
    emu = VectorShiftEmulator(latency=30.0)
    options = {"provider": "vectorshift", "workflow": PIPE, "mode": "background", "cancel_on_interrupt": True}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with emu.serve() as server:
        args = [
            sys.executable,
            str(CHILD),
            server.url + "/v1",
            str(tmp_path / "cache"),
            "20",
            json.dumps(options),
        ]
        child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while emu.create_requests < 8:  # max_in_flight runs started
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(0.3)  # let the journal record the last answer
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=30)
    assert emu.requests()["terminate"] == 8
