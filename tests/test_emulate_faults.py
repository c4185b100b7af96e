"""``frame-batch emulate`` fault options: parsed, handed to the emulator, really injected."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from frame_batch.cli import _parser, emulator_from_args, main
from frame_batch.testing import Faults, ParallelEmulator, RespellEmulator, VectorShiftEmulator

KEY = {"x-api-key": "k", "authorization": "Bearer k"}
BULK_START = {"spellId": "s", "inputs": [{"a": 1}]}


def emulator(*argv: str) -> RespellEmulator | ParallelEmulator | VectorShiftEmulator:
    return emulator_from_args(_parser().parse_args(["emulate", *argv]))


def test_fault_options_reach_the_emulator() -> None:
    """Every fault option and the seed end up in the emulator's Faults."""
    emu = emulator(
        "respell",
        *("--rate-429", "0.1", "--retry-after", "0.25", "--rate-5xx", "0.2", "--rate-drop", "0.05"),
        *("--faults-on", "all", "--seed", "7", "--out-of-order"),
    )
    assert isinstance(emu, RespellEmulator)
    assert emu._faults.faults == Faults(
        rate_429=0.1, retry_after=0.25, rate_5xx=0.2, rate_drop=0.05, on="all", seed=7
    )
    assert emu.seed == 7
    assert emu.out_of_order


def test_no_fault_options_means_no_faults() -> None:
    """Without fault options the emulator injects nothing (Faults() defaults)."""
    emu = emulator("vectorshift")
    assert isinstance(emu, VectorShiftEmulator)
    assert emu._faults.faults == Faults()


def test_rate_429_on_creates_refuses_bulk_start_with_retry_after() -> None:
    """--rate-429 1 --faults-on creates: every bulkStart is a 429 with the given Retry-After."""
    emu = emulator(
        "respell", "--latency", "0", "--rate-429", "1", "--retry-after", "0.25", "--faults-on", "creates"
    )
    with emu.serve() as server, httpx.Client(base_url=server.url, headers=KEY) as http:
        answers = [http.post("/spells/bulkStart", json=BULK_START) for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 429]
    assert {a.headers["retry-after"] for a in answers} == {"0.25"}
    assert emu.create_requests == 0  # refused: nothing was started or charged
    assert not emu.charges()


def test_rate_5xx_hits_reads_only_by_default() -> None:
    """--rate-5xx 1 without --faults-on: creates pass, every poll is a 500 or 503."""
    emu = emulator("respell", "--latency", "0", "--rate-5xx", "1")
    with emu.serve() as server, httpx.Client(base_url=server.url, headers=KEY) as http:
        created = http.post("/spells/bulkStart", json=BULK_START)
        polls = [
            http.post("/spells/getBulkRuns", json={"groupId": created.json()["runId"]}) for _ in range(6)
        ]
    assert created.status_code == 200
    assert {p.status_code for p in polls} <= {500, 503}
    assert emu.requests()["fault:500"] + emu.requests()["fault:503"] == 6


