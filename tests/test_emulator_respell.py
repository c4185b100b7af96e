"""The Respell emulator: the vendor contract, fault injection, accounting and its server."""

from __future__ import annotations

import _thread
import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest
from conftest import HandClock

from frame_batch.testing import (
    DropConnection,
    Faults,
    RespellEmulator,
    ServerHandle,
    serve,
    serve_forever,
)

KEY = "test-key"
AUTH = {"authorization": f"Bearer {KEY}"}


def client(emu: RespellEmulator, headers: dict[str, str] | None = None) -> httpx.Client:
    return httpx.Client(
        transport=emu.transport(),
        base_url="http://respell.test",
        headers=AUTH if headers is None else headers,
    )


def topics(n: int) -> list[dict[str, object]]:
    return [{"search_topic": f"topic {i}"} for i in range(n)]


def bulk_start(http: httpx.Client, inputs: list[dict[str, object]], spell: str = "sp1") -> str:
    response = http.post("/spells/bulkStart", json={"spellId": spell, "inputs": inputs})
    assert response.status_code == 200, response.text
    run_id = response.json()["runId"]
    assert isinstance(run_id, str)
    return run_id


def get_runs(http: httpx.Client, group_id: str, key: str = "groupId") -> list[dict[str, object]]:
    response = http.post("/spells/getBulkRuns", json={key: group_id})
    assert response.status_code == 200, response.text
    runs = response.json()["runs"]
    assert isinstance(runs, list)
    return runs


@pytest.fixture
def clock() -> HandClock:
    return HandClock()


# -- the contract -------------------------------------------------------------------------


def test_round_trip_in_process() -> None:
    """bulkStart then getBulkRuns answers every input, in input order, with outputs."""
    emu = RespellEmulator()
    with client(emu) as http:
        runs = get_runs(http, bulk_start(http, topics(3)))
    assert [r["index"] for r in runs] == [0, 1, 2]
    assert [r["inputs"] for r in runs] == topics(3)
    assert {r["state"] for r in runs} == {"success"}
    assert runs[1]["outputs"] == {"summary": "Summary: topic 1", "length": 7}
    assert len({r["id"] for r in runs}) == 3


def test_round_trip_over_socket() -> None:
    """The same round trip works over a real loopback socket, with keep-alive."""
    emu = RespellEmulator()
    with emu.serve() as srv, httpx.Client(base_url=srv.url, headers=AUTH) as http:
        assert srv.url == f"http://127.0.0.1:{srv.port}"
        runs = get_runs(http, bulk_start(http, topics(2)))
        runs_again = get_runs(http, bulk_start(http, topics(2)))
    assert [r["state"] for r in runs + runs_again] == ["success"] * 4
    assert emu.requests()["bulkStart"] == 2


def test_async_client_in_process() -> None:
    """transport() also serves httpx.AsyncClient."""
    emu = RespellEmulator()

    async def main() -> int:
        async with httpx.AsyncClient(
            transport=emu.transport(), base_url="http://respell.test", headers=AUTH
        ) as http:
            body = {"spellId": "s", "inputs": topics(2)}
            response = await http.post("/spells/bulkStart", json=body)
            return response.status_code

    assert asyncio.run(main()) == 200
    assert emu.create_requests == 1


def test_latency_follows_the_clock(clock: HandClock) -> None:
    """Runs stay running until created_at + latency, then finish."""
    emu = RespellEmulator(latency=10.0, clock=clock)
    with client(emu) as http:
        group = bulk_start(http, topics(2))
        clock.now = 9.99
        running = get_runs(http, group)
        clock.now = 10.0
        done = get_runs(http, group)
    assert [r["state"] for r in running] == ["running", "running"]
    assert "outputs" not in running[0]
    assert [r["state"] for r in done] == ["success", "success"]


