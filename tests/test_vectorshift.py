"""VectorShift end to end: synchronous bulk_run calls against the VectorShift emulator."""

from __future__ import annotations

import base64
import hashlib
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
from conftest import stored_parts

import frame_batch
from frame_batch import RetryPolicy
from frame_batch.errors import AuthenticationError, RequestRejected
from frame_batch.testing import VectorShiftEmulator
from frame_batch.testing.vectorshift import file_value

KEY = "vectorshift-test-key"
PIPE = "64b2f0c1e4b0a1b2c3d4e5f6"
CHILD = Path(__file__).with_name("run_child.py")


def pipeline(inputs: dict[str, Any]) -> dict[str, Any]:
    """The emulated pipeline: outputs that follow from the inputs; row 3 fails. A ``doc``
    file input comes back as a ``report`` file output."""
    n = int(inputs["n"])
    if n == 3:
        raise RuntimeError("LLM node failed: context window exceeded")
    meta = inputs.get("meta")
    city = meta["items"]["city"] if isinstance(meta, dict) and meta.get("type") == "map" else None
    outputs: dict[str, Any] = {
        "answer": f"{inputs.get('topic')} done",
        "double": float(n) * 2,
        "place": {"type": "map", "items": {"city": city, "n": float(n)}},
    }
    doc = inputs.get("doc")
    if isinstance(doc, dict) and doc.get("type") == "file":
        data = base64.b64decode(str(doc["raw_bytes"]))
        outputs["report"] = file_value(b"report:" + data, name="report.txt", mime_type="text/plain")
    return outputs


def charge_key(n: int, *, doc: bytes | None = None, city: str | None = None) -> str:
    """The emulator's charge key for row ``n`` of these frames (files count by their bytes)."""
    inputs: dict[str, Any] = {"n": n, "topic": f"topic {n}"}
    if doc is not None:
        inputs["doc"] = {"type": "file", "sha256": hashlib.sha256(doc).hexdigest()}
    if city is not None:
        inputs["meta"] = {"type": "map", "items": {"city": city}}
    return json.dumps(inputs, sort_keys=True, separators=(",", ":"))


def frame(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "topic": [f"topic {i}" for i in range(n)],
            "n": list(range(n)),
            "meta": [{"city": f"City {i}"} for i in range(n)],
            "conv": [f"conv-{i % 2}" for i in range(n)],
        }
    )


def run(df: pd.DataFrame, emu: VectorShiftEmulator, tmp_path: Path, **options: Any) -> frame_batch.RunResult:
    options.setdefault("cache", tmp_path / "cache")
    if "base_url" not in options:
        options.setdefault("transport", emu.transport())
    return frame_batch.run(
        df,
        PIPE,
        provider="vectorshift",
        api_key=KEY,
        progress=False,
        retry=RetryPolicy.testing(),
        **options,
    )


def check(out: pd.DataFrame) -> None:
    """Every succeeded row has its own outputs (maps flattened into columns)."""
    ok = out[out["bulk_status"] == "succeeded"]
    assert (ok["answer"] == ok["topic"] + " done").all()
    assert (ok["double"] == ok["n"] * 2).all()
    assert (ok["place.city"] == "City " + ok["n"].astype(str)).all()


