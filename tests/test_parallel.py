"""Parallel end to end: Task Groups and the legacy Batch API against the Parallel emulator."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

import frame_batch
from frame_batch import RetryPolicy
from frame_batch._http import ApiClient
from frame_batch.errors import PaymentRequired, RequestRejected
from frame_batch.testing import ParallelEmulator
from frame_batch.webhooks import ReplayGuard, verify

KEY = "parallel-test-key"
TASK = "company-facts"
SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "employees": {"type": "integer"},
        "public": {"type": "boolean"},
        "founded": {"type": "string", "format": "date"},
    },
    "required": ["summary", "employees", "public", "founded"],
    "additionalProperties": False,
}
CHILD = Path(__file__).with_name("run_child.py")


def companies(n: int) -> pd.DataFrame:
    return pd.DataFrame({"company": [f"Company {i}" for i in range(n)], "n": list(range(n))})


def facts(task_input: Any, schema: Any) -> dict[str, object] | str:
    """The emulated task: facts that follow from the input, so a test can check each row."""
    if not isinstance(task_input, dict):
        return f"answer for {task_input}"
    n = int(task_input["n"])
    name = task_input.get("company") or task_input.get("topic")  # the crash child sends topics
    if n == 3:
        raise ValueError(f"no sources found for {name}")
    if isinstance(schema, str):
        return f"{name} summary"
    return {
        "summary": f"{name} makes things",
        "employees": 10 * n,
        "public": n % 2 == 0,
        "founded": f"20{n % 100:02d}-01-15",
    }


def run(df: pd.DataFrame, emu: ParallelEmulator, tmp_path: Path, **options: Any) -> frame_batch.RunResult:
    options.setdefault("cache", tmp_path / "cache")
    options.setdefault("output_schema", SCHEMA)
    if "base_url" not in options:
        options.setdefault("transport", emu.transport())
    return frame_batch.run(
        df,
        TASK,
        provider="parallel",
        api_key=KEY,
        progress=False,
        retry=RetryPolicy.testing(),
        poll_interval=0.02,
        **options,
    )


def check_facts(out: pd.DataFrame) -> None:
    """Every succeeded row carries the facts of its own input (joined by key, not position)."""
    ok = out[out["bulk_status"] == "succeeded"]
    assert (ok["employees"] == ok["n"] * 10).all()
    assert (ok["summary"] == ok["company"] + " makes things").all()
    assert (ok["public"] == (ok["n"] % 2 == 0)).all()
    assert (ok["founded"].dt.year == 2000 + ok["n"]).all()


# -- Task Groups ---------------------------------------------------------------------------
@pytest.mark.e2e
def test_groups_over_a_socket_out_of_order_with_a_failing_row(tmp_path: Path) -> None:
    """Typed columns, out-of-order completion, one failed row with its reason; nothing paid twice."""
    emu = ParallelEmulator(latency=0.05, jitter=0.1, out_of_order=True, task=facts, api_keys=[KEY])
    df = companies(25)
    with emu.serve() as server:
        result = run(df, emu, tmp_path, base_url=server.url, batch_size=10)
    out = result.frame
    assert out["bulk_status"].value_counts().to_dict() == {"succeeded": 24, "failed": 1}
    assert "no sources found for Company 3" in out.loc[3, "bulk_error"]
    assert str(out["employees"].dtype) == "Int64"
    assert str(out["public"].dtype) == "boolean"
    assert out["founded"].dtype.kind == "M"
    check_facts(out)
    assert out["bulk_run_id"].str.startswith("trun_").all()
    assert emu.duplicates() == {}
    assert emu.create_requests == 3
    assert result.summary.possibly_duplicated == 0


def test_text_output_is_one_column_and_v1beta_paths_work(tmp_path: Path) -> None:
    """A text description gives one ``output`` column; api_version='v1beta' uses the beta paths."""
    emu = ParallelEmulator(task=facts)
    paths: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        return emu.handler(request)

    out = run(
        companies(4),
        emu,
        tmp_path,
        output_schema="a one-line summary",
        api_version="v1beta",
        transport=httpx.MockTransport(record),
    ).frame
    assert out.loc[0, "output"] == "Company 0 summary"
    assert "summary" not in out.columns
    assert paths
    assert all(p.startswith("/v1beta/tasks/groups") for p in paths)
    assert emu.requests()["add_runs"] == 1


def test_resume_sends_nothing_and_a_schema_change_reruns(tmp_path: Path) -> None:
    """A finished run resumes with zero creates; another schema is another task, so it runs."""
    emu = ParallelEmulator(task=facts)
    run(companies(6), emu, tmp_path)
    again = run(companies(6), emu, tmp_path)
    assert again.summary.create_requests == 0
    assert again.summary.cached == 6
    other = run(companies(6), emu, tmp_path, output_schema="a one-line summary")
    assert other.summary.create_requests == 1


def test_basis_columns_on_request(tmp_path: Path) -> None:
    """basis=True adds reasoning, confidence and citation URLs per output field."""
    emu = ParallelEmulator(task=facts)
    plain = run(companies(2), emu, tmp_path).frame
    assert not [c for c in plain.columns if c.startswith("basis.")]
    # The accessor form; served from the cache: the basis was stored with the first answer.
    out = companies(2).bulk.run(
        TASK,
        provider="parallel",
        api_key=KEY,
        output_schema=SCHEMA,
        basis=True,
        cache=tmp_path / "cache",
        transport=emu.transport(),
        progress=False,
    )
    for field in ("summary", "employees"):
        assert isinstance(out.loc[0, f"basis.{field}.reasoning"], str)
        assert out.loc[0, f"basis.{field}.confidence"] in ("low", "medium", "high")
        citations = out.loc[0, f"basis.{field}.citations"]
        assert len(citations) >= 1
        assert all(str(u).startswith("http") for u in citations)
    assert emu.create_requests == 1


# -- orphan adoption and lost answers -------------------------------------------------------
def test_orphan_add_runs_is_adopted_not_resent(tmp_path: Path) -> None:
    """The emulator takes an add-runs request and drops the answer; its runs are adopted."""
    emu = ParallelEmulator(task=facts)
    emu.inject("drop", op="create")
    result = run(companies(12), emu, tmp_path, batch_size=6)
    check_facts(result.frame)
    assert (result.frame["bulk_status"] != "pending").all()
    assert emu.requests()["fault:drop"] == 1
    assert emu.duplicates() == {}
    assert emu.create_requests == 2
    assert result.summary.possibly_duplicated == 0


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the client handles it."""