def test_jitter_stays_within_bounds(clock: HandClock) -> None:
    """Each run finishes between latency and latency + jitter, not all at once."""
    emu = RespellEmulator(latency=1.0, jitter=1.0, clock=clock)
    with client(emu) as http:
        group = bulk_start(http, topics(20))
        clock.now = 0.999
        early = [r["state"] for r in get_runs(http, group)]
        clock.now = 1.5
        middle = {r["state"] for r in get_runs(http, group)}
        clock.now = 2.0
        late = [r["state"] for r in get_runs(http, group)]
    assert set(early) == {"running"}
    assert middle == {"running", "success"}
    assert set(late) == {"success"}


def test_failure_rate_is_deterministic_per_input() -> None:
    """The same input fails on every rerun and in every emulator with the same seed."""
    inputs = topics(40)

    def failed(emu: RespellEmulator) -> list[int]:
        with client(emu) as http:
            runs = get_runs(http, bulk_start(http, inputs))
        return [int(str(r["index"])) for r in runs if r["state"] == "failed"]

    emu = RespellEmulator(failure_rate=0.5)
    first, rerun = failed(emu), failed(emu)
    assert first == rerun == failed(RespellEmulator(failure_rate=0.5))
    assert 0 < len(first) < 40
    assert failed(RespellEmulator(failure_rate=0.5, seed=1)) != first


def test_failed_run_has_error_and_no_outputs() -> None:
    """A failed run reports an error message and no outputs, and is still charged."""
    emu = RespellEmulator(failure_rate=1.0)
    with client(emu) as http:
        (run,) = get_runs(http, bulk_start(http, topics(1)))
    assert run["state"] == "failed"
    assert "outputs" not in run
    assert isinstance(run["error"], str)
    assert run["error"]
    assert sum(emu.charges().values()) == 1


def test_custom_spells_and_spell_exceptions() -> None:
    """A given spell computes outputs; its exception fails only that run."""

    def shout(inputs: dict[str, object]) -> dict[str, object]:
        if inputs["word"] == "boom":
            raise RuntimeError("cannot shout boom")
        return {"loud": str(inputs["word"]).upper()}

    emu = RespellEmulator(spells={"shout": shout})
    with client(emu) as http:
        runs = get_runs(http, bulk_start(http, [{"word": "hi"}, {"word": "boom"}], "shout"))
    assert runs[0]["outputs"] == {"loud": "HI"}
    assert (runs[1]["state"], runs[1]["error"]) == ("failed", "cannot shout boom")


def test_out_of_order_reorders_but_keeps_index() -> None:
    """out_of_order shuffles the listing; every run keeps its own index and inputs."""
    emu = RespellEmulator(out_of_order=True)
    with client(emu) as http:
        runs = get_runs(http, bulk_start(http, topics(10)))
    indexes = [int(str(r["index"])) for r in runs]
    assert indexes != list(range(10))
    assert sorted(indexes) == list(range(10))
    assert all(r["inputs"] == {"search_topic": f"topic {r['index']}"} for r in runs)


def test_cancel_stops_unfinished_runs_and_keeps_charges(clock: HandClock) -> None:
    """cancelBulk cancels running runs only; finished ones keep their result."""
    emu = RespellEmulator(jitter=10.0, clock=clock)
    with client(emu) as http:
        group = bulk_start(http, topics(20))
        clock.now = 5.0
        finished = {r["index"] for r in get_runs(http, group) if r["state"] == "success"}
        response = http.post("/spells/cancelBulk", json={"groupId": group})
        clock.now = 100.0
        runs = get_runs(http, group)
    assert response.json() == {"success": True}
    assert 0 < len(finished) < 20
    assert {r["index"] for r in runs if r["state"] == "success"} == finished
    assert sum(r["state"] == "cancelled" for r in runs) == 20 - len(finished)
    assert sum(emu.charges().values()) == 20


@pytest.mark.parametrize("key", ["groupId", "runId", "bulkRunId"])
def test_group_id_aliases(key: str) -> None:
    """getBulkRuns and cancelBulk accept the id as groupId, runId or bulkRunId."""
    emu = RespellEmulator()
    with client(emu) as http:
        group = bulk_start(http, topics(1))
        assert len(get_runs(http, group, key)) == 1
        assert http.post("/spells/cancelBulk", json={key: group}).status_code == 200


