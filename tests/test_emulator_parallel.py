"""The Parallel emulator: the Task API contract, faults, limits, accounting, webhooks, v0 and the SDK."""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import hmac
import io
import time
from collections.abc import Iterable
from datetime import date, datetime
from typing import Any, TypeVar

import httpx
import orjson
import parallel
import pytest
from conftest import HandClock
from parallel.types import (
    RunInputParam,
    TaskGroup,
    TaskGroupRunResponse,
    TaskRun,
    TaskRunEvent,
    TaskRunJsonOutput,
    TaskRunResult,
    TaskSpecParam,
)
from parallel.types.task_group_status_event import TaskGroupStatusEvent

from frame_batch.testing import Faults, ParallelEmulator, serve
from frame_batch.testing.parallel import default_task

T = TypeVar("T")
KEY = "test-key"
AUTH = {"x-api-key": KEY}
PROPERTIES: dict[str, object] = {
    "ceo": {"type": "string"},
    "founded": {"type": "string", "format": "date"},
    "employees": {"type": "integer"},
}
JSON_SCHEMA: dict[str, object] = {"type": "object", "properties": PROPERTIES}
JSON_SPEC: dict[str, object] = {"output_schema": {"type": "json", "json_schema": JSON_SCHEMA}}
SDK_SPEC: TaskSpecParam = {"output_schema": {"type": "json", "json_schema": JSON_SCHEMA}}


@pytest.fixture
def clock() -> HandClock:
    return HandClock()


def client(emu: ParallelEmulator, headers: dict[str, str] | None = None) -> httpx.Client:
    return httpx.Client(
        transport=emu.transport(),
        base_url="http://parallel.test",
        headers=AUTH if headers is None else headers,
    )


def companies(n: int, processor: str = "lite", start: int = 0) -> list[dict[str, object]]:
    return [{"input": {"company": f"company {i}"}, "processor": processor} for i in range(start, start + n)]


def create_group(http: httpx.Client, prefix: str = "/v1") -> str:
    response = http.post(f"{prefix}/tasks/groups", json={"metadata": {"job": "test"}})
    assert response.status_code == 200, response.text
    group_id = response.json()["taskgroup_id"]
    assert isinstance(group_id, str)
    return group_id