class CrashAfter(httpx.AsyncBaseTransport):
    """A transport that lets the emulator process one add-runs request, then dies (a crash
    between the request reaching Parallel and its answer being journaled)."""

    def __init__(self, emu: ParallelEmulator) -> None:
        self.inner = emu.transport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path.endswith("/runs"):
            raise Crash("crashed after add-runs reached the server")
        return response


def test_rerun_adopts_runs_whose_create_answer_never_got_recorded(tmp_path: Path) -> None:
    """After a crash mid add-runs, the next run finds the staged group's runs by tag."""
    emu = ParallelEmulator(task=facts)
    with pytest.raises(Crash):
        run(companies(5), emu, tmp_path, transport=CrashAfter(emu))
    assert emu.create_requests == 1
    result = run(companies(5), emu, tmp_path)
    check_facts(result.frame)
    assert emu.create_requests == 1
    assert emu.duplicates() == {}
    assert result.summary.possibly_duplicated == 0


class LoseBeforeSending(httpx.AsyncBaseTransport):
    """A transport whose first add-runs request breaks before the server sees it."""

    def __init__(self, emu: ParallelEmulator) -> None:
        self.inner = emu.transport()
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/runs") and not self.lost:
            self.lost += 1
            raise httpx.WriteError("connection reset while sending", request=request)
        return await self.inner.handle_async_request(request)