def test_single_start_wait_and_no_wait() -> None:
    """start answers outputs with wait (bool or string) and only an id without; both charge."""
    emu = RespellEmulator()
    with client(emu) as http:
        body = {"spellId": "s", "inputs": {"search_topic": "x"}}
        waited = http.post("/spells/start", json={**body, "wait": "true"}).json()
        waited_bool = http.post("/spells/start", json={**body, "wait": True}).json()
        queued = http.post("/spells/start", json={**body, "wait": "false"}).json()
        bad = http.post("/spells/start", json={**body, "wait": "soon"})
    assert waited["state"] == waited_bool["state"] == "success"
    assert waited["outputs"] == {"summary": "Summary: x", "length": 1}
    assert set(queued) == {"id"}
    assert bad.status_code == 400
    assert emu.charges() == {'{"search_topic":"x"}': 3}
    assert emu.create_requests == 0  # only bulkStart counts as a batch


class SleepRecorder:
    """An injected ``sleep``: records each wait, what was charged by then, and moves the clock."""

    def __init__(self, emu_clock: HandClock) -> None:
        self.clock = emu_clock
        self.waits: list[float] = []
        self.charged_before: list[int] = []
        self.emulator: RespellEmulator | None = None

    def __call__(self, seconds: float) -> None:
        assert self.emulator is not None
        self.waits.append(seconds)
        self.charged_before.append(sum(self.emulator.charges().values()))
        self.clock.now += seconds


def test_single_start_waits_out_latency_before_answering(clock: HandClock) -> None:
    """wait mode answers only after sleeping latency (+ jitter), charged first; no-wait answers at once."""
    sleep = SleepRecorder(clock)
    emu = RespellEmulator(latency=2.0, jitter=1.0, clock=clock, sleep=sleep)
    sleep.emulator = emu
    body = {"spellId": "s", "inputs": {"search_topic": "x"}}
    with client(emu) as http:
        queued = http.post("/spells/start", json={**body, "wait": False}).json()
        assert sleep.waits == []  # polling mode: just the id, nothing waited for
        waited = http.post("/spells/start", json={**body, "wait": "true"}).json()
    assert set(queued) == {"id"}
    assert waited["state"] == "success"
    assert len(sleep.waits) == 1
    assert 2.0 <= sleep.waits[0] <= 3.0
    assert clock.now == sleep.waits[0]  # the answer came after the run's whole latency
    assert sleep.charged_before == [2]  # the input was charged before the wait began


def test_single_start_with_zero_latency_never_sleeps(clock: HandClock) -> None:
    """latency 0 (the default) answers a wait-mode run without calling sleep at all."""
    sleep = SleepRecorder(clock)
    emu = RespellEmulator(clock=clock, sleep=sleep)
    sleep.emulator = emu
    with client(emu) as http:
        answer = http.post("/spells/start", json={"spellId": "s", "inputs": {"a": 1}, "wait": True})
    assert answer.json()["state"] == "success"
    assert sleep.waits == []


def test_single_start_over_socket_answers_only_when_the_wait_ends() -> None:
    """Over a socket the wait-mode answer is held until the emulator's sleep returns."""
    entered, release = threading.Event(), threading.Event()
    waits: list[float] = []

    def gated_sleep(seconds: float) -> None:
        waits.append(seconds)
        entered.set()
        assert release.wait(timeout=10)

    emu = RespellEmulator(latency=0.5, sleep=gated_sleep)
    answers: list[httpx.Response] = []
    with emu.serve() as srv, httpx.Client(base_url=srv.url, headers=AUTH) as http:
        body = {"spellId": "s", "inputs": {"a": 1}, "wait": True}
        caller = threading.Thread(target=lambda: answers.append(http.post("/spells/start", json=body)))
        caller.start()
        assert entered.wait(timeout=10)
        assert answers == []  # the run is still going: no answer yet
        release.set()
        caller.join(timeout=10)
    assert waits == [0.5]
    assert [a.json()["state"] for a in answers] == ["success"]