def add_runs(
    http: httpx.Client, group: str, inputs: list[dict[str, object]], prefix: str = "/v1", **extra: object
) -> dict[str, Any]:
    body = {"inputs": inputs, "default_task_spec": JSON_SPEC, **extra}
    response = http.post(f"{prefix}/tasks/groups/{group}/runs", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def parse_sse(raw: bytes) -> list[dict[str, Any]]:
    """Parse SSE strictly: every frame is exactly ``event: <type>`` then one ``data:`` line."""
    assert raw == b"" or raw.endswith(b"\n\n")
    events = []
    for frame in raw.split(b"\n\n")[:-1]:
        event_line, data_line = frame.split(b"\n")
        assert event_line.startswith(b"event: ")
        assert data_line.startswith(b"data: ")
        event = orjson.loads(data_line[len(b"data: ") :])
        assert event["type"] == event_line[len(b"event: ") :].decode()
        events.append(event)
    return events


def runs_stream(http: httpx.Client, group: str, prefix: str = "/v1", **params: str) -> list[dict[str, Any]]:
    response = http.get(f"{prefix}/tasks/groups/{group}/runs", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/event-stream"
    return parse_sse(response.content)


def events_stream(http: httpx.Client, group: str, **params: str) -> list[dict[str, Any]]:
    response = http.get(f"/v1/tasks/groups/{group}/events", params=params)
    assert response.status_code == 200, response.text
    return parse_sse(response.content)


def group_status(http: httpx.Client, group: str) -> dict[str, Any]:
    response = http.get(f"/v1/tasks/groups/{group}")
    assert response.status_code == 200, response.text
    status: dict[str, Any] = response.json()["status"]
    return status


def drain_until_cut(items: Iterable[T]) -> list[T]:
    """What arrived before the connection was cut (the cut itself is asserted)."""
    received: list[T] = []

    def drain() -> None:
        for item in items:
            received.append(item)

    with pytest.raises(httpx.RemoteProtocolError):
        drain()
    return received


def only_run_events(events: list[object]) -> list[TaskRunEvent]:
    """The SDK's stream items, checked to be typed TaskRunEvent objects."""
    assert all(isinstance(event, TaskRunEvent) for event in events)
    return [event for event in events if isinstance(event, TaskRunEvent)]


def read_until_cut(response: httpx.Response) -> bytes:
    """The body bytes that arrived before the connection was cut."""
    return b"".join(drain_until_cut(response.iter_bytes()))


def assert_error(response: httpx.Response, status: int, message: str | None = None) -> dict[str, Any]:
    """A non-422 error has Parallel's ErrorResponse shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error"
    assert isinstance(body["error"]["ref_id"], str)
    assert body["error"]["ref_id"]
    if message is not None:
        assert body["error"]["message"] == message
    error: dict[str, Any] = body["error"]
    return error


# -- the group contract -----------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/v1beta"])
def test_group_round_trip_on_both_prefixes(prefix: str) -> None:
    """Create, add runs, status, runs stream, events and run lookup work under /v1 and /v1beta."""
    emu = ParallelEmulator()
    with client(emu) as http:
        group = create_group(http, prefix)
        added = add_runs(http, group, companies(3), prefix)
        status = http.get(f"{prefix}/tasks/groups/{group}").json()["status"]
        events = runs_stream(http, group, prefix, include_output="true")
        settled = parse_sse(http.get(f"{prefix}/tasks/groups/{group}/events").content)
        one = http.get(f"{prefix}/tasks/groups/{group}/runs/{added['run_ids'][1]}").json()
    assert group.startswith("tgrp_")
    assert status["task_run_status_counts"] == {"completed": 3}
    assert [e["run"]["run_id"] for e in events] == added["run_ids"]
    assert all(e["output"]["type"] == "json" for e in events)
    assert [e["type"] for e in settled] == ["task_group_status"] + ["task_run.state"] * 3
    assert one["run_id"] == added["run_ids"][1]
    assert one["taskgroup_id"] == group


def test_task_run_shape_and_ids() -> None:
    """TaskRun carries trun_<32 hex> ids, interaction_id == run_id, RFC 3339 times and metadata."""
    emu = ParallelEmulator()
    with client(emu) as http:
        group = create_group(http)
        item = {**companies(1)[0], "metadata": {"row": "r-1"}}
        (run_id,) = add_runs(http, group, [item])["run_ids"]
        run = http.get(f"/v1/tasks/runs/{run_id}").json()
    assert run_id.startswith("trun_")
    assert len(run_id) == len("trun_") + 32
    int(run_id[len("trun_") :], 16)
    assert run["interaction_id"] == run_id
    assert (run["status"], run["is_active"], run["processor"]) == ("completed", False, "lite")
    assert run["metadata"] == {"row": "r-1"}
    assert run["warnings"] is None
    assert "error" not in run
    assert datetime.fromisoformat(run["created_at"]) <= datetime.fromisoformat(run["modified_at"])


def test_sse_framing_is_exact() -> None:
    """Each runs-stream frame is exactly 'event: task_run.state\\ndata: <one-line JSON>\\n\\n'."""
    emu = ParallelEmulator()
    with client(emu) as http:
        group = create_group(http)
        add_runs(http, group, [{"input": "multi\nline\ninput", "processor": "lite"}, *companies(1)])
        response = http.get(f"/v1/tasks/groups/{group}/runs")
    raw = response.content
    frames = raw.split(b"\n\n")
    assert frames[-1] == b""
    assert len(frames) == 3
    for frame in frames[:-1]:
        assert frame.count(b"\n") == 1
        assert frame.startswith(b"event: task_run.state\ndata: {")
    first = orjson.loads(frames[0].split(b"data: ", 1)[1])
    assert set(first) == {"type", "event_id", "run", "input", "output"}
    assert (first["type"], first["event_id"], first["input"], first["output"]) == (
        "task_run.state",
        "1",
        None,
        None,
    )


def test_runs_stream_resumes_after_last_event_id() -> None:
    """last_event_id=N resumes after event N; run_cursor points at the runs added next."""
    emu = ParallelEmulator()
    with client(emu) as http:
        group = create_group(http)
        first = add_runs(http, group, companies(3))
        second = add_runs(http, group, companies(2, start=3))
        everything = runs_stream(http, group)
        resumed = runs_stream(http, group, last_event_id=everything[1]["event_id"])
        new_only = runs_stream(http, group, last_event_id=second["run_cursor"])
    assert first["run_cursor"] is None
    assert first["event_cursor"] is None
    assert [e["event_id"] for e in everything] == ["1", "2", "3", "4", "5"]
    assert [e["run"]["run_id"] for e in resumed] == (first["run_ids"] + second["run_ids"])[2:]
    assert [e["run"]["run_id"] for e in new_only] == second["run_ids"]


def test_output_only_when_requested_and_completed(clock: HandClock) -> None:
    """include_output adds outputs to completed runs only; include_input echoes the TaskRunInput."""
    emu = ParallelEmulator(latency=1.0, clock=clock)
    with client(emu) as http:
        group = create_group(http)
        add_runs(http, group, companies(1, "lite") + companies(1, "ultra", start=1))
        clock.now = 2.0  # lite finished at 1 s; ultra needs 12 s
        bare = runs_stream(http, group)
        full = runs_stream(http, group, include_output="true", include_input="true")
    assert [e["run"]["status"] for e in full] == ["completed", "queued"]
    assert [e["output"] for e in bare] == [None, None]
    assert [e["input"] for e in bare] == [None, None]
    assert full[0]["output"]["content"].keys() == PROPERTIES.keys()
    assert full[1]["output"] is None
    assert full[0]["input"]["input"] == {"company": "company 0"}
    assert full[0]["input"]["task_spec"] == JSON_SPEC  # the default spec the run used


def test_status_counts_hold_only_present_statuses(clock: HandClock) -> None:
    """task_run_status_counts lists only statuses present; is_active tracks queued/running runs."""
    emu = ParallelEmulator(latency=1.0, clock=clock)
    with client(emu) as http:
        group = create_group(http)
        empty = group_status(http, group)
        add_runs(http, group, companies(1, "lite") + companies(1, "ultra", start=1))
        seen = []
        for moment in (0.1, 0.5, 2.0, 5.0, 12.0):
            clock.now = moment
            status = group_status(http, group)
            seen.append((status["task_run_status_counts"], status["is_active"]))
    assert (empty["num_task_runs"], empty["task_run_status_counts"], empty["is_active"]) == (0, {}, False)
    assert seen == [
        ({"queued": 2}, True),
        ({"queued": 1, "running": 1}, True),
        ({"queued": 1, "completed": 1}, True),
        ({"running": 1, "completed": 1}, True),
        ({"completed": 2}, False),
    ]


def test_status_filter(clock: HandClock) -> None:
    """status= keeps only the runs in that status."""
    emu = ParallelEmulator(latency=1.0, clock=clock)
    with client(emu) as http:
        group = create_group(http)
        add_runs(http, group, companies(2, "lite") + companies(1, "pro", start=2))
        clock.now = 3.0
        completed = runs_stream(http, group, status="completed")
        running = runs_stream(http, group, status="running")
        bad = http.get(f"/v1/tasks/groups/{group}/runs", params={"status": "done"})
    assert [e["event_id"] for e in completed] == ["1", "2"]
    assert [e["event_id"] for e in running] == ["3"]
    assert bad.status_code == 422


def test_events_stream_reports_settled_runs_and_resumes(clock: HandClock) -> None:
    """/events sends the group status, then one event per settled run, resumable by event_id."""
    emu = ParallelEmulator(latency=1.0, clock=clock)
    with client(emu) as http:
        group = create_group(http)
        first = add_runs(http, group, companies(1, "lite") + companies(1, "pro", start=1))
        early = events_stream(http, group)
        clock.now = 2.0
        middle = events_stream(http, group)
        second = add_runs(http, group, companies(1, "lite", start=2))
        clock.now = 10.0
        later = events_stream(http, group, last_event_id=middle[-1]["event_id"], timeout="5")
    assert [e["type"] for e in early] == ["task_group_status"]
    assert early[0]["status"]["is_active"] is True
    assert [e["run"]["run_id"] for e in middle[1:]] == first["run_ids"][:1]
    assert middle[1]["output"] is None
    assert second["event_cursor"] == "1"
    assert [e["event_id"] for e in later] == ["3", "2", "3"]
    assert [e["run"]["run_id"] for e in later[1:]] == [second["run_ids"][0], first["run_ids"][1]]
    assert later[0]["status"]["is_active"] is False


def test_unknown_group_and_run_are_404() -> None:
    """Unknown groups answer 404 "TaskGroup not found"; unknown runs 404 too."""
    emu = ParallelEmulator()
    with client(emu) as http:
        group = create_group(http)
        for path in ("", "/runs", "/events"):
            assert_error(http.get(f"/v1/tasks/groups/tgrp_nope{path}"), 404, "TaskGroup not found")
        assert_error(http.post("/v1/tasks/groups/tgrp_nope/runs", json={"inputs": []}), 404)
        assert_error(http.get(f"/v1/tasks/groups/{group}/runs/trun_nope"), 404)
        assert_error(http.get("/v1/tasks/runs/trun_nope"), 404)
        assert_error(http.get("/v1/tasks/nothing"), 404)
        assert_error(http.delete(f"/v1/tasks/groups/{group}"), 405)


def test_async_client_reads_the_stream_in_process() -> None:
    """transport() serves httpx.AsyncClient too, SSE body included."""
    emu = ParallelEmulator()
    with client(emu) as http:
        group = create_group(http)
        add_runs(http, group, companies(2))

    async def main() -> bytes:
        async with httpx.AsyncClient(
            transport=emu.transport(), base_url="http://parallel.test", headers=AUTH
        ) as http:
            response = await http.get(f"/v1/tasks/groups/{group}/runs")
            return response.content

    assert len(parse_sse(asyncio.run(main()))) == 2


# -- outputs ------------------------------------------------------------------------------------


def test_default_task_makes_typed_values() -> None:
    """The default task gives each property a value of its type, varying with the input."""
    schema: dict[str, object] = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "founded": {"type": "string", "format": "date"},
            "updated": {"type": "string", "format": "date-time"},
            "employees": {"type": "integer"},
            "revenue": {"type": "number"},
            "public": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "hq": {"type": "object", "properties": {"city": {"type": "string"}}},
            "tier": {"type": "string", "enum": ["a", "b"]},
        },
    }
    a, b = default_task({"company": "A"}, schema), default_task({"company": "B"}, schema)
    assert isinstance(a, dict)
    assert isinstance(b, dict)
    assert a == default_task({"company": "A"}, schema)
    assert a != b
    assert isinstance(a["name"], str)
    date.fromisoformat(str(a["founded"]))
    assert datetime.fromisoformat(str(a["updated"])).tzinfo is not None
    assert type(a["employees"]) is int
    assert type(a["revenue"]) is float
    assert type(a["public"]) is bool
    assert isinstance(a["tags"], list)
    assert all(isinstance(tag, str) for tag in a["tags"])
    assert isinstance(a["hq"], dict)
    assert isinstance(a["hq"]["city"], str)
    assert a["tier"] in ("a", "b")


@pytest.mark.parametrize(
    "task_spec",
    [None, {"output_schema": "A short summary"}, {"output_schema": {"type": "text", "description": "x"}}],
)
def test_text_outputs(task_spec: dict[str, object] | None) -> None:
    """No spec, a string spec or a text schema give a text output with one 'output' basis."""
    emu = ParallelEmulator()
    item: dict[str, object] = {"input": "Who runs Acme?", "processor": "base"}
    if task_spec is not None:
        item["task_spec"] = task_spec
    with client(emu) as http:
        group = create_group(http)
        http.post(f"/v1/tasks/groups/{group}/runs", json={"inputs": [item]}).raise_for_status()
        (event,) = runs_stream(http, group, include_output="true")
    output = event["output"]
    assert output["type"] == "text"
    assert isinstance(output["content"], str)
    assert "Who runs Acme?" in output["content"]
    assert [basis["field"] for basis in output["basis"]] == ["output"]


def test_json_output_basis_per_field() -> None:
    """A bare JSON schema gives JSON content with one FieldBasis per top-level field."""
    emu = ParallelEmulator()
    bare = {"output_schema": {"type": "object", "properties": PROPERTIES}}
    with client(emu) as http:
        group = create_group(http)
        add_runs(http, group, [{**companies(1)[0], "task_spec": bare}])
        (event,) = runs_stream(http, group, include_output="true")
    output = event["output"]
    assert output["type"] == "json"
    assert [basis["field"] for basis in output["basis"]] == list(PROPERTIES)
    basis = output["basis"][0]
    assert basis["confidence"] in ("low", "medium", "high")
    assert basis["citations"][0]["url"].startswith("https://")
    assert basis["citations"][0]["excerpts"]
    assert isinstance(basis["reasoning"], str)


# -- run outcomes -------------------------------------------------------------------------------


def test_out_of_order_completion_keeps_stream_order(clock: HandClock) -> None:
    """out_of_order changes the completion order; the runs stream stays in insertion order."""
    emu = ParallelEmulator(out_of_order=True, clock=clock)
    with client(emu) as http:
        group = create_group(http)
        run_ids = add_runs(http, group, companies(6))["run_ids"]
        clock.now = 0.5
        halfway = {e["run"]["run_id"] for e in runs_stream(http, group, status="completed")}
        clock.now = 5.0
        stream_order = [e["run"]["run_id"] for e in runs_stream(http, group)]
        completion_order = [e["run"]["run_id"] for e in events_stream(http, group)[1:]]
    assert stream_order == run_ids
    assert sorted(completion_order) == sorted(run_ids)
    assert completion_order != run_ids
    assert 0 < len(halfway) < 6


def test_failed_run_has_error_and_is_charged() -> None:
    """A failed run carries error {ref_id, message, detail}, no output, and is still charged."""
    emu = ParallelEmulator(failure_rate=1.0)
    with client(emu) as http:
        group = create_group(http)
        (run_id,) = add_runs(http, group, companies(1))["run_ids"]
        (event,) = runs_stream(http, group, include_output="true")
        result = http.get(f"/v1/tasks/runs/{run_id}/result")
        status = group_status(http, group)
    run = event["run"]
    assert (run["status"], run["is_active"], event["output"]) == ("failed", False, None)
    assert set(run["error"]) == {"ref_id", "message", "detail"}
    assert "failure_rate" in run["error"]["message"]
    assert status["task_run_status_counts"] == {"failed": 1}
    assert_error(result, 404, "Run failed or run id not found")
    assert emu.charges() == {'{"company":"company 0"}': 1}


def test_failure_rate_is_deterministic_per_input() -> None:
    """The same input fails in every emulator with the same seed, and only some inputs fail."""

    def failed(emu: ParallelEmulator) -> list[str]:
        with client(emu) as http:
            group = create_group(http)
            add_runs(http, group, companies(40))
            events = runs_stream(http, group, status="failed", include_input="true")
        return [e["input"]["input"]["company"] for e in events]

    first = failed(ParallelEmulator(failure_rate=0.5))
    assert first == failed(ParallelEmulator(failure_rate=0.5))
    assert 0 < len(first) < 40
    assert failed(ParallelEmulator(failure_rate=0.5, seed=1)) != first


def test_task_exception_fails_that_run_with_its_message() -> None:
    """A custom task's exception becomes error.message of that run; the others complete."""

    def task(task_input: object, schema: object) -> dict[str, object]:
        assert schema == JSON_SCHEMA
        if task_input == {"company": "company 1"}:
            raise LookupError("no filings found for company 1")
        return {"ceo": "Ada"}

    emu = ParallelEmulator(task=task)
    with client(emu) as http:
        group = create_group(http)
        add_runs(http, group, companies(2))
        events = runs_stream(http, group, include_output="true")
    assert events[0]["output"]["content"] == {"ceo": "Ada"}
    assert events[1]["run"]["error"]["message"] == "no filings found for company 1"


@pytest.mark.parametrize(
    ("returned", "message"),
    [("plain text", "task returned str, expected an object"), ({"when": object()}, "not JSON")],
)
def test_task_returning_the_wrong_shape_fails_the_run(returned: object, message: str) -> None:
    """A task result that does not fit the schema kind, or is not JSON, fails that run."""
    emu = ParallelEmulator(task=lambda task_input, schema: returned)  # type: ignore[arg-type,return-value]
    with client(emu) as http:
        group = create_group(http)
        add_runs(http, group, companies(1))
        (event,) = runs_stream(http, group, include_output="true")
    assert event["run"]["status"] == "failed"
    assert message in event["run"]["error"]["message"]


def test_action_required_is_neither_active_nor_done() -> None:
    """Matching runs sit in action_required: not active, no result, still reported."""
    emu = ParallelEmulator(action_required=lambda task_input: task_input == {"company": "company 1"})
    with client(emu) as http:
        group = create_group(http)
        run_ids = add_runs(http, group, companies(2))["run_ids"]
        status = group_status(http, group)
        run = http.get(f"/v1/tasks/runs/{run_ids[1]}").json()
        result = http.get(f"/v1/tasks/runs/{run_ids[1]}/result")
        settled = events_stream(http, group)
    assert status["task_run_status_counts"] == {"action_required": 1, "completed": 1}
    assert status["is_active"] is False
    assert (run["status"], run["is_active"]) == ("action_required", False)
    assert_error(result, 408)
    assert {e["run"]["status"] for e in settled[1:]} == {"completed", "action_required"}


# -- single runs --------------------------------------------------------------------------------


def test_single_run_202_result_408_then_200(clock: HandClock) -> None:
    """POST /tasks/runs answers 202 queued; /result is 408 while active, then the result."""
    emu = ParallelEmulator(latency=2.0, clock=clock)
    with client(emu) as http:
        item = {"input": {"company": "Acme"}, "processor": "lite", "task_spec": JSON_SPEC}
        created = http.post("/v1/tasks/runs", json=item)
        run_id = created.json()["run_id"]
        pending = http.get(f"/v1/tasks/runs/{run_id}/result", params={"timeout": "600"})
        clock.now = 1.0
        running = http.get(f"/v1/tasks/runs/{run_id}").json()
        clock.now = 2.0
        done = http.get(f"/v1/tasks/runs/{run_id}/result")
        echoed = http.get(f"/v1/tasks/runs/{run_id}/input").json()
        (event,) = parse_sse(http.get(f"/v1/tasks/runs/{run_id}/events").content)
    assert created.status_code == 202
    assert (created.json()["status"], created.json()["is_active"]) == ("queued", True)
    assert created.json()["taskgroup_id"] is None
    assert_error(pending, 408)
    assert running["status"] == "running"
    assert done.status_code == 200
    assert done.json()["run"]["status"] == "completed"
    assert done.json()["output"]["content"].keys() == PROPERTIES.keys()
    assert echoed == item
    assert (event["event_id"], event["output"]) == (None, done.json()["output"])
    assert emu.create_requests == 1


# -- validation and limits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "loc", "kind"),
    [
        ({"processor": "lite"}, ["body", "inputs", 0, "input"], "missing"),
        ({"input": "x"}, ["body", "inputs", 0, "processor"], "missing"),
        (
            {"input": "x", "processor": "lite", "metadata": {"k" * 17: "v"}},
            ["body", "inputs", 0, "metadata", "k" * 17, "[key]"],
            "string_too_long",
        ),
        (
            {"input": "x", "processor": "lite", "metadata": {"row": "v" * 513}},
            ["body", "inputs", 0, "metadata", "row"],
            "string_too_long",
        ),
        (
            {"input": "x", "processor": "lite", "task_spec": {"input_schema": "y"}},
            ["body", "inputs", 0, "task_spec", "output_schema"],
            "missing",
        ),
    ],
)
def test_invalid_inputs_are_422_in_fastapi_shape(
    item: dict[str, object], loc: list[object], kind: str
) -> None:
    """Missing fields and oversized metadata answer 422 {detail: [{loc, msg, type}]}."""
    emu = ParallelEmulator()
    with client(emu) as http:
        group = create_group(http)
        response = http.post(f"/v1/tasks/groups/{group}/runs", json={"inputs": [item]})
    assert response.status_code == 422
    (issue,) = response.json()["detail"]
    assert (issue["loc"], issue["type"]) == (loc, kind)
    assert isinstance(issue["msg"], str)


def test_validation_is_all_or_nothing() -> None:
    """One bad input refuses the whole request: every issue listed, nothing created or charged."""
    emu = ParallelEmulator()
    with client(emu) as http:
        group = create_group(http)
        bad = companies(3)
        del bad[1]["input"]
        del bad[2]["processor"]
        response = http.post(f"/v1/tasks/groups/{group}/runs", json={"inputs": bad})
        status = group_status(http, group)
    assert [issue["loc"][2] for issue in response.json()["detail"]] == [1, 2]
    assert status["num_task_runs"] == 0
    assert not emu.charges()
    assert emu.create_requests == 0


def test_metadata_limits_are_inclusive() -> None:
    """Metadata keys of 16 and values of 512 characters are accepted."""
    emu = ParallelEmulator()
    with client(emu) as http:
        group = create_group(http)
        item = {**companies(1)[0], "metadata": {"k" * 16: "v" * 512}}
        assert http.post(f"/v1/tasks/groups/{group}/runs", json={"inputs": [item]}).status_code == 200


def test_unknown_processor_is_403() -> None:
    """An unknown processor answers 403 ErrorResponse "invalid processor" and creates nothing."""
    emu = ParallelEmulator()
    with client(emu) as http:
        group = create_group(http)
        body = {"inputs": companies(1) + companies(1, "mega", start=1)}
        response = http.post(f"/v1/tasks/groups/{group}/runs", json=body)
        single = http.post("/v1/tasks/runs", json={"input": "x", "processor": "mega"})
        status = group_status(http, group)
    assert assert_error(response, 403, "invalid processor")["detail"] == {"processor": "mega"}
    assert_error(single, 403, "invalid processor")
    assert status["num_task_runs"] == 0
    assert not emu.charges()


@pytest.mark.parametrize("processor", ["core2x-fast", "ultra8x", "pro"])
def test_documented_processors_are_accepted(processor: str) -> None:
    """Every documented processor and its -fast variant is known."""
    emu = ParallelEmulator()
    with client(emu) as http:
        assert http.post("/v1/tasks/runs", json={"input": "x", "processor": processor}).status_code == 202


def test_spec_plus_input_limit_is_25000_characters() -> None:
    """Task spec (as JSON) + input up to 25,000 characters is accepted; one more is 422."""
    emu = ParallelEmulator()
    spec_chars = len(orjson.dumps(JSON_SPEC).decode())
    with client(emu) as http:
        group = create_group(http)
        fits = [{"input": "x" * (25_000 - spec_chars), "processor": "lite"}]
        too_big = [{"input": "x" * (25_001 - spec_chars), "processor": "lite"}]
        ok = http.post(
            f"/v1/tasks/groups/{group}/runs", json={"inputs": fits, "default_task_spec": JSON_SPEC}
        )
        refused = http.post(
            f"/v1/tasks/groups/{group}/runs", json={"inputs": too_big, "default_task_spec": JSON_SPEC}
        )
    assert ok.status_code == 200
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "inputs", 0]
    assert emu.create_requests == 1