def test_a_create_that_never_arrived_is_sent_again_without_a_duplicate_flag(tmp_path: Path) -> None:
    """Reconciliation finds the staged group empty: the rows go again, flagged as paid once."""
    emu = ParallelEmulator(task=facts)
    transport = LoseBeforeSending(emu)
    result = run(companies(5), emu, tmp_path, transport=transport)
    assert transport.lost == 1
    check_facts(result.frame)
    assert result.summary.possibly_duplicated == 0
    assert emu.duplicates() == {}


# -- limits and errors ----------------------------------------------------------------------
def test_402_stops_submitting_and_a_topped_up_rerun_finishes(tmp_path: Path) -> None:
    """Short on credits: a clear PaymentRequired; after topping up, the rest run, none twice."""
    emu = ParallelEmulator(task=facts, credits=0.05)  # five base runs
    with pytest.raises(PaymentRequired, match="reserves credits"):
        run(companies(20), emu, tmp_path, batch_size=5, max_in_flight=1)
    paid = sum(emu.charges().values())
    assert paid == 5
    emu.credits = 10.0
    result = run(companies(20), emu, tmp_path, batch_size=5)
    assert (result.frame["bulk_status"] != "pending").all()
    assert emu.duplicates() == {}
    assert sum(emu.charges().values()) == 20


def test_invalid_processor_is_a_clear_error(tmp_path: Path) -> None:
    """Parallel's 403 means an invalid processor here, and the message says so."""
    with pytest.raises(RequestRejected, match="processor="):
        run(companies(2), ParallelEmulator(), tmp_path, processor="turbo-max")


def test_422_validation_detail_reaches_the_message(tmp_path: Path) -> None:
    """A 422 is a RequestRejected carrying the field that failed."""
    emu = ParallelEmulator()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/runs") and request.method == "POST":
            detail = [{"loc": ["body", "default_task_spec"], "msg": "too many fields", "type": "value_error"}]
            return httpx.Response(422, json={"detail": detail})
        return emu.handler(request)

    with pytest.raises(RequestRejected, match="too many fields") as info:
        run(companies(2), emu, tmp_path, transport=httpx.MockTransport(handler))
    assert KEY not in str(info.value)


def test_rows_over_25000_characters_are_row_errors(tmp_path: Path) -> None:
    """A row too long for Parallel is skipped with the reason; its batch still runs."""
    emu = ParallelEmulator(task=facts)
    df = companies(3)
    df["company"] = df["company"].astype(object)
    df.loc[1, "company"] = "x" * 26_000
    out = run(df, emu, tmp_path).frame
    assert out["bulk_status"].tolist() == ["succeeded", "skipped", "succeeded"]
    assert "characters" in out.loc[1, "bulk_error"]
    assert sum(emu.charges().values()) == 2


def test_action_required_is_surfaced_not_taken_for_done(tmp_path: Path) -> None:
    """A run waiting on the user stays pending with a note, while the others finish."""
    emu = ParallelEmulator(task=facts, action_required=lambda i: isinstance(i, dict) and i.get("n") == 1)
    result = run(companies(3), emu, tmp_path, timeout=1.5)
    assert result.frame["bulk_status"].tolist() == ["succeeded", "pending", "succeeded"]
    assert any("action_required" in note for note in result.summary.notes)


def test_429_with_retry_after_is_retried_without_duplicates(tmp_path: Path) -> None:
    """Refused creates and reads are retried; every row is paid once."""
    emu = ParallelEmulator(task=facts)
    emu.inject("429", op="create", count=2)
    emu.inject("503", op="read", count=2)
    result = run(companies(8), emu, tmp_path, batch_size=4)
    check_facts(result.frame)
    assert emu.duplicates() == {}
    assert emu.requests()["fault:429"] == 2


def test_a_runs_stream_cut_midway_resumes_from_the_last_event(tmp_path: Path) -> None:
    """The SSE stream breaks after 3 events; the client resumes with last_event_id."""
    emu = ParallelEmulator(task=facts)
    emu.cut_next_runs_stream(3)
    result = run(companies(8), emu, tmp_path)
    check_facts(result.frame)
    assert emu.requests()["runs_stream"] == 2


