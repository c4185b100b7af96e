"""The VectorShift emulator: the pipeline API contract, DataTypes, faults, accounting, its SDK."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import HandClock

from frame_batch.testing import DropConnection, Faults, VectorShiftEmulator
from frame_batch.testing.vectorshift import default_pipeline, file_value

KEY = "test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
PIPE = "6630f1a2b3c4d5e6f7a8b9c0"
# The vendor page the product was specified from (docs.vectorshift.ai bulk-run), with its OpenAPI.
SEED_OPENAPI = Path(__file__).with_name("data") / "vectorshift-pipeline-bulk-run.txt"
HEX_ID = re.compile(r"[0-9a-f]{24}")


@pytest.fixture
def clock() -> HandClock:
    return HandClock()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with client(VectorShiftEmulator()) as c:
        yield c


def client(emu: VectorShiftEmulator, headers: dict[str, str] | None = None) -> httpx.Client:
    return httpx.Client(
        transport=emu.transport(),
        base_url="http://vectorshift.test/v1",
        headers=AUTH if headers is None else headers,
    )


def rows(n: int) -> list[dict[str, object]]:
    return [{"question": f"q{i}"} for i in range(n)]


def bulk(
    http: httpx.Client, inputs: list[dict[str, object]], *, path: str = "bulk-run", status: int = 200
) -> dict[str, Any]:
    response = http.post(f"/pipeline/{PIPE}/{path}", json={"runs": [{"inputs": i} for i in inputs]})
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def outputs(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry["outputs"] for entry in body["run_outputs"]]


def start(http: httpx.Client, inputs: dict[str, object], pipe: str = PIPE) -> str:
    response = http.post(f"/pipeline/{pipe}/run", json={"inputs": inputs, "background": True})
    assert response.status_code == 200, response.text
    task_id = response.json()["task_id"]
    assert isinstance(task_id, str)
    return task_id


def status(http: httpx.Client, task_id: str, pipe: str = PIPE) -> dict[str, Any]:
    response = http.get(f"/pipeline/{pipe}/run/status/{task_id}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def decode(value: dict[str, Any]) -> bytes:
    assert value["type"] == "file"
    return base64.b64decode(value["raw_bytes"], validate=True)


def multipart(
    http: httpx.Client,
    path: str,
    data: dict[str, str],
    files: list[tuple[str, tuple[str, bytes, str]]],
) -> httpx.Response:
    return http.post(f"/pipeline/{PIPE}/{path}", data=data, files=files)


def failing_on(word: str) -> Callable[[dict[str, object]], dict[str, object]]:
    def pipeline(inputs: dict[str, object]) -> dict[str, object]:
        if inputs.get("question") == word:
            raise RuntimeError(f"cannot answer {word}")
        return {"answer": f"A: {inputs.get('question')}"}

    return pipeline


# -- the bulk contract ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["bulk_run", "bulk-run"])
def test_bulk_run_answers_every_run_in_input_order(path: str) -> None:
    """Both spellings answer {status, run_outputs} with one entry per run, in input order."""
    emu = VectorShiftEmulator()
    with client(emu) as http:
        body = bulk(http, rows(3), path=path)
    assert body["status"] == "success"
    assert [o["output"] for o in outputs(body)] == ["Processed: q0", "Processed: q1", "Processed: q2"]
    ids = [entry["run_id"] for entry in body["run_outputs"]]
    assert len(set(ids)) == 3
    assert all(HEX_ID.fullmatch(i) for i in ids)
    assert emu.requests()[path] == 1


def test_bulk_run_charges_every_row_once_per_call() -> None:
    """Each row is charged once, keyed by its canonical input JSON; a call is one create."""
    emu = VectorShiftEmulator()
    with client(emu) as http:
        bulk(http, [{"b": 1, "a": "x"}, {"a": "y"}])
        bulk(http, [{"a": "y"}])
    assert emu.charges() == Counter({'{"a":"x","b":1}': 1, '{"a":"y"}': 2})
    assert emu.duplicates() == {'{"a":"y"}': 2}
    assert emu.create_requests == 2


def test_bulk_run_over_a_real_socket_with_keep_alive() -> None:
    """The same call works over a loopback socket, twice on one connection."""
    emu = VectorShiftEmulator()
    with emu.serve() as server, httpx.Client(base_url=server.url + "/v1", headers=AUTH) as http:
        assert server.host == "127.0.0.1"
        first, second = bulk(http, rows(2)), bulk(http, rows(1))
    assert [len(first["run_outputs"]), len(second["run_outputs"])] == [2, 1]


def test_async_client_in_process() -> None:
    """transport() also serves httpx.AsyncClient."""
    emu = VectorShiftEmulator()

    async def main() -> int:
        async with httpx.AsyncClient(
            transport=emu.transport(), base_url="http://vectorshift.test/v1", headers=AUTH
        ) as http:
            response = await http.post(f"/pipeline/{PIPE}/bulk_run", json={"runs": [{"inputs": {}}]})
            return response.status_code

    assert asyncio.run(main()) == 200
    assert emu.create_requests == 1


def test_routes_live_under_v1_only(http: httpx.Client) -> None:
    """The OpenAPI server is .../v1: unknown paths are 404 and a wrong method is 405."""
    root = http.post(f"http://vectorshift.test/pipeline/{PIPE}/bulk_run", json={"runs": []})
    wrong_method = http.get(f"/pipeline/{PIPE}/bulk_run")
    assert root.status_code == 404
    assert root.json()["status"] == "failed"
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"


def test_custom_pipelines_and_unknown_pipeline_404() -> None:
    """pipelines maps ids to functions; any other id is a 404 with the error shape."""
    emu = VectorShiftEmulator(pipelines={PIPE: lambda inputs: {"upper": str(inputs["q"]).upper()}})
    with client(emu) as http:
        body = bulk(http, [{"q": "hi"}])
        missing = http.post("/pipeline/nope/bulk_run", json={"runs": [{"inputs": {"q": "x"}}]})
    assert outputs(body) == [{"upper": "HI"}]
    assert missing.status_code == 404
    assert missing.json() == {"status": "failed", "error": "Pipeline not found: nope"}
    assert emu.create_requests == 1


def test_pipeline_access_answers_404_for_someone_elses_pipeline() -> None:
    """A valid key running a pipeline it does not own gets 404, like an unknown one."""
    emu = VectorShiftEmulator(pipeline_access={KEY: {PIPE}, "other": {"theirs"}})
    with client(emu) as mine, client(emu, {"authorization": "Bearer other"}) as theirs:
        assert mine.post(f"/pipeline/{PIPE}/bulk-run", json={"runs": [{}]}).status_code == 200
        assert theirs.post(f"/pipeline/{PIPE}/bulk-run", json={"runs": [{}]}).status_code == 404


def test_read_only_key_is_403_on_runs_but_reads_status() -> None:
    """A read-only key cannot start or terminate runs (403) but may poll a status."""
    emu = VectorShiftEmulator(read_only_keys={"viewer"})
    with client(emu) as http, client(emu, {"authorization": "Bearer viewer"}) as viewer:
        task_id = start(http, {"q": "x"})
        denied = viewer.post(f"/pipeline/{PIPE}/bulk-run", json={"runs": [{}]})
        cancel = viewer.post(f"/pipeline/{PIPE}/terminate", json={"run_id": task_id})
        assert status(viewer, task_id)["task_id"] == task_id
    assert [denied.status_code, cancel.status_code] == [403, 403]
    assert denied.json()["status"] == "failed"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Missing authorization header"),
        ({"authorization": KEY}, "Invalid authorization header format"),
        ({"authorization": "Basic abc"}, "Invalid authorization header format"),
        ({"authorization": "Bearer wrong"}, "Invalid API key"),
    ],
)
def test_the_three_401_messages(headers: dict[str, str], message: str) -> None:
    """401 answers {error} with exactly one of the documented messages, and never the key."""
    emu = VectorShiftEmulator(api_keys={KEY})
    with client(emu, headers) as http:
        response = http.post(f"/pipeline/{PIPE}/bulk_run", json={"runs": [{}]})
    assert response.status_code == 401
    assert response.json() == {"error": message}
    assert emu.create_requests == 0


def test_empty_runs_is_422(http: httpx.Client) -> None:
    """A well-formed bulk call with no runs is a semantic rejection."""
    response = http.post(f"/pipeline/{PIPE}/bulk_run", json={"runs": []})
    assert response.status_code == 422
    assert response.json()["status"] == "failed"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b"{}", "runs is required"),
        (b'{"runs": {"inputs": {}}}', "runs is required"),
        (b'{"runs": ["x"]}', "runs[0] must be an object"),
        (b'{"runs": [{"inputs": []}]}', "runs[0].inputs must be an object"),
        (b'{"runs": [{"conversation_id": 5}]}', "conversation_id"),
    ],
)
def test_malformed_bulk_bodies_are_400(http: httpx.Client, body: bytes, needle: str) -> None:
    """Malformed bodies answer 400 {status: "failed", error} naming the problem."""
    response = http.post(
        f"/pipeline/{PIPE}/bulk_run", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["status"] == "failed"
    assert needle in response.json()["error"]


def test_unsupported_content_type_is_400(http: httpx.Client) -> None:
    """Only JSON, multipart and urlencoded bodies are accepted."""
    response = http.post(
        f"/pipeline/{PIPE}/bulk_run", content=b"runs", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 400
    assert "Unsupported Content-Type" in response.json()["error"]


# -- DataType ---------------------------------------------------------------------------------

VALID = [
    "text",
    7,
    2.5,
    True,
    None,
    [1, "a", [None]],
    {"type": "map", "items": {"k": "v", "n": {"type": "map", "items": {}}}},
    file_value(b"\x00\xffbytes", name="a.bin", mime_type="application/octet-stream", path="/x/a.bin"),
    {"type": "file", "raw_bytes": ""},
    [{"type": "file", "raw_bytes": "aGk="}],
]
INVALID = [
    ({"a": 1}, 'an object must be {"type": "map"'),
    ({"type": "map"}, 'exactly the keys "type" and "items"'),
    ({"type": "map", "items": {}, "extra": 1}, 'exactly the keys "type" and "items"'),
    ({"type": "map", "items": []}, "must be an object of name -> value"),
    ({"type": "file"}, "raw_bytes is required"),
    ({"type": "file", "raw_bytes": "not base64!"}, "not valid base64"),
    ({"type": "file", "raw_bytes": "aGk"}, "not valid base64"),
    ({"type": "file", "raw_bytes": "aGk=", "name": "x"}, "a file has no key 'name'"),
    ({"type": "file", "raw_bytes": "aGk=", "metadata": "x"}, "metadata must be an object"),
    ({"type": "file", "raw_bytes": "aGk=", "metadata": {"name": 3}}, "metadata.name must be a string"),
    ([1, {"type": "blob"}], "v[1]"),
    ({"type": "map", "items": {"deep": {"x": 1}}}, "v.items.deep"),
]


@pytest.mark.parametrize("value", VALID)
def test_valid_datatypes_are_accepted_and_echoed(http: httpx.Client, value: object) -> None:
    """Every documented DataType is a valid input; the default pipeline echoes it in a map."""
    body = bulk(http, [{"v": value}])
    assert outputs(body)[0]["inputs"] == {"type": "map", "items": {"v": value}}


@pytest.mark.parametrize(("value", "needle"), INVALID)
def test_invalid_datatypes_are_400_with_their_location(
    http: httpx.Client, value: object, needle: str
) -> None:
    """A value outside the DataType union is a 400 naming where it is; nothing runs."""
    response = http.post(
        f"/pipeline/{PIPE}/bulk_run", json={"runs": [{"inputs": {"ok": 1}}, {"inputs": {"v": value}}]}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error.startswith("runs[1].inputs.v")
    assert needle in error


@pytest.mark.parametrize(
    ("returned", "needle"),
    [
        ({"x": {1, 2}}, "set is not a DataType"),
        ({"x": {"plain": "dict"}}, 'an object must be {"type": "map"'),
        ({"x": float("nan")}, "finite number"),
        ({1: "x"}, "non-string name"),
        (["not", "a", "map"], "must be an object of name -> value"),
        ({"f": {"type": "file", "raw_bytes": "%%%"}}, "not valid base64"),
    ],
)
def test_invalid_outputs_fail_that_run(returned: object, needle: str) -> None:
    """Outputs are validated too: a pipeline returning a non-DataType fails its run, not the call."""
    emu = VectorShiftEmulator(pipelines={PIPE: lambda inputs: returned})  # type: ignore[arg-type,return-value]
    with client(emu) as http:
        body = bulk(http, [{}])
    entry = body["run_outputs"][0]
    assert (body["status"], entry["status"], entry["outputs"]) == ("failed", "failed", {})
    assert "invalid output" in entry["error"]
    assert needle in entry["error"]


def test_file_input_gives_a_decodable_file_output(http: httpx.Client) -> None:
    """A JSON file input yields a file output in the same DataType shape, base64 encoded."""
    doc = file_value(b"%PDF-1.7 body", name="report.pdf", mime_type="application/pdf")
    body = bulk(http, [{"doc": doc, "question": "summarise"}])
    out = outputs(body)[0]
    assert decode(out["file"]) == b"processed:%PDF-1.7 body"
    assert out["file"]["metadata"] == {"name": "processed-report.pdf", "mime_type": "application/pdf"}
    assert out["output"] == "Processed: <file report.pdf> summarise"


def test_default_pipeline_has_no_file_output_without_file_input() -> None:
    """The default pipeline derives outputs deterministically; no file unless one came in."""
    assert default_pipeline({"b": 2, "a": "x"}) == {
        "output": "Processed: x 2",
        "inputs": {"type": "map", "items": {"b": 2, "a": "x"}},
    }


def test_file_inputs_are_charged_by_the_digest_of_their_bytes() -> None:
    """The same bytes cost the same key whatever the encoding path or the file name."""
    emu = VectorShiftEmulator()
    with client(emu) as http:
        bulk(http, [{"doc": file_value(b"same", name="a.txt")}])
        sent = multipart(
            http, "bulk_run", {"runs": "[{}]"}, [("runs.0.inputs.doc", ("b.txt", b"same", "text/plain"))]
        )
    assert sent.status_code == 200, sent.text
    [(key, count)] = emu.charges().items()
    assert count == 2
    assert orjson.loads(key) == {"doc": {"type": "file", "sha256": hashlib.sha256(b"same").hexdigest()}}


# -- multipart and urlencoded -----------------------------------------------------------------


def test_multipart_bulk_with_the_docs_part_names(http: httpx.Client) -> None:
    """runs JSON, runs.<i>.inputs JSON, runs.<i>.conversation_id and runs.<i>.inputs.<name> files."""
    data = {
        "runs": '[{"inputs": {"q": "a"}}, {}]',
        "runs.1.inputs": '{"q": "b"}',
        "runs.1.conversation_id": "c1",
    }
    files = [
        ("runs.0.inputs.doc", ("a.txt", b"alpha", "text/plain")),
        ("runs.1.inputs.doc", ("b.txt", b"beta", "text/plain")),
    ]
    response = multipart(http, "bulk_run", data, files)
    assert response.status_code == 200, response.text
    outs = outputs(response.json())
    assert [o["output"] for o in outs] == ["Processed: <file a.txt> a", "Processed: <file b.txt> b"]
    assert [decode(o["file"]) for o in outs] == [b"processed:alpha", b"processed:beta"]
    assert outs[1]["inputs"]["items"]["doc"]["metadata"] == {"name": "b.txt", "mime_type": "text/plain"}


def test_multipart_bulk_without_a_runs_field(http: httpx.Client) -> None:
    """runs.<i>.* fields alone define the runs when no runs field is sent."""
    data = {"runs.0.inputs": '{"q": "a"}', "runs.1.inputs": '{"q": "b"}'}
    response = multipart(http, "bulk_run", data, [("runs.1.inputs.doc", ("d", b"x", "text/plain"))])
    assert response.status_code == 200, response.text
    assert [o["output"] for o in outputs(response.json())] == ["Processed: a", "Processed: <file d> b"]


def test_multipart_bulk_with_the_sdks_colliding_part_names(http: httpx.Client) -> None:
    """The SDK names file parts after the input only: the n-th goes to the n-th run lacking it."""
    data = {
        "runs": '[{"inputs": {"q": "a"}}, {"inputs": {"q": "b", "doc": "inline"}}, {"inputs": {"q": "c"}}]'
    }
    files = [("doc", ("doc", b"first", "text/plain")), ("doc", ("doc", b"second", "text/plain"))]
    response = multipart(http, "bulk-run", data, files)
    assert response.status_code == 200, response.text
    items = [o["inputs"]["items"]["doc"] for o in outputs(response.json())]
    assert [decode(items[0]), items[1], decode(items[2])] == [b"first", "inline", b"second"]


@pytest.mark.parametrize(
    ("data", "files", "needle"),
    [
        (
            {"runs": "[{}]"},
            [("doc", ("d", b"1", "x/y")), ("doc", ("d", b"2", "x/y"))],
            "2 file parts named 'doc'",
        ),
        ({"runs": "[{}]"}, [("runs.3.inputs.doc", ("d", b"1", "x/y"))], "runs.3.* does not match any run"),
        ({"runs.0.inputs": "{}", "runs.2.inputs": "{}"}, [], "runs.2.* does not match any run"),
        ({"runs": "not json"}, [], "Form field 'runs' is not valid JSON"),
        ({"runs.0.inputs": "[1]"}, [], "runs.0.inputs must be a JSON object"),
        ({"other": "x"}, [], "runs is required"),
        ({"runs": '[{"inputs": {"doc": "x"}}]'}, [("runs.0.inputs.doc", ("d", b"1", "x/y"))], "given twice"),
    ],
)
def test_multipart_bulk_mistakes_are_400(
    http: httpx.Client, data: dict[str, str], files: list[tuple[str, tuple[str, bytes, str]]], needle: str
) -> None:
    """Ambiguous or inconsistent multipart bulk bodies are refused before anything runs."""
    response = multipart(http, "bulk_run", data, files)  # no files: httpx sends urlencoded
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"--b\r\n\r\n--b--"),
        ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--"),
        ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; name=runs\r\n\r\n[]"),
        ("multipart/form-data; boundary=b", b"--b\r\nno blank line\r\n--b--"),
    ],
)
def test_broken_multipart_is_400(http: httpx.Client, content_type: str, body: bytes) -> None:
    """A multipart body without boundary, part name, header block or closing line is a 400."""
    response = http.post(f"/pipeline/{PIPE}/bulk_run", content=body, headers={"content-type": content_type})
    assert response.status_code == 400
    assert "multipart" in response.json()["error"]


def test_urlencoded_bulk_takes_runs_as_json_text(http: httpx.Client) -> None:
    """application/x-www-form-urlencoded carries runs as JSON text; file fields need multipart."""
    ok = http.post(f"/pipeline/{PIPE}/bulk_run", data={"runs": '[{"inputs": {"q": "u"}}]'})
    no_files = http.post(f"/pipeline/{PIPE}/bulk_run", data={"runs": "[{}]", "runs.0.inputs.doc": "x"})
    assert ok.request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert outputs(ok.json())[0]["output"] == "Processed: u"
    assert no_files.status_code == 400
    assert "needs a multipart/form-data body" in no_files.json()["error"]


# -- single runs ------------------------------------------------------------------------------


def test_single_run_json(http: httpx.Client) -> None:
    """POST /run answers {status, run_id, outputs} and echoes a trace_id."""
    response = http.post(f"/pipeline/{PIPE}/run", json={"inputs": {"q": "one"}, "trace_id": "t-1"})
    body = response.json()
    assert body["status"] == "success"
    assert HEX_ID.fullmatch(body["run_id"])
    assert body["outputs"]["output"] == "Processed: one"
    assert body["trace_id"] == "t-1"


@pytest.mark.parametrize("name", ["inputs.doc", "doc"])
def test_single_run_multipart_with_either_part_name(http: httpx.Client, name: str) -> None:
    """A single run takes inputs JSON plus a file part named inputs.<name> (docs) or <name> (SDK)."""
    files = [(name, ("n.txt", b"note", "text/plain"))]
    response = multipart(http, "run", {"inputs": '{"q": "f"}', "background": "false"}, files)
    body = response.json()
    assert body["status"] == "success", body
    assert decode(body["outputs"]["file"]) == b"processed:note"


def test_single_run_urlencoded_background_flag_as_text(http: httpx.Client) -> None:
    """Form flags arrive as "true"/"false" text, as the SDK sends them for the Go API."""
    response = http.post(f"/pipeline/{PIPE}/run", data={"inputs": '{"q": "bg"}', "background": "true"})
    assert set(response.json()) == {"task_id"}
    bad = http.post(f"/pipeline/{PIPE}/run", json={"inputs": {}, "background": "maybe"})
    assert bad.status_code == 400


def test_streaming_is_refused_plainly(http: httpx.Client) -> None:
    """stream: true is not emulated and says so instead of answering something made up."""
    response = http.post(f"/pipeline/{PIPE}/run", json={"inputs": {}, "stream": True})
    assert response.status_code == 400
    assert "stream" in response.json()["error"]


def test_single_run_failure_is_a_200_with_status_failed() -> None:
    """A failed single run answers 200 {status: "failed", error}; with run_failure="error", a 500."""
    pipelines = {PIPE: failing_on("bad")}
    with client(VectorShiftEmulator(pipelines=pipelines)) as http:
        soft = http.post(f"/pipeline/{PIPE}/run", json={"inputs": {"question": "bad"}})
    hard_emu = VectorShiftEmulator(pipelines=pipelines, run_failure="error")
    with client(hard_emu) as http:
        hard = http.post(f"/pipeline/{PIPE}/run", json={"inputs": {"question": "bad"}})
    assert (soft.status_code, soft.json()["status"], soft.json()["error"]) == (
        200,
        "failed",
        "cannot answer bad",
    )
    assert hard.status_code == 500
    assert hard.json() == {"status": "failed", "error": "cannot answer bad"}
    assert hard_emu.create_requests == 1  # the run happened and was charged


# -- failed runs inside a bulk call -----------------------------------------------------------


def test_run_failure_per_run_marks_the_entry() -> None:
    """per_run: the batch status is failed and only the failing entry carries status and error."""
    emu = VectorShiftEmulator(pipelines={PIPE: failing_on("q1")})
    with client(emu) as http:
        body = bulk(http, rows(3))
    entries = body["run_outputs"]
    assert body["status"] == "failed"
    assert [e["status"] for e in entries] == ["success", "failed", "success"]
    assert entries[1]["error"] == "cannot answer q1"
    assert entries[1]["outputs"] == {}
    assert entries[2]["outputs"] == {"answer": "A: q2"}


def test_run_failure_batch_hides_which_run_failed() -> None:
    """batch: a 200 whose status is failed; the failed entry is just an empty outputs map."""
    emu = VectorShiftEmulator(pipelines={PIPE: failing_on("q0")}, run_failure="batch")
    with client(emu) as http:
        body = bulk(http, rows(2))
    assert body["status"] == "failed"
    assert body["run_outputs"][0].keys() == {"run_id", "outputs"}
    assert outputs(body) == [{}, {"answer": "A: q1"}]


def test_run_failure_error_loses_the_whole_batch_but_charges_it() -> None:
    """error: one failed run makes the call a 500; every row was still run and charged."""
    emu = VectorShiftEmulator(pipelines={PIPE: failing_on("q1")}, run_failure="error")
    with client(emu) as http:
        body = bulk(http, rows(3), status=500)
    assert body == {"status": "failed", "error": "1 of 3 runs failed: cannot answer q1"}
    assert sum(emu.charges().values()) == 3


def test_failure_rate_is_deterministic_per_input() -> None:
    """The same input fails on every rerun and in every emulator with the same seed."""

    def failed(emu: VectorShiftEmulator) -> list[int]:
        with client(emu) as http:
            body = bulk(http, rows(40))
        return [i for i, e in enumerate(body["run_outputs"]) if e["status"] == "failed"]

    first = failed(VectorShiftEmulator(failure_rate=0.3, seed=1))
    assert 0 < len(first) < 40
    assert failed(VectorShiftEmulator(failure_rate=0.3, seed=1)) == first
    assert failed(VectorShiftEmulator(failure_rate=0.3, seed=2)) != first


def test_out_of_order_shuffles_run_outputs() -> None:
    """out_of_order answers run_outputs in another order than the inputs."""
    emu = VectorShiftEmulator(out_of_order=True)
    with client(emu) as http:
        body = bulk(http, rows(2))
    assert [o["output"] for o in outputs(body)] == ["Processed: q1", "Processed: q0"]


# -- size, time and faults --------------------------------------------------------------------


def test_max_bulk_rows_is_413_and_runs_nothing() -> None:
    """A bulk call larger than max_bulk_rows is a 413; a call at the limit runs."""
    emu = VectorShiftEmulator(max_bulk_rows=2)
    with client(emu) as http:
        refused = bulk(http, rows(3), status=413)
        bulk(http, rows(2))
    assert "3 > 2" in refused["error"]
    assert sum(emu.charges().values()) == 2


def test_bulk_timeout_counts_accumulated_row_latency_and_runs_nothing() -> None:
    """Work is the sum of row latencies: 3 x 0.3 s fits a 1 s timeout, 4 rows are a 504."""
    emu = VectorShiftEmulator(latency=0.3, bulk_timeout=1.0)
    started = time.monotonic()
    with client(emu) as http:
        bulk(http, rows(3))
        timed_out = bulk(http, rows(4), status=504)
    assert time.monotonic() - started < 0.5  # in-process: emulated time, never slept
    assert timed_out["status"] == "failed"
    assert sum(emu.charges().values()) == 3
    assert emu.create_requests == 1


def test_socket_server_really_sleeps_for_the_rows_latency() -> None:
    """Over a socket, a bulk call takes the sum of its rows' latency."""
    emu = VectorShiftEmulator(latency=0.05)
    with emu.serve() as server, httpx.Client(base_url=server.url + "/v1", headers=AUTH) as http:
        started = time.monotonic()
        bulk(http, rows(4))
        elapsed = time.monotonic() - started
    assert elapsed >= 0.2