def test_more_than_1000_inputs_is_422() -> None:
    """1,000 runs per request are accepted; 1,001 answer 422 and create nothing."""
    emu = ParallelEmulator()
    with client(emu) as http:
        group = create_group(http)
        refused = http.post(f"/v1/tasks/groups/{group}/runs", json={"inputs": companies(1001)})
        accepted = http.post(f"/v1/tasks/groups/{group}/runs", json={"inputs": companies(1000)})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["type"] == "too_long"
    assert refused.json()["detail"][0]["loc"] == ["body", "inputs"]
    assert len(accepted.json()["run_ids"]) == 1000
    assert sum(emu.charges().values()) == 1000


def test_402_when_short_of_credits_then_top_up() -> None:
    """Credits are reserved for the whole request: short means 402 and nothing; a top-up fixes it."""
    emu = ParallelEmulator(credits=0.012)
    with client(emu) as http:
        group = create_group(http)
        add_runs(http, group, companies(2, "lite"))  # 2 x 0.005
        short = http.post(f"/v1/tasks/groups/{group}/runs", json={"inputs": companies(1, "base", start=2)})
        before_top_up = group_status(http, group)["num_task_runs"]
        emu.credits = (emu.credits or 0.0) + 1.0
        after = http.post(f"/v1/tasks/groups/{group}/runs", json={"inputs": companies(1, "base", start=2)})
    error = assert_error(short, 402)
    assert error["detail"]["required"] == pytest.approx(0.01)
    assert before_top_up == 2
    assert after.status_code == 200
    assert emu.cost() == pytest.approx(0.02)
    assert emu.credits == pytest.approx(0.992)
    assert sum(emu.charges().values()) == 3