def test_creates_are_paced_to_the_per_minute_limit() -> None:
    """The client waits for the sliding window instead of meeting 429s (2 creates a minute)."""
    assert frame_batch.Parallel(api_key=KEY).limits.max_creates_per_minute == 2000
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    async def go() -> None:
        config = frame_batch.Parallel(api_key=KEY).http_config()
        emu = ParallelEmulator(rate_limit_per_minute=2, clock=lambda: now[0])
        api = ApiClient(
            config,
            secrets=(KEY,),
            transport=emu.transport(),
            creates_per_minute=2,
            clock=lambda: now[0],
            sleep=sleep,
        )
        try:
            for _ in range(3):
                await api.create("POST", "/v1/tasks/runs", content=b'{"input": "x", "processor": "lite"}')
                now[0] += 1.0
        finally:
            await api.aclose()
        assert emu.requests().get("fault:429", 0) == 0
        assert emu.create_requests == 3

    asyncio.run(go())
    assert slept == [pytest.approx(58.0)]


# -- the legacy Batch API --------------------------------------------------------------------
def test_legacy_batch_api_csv_and_json_exports_give_the_same_frame(tmp_path: Path) -> None:
    """api='batch': the JSON and CSV exports give identical frames (run ids aside)."""
    emu = ParallelEmulator(task=facts, tasks={TASK: SCHEMA})
    df = companies(9)
    as_json = run(df, emu, tmp_path, api="batch", export="json", cache=None, batch_size=4).frame
    as_csv = run(df, emu, tmp_path, api="batch", export="csv", cache=None, batch_size=4).frame
    assert emu.requests()["create_batch"] == 6
    check_facts(as_json)
    assert as_json.loc[3, "bulk_status"] == "failed"
    assert "no sources" in as_json.loc[3, "bulk_error"]
    pd.testing.assert_frame_equal(as_json.drop(columns="bulk_run_id"), as_csv.drop(columns="bulk_run_id"))
    groups = run(df, emu, tmp_path, cache=None).frame
    pd.testing.assert_frame_equal(as_json.drop(columns="bulk_run_id"), groups.drop(columns="bulk_run_id"))


def test_legacy_csv_without_a_schema_reads_json_looking_cells(tmp_path: Path) -> None:
    """Without output_schema, CSV numbers and booleans come back as numbers and booleans."""
    emu = ParallelEmulator(task=facts, tasks={TASK: SCHEMA})
    df = companies(3)
    a = run(df, emu, tmp_path, api="batch", export="csv", output_schema=None, cache=None).frame
    b = run(df, emu, tmp_path, api="batch", export="json", output_schema=None, cache=None).frame
    assert a["employees"].tolist() == [0, 10, 20]
    assert a["public"].tolist() == [True, False, True]
    pd.testing.assert_frame_equal(a.drop(columns="bulk_run_id"), b.drop(columns="bulk_run_id"))