# -- auth and errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {KEY}"},
        {"Authorization": f"bearer {KEY}"},
        {"x-api-key": KEY},
        {"X-API-KEY": KEY},
    ],
)
def test_both_auth_headers_accepted(headers: dict[str, str]) -> None:
    """Bearer authorization and x-api-key both work, case-insensitively."""
    emu = RespellEmulator(api_keys={KEY})
    with client(emu, headers) as http:
        assert http.post("/spells/bulkStart", json={"spellId": "s", "inputs": topics(1)}).is_success


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Missing API key"),
        ({"authorization": "Bearer "}, "Missing API key"),
        ({"authorization": "Bearer sk-wrong-secret"}, "Invalid API key"),
        ({"x-api-key": "sk-wrong-secret"}, "Invalid API key"),
    ],
)
def test_missing_or_wrong_key_is_401(headers: dict[str, str], message: str) -> None:
    """A missing or unknown key gets 401, nothing is charged, and the key is never echoed."""
    emu = RespellEmulator(api_keys={KEY})
    with client(emu, headers) as http:
        response = http.post("/spells/bulkStart", json={"spellId": "s", "inputs": topics(1)})
    assert (response.status_code, response.json()) == (401, {"error": message})
    assert "sk-wrong-secret" not in response.text
    assert not emu.charges()


def test_any_non_empty_key_accepted_without_api_keys() -> None:
    """With api_keys=None any key works, but some key is still required."""
    emu = RespellEmulator()
    with client(emu, {"x-api-key": "whatever"}) as http:
        assert http.post("/spells/getBulkRuns", json={"groupId": "nope"}).status_code == 404
    with client(emu, {}) as http:
        assert http.post("/spells/getBulkRuns", json={"groupId": "nope"}).status_code == 401


def test_repr_hides_api_keys() -> None:
    """The emulator's repr never shows the keys it accepts."""
    assert "sk-secret" not in repr(RespellEmulator(api_keys={"sk-secret"}))


def test_unknown_spell_and_group_are_404() -> None:
    """Unknown spell ids (when spells are given) and unknown group ids answer 404."""
    emu = RespellEmulator(spells={"known": lambda inputs: {}})
    with client(emu) as http:
        spell = http.post("/spells/bulkStart", json={"spellId": "other", "inputs": topics(1)})
        group = http.post("/spells/getBulkRuns", json={"groupId": "cm-unknown"})
        cancel = http.post("/spells/cancelBulk", json={"groupId": "cm-unknown"})
    assert (spell.status_code, spell.json()) == (404, {"error": "Spell not found: other"})
    assert group.status_code == cancel.status_code == 404
    assert not emu.charges()


@pytest.mark.parametrize(
    ("route", "content"),
    [
        ("/spells/bulkStart", b"{not json"),
        ("/spells/bulkStart", b"[1, 2]"),
        ("/spells/bulkStart", b'{"inputs": [{"a": 1}]}'),
        ("/spells/bulkStart", b'{"spellId": 7, "inputs": [{"a": 1}]}'),
        ("/spells/bulkStart", b'{"spellId": "s", "inputs": []}'),
        ("/spells/bulkStart", b'{"spellId": "s", "inputs": {"a": 1}}'),
        ("/spells/bulkStart", b'{"spellId": "s", "inputs": [{"a": 1}, "text"]}'),
        ("/spells/bulkStart", b'{"spellId": "s", "inputs": [{"a": 1}, {"a": 2}, {"a": 3}]}'),
        ("/spells/getBulkRuns", b"{}"),
        ("/spells/start", b'{"spellId": "s", "inputs": [{"a": 1}]}'),
    ],
)
def test_bad_bodies_are_400(route: str, content: bytes) -> None:
    """Malformed JSON, wrong shapes and too many inputs answer 400 and charge nothing."""
    emu = RespellEmulator(max_inputs=2)
    with client(emu) as http:
        response = http.post(route, content=content)
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)
    assert not emu.charges()