def test_rate_limit_429_with_retry_after(clock: HandClock) -> None:
    """Creating POSTs beyond the per-key limit in 60 s answer 429 with retry-after; reads are free."""
    emu = ParallelEmulator(rate_limit_per_minute=2, clock=clock)
    with client(emu) as http, client(emu, {"x-api-key": "other"}) as other:
        group = create_group(http)
        add_runs(http, group, companies(1))
        clock.now = 20.0
        assert http.post("/v1/tasks/runs", json={"input": "x", "processor": "lite"}).status_code == 202
        clock.now = 30.0
        refused = http.post(f"/v1/tasks/groups/{group}/runs", json={"inputs": companies(1, start=1)})
        reads_ok = group_status(http, group)
        other_key = other.post("/v1/tasks/runs", json={"input": "y", "processor": "lite"})
        clock.now = 60.0
        again = http.post(f"/v1/tasks/groups/{group}/runs", json={"inputs": companies(1, start=1)})
    assert_error(refused, 429, "Too many requests: quota temporarily exceeded")
    assert refused.headers["retry-after"] == "30"
    assert reads_ok["num_task_runs"] == 1
    assert other_key.status_code == 202
    assert again.status_code == 200
    assert emu.create_requests == 4


# -- auth -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-api-key": ""}, {"x-api-key": "sk-wrong-secret"}, {"authorization": f"Bearer {KEY}"}],
)
def test_missing_or_unknown_key_is_401(headers: dict[str, str]) -> None:
    """Only a known x-api-key passes; 401 ErrorResponse never echoes the key; nothing is charged."""
    emu = ParallelEmulator(api_keys={KEY})
    with client(emu, headers) as http:
        responses = [
            http.post("/v1/tasks/groups", json={}),
            http.post("/v1/tasks/runs", json={"input": "x", "processor": "lite"}),
            http.post(
                "/v0/tasks/t/batches", json={"task_run_requests": [{"arguments": {}}], "runner": "neon"}
            ),
        ]
    for response in responses:
        assert_error(response, 401)
        assert "sk-wrong-secret" not in response.text
    assert not emu.charges()