# -- webhooks ---------------------------------------------------------------------------------
@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A loopback HTTP receiver that records deliveries (stops at the end of the test)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    got: list[tuple[dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            got.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.e2e
def test_webhooks_pass_through_and_verify(
    tmp_path: Path, receiver: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    """Each run carries the webhook; deliveries verify with the secret, and a replay is caught."""
    url, got = receiver
    emu = ParallelEmulator(task=facts, webhook_secrets=["whsec-old", "whsec-new"])
    result = run(companies(4), emu, tmp_path, webhook_url=url)
    emu.deliver_webhooks()
    deadline = time.monotonic() + 10
    while len(got) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(got) == 4
    guard = ReplayGuard()
    run_ids = set(result.frame["bulk_run_id"].dropna())
    for headers, body in got:
        event = verify(headers, body, "whsec-new", seen=guard)
        assert event["type"] == "task_run.status"
        assert event["data"]["run_id"] in run_ids
    with pytest.raises(frame_batch.errors.WebhookReplayed):
        verify(got[0][0], got[0][1], "whsec-new", seen=guard)


# -- SIGKILL and rerun ------------------------------------------------------------------------
def _child(url: str, cache: Path, rows: int) -> subprocess.Popen[bytes]:
    options = {
        "provider": "parallel",
        "workflow": TASK,
        "output_schema": SCHEMA,
        "batch_size": 5,
        "max_in_flight": 2,
        "poll_interval": 0.05,
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [sys.executable, str(CHILD), url, str(cache), str(rows), json.dumps(options)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait(condition: Callable[[], bool], child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.005)


@pytest.mark.e2e
def test_sigkill_mid_run_then_rerun_pays_no_row_twice(tmp_path: Path) -> None:
    """Killed with batches in flight; the rerun polls them and sends only the rest."""
    emu = ParallelEmulator(latency=0.3, jitter=0.3, out_of_order=True, task=facts)
    rows, cache = 30, tmp_path / "cache"
    with emu.serve() as server:
        child = _child(server.url, cache, rows)
        _wait(lambda: emu.create_requests >= 2, child)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        assert child.returncode == -signal.SIGKILL
        before = emu.create_requests
        assert before < rows // 5
        rerun = _child(server.url, cache, rows)
        stdout, stderr = rerun.communicate(timeout=60)
        assert rerun.returncode == 0, stderr.decode()
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert out["bulk_status"].value_counts().to_dict() == {"succeeded": rows - 1, "failed": 1}
    assert emu.duplicates() == {}
    assert sum(emu.charges().values()) == rows
    assert json.loads(stdout)["possibly_duplicated"] == []
    assert emu.create_requests == rows // 5  # a create in flight at the kill was adopted, not resent


def test_a_lagging_is_active_flag_is_caught_by_the_status_counts(tmp_path: Path) -> None:
    """If is_active stays true after every run ended, the counts still end the wait."""
    emu = ParallelEmulator(task=facts)

    def lagging(request: httpx.Request) -> httpx.Response:
        response = emu.handler(request)
        if request.method == "GET" and request.url.path.count("/") == 4:  # /v1/tasks/groups/{id}
            body = response.json()
            body["status"]["is_active"] = True
            return httpx.Response(200, json=body)
        return response

    result = run(companies(4), emu, tmp_path, transport=httpx.MockTransport(lagging), timeout=5)
    assert not result.summary.notes
    check_facts(result.frame)


def test_results_are_joined_by_row_tag_not_stream_order(tmp_path: Path) -> None:
    """A runs stream in reverse order still puts every answer on its own row."""
    emu = ParallelEmulator(task=facts)

    def reversed_stream(request: httpx.Request) -> httpx.Response:
        response = emu.handler(request)
        if request.method == "GET" and request.url.path.endswith("/runs"):
            frames = [f for f in response.read().split(b"\n\n") if f.strip()]
            body = b"".join(f + b"\n\n" for f in reversed(frames))
            return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
        return response

    out = run(companies(7), emu, tmp_path, transport=httpx.MockTransport(reversed_stream)).frame
    check_facts(out)
    assert (out["bulk_status"] == "succeeded").sum() == 6


@pytest.mark.parametrize("api", ["groups", "batch"])
def test_a_row_can_name_its_own_processor(tmp_path: Path, api: str) -> None:
    """processor_input: a column's value is that row's processor (runner), not an input."""
    emu = ParallelEmulator(task=facts, tasks={TASK: SCHEMA})
    sent: list[dict[str, Any]] = []

    def record(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith(("/runs", "/batches")):
            sent.append(json.loads(request.content))
        return emu.handler(request)

    df = companies(3)
    df["tier"] = ["core", None, "lite"]
    out = run(df, emu, tmp_path, api=api, processor_input="tier", transport=httpx.MockTransport(record)).frame
    check_facts(out)
    if api == "groups":
        runs = sent[0]["inputs"]
        assert [r["processor"] for r in runs] == ["core", "base", "lite"]
        assert all("tier" not in r["input"] for r in runs)
    else:
        requests = sent[0]["task_run_requests"]
        assert [r.get("runner") for r in requests] == ["core", None, "lite"]
        assert sent[0]["runner"] == "base"
        assert all("tier" not in r["arguments"] for r in requests)