def test_drop_on_a_bulk_create_charges_every_row_and_loses_the_answer() -> None:
    """inject("drop", op="create"): the batch runs and is charged, then the connection drops."""
    emu = VectorShiftEmulator()
    emu.inject("drop", op="create")
    with client(emu) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            http.post(f"/pipeline/{PIPE}/bulk-run", json={"runs": [{"inputs": i} for i in rows(3)]})
        bulk(http, rows(3))  # the client's retry: now everything is paid twice
    assert len(emu.duplicates()) == 3
    assert emu.requests()["fault:drop"] == 1


def test_drop_over_a_socket_closes_without_an_answer() -> None:
    """Over a socket, the dropped bulk call is a disconnect after the rows were charged."""
    emu = VectorShiftEmulator()
    emu.inject("drop", op="create")
    with (
        emu.serve() as server,
        httpx.Client(base_url=server.url + "/v1", headers=AUTH) as http,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        http.post(f"/pipeline/{PIPE}/bulk_run", json={"runs": [{"inputs": {"a": "1"}}]})
    assert emu.charges() == Counter({'{"a":"1"}': 1})


def test_handler_raises_drop_connection_for_the_server() -> None:
    """handler() (the socket server's entry) signals a drop with DropConnection."""
    emu = VectorShiftEmulator()
    emu.inject("drop_before")
    request = httpx.Request(
        "POST", f"http://x/v1/pipeline/{PIPE}/bulk_run", json={"runs": [{}]}, headers=AUTH
    )
    with pytest.raises(DropConnection):
        emu.handler(request)
    assert emu.create_requests == 0


@pytest.mark.parametrize("kind", ["429", "500", "503"])
def test_injected_refusals_use_the_vendor_error_shape(kind: str) -> None:
    """Injected 429/5xx answer {status: "failed", error} (429 with Retry-After) and run nothing."""
    emu = VectorShiftEmulator(faults=Faults(retry_after=2.5))
    emu.inject(kind, op="create")  # type: ignore[arg-type]
    with client(emu) as http:
        body = bulk(http, rows(1), status=int(kind))
    assert body["status"] == "failed"
    assert body["error"]
    assert emu.create_requests == 0


def test_retry_after_on_injected_429() -> None:
    """An injected 429 carries the configured Retry-After."""
    emu = VectorShiftEmulator(faults=Faults(retry_after=2.5))
    emu.inject("429")
    with client(emu) as http:
        response = http.post(f"/pipeline/{PIPE}/bulk_run", json={"runs": [{}]})
    assert response.headers["retry-after"] == "2.5"


def test_rate_limit_per_minute_is_429_until_the_window_moves(clock: HandClock) -> None:
    """rate_limit_per_minute counts run-starting POSTs per key in a 60 s window."""
    emu = VectorShiftEmulator(rate_limit_per_minute=2, clock=clock)
    with client(emu) as http:
        bulk(http, rows(1))
        start(http, {"q": "x"})
        limited = http.post(f"/pipeline/{PIPE}/bulk_run", json={"runs": [{}]})
        clock.now = 60.0
        bulk(http, rows(1))
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "60"
    assert limited.json()["status"] == "failed"


# -- background runs --------------------------------------------------------------------------


def test_background_run_lifecycle_with_result_lag(clock: HandClock) -> None:
    """in_progress until latency, then completed without result until result_lag has passed."""
    emu = VectorShiftEmulator(latency=5.0, result_lag=3.0, clock=clock)
    with client(emu) as http:
        task_id = start(http, {"q": "bg"})
        running = status(http, task_id)
        clock.now = 5.0
        lagging = status(http, task_id)
        clock.now = 8.0
        done = status(http, task_id)
    assert running == {"task_id": task_id, "status": "in_progress"}
    assert lagging == {"task_id": task_id, "status": "completed"}
    assert done["result"]["output"] == "Processed: bg"
    assert emu.charges() == Counter({'{"q":"bg"}': 1})
    assert emu.create_requests == 1


def test_lagging_result_empty_and_guide_vocabulary(clock: HandClock) -> None:
    """status_names="guide" says running/succeeded; lagging_result="empty" sends result {}."""
    emu = VectorShiftEmulator(
        latency=1.0, result_lag=1.0, status_names="guide", lagging_result="empty", clock=clock
    )
    with client(emu) as http:
        task_id = start(http, {"q": "g"})
        seen = [status(http, task_id)]
        clock.now = 1.0
        seen.append(status(http, task_id))
        clock.now = 2.0
        seen.append(status(http, task_id))
    assert [s["status"] for s in seen] == ["running", "succeeded", "succeeded"]
    assert "result" not in seen[0]
    assert seen[1]["result"] == {}
    assert seen[2]["result"]["output"] == "Processed: g"


def test_background_failure_reports_the_error(clock: HandClock) -> None:
    """A failed background run settles as failed with the pipeline's message."""
    emu = VectorShiftEmulator(pipelines={PIPE: failing_on("x")}, latency=1.0, clock=clock)
    with client(emu) as http:
        task_id = start(http, {"question": "x"})
        clock.now = 1.0
        body = status(http, task_id)
    assert body == {"task_id": task_id, "status": "failed", "error": "cannot answer x"}


def test_jitter_spreads_background_finishes(clock: HandClock) -> None:
    """Each run finishes between latency and latency + jitter, not all at once."""
    emu = VectorShiftEmulator(latency=1.0, jitter=1.0, clock=clock)
    with client(emu) as http:
        tasks = [start(http, {"q": i}) for i in range(20)]
        states = []
        for now in (0.999, 1.5, 2.0):
            clock.now = now
            states.append({status(http, t)["status"] for t in tasks})
    assert states == [{"in_progress"}, {"in_progress", "completed"}, {"completed"}]


def test_terminate_cancels_a_running_run_and_keeps_its_charge(clock: HandClock) -> None:
    """terminate: success while in progress (then cancelled), failed once no longer running."""
    emu = VectorShiftEmulator(latency=10.0, clock=clock)
    with client(emu) as http:
        task_id = start(http, {"q": "stop"})
        first = http.post(f"/pipeline/{PIPE}/terminate", json={"run_id": task_id})
        again = http.post(f"/pipeline/{PIPE}/terminate", data={"run_id": task_id})
        clock.now = 20.0
        after = status(http, task_id)
    assert first.json() == {"status": "success"}
    assert (again.status_code, again.json()["status"]) == (200, "failed")
    assert after == {"task_id": task_id, "status": "cancelled"}
    assert sum(emu.charges().values()) == 1


@pytest.mark.parametrize(
    ("pipe", "route"),
    [(PIPE, "status"), ("elsewhere", "status"), (PIPE, "terminate"), ("elsewhere", "terminate")],
)
def test_unknown_or_foreign_run_ids_are_404(http: httpx.Client, pipe: str, route: str) -> None:
    """A run id that is unknown, or belongs to another pipeline, is a 404."""
    task_id = start(http, {"q": "x"})
    run_id = "f" * 24 if pipe == PIPE else task_id
    if route == "status":
        response = http.get(f"/pipeline/{pipe}/run/status/{run_id}")
    else:
        response = http.post(f"/pipeline/{pipe}/terminate", json={"run_id": run_id})
    assert response.status_code == 404
    assert response.json()["status"] == "failed"


def test_terminate_needs_a_run_id(http: httpx.Client) -> None:
    """terminate without run_id is a 400."""
    response = http.post(f"/pipeline/{PIPE}/terminate", json={})
    assert response.status_code == 400


# -- knobs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "knobs",
    [
        {"latency": -1.0},
        {"bulk_timeout": float("inf")},
        {"failure_rate": 1.5},
        {"max_bulk_rows": 0},
        {"rate_limit_per_minute": 0},
        {"run_failure": "sometimes"},
        {"status_names": "mine"},
        {"lagging_result": "late"},
    ],
)
def test_bad_knobs_are_refused(knobs: dict[str, Any]) -> None:
    """Constructor knobs are checked up front."""
    with pytest.raises(ValueError, match=next(iter(knobs))):
        VectorShiftEmulator(**knobs)