def test_repr_hides_keys_and_secrets() -> None:
    """The emulator's repr shows neither API keys nor webhook secrets."""
    text = repr(ParallelEmulator(api_keys={"sk-secret"}, webhook_secrets=["whsec-secret"]))
    assert "sk-secret" not in text
    assert "whsec-secret" not in text


# -- faults ---------------------------------------------------------------------------------------


def test_scripted_429_is_an_error_response_with_retry_after() -> None:
    """A scripted 429 refuses the create unprocessed, in ErrorResponse shape with retry-after."""
    emu = ParallelEmulator(faults=Faults(retry_after=0.5))
    emu.inject("429", op="create")
    with client(emu) as http:
        group = create_group(http)
        refused = http.post(f"/v1/tasks/groups/{group}/runs", json={"inputs": companies(1)})
        accepted = http.post(f"/v1/tasks/groups/{group}/runs", json={"inputs": companies(1)})
    assert_error(refused, 429)
    assert refused.headers["retry-after"] == "0.5"
    assert accepted.status_code == 200
    assert emu.create_requests == 1
    assert emu.requests()["fault:429"] == 1


def test_scripted_503_on_reads() -> None:
    """A scripted 503 on reads answers an ErrorResponse, then reads succeed again."""
    emu = ParallelEmulator()
    with client(emu) as http:
        group = create_group(http)
        emu.inject("503", op="read")
        first = http.get(f"/v1/tasks/groups/{group}")
        second = http.get(f"/v1/tasks/groups/{group}")
    assert_error(first, 503)
    assert second.status_code == 200