def test_fractional_rate_with_a_seed_is_a_mix_and_repeatable() -> None:
    """--rate-5xx 0.5 --seed N: some polls fail, some pass, the same way for the same seed."""

    def statuses() -> list[int]:
        emu = emulator("respell", "--latency", "0", "--rate-5xx", "0.5", "--seed", "3")
        with httpx.Client(transport=emu.transport(), base_url="http://respell.test", headers=KEY) as http:
            group = http.post("/spells/bulkStart", json=BULK_START).json()["runId"]
            return [http.post("/spells/getBulkRuns", json={"groupId": group}).status_code for _ in range(40)]

    first = statuses()
    seen = Counter(s // 100 for s in first)
    assert seen[2] > 0
    assert seen[5] > 0
    assert first == statuses()


def test_rate_drop_on_creates_charges_then_drops_the_answer() -> None:
    """--rate-drop 1 --faults-on creates: the work is done and charged, the answer is lost."""
    emu = emulator("respell", "--latency", "0", "--rate-drop", "1", "--faults-on", "creates")
    with (
        emu.serve() as server,
        httpx.Client(base_url=server.url, headers=KEY) as http,
        pytest.raises(httpx.TransportError),
    ):
        http.post("/spells/bulkStart", json=BULK_START)
    assert emu.create_requests == 1
    assert sum(emu.charges().values()) == 1


@pytest.mark.parametrize(
    ("vendor", "path", "body"),
    [
        ("parallel", "/v1/tasks/groups", {"metadata": {"a": "b"}}),
        ("vectorshift", "/v1/pipeline/p1/bulk-run", {"runs": [{"inputs": {"q": "hi"}}]}),
    ],
)
def test_every_vendor_gets_the_faults(vendor: str, path: str, body: dict[str, object]) -> None:
    """The fault options apply to the Parallel and VectorShift emulators too."""
    emu = emulator(vendor, "--latency", "0", "--rate-429", "1", "--faults-on", "all")
    with emu.serve() as server, httpx.Client(base_url=server.url, headers=KEY) as http:
        answer = http.post(path, json=body)
    assert answer.status_code == 429
    assert "retry-after" in answer.headers


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rate-429", "1.5"], "--rate-429: must be a probability between 0 and 1"),
        (["--rate-5xx", "lots"], "--rate-5xx: 'lots' is not a number"),
        (["--retry-after", "-1"], "--retry-after: must be a number of seconds >= 0"),
        (["--faults-on", "polls"], "--faults-on: invalid choice"),
    ],
)
def test_bad_fault_options_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An option out of range stops at parsing, with exit code 2 and the option named."""
    with pytest.raises(SystemExit) as info:
        main(["emulate", "respell", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_rates_adding_up_to_more_than_one_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """Rates that add up to more than 1 are refused before anything listens (exit 2)."""
    assert main(["emulate", "respell", "--port", "0", "--rate-429", "0.6", "--rate-5xx", "0.6"]) == 2
    assert "add up to at most 1" in capsys.readouterr().err


def test_help_lists_the_fault_options_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    """emulate --help documents each fault option and shows an example using them."""
    with pytest.raises(SystemExit):
        main(["emulate", "--help"])
    text = capsys.readouterr().out
    for option in ("--rate-429", "--retry-after", "--rate-5xx", "--rate-drop", "--faults-on", "--seed"):
        assert option in text
    example = text.split("examples:")[1]
    assert "frame-batch emulate respell" in example
    assert "--rate-429 0.05" in example


@contextmanager
def emulating(*argv: str) -> Iterator[str]:
    """`frame-batch emulate ARGV --port 0` in a child; yields its URL, then stops it with SIGINT."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "frame_batch.cli", "emulate", *argv, "--port", "0"]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert "emulator listening on http://127.0.0.1:" in line, line
        yield line.split("listening on ")[1].split()[0]
    finally:
        child.send_signal(signal.SIGINT)
        child.wait(timeout=10)
    assert child.returncode == 0


@pytest.mark.e2e
def test_emulate_command_injects_429s_and_5xx() -> None:
    """The real command: 429s on creates (with Retry-After), then 5xx on polls, as asked."""
    with emulating(
        "respell", "--latency", "0", "--rate-429", "1", "--retry-after", "0.5", "--faults-on", "creates"
    ) as url:
        refused = httpx.post(f"{url}/spells/bulkStart", json=BULK_START, headers=KEY)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "0.5"

    with (
        emulating("respell", "--latency", "0", "--rate-5xx", "1") as url,
        httpx.Client(base_url=url, headers=KEY) as http,
    ):
        created = http.post("/spells/bulkStart", json=BULK_START)
        poll = http.post("/spells/getBulkRuns", json={"groupId": created.json()["runId"]})
    assert created.status_code == 200
    assert poll.status_code in (500, 503)