def test_repr_never_shows_keys() -> None:
    """repr counts the API keys instead of printing them."""
    text = repr(VectorShiftEmulator(api_keys={"sk-secret"}))
    assert "sk-secret" not in text
    assert "<1 keys>" in text


# -- the official SDK -------------------------------------------------------------------------


class TickingClock:
    """Moves one second per read, so the SDK's real-time polling sees a deterministic run."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[VectorShiftEmulator], Any]]:
    """Connects vectorshift 0.1.15 to an emulator over a socket; the base URL ends in /v1."""
    import vectorshift  # a test dependency (pyproject [test])
    from vectorshift import request as vs_request
    from vectorshift.pipeline import Pipeline

    with ExitStack() as servers:

        def connect(emu: VectorShiftEmulator) -> Any:
            server = servers.enter_context(emu.serve())
            # The SDK reads VECTORSHIFT_BASE_URL once, at import; patch the client it built.
            monkeypatch.setattr(vs_request.request_client, "base_url", server.url + "/v1")
            monkeypatch.setattr(vectorshift, "api_key", KEY)
            return Pipeline(id=PIPE)

        yield connect


def test_official_sdk_bulk_run_with_files(sdk: Callable[[VectorShiftEmulator], Any]) -> None:
    """Pipeline.bulk_run (multipart, colliding part names) gets every output, files decodable."""
    emu = VectorShiftEmulator(api_keys={KEY})
    answer = sdk(emu).bulk_run([{"q": "a", "doc": b"alpha"}, {"q": "b", "doc": b"beta"}, {"q": "c"}])
    outs = outputs(answer)
    assert answer["status"] == "success"
    assert [o["output"] for o in outs] == [
        "Processed: <file doc> a",
        "Processed: <file doc> b",
        "Processed: c",
    ]
    assert [decode(o["file"]) for o in outs[:2]] == [b"processed:alpha", b"processed:beta"]
    assert emu.requests()["bulk-run"] == 1
    assert emu.create_requests == 1


def test_official_sdk_background_run(sdk: Callable[[VectorShiftEmulator], Any]) -> None:
    """Pipeline.start, then RunHandler.result polls past the result lag to the outputs."""
    emu = VectorShiftEmulator(latency=2.0, result_lag=2.0, clock=TickingClock())
    handle = sdk(emu).start({"q": "later"})  # clock 1: finishes at 3, result at 5
    first = handle.run_status()  # clock 2
    final = handle.result(poll_interval=0.001, timeout=5.0)  # clocks 3 and 4 lag, 5 has it
    assert first == {"task_id": handle.task_id, "status": "in_progress"}
    assert final["status"] == "completed"
    assert final["result"]["output"] == "Processed: later"
    assert emu.requests()["run_status"] == 4


def test_official_sdk_maps_emulator_errors(
    sdk: Callable[[VectorShiftEmulator], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK turns the emulator's 400, 404 and 401 bodies into its typed errors and messages."""
    from vectorshift import request as vs_request

    pipeline = sdk(VectorShiftEmulator(api_keys={KEY}))
    with pytest.raises(vs_request.BadRequestError, match="not valid base64"):
        pipeline.bulk_run([{"doc": {"type": "file", "raw_bytes": "!!"}}])
    with pytest.raises(vs_request.NotFoundError, match="Run not found"):
        pipeline.run_status("f" * 24)
    monkeypatch.setattr("vectorshift.api_key", "wrong-key")
    with pytest.raises(vs_request.AuthenticationError, match="Invalid API key"):
        pipeline.bulk_run([{"q": "x"}])