def test_drop_after_processing_charges_once_and_loses_the_answer() -> None:
    """A dropped add-runs was created and charged; a blind retry pays twice."""
    emu = ParallelEmulator()
    with client(emu) as http:
        group = create_group(http)
        emu.inject("drop", op="create")
        with pytest.raises(httpx.RemoteProtocolError):
            http.post(f"/v1/tasks/groups/{group}/runs", json={"inputs": companies(2)})
        orphans = runs_stream(http, group)
        charged_once = emu.charges()
        inspected = emu.group_runs(group)
        http.post(f"/v1/tasks/groups/{group}/runs", json={"inputs": companies(2)}).raise_for_status()
    assert len(orphans) == 2
    assert [run["run_id"] for run in inspected] == [e["run"]["run_id"] for e in orphans]
    assert charged_once == {'{"company":"company 0"}': 1, '{"company":"company 1"}': 1}
    assert emu.duplicates() == {'{"company":"company 0"}': 2, '{"company":"company 1"}': 2}
    assert emu.create_requests == 2


def test_drop_before_processes_nothing() -> None:
    """drop_before looks like a connection failure and nothing is created or charged."""
    emu = ParallelEmulator()
    with client(emu) as http:
        group = create_group(http)
        emu.inject("drop_before", op="create")
        with pytest.raises(httpx.ConnectError):
            http.post(f"/v1/tasks/groups/{group}/runs", json={"inputs": companies(2)})
        status = group_status(http, group)
    assert status["num_task_runs"] == 0
    assert not emu.charges()


def test_runs_stream_cut_in_process_then_resume() -> None:
    """A cut runs stream delivers K events then breaks; last_event_id resumes the rest."""
    emu = ParallelEmulator()
    with client(emu) as http:
        group = create_group(http)
        run_ids = add_runs(http, group, companies(5))["run_ids"]
        emu.cut_next_runs_stream(2)
        with http.stream("GET", f"/v1/tasks/groups/{group}/runs") as response:
            received = parse_sse(read_until_cut(response))
        rest = runs_stream(http, group, last_event_id=received[-1]["event_id"])
    assert [e["run"]["run_id"] for e in received] == run_ids[:2]
    assert [e["run"]["run_id"] for e in rest] == run_ids[2:]


def test_runs_stream_cut_knob_cuts_every_stream_even_short_ones() -> None:
    """cut_runs_streams_after cuts each runs stream; one with fewer events is cut at its end."""
    emu = ParallelEmulator(cut_runs_streams_after=3)
    with client(emu) as http:
        group = create_group(http)
        add_runs(http, group, companies(2))
        for _ in range(2):
            with http.stream("GET", f"/v1/tasks/groups/{group}/runs") as response:
                assert len(parse_sse(read_until_cut(response))) == 2
        emu.clear_faults()
        assert len(runs_stream(http, group)) == 2


@pytest.mark.e2e
def test_runs_stream_cut_over_socket_and_sdk_resumes(capfd: pytest.CaptureFixture[str]) -> None:
    """Over a socket the server quietly cuts the chunked body; the SDK sees the break and resumes."""
    emu = ParallelEmulator()
    with emu.serve() as server:
        sdk = parallel.Parallel(api_key=KEY, base_url=server.url, max_retries=0)
        group = sdk.task_group.create()
        inputs: list[RunInputParam] = [{"input": f"question {i}", "processor": "lite"} for i in range(4)]
        run_ids = sdk.task_group.add_runs(group.task_group_id, inputs=inputs).run_ids
        emu.cut_next_runs_stream(1)
        seen = only_run_events(drain_until_cut(sdk.task_group.get_runs(group.task_group_id)))
        resumed = sdk.task_group.get_runs(group.task_group_id, last_event_id=seen[-1].event_id)
        rest = only_run_events(list(resumed))
    assert [e.run.run_id for e in seen] == run_ids[:1]
    assert [e.run.run_id for e in rest] == run_ids[1:]
    assert "Traceback" not in capfd.readouterr().err  # a scripted cut is not a server error


# -- webhooks -------------------------------------------------------------------------------------