def test_unknown_route_404_and_wrong_method_405() -> None:
    """Unknown paths answer 404; known paths with another method answer 405."""
    emu = RespellEmulator()
    with client(emu) as http:
        assert http.post("/spells/nothing", json={}).status_code == 404
        wrong = http.get("/spells/getBulkRuns")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"


# -- faults -------------------------------------------------------------------------------


def test_429_carries_retry_after_and_does_nothing() -> None:
    """A 429 carries Retry-After (fractional allowed) and the create is not charged."""
    emu = RespellEmulator(faults=Faults(retry_after=0.05))
    emu.inject("429", op="create")
    with client(emu) as http:
        refused = http.post("/spells/bulkStart", json={"spellId": "s", "inputs": topics(1)})
        accepted = http.post("/spells/bulkStart", json={"spellId": "s", "inputs": topics(1)})
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "0.05"
    assert accepted.status_code == 200
    assert emu.create_requests == 1
    assert emu.requests()["fault:429"] == 1


@pytest.mark.parametrize("kind", ["500", "503"])
def test_scripted_5xx(kind: str) -> None:
    """A scripted 5xx answers that status once, then requests succeed again."""
    emu = RespellEmulator()
    with client(emu) as http:
        group = bulk_start(http, topics(1))
        emu.inject(kind, op="read", count=2)  # type: ignore[arg-type]
        statuses = [http.post("/spells/getBulkRuns", json={"groupId": group}).status_code]
        statuses += [http.post("/spells/getBulkRuns", json={"groupId": group}).status_code]
        statuses += [http.post("/spells/getBulkRuns", json={"groupId": group}).status_code]
    assert statuses == [int(kind), int(kind), 200]


def test_drop_before_create_is_a_connect_error_and_charges_nothing() -> None:
    """drop_before looks like a connection failure and nothing was processed."""
    emu = RespellEmulator()
    emu.inject("drop_before", op="create")
    with client(emu) as http, pytest.raises(httpx.ConnectError):
        http.post("/spells/bulkStart", json={"spellId": "s", "inputs": topics(1)})
    assert emu.create_requests == 0
    assert not emu.charges()


def test_drop_on_create_is_processed_then_lost() -> None:
    """A dropped create was recorded and charged; only the answer is lost."""
    emu = RespellEmulator()
    emu.inject("drop", op="create")
    with client(emu) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            http.post("/spells/bulkStart", json={"spellId": "s", "inputs": topics(2)})
        bulk_start(http, topics(2))  # the blind retry a careless client would send
    assert emu.create_requests == 2
    assert emu.duplicates() == {'{"search_topic":"topic 0"}': 2, '{"search_topic":"topic 1"}': 2}


def test_drop_on_read_is_not_processed() -> None:
    """A dropped read raises RemoteProtocolError and the next read succeeds."""
    emu = RespellEmulator()
    with client(emu) as http:
        group = bulk_start(http, topics(1))
        emu.inject("drop", op="read")
        with pytest.raises(httpx.RemoteProtocolError) as caught:
            http.post("/spells/getBulkRuns", json={"groupId": group})
        assert caught.value.request.url.path == "/spells/getBulkRuns"
        assert len(get_runs(http, group)) == 1
    assert emu.requests()["fault:drop"] == 1


def test_scripted_faults_wait_for_a_matching_op() -> None:
    """A fault scripted for reads lets creates through and hits the next read."""
    emu = RespellEmulator()
    emu.inject("503", op="read")
    with client(emu) as http:
        group = bulk_start(http, topics(1))
        cancel = http.post("/spells/cancelBulk", json={"groupId": group})
        read = http.post("/spells/getBulkRuns", json={"groupId": group})
    assert (cancel.status_code, read.status_code) == (200, 503)