# -- the OpenAPI document ---------------------------------------------------------------------


def load_seed_openapi() -> dict[str, Any]:
    """The OpenAPI document embedded (as a ````yaml block) in the docs page we were given."""
    import yaml  # schemathesis depends on it

    text = SEED_OPENAPI.read_text(encoding="utf-8")
    block = re.search(r"^````yaml[^\n]*\n(.*?)^````", text, re.DOTALL | re.MULTILINE)
    assert block is not None, "no OpenAPI block in the seed file"
    document = yaml.safe_load(block[1])
    assert isinstance(document, dict)
    # The document's DataType is a ``oneOf`` listing both ``integer`` and ``number``: every
    # integer matches both, so strict oneOf calls any integer value invalid, and schemathesis'
    # negative mode "expects" a rejection the vendor (and the emulator) never gives. Integers
    # are meant: let them match ``number`` only (the branch stays, so the discriminator's
    # ``oneOf/5``, ``oneOf/6`` references keep pointing at map and file).
    branches = document["components"]["schemas"]["DataType"]["oneOf"]
    assert branches[1] == {"type": "integer"}
    branches[1] = {"type": "integer", "not": {}}
    return document


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_bulk_run_against_the_vendor_openapi(mode: str) -> None:
    """Generated bulk_run calls get no 5xx, schema-valid answers, and invalid ones a 4xx."""
    import schemathesis  # a test dependency (pyproject [test])
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import negative_data_rejection, response_schema_conformance

    operation = schemathesis.openapi.from_dict(load_seed_openapi())["/pipeline/{id}/bulk_run"]["POST"]
    checks = [not_a_server_error, response_schema_conformance]
    # Not positive_data_acceptance: schema-valid "runs: []" is a 422 and "format: base64"
    # is not a format the generator knows, so its raw_bytes are mostly not base64 (400).
    checks += [negative_data_rejection] if mode == "negative" else []
    strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    emu = VectorShiftEmulator(api_keys={KEY})
    seen: Counter[tuple[str, int]] = Counter()
    with emu.serve() as server:

        @settings(
            max_examples=50,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def check(case: Any) -> None:
            response = case.call_and_validate(base_url=server.url + "/v1", headers=AUTH, checks=checks)
            seen[(case.media_type, response.status_code)] += 1

        check()
        if mode == "positive":
            # A plain valid call too: which generated bodies the API accepts depends on the
            # generator's draws (schema-valid ``runs: []`` is refused), so a 200 answer is
            # checked against the response schema here, whatever was generated.
            valid = operation.Case(
                path_parameters={"id": PIPE},
                body={"runs": [{"inputs": {"q": "x"}}]},
                media_type="application/json",
            )
            answer = valid.call_and_validate(base_url=server.url + "/v1", headers=AUTH, checks=checks)
            seen[(valid.media_type, answer.status_code)] += 1
    assert sum(seen.values()) >= 50
    assert {media for media, _ in seen} == {
        "application/json",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
    }
    expected = 200 if mode == "positive" else 400  # real answers were produced, not only one error
    assert seen[("application/json", expected)] > 0
    assert all(code < 500 for _, code in seen)