class Recorder:
    """A webhook sender that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, str], bytes]] = []

    def __call__(self, url: str, headers: dict[str, str], body: bytes) -> None:
        self.sent.append((url, headers, body))


def expected_signature(secret: str, headers: dict[str, str], body: bytes) -> str:
    """Parallel's scheme, computed here independently of the emulator."""
    signed = headers["webhook-id"].encode() + b"." + headers["webhook-timestamp"].encode() + b"." + body
    digest = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def test_webhook_sent_once_when_the_run_settles(clock: HandClock) -> None:
    """A completed run with a webhook is POSTed once, signed with the secret."""
    recorder = Recorder()
    emu = ParallelEmulator(latency=1.0, clock=clock, webhook_secrets=["s3cret"], webhook_sender=recorder)
    hook = {"url": "https://hooks.test/parallel", "event_types": ["task_run.status"]}
    with client(emu) as http:
        group = create_group(http)
        run_ids = add_runs(http, group, [{**companies(1)[0], "webhook": hook}, *companies(1, start=1)])[
            "run_ids"
        ]
        early = emu.deliver_webhooks()
        clock.now = 5.0
        group_status(http, group)  # any request notices the transition and delivers
        again = emu.deliver_webhooks()
    assert (early, again) == (0, 0)
    ((url, headers, body),) = recorder.sent
    assert url == "https://hooks.test/parallel"
    assert headers["webhook-id"].startswith("whevent_")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert headers["webhook-signature"] == expected_signature("s3cret", headers, body)
    payload = orjson.loads(body)
    assert payload["type"] == "task_run.status"
    assert datetime.fromisoformat(payload["timestamp"]).tzinfo is not None
    assert (payload["data"]["run_id"], payload["data"]["status"]) == (run_ids[0], "completed")


def test_webhook_two_secrets_give_two_signatures() -> None:
    """With two secrets (rotation) the header has two space-separated v1 signatures."""
    recorder = Recorder()
    emu = ParallelEmulator(
        failure_rate=1.0, webhook_secrets=["old-secret", "new-secret"], webhook_sender=recorder
    )
    with client(emu) as http:
        body = {"input": "x", "processor": "lite", "webhook": {"url": "https://hooks.test/h"}}
        http.post("/v1/tasks/runs", json=body)
    assert emu.deliver_webhooks() == 1
    ((_, headers, payload),) = recorder.sent
    old, new = headers["webhook-signature"].split(" ")
    assert old == expected_signature("old-secret", headers, payload)
    assert new == expected_signature("new-secret", headers, payload)
    assert old != new
    data = orjson.loads(payload)["data"]
    assert (data["status"], data["error"]["message"]) == ("failed", "Task run failed (emulated failure_rate)")


@pytest.mark.e2e
def test_default_webhook_sender_posts_over_http() -> None:
    """Without a sender the webhook is POSTed over HTTP with its headers."""
    received: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        received.append(request)
        return httpx.Response(204)

    emu = ParallelEmulator(webhook_secrets=["s3cret"])
    with serve(receiver) as hooks, client(emu) as http:
        body = {"input": "x", "processor": "lite", "webhook": {"url": f"{hooks.url}/hook"}}
        http.post("/v1/tasks/runs", json=body)
        assert emu.deliver_webhooks() == 1
    (request,) = received
    headers = {k: request.headers[k] for k in ("webhook-id", "webhook-timestamp")}
    assert (request.method, request.url.path) == ("POST", "/hook")
    assert request.headers["webhook-signature"] == expected_signature("s3cret", headers, request.content)


# -- legacy v0 batches ------------------------------------------------------------------------------


def legacy_task(task_input: object, schema: object) -> dict[str, object]:
    assert isinstance(task_input, dict)
    if task_input["company"] == "B":
        raise RuntimeError("company B not found")
    return {"ceo": f"CEO of {task_input['company']}", "employees": 7}


def test_legacy_batch_create_status_and_exports_agree() -> None:
    """v0: create a batch, read its status map, and export the same runs as JSON and CSV."""
    schema: dict[str, object] = {
        "type": "object",
        "properties": {"ceo": {"type": "string"}, "employees": {"type": "integer"}},
    }
    emu = ParallelEmulator(tasks={"task_1": schema}, task=legacy_task)
    requests = [
        {"arguments": {"company": "A", "year": 2020}},
        {"arguments": {"company": "B"}, "runner": "lite"},
    ]
    with client(emu) as http:
        created = http.post(
            "/v0/tasks/task_1/batches", json={"task_run_requests": requests, "runner": "neon"}
        )
        batch = created.json()
        path = f"/v0/tasks/task_1/batches/{batch['batch_run_id']}"
        status = http.get(path).json()
        exported = http.get(f"{path}/results").json()
        exported_csv = http.get(f"{path}/results", params={"format": "csv"})
        single = http.get(f"/v0/tasks/task_1/runs/{batch['run_ids'][1]}").json()
    a, b = batch["run_ids"]
    assert batch["task_id"] == "task_1"
    assert batch["batch_run_id"].startswith("brun_")
    assert status["status"] == {
        "queued": [],
        "running": [],
        "awaiting_tool_calls": [],
        "complete": [a],
        "failed": [b],
    }
    assert [(r["run_id"], r["status"], r["runner"]) for r in exported] == [
        (a, "complete", "neon"),
        (b, "failed", "lite"),
    ]
    assert exported[0]["input"] == {"arguments": {"company": "A", "year": 2020}}
    assert exported[0]["output"] == {"ceo": "CEO of A", "employees": 7}
    assert exported[1]["output"] is None
    assert exported_csv.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(exported_csv.text)))
    assert rows[0] == [
        "task_id", "batch_run_id", "run_id", "status", "runner",
        "input.arguments.company", "input.arguments.year", "output.ceo", "output.employees",
    ]  # fmt: skip
    assert rows[1] == ["task_1", batch["batch_run_id"], a, "complete", "neon", "A", "2020", "CEO of A", "7"]
    assert rows[2] == ["task_1", batch["batch_run_id"], b, "failed", "lite", "B", "", "", ""]
    assert (single["status"], single["error"], single["output"]) == ("failed", "company B not found", None)
    assert emu.charges() == {'{"company":"A","year":2020}': 1, '{"company":"B"}': 1}
    assert emu.cost() == pytest.approx(0.015)