@pytest.mark.e2e
def test_df_bulk_run_over_a_socket_with_bytes_dict_a_failing_row_and_a_dropped_call(tmp_path: Path) -> None:
    """The accessor end to end: bytes cells go as files (multipart), dict cells as maps, file
    outputs land as files; the failing row says why; the call whose connection dropped after
    it ran is sent again, and exactly its rows are the ones paid twice and reported."""
    emu = VectorShiftEmulator(pipelines={PIPE: pipeline}, api_keys=[KEY])
    emu.inject("drop", op="create")  # the first bulk call runs its rows, then the socket drops
    df = frame(12).drop(columns="conv")
    df["doc"] = [f"document {i}".encode() * (i + 1) for i in range(12)]
    cache = tmp_path / "cache"
    options: dict[str, Any] = {"cache": cache, "batch_size": 5, "max_in_flight": 1, "progress": False}
    with emu.serve() as server:
        options.update(provider="vectorshift", api_key=KEY, base_url=server.url + "/v1")
        out = df.bulk.run(PIPE, retry=RetryPolicy.testing(), **options)
        again = frame_batch.run(df, PIPE, **options)  # resumes: nothing sent, the report kept
    check(out)
    assert out["bulk_status"].value_counts().to_dict() == {"succeeded": 11, "failed": 1}
    assert "context window exceeded" in out.loc[3, "bulk_error"]
    ok = out[out["bulk_status"] == "succeeded"]
    for data, path in zip(ok["doc"], ok["report"], strict=True):
        assert Path(path).read_bytes() == b"report:" + data  # file outputs saved with their bytes
    assert again.summary.create_requests == 0
    flagged = set(again.possibly_duplicated)
    assert flagged == {0, 1, 2, 3, 4}  # the dropped call's rows
    twice = {key for key, n in emu.charges().items() if n > 1}
    assert twice == {charge_key(i, doc=df.loc[i, "doc"], city=f"City {i}") for i in flagged}
    assert len(emu.charges()) == 12  # every input ran
    assert emu.requests()["bulk-run"] == 4  # the SDK's spelling by default


def test_a_bulk_answer_is_stored_before_the_next_call_leaves(tmp_path: Path) -> None:
    """A synchronous bulk call's answer exists only in this process (nothing to read again
    after a crash), so it is stored before the next paid call goes out, unlike a polled
    batch whose results the vendor keeps (see test_polling)."""
    emu = VectorShiftEmulator(pipelines={PIPE: pipeline}, api_keys=[KEY])
    cache = tmp_path / "cache"
    parts_at_call: list[int] = []

    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        parts_at_call.append(stored_parts(cache))
        return emu.handler(request)

    out = run(frame(12), emu, tmp_path, transport=httpx.MockTransport(handle), batch_size=4, max_in_flight=1)
    assert out.summary.succeeded == 11  # row 3 fails in the pipeline
    assert parts_at_call == [0, 1, 2]


def test_conversation_id_comes_from_a_column_and_the_docs_path_is_selectable(tmp_path: Path) -> None:
    """conversation_id= names the input sent as each run's conversation_id; bulk_path switches."""
    emu = VectorShiftEmulator(pipelines={PIPE: pipeline})
    bodies: list[dict[str, Any]] = []

    def record(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return emu.handler(request)

    out = run(
        frame(4),
        emu,
        tmp_path,
        conversation_id="conv",
        bulk_path="bulk_run",
        transport=httpx.MockTransport(record),
    ).frame
    check(out)
    runs = bodies[0]["runs"]
    assert [r["conversation_id"] for r in runs] == ["conv-0", "conv-1", "conv-0", "conv-1"]
    assert "conv" not in runs[0]["inputs"]
    assert runs[0]["inputs"]["meta"] == {"type": "map", "items": {"city": "City 0"}}
    assert emu.requests()["bulk_run"] == 1


def test_a_connection_dropped_mid_call_reports_the_rows_as_possibly_paid_twice(tmp_path: Path) -> None:
    """The emulator runs a bulk call's rows and drops the answer: those rows are flagged."""
    emu = VectorShiftEmulator(pipelines={PIPE: pipeline})
    emu.inject("drop", op="create")
    df = frame(10)
    result = run(df, emu, tmp_path, batch_size=5, max_in_flight=1)
    check(result.frame)
    assert (result.frame["bulk_status"] != "pending").all()
    flagged = set(result.possibly_duplicated)
    assert len(flagged) == 5
    twice = {k for k, n in emu.charges().items() if n > 1}
    assert len(twice) == 5  # exactly the flagged rows were paid twice
    assert result.summary.possibly_duplicated == 5


def test_a_200_with_status_failed_and_no_outputs_fails_the_rows(tmp_path: Path) -> None:
    """A whole-batch failure answer fails each row with the vendor's message."""

    def failed(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "failed", "error": "pipeline is paused"})

    out = run(frame(3), VectorShiftEmulator(), tmp_path, transport=httpx.MockTransport(failed)).frame
    assert (out["bulk_status"] == "failed").all()
    assert out["bulk_error"].str.contains("pipeline is paused").all()