def test_random_faults_hit_only_the_chosen_ops() -> None:
    """Faults(on="reads") leaves creates alone; on="creates" leaves reads alone."""
    emu = RespellEmulator(faults=Faults(rate_429=1.0, on="reads"))
    with client(emu) as http:
        group = bulk_start(http, topics(1))
        assert http.post("/spells/getBulkRuns", json={"groupId": group}).status_code == 429
    emu = RespellEmulator(faults=Faults(rate_5xx=1.0, on="creates"))
    with client(emu) as http:
        response = http.post("/spells/bulkStart", json={"spellId": "s", "inputs": topics(1)})
        assert response.status_code in (500, 503)
        assert http.post("/spells/getBulkRuns", json={"groupId": "x"}).status_code == 404


def test_random_fault_rates_are_seeded() -> None:
    """The same Faults seed gives the same fault sequence; rates are roughly honoured."""

    def statuses(seed: int) -> list[int]:
        emu = RespellEmulator(faults=Faults(rate_429=0.3, seed=seed))
        with client(emu) as http:
            return [http.post("/spells/getBulkRuns", json={"groupId": "g"}).status_code for _ in range(200)]

    first = statuses(3)
    assert first == statuses(3)
    assert 30 < first.count(429) < 90
    assert set(first) == {404, 429}


def test_fault_and_inject_options_are_validated() -> None:
    """Impossible rates and unknown fault kinds are refused up front."""
    with pytest.raises(ValueError, match="rate_429"):
        Faults(rate_429=1.5)
    with pytest.raises(ValueError, match="at most 1"):
        Faults(rate_429=0.6, rate_drop=0.6)
    with pytest.raises(ValueError, match="fault kind"):
        RespellEmulator().inject("418")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="failure_rate"):
        RespellEmulator(failure_rate=2.0)


# -- accounting ---------------------------------------------------------------------------


def test_charges_and_duplicates() -> None:
    """The same input in two bulkStarts is charged twice; keys are canonical JSON."""
    emu = RespellEmulator()
    with client(emu) as http:
        bulk_start(http, [{"b": 2, "a": 1}, {"c": 3}])
        bulk_start(http, [{"a": 1, "b": 2}])
    canonical = orjson.dumps({"a": 1, "b": 2}, option=orjson.OPT_SORT_KEYS).decode()
    assert emu.charges() == {canonical: 2, '{"c":3}': 1}
    assert emu.duplicates() == {canonical: 2}
    assert emu.create_requests == 2
    assert emu.requests() == {"bulkStart": 2}


def test_concurrent_creates_are_all_counted() -> None:
    """Parallel bulkStarts over the threaded server lose no charge."""
    emu = RespellEmulator()
    with emu.serve() as srv:

        def work(worker: int) -> None:
            with httpx.Client(base_url=srv.url, headers=AUTH) as http:
                for i in range(5):
                    bulk_start(http, [{"w": worker, "i": i}, {"shared": True}])

        threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert emu.create_requests == 30
    assert emu.charges()['{"shared":true}'] == 30
    assert len(emu.charges()) == 31


def test_create_delay_charges_before_answering_without_holding_the_lock() -> None:
    """During create_delay the create is already charged and other requests still run."""
    emu = RespellEmulator(create_delay=0.3)
    with emu.serve() as srv:
        creator = threading.Thread(
            target=lambda: httpx.post(
                f"{srv.url}/spells/bulkStart",
                json={"spellId": "s", "inputs": topics(1)},
                headers=AUTH,
            )
        )
        creator.start()
        deadline = time.monotonic() + 2.0
        while emu.create_requests == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        started = time.monotonic()
        read = httpx.post(f"{srv.url}/spells/getBulkRuns", json={"groupId": "g"}, headers=AUTH)
        read_took = time.monotonic() - started
        assert creator.is_alive()  # charged, yet the answer has not been sent
        creator.join()
    assert read.status_code == 404
    assert read_took < 0.2
    assert sum(emu.charges().values()) == 1


# -- the server ---------------------------------------------------------------------------