def test_legacy_batch_follows_the_clock(clock: HandClock) -> None:
    """v0 runs go queued -> running -> complete; only finished runs are exported."""
    emu = ParallelEmulator(latency=1.0, clock=clock)
    with client(emu) as http:
        body = {"task_run_requests": [{"arguments": {"q": 1}}, {"arguments": {"q": 2}, "runner": "pro"}]}
        batch = http.post("/v0/tasks/any-task/batches", json={**body, "runner": "lite"}).json()
        path = f"/v0/tasks/any-task/batches/{batch['batch_run_id']}"
        clock.now = 0.1
        queued = http.get(path).json()["status"]
        clock.now = 2.0
        mixed = http.get(path).json()["status"]
        exported = http.get(f"{path}/results").json()
    lite, pro = batch["run_ids"]
    assert queued["queued"] == [lite, pro]
    assert (mixed["complete"], mixed["running"]) == ([lite], [pro])
    assert [r["run_id"] for r in exported] == [lite]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v0/tasks/t/batches", {"task_run_requests": [{"arguments": {"a": 1}}]}, 422),
        ("/v0/tasks/t/batches", {"task_run_requests": [{"runner": "lite"}]}, 422),
        ("/v0/tasks/t/batches", {"task_run_requests": [{"arguments": {}}], "runner": "warp"}, 403),
        ("/v0/tasks/unknown/batches", {"task_run_requests": [{"arguments": {}}], "runner": "neon"}, 404),
    ],
)
def test_legacy_batch_errors(path: str, body: dict[str, object], status: int) -> None:
    """v0: a runner is required, runners must be known, unknown tasks are 404; nothing is charged."""
    emu = ParallelEmulator(tasks={"t": {"type": "object", "properties": {"x": {"type": "string"}}}})
    with client(emu) as http:
        response = http.post(path, json=body)
    assert response.status_code == status
    if status == 422:
        assert response.json()["detail"][0]["loc"][:3] == ["body", "task_run_requests", 0]
    else:
        assert_error(response, status)
    assert not emu.charges()


def test_legacy_callback_webhook_is_delivered() -> None:
    """v0 callback_webhook (a URL) gets the webhook when the run settles."""
    recorder = Recorder()
    emu = ParallelEmulator(webhook_sender=recorder)
    with client(emu) as http:
        body = {"task_run_requests": [{"arguments": {"a": 1}, "callback_webhook": "https://hooks.test/v0"}]}
        run_ids = http.post("/v0/tasks/t/batches", json={**body, "runner": "neon"}).json()["run_ids"]
    assert emu.deliver_webhooks() == 1
    ((url, headers, payload),) = recorder.sent
    assert url == "https://hooks.test/v0"
    assert "webhook-signature" not in headers  # no secret configured
    assert orjson.loads(payload)["data"]["run_id"] == run_ids[0]


def test_legacy_batches_share_rate_limit_and_credits(clock: HandClock) -> None:
    """v0 batches count against the same rate limit and credits as v1 creates."""
    emu = ParallelEmulator(rate_limit_per_minute=1, credits=1.0, clock=clock)
    body = {"task_run_requests": [{"arguments": {"a": 1}}], "runner": "ultra"}
    with client(emu) as http:
        assert http.post("/v0/tasks/t/batches", json=body).status_code == 200
        limited = http.post("/v1/tasks/runs", json={"input": "x", "processor": "lite"})
    assert_error(limited, 429)
    assert emu.credits == pytest.approx(0.7)


# -- the official SDK -------------------------------------------------------------------------------


@pytest.mark.e2e
def test_official_sdk_round_trip_over_socket() -> None:
    """parallel.Parallel creates a group, adds runs, reads status and streams typed outputs."""
    emu = ParallelEmulator()
    with emu.serve() as server:
        sdk = parallel.Parallel(api_key=KEY, base_url=server.url, max_retries=0)
        group = sdk.task_group.create(metadata={"job": "sdk"})
        added = sdk.task_group.add_runs(
            group.task_group_id,
            inputs=[
                {"input": {"company": "Acme"}, "processor": "lite", "metadata": {"row": "0"}},
                {"input": {"company": "Globex"}, "processor": "base"},
            ],
            default_task_spec=SDK_SPEC,
        )
        status = sdk.task_group.retrieve(group.task_group_id)
        stream = sdk.task_group.get_runs(group.task_group_id, include_output=True, include_input=True)
        events = only_run_events(list(stream))
        settled = list(sdk.task_group.events(group.task_group_id))
        run = sdk.task_group.retrieve_run(added.run_ids[0], task_group_id=group.task_group_id)
        result = sdk.task_run.result(added.run_ids[1])
    assert isinstance(group, TaskGroup)
    assert group.task_group_id.startswith("tgrp_")
    assert group.metadata == {"job": "sdk"}
    assert isinstance(added, TaskGroupRunResponse)
    assert status.status.num_task_runs == 2
    assert status.status.task_run_status_counts == {"completed": 2}
    assert status.status.is_active is False
    assert [e.run.run_id for e in events] == added.run_ids
    for event in events:
        assert isinstance(event.output, TaskRunJsonOutput)
        assert set(event.output.content) == set(PROPERTIES)
        assert [basis.field for basis in event.output.basis] == list(PROPERTIES)
    assert events[0].input is not None
    assert events[0].input.metadata == {"row": "0"}
    assert isinstance(settled[0], TaskGroupStatusEvent)
    assert isinstance(run, TaskRun)
    assert run.task_group_id == group.task_group_id
    assert isinstance(result, TaskRunResult)
    assert result.run.run_id == added.run_ids[1]


def test_responses_validate_strictly_against_the_sdk_models() -> None:
    """Every JSON answer passes pydantic validation with the SDK's own models (not just lenient parsing)."""
    emu = ParallelEmulator(failure_rate=0.5)
    with client(emu) as http:
        group_json = http.post("/v1/tasks/groups", json={"metadata": {"a": 1}}).json()
        group = group_json["taskgroup_id"]
        added = add_runs(http, group, companies(6))
        created = http.post("/v1/tasks/runs", json={"input": "x", "processor": "lite"}).json()
        result = http.get(f"/v1/tasks/runs/{created['run_id']}/result").json()
        stream = runs_stream(http, group, include_input="true", include_output="true")
        settled = events_stream(http, group)
    TaskGroup.model_validate(group_json)
    TaskGroupRunResponse.model_validate(added)
    TaskRun.model_validate(created)
    TaskRunResult.model_validate(result)
    for event in stream + settled[1:]:
        TaskRunEvent.model_validate(event)
    TaskGroupStatusEvent.model_validate(settled[0])
    assert {e["run"]["status"] for e in stream} == {"completed", "failed"}