def test_an_answer_with_too_few_outputs_fails_the_rows_quoting_it(tmp_path: Path) -> None:
    """run_outputs shorter than the runs sent: no guessing, each row fails quoting the answer."""

    def short(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "success", "run_outputs": [{"outputs": {"a": "ça"}}]})

    out = run(frame(3), VectorShiftEmulator(), tmp_path, transport=httpx.MockTransport(short)).frame
    assert (out["bulk_status"] == "failed").all()
    assert out["bulk_error"].str.contains("does not hold one output per run sent").all()
    assert out["bulk_error"].str.contains('"run_outputs"', regex=False).all()
    assert out["bulk_error"].str.contains("ça").all()  # decoded as text, not shown as bytes


def test_bad_key_and_unknown_pipeline_are_clear_errors(tmp_path: Path) -> None:
    """401 is an AuthenticationError naming the env var; 404 a clear not-found."""
    emu = VectorShiftEmulator(pipelines={PIPE: pipeline}, api_keys=["another-key"])
    with pytest.raises(AuthenticationError, match="VECTORSHIFT_API_KEY") as info:
        run(frame(2), emu, tmp_path)
    assert KEY not in str(info.value)
    with pytest.raises(frame_batch.errors.NotFoundError, match="Pipeline not found"):
        run(frame(2), VectorShiftEmulator(pipelines={}), tmp_path)


def test_a_400_is_a_request_rejected_with_the_vendor_message(tmp_path: Path) -> None:
    """A refused bulk call (a 400 {status: failed, error}) raises with that error text."""

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"status": "failed", "error": "input 'topic' is not defined"})

    with pytest.raises(RequestRejected, match="input 'topic' is not defined"):
        run(frame(2), VectorShiftEmulator(), tmp_path, transport=httpx.MockTransport(refuse))


def test_resume_sends_nothing(tmp_path: Path) -> None:
    """A finished run, run again, makes zero bulk calls."""
    emu = VectorShiftEmulator(pipelines={PIPE: pipeline})
    run(frame(6), emu, tmp_path)
    again = run(frame(6), emu, tmp_path)
    assert again.summary.create_requests == 0
    assert emu.create_requests == 1


@pytest.mark.e2e
def test_sigkill_mid_run_then_rerun_pays_each_input_once_except_the_flagged(tmp_path: Path) -> None:
    """Killed during a synchronous bulk call; the rerun finishes and flags what it resent.
    One call at a time: when the emulator has seen the third call, the first two are stored
    and only the third is in flight (50 ms). With two in flight, the kill could land after
    the second call's answer arrived and before it was stored: those rows end failed as
    paid-but-lost (by design), not resent, and the counts below would not hold."""
    emu = VectorShiftEmulator(latency=0.05, pipelines={PIPE: pipeline})
    rows, cache = 40, tmp_path / "cache"
    options = {"provider": "vectorshift", "workflow": PIPE, "batch_size": 4, "max_in_flight": 1}
    options["with_files"] = True  # a bytes column and a dict column too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with emu.serve() as server:
        url = server.url + "/v1"
        args = [sys.executable, str(CHILD), url, str(cache), str(rows), json.dumps(options)]
        child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while emu.requests()["bulk-run"] < 3:
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.002)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        rerun = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = rerun.communicate(timeout=60)
        assert rerun.returncode == 0, stderr.decode()
    out = pd.read_parquet(tmp_path / "out.parquet")
    flagged = set(json.loads(stdout)["possibly_duplicated"])
    assert out["bulk_status"].value_counts().to_dict() == {"succeeded": rows - 1, "failed": 1}
    charges = emu.charges()
    assert len(charges) == rows  # every input ran
    paid_twice = {key for key, n in charges.items() if n > 1}
    assert paid_twice  # the call cut by the kill ran on the server, and was sent again
    reported = {charge_key(i, doc=f"document {i}".encode(), city=f"City {i}") for i in flagged}
    assert paid_twice <= reported  # nothing was paid twice that the run did not report
    assert all(n <= 2 for n in charges.values())