def test_drop_over_socket_is_an_httpx_error() -> None:
    """A dropped create over a socket raises an httpx error, yet was charged."""
    emu = RespellEmulator()
    emu.inject("drop", op="create")
    with emu.serve() as srv, httpx.Client(base_url=srv.url, headers=AUTH) as http:
        with pytest.raises(httpx.TransportError):
            http.post("/spells/bulkStart", json={"spellId": "s", "inputs": topics(1)})
        assert get_runs(http, bulk_start(http, topics(1)))[0]["state"] == "success"
    assert emu.duplicates() == {'{"search_topic":"topic 0"}': 2}


def test_server_answers_500_on_handler_bugs_and_keeps_serving() -> None:
    """A handler exception becomes a JSON 500; the next request is served."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/bug":
            raise KeyError("oops")
        return httpx.Response(200, json={"echo": request.content.decode()})

    with serve(handler) as srv, httpx.Client(base_url=srv.url) as http:
        bug = http.get("/bug")
        ok = http.post("/fine?x=1", content=b"hello")
    assert (bug.status_code, bug.json()) == (500, {"error": "Emulator error: KeyError"})
    assert ok.json() == {"echo": "hello"}
    assert calls == ["/bug", "/fine"]


def test_server_streams_iterator_bodies() -> None:
    """An iterator body is sent chunked, so a streaming (SSE) emulator can use it."""

    def handler(request: httpx.Request) -> httpx.Response:
        frames = (f"data: {i}\n\n".encode() for i in range(3))
        return httpx.Response(200, content=frames, headers={"content-type": "text/event-stream"})

    with serve(handler) as srv, httpx.Client(base_url=srv.url) as http:
        with http.stream("GET", "/events") as response:
            assert response.headers["transfer-encoding"] == "chunked"
            body = b"".join(response.iter_bytes())
        assert http.get("/again").status_code == 200  # the connection survived the stream
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_drop_connection_from_a_plain_handler() -> None:
    """DropConnection in any handler closes the socket without an answer."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise DropConnection()

    with (
        serve(handler) as srv,
        httpx.Client(base_url=srv.url) as http,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        http.get("/")


def test_server_shuts_down_cleanly_with_keep_alive_open() -> None:
    """Leaving serve() is quick even with an idle keep-alive connection, and frees the port."""
    emu = RespellEmulator()
    threads_before = threading.active_count()
    with httpx.Client(headers=AUTH) as http:
        with emu.serve() as srv:
            assert http.post(f"{srv.url}/spells/getBulkRuns", json={"groupId": "g"}).status_code == 404
            started = time.monotonic()
        assert time.monotonic() - started < 1.0
        with pytest.raises(httpx.TransportError):
            http.post(f"{srv.url}/spells/getBulkRuns", json={"groupId": "g"})
    deadline = time.monotonic() + 1.0
    while threading.active_count() > threads_before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= threads_before


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com", "::"])
def test_non_loopback_host_refused(host: str) -> None:
    """Binding anything but loopback needs allow_non_loopback=True."""
    with pytest.raises(ValueError, match="not a loopback"), RespellEmulator().serve(host=host):
        pass
    with pytest.raises(ValueError, match="allow_non_loopback"):
        serve_forever(RespellEmulator().handler, host=host)


def test_serve_forever_serves_until_ctrl_c() -> None:
    """serve_forever reports readiness, serves, and returns on KeyboardInterrupt."""
    seen: list[int] = []

    def on_ready(handle: ServerHandle) -> None:
        def poke() -> None:
            try:
                seen.append(httpx.post(f"{handle.url}/spells/start", json={}).status_code)
            finally:
                _thread.interrupt_main()  # what Ctrl-C does

        threading.Thread(target=poke, daemon=True).start()

    serve_forever(RespellEmulator().handler, port=0, on_ready=on_ready)
    assert seen == [401]


@pytest.fixture(autouse=True)
def _no_leaked_server_threads() -> Iterator[None]:
    yield
    leaked = [t.name for t in threading.enumerate() if t.name.startswith("emulator-")]
    assert not leaked, f"serve() left threads running: {leaked}"
