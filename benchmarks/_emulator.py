"""An emulator from ``frame_batch.testing`` served from its own process, over loopback.

The server runs in a separate process (``python -m benchmarks._emulator``, driven over its
stdin/stdout one JSON line at a time) so that the client's CPU time
(``time.process_time()``, ``ru_maxrss``) is the client's alone::

    with EmulatorProcess("respell", latency=0.2) as emulator:
        frame_batch.run(df, "spell", provider=Respell(base_url=emulator.url, api_key="k"))
        emulator.stats()  # creates, requests per route, duplicates, the server's own CPU

Knobs are the emulator's own keyword arguments; ``faults=`` takes the keyword arguments of
``frame_batch.testing.Faults`` as a dict (so the spec can cross the process boundary).

Socket settings: the emulator's server (``frame_batch.testing._server``) sets TCP_NODELAY
on its answers and a listen backlog of 128, because the stdlib defaults measure the server
rather than the client:

- Nagle on: the emulator writes an answer's headers and body in two ``send`` calls, and the
  body waits for the client's delayed ACK, about 40 ms per answer on Linux loopback
  (measured: a 100-run ``getBulkRuns`` answer takes 44 ms with Nagle, 0.9 ms without).
- A backlog of 5: 16+ connections opened at once overflow it (``ListenOverflows`` in
  ``/proc/net/netstat``); the client then sees stalled or reset connections.

``tuned=False`` (``--stock-emulator``, or ``$FB_BENCH_STOCK_EMULATOR`` set) puts the stdlib
defaults back in the server process, to compare.
"""

from __future__ import annotations

import json
import os
import resource
import socketserver
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
STOCK_ENV = "FB_BENCH_STOCK_EMULATOR"  # set (by --stock-emulator): no socket tuning
START_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class ServerStats:
    """What the emulator saw, and the CPU seconds its process used so far."""

    create_requests: int
    requests: dict[str, int]
    duplicates: int
    cpu_s: float
    wall_s: float

    @property
    def busy(self) -> float:
        """The server's CPU as a fraction of one core over its lifetime (1.0 = saturated)."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


class EmulatorProcess:
    """Start the ``vendor`` emulator in a child process; ``url`` is its base URL."""

    def __init__(self, vendor: str, *, tuned: bool | None = None, **options: Any) -> None:
        if tuned is None:
            tuned = not os.environ.get(STOCK_ENV)
        self.vendor = vendor
        self.url = ""
        self._spec = json.dumps({"vendor": vendor, "options": options, "tuned": tuned})
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> EmulatorProcess:
        command = [sys.executable, "-m", "benchmarks._emulator", self._spec]
        self._process = subprocess.Popen(
            command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self.url = str(self._ask(None)["url"])
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        process = self._process
        if process is None:
            return
        try:
            self._ask("stop")
            process.wait(timeout=10)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()

    def stats(self) -> ServerStats:
        """The emulator's books and the server process's CPU time, now."""
        return ServerStats(**self._ask("stats"))

    def _ask(self, command: str | None) -> dict[str, Any]:
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise RuntimeError("the emulator process is not running")
        if command is not None:
            process.stdin.write(command + "\n")
            process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.vendor} emulator process exited (code {process.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer


def _serve(spec: dict[str, Any], commands: IO[str], answers: IO[str]) -> None:
    if not spec["tuned"]:
        from frame_batch.testing import _server

        _server._RequestHandler.disable_nagle_algorithm = (
            socketserver.StreamRequestHandler.disable_nagle_algorithm
        )
        _server._Server.request_queue_size = socketserver.TCPServer.request_queue_size
    emulator = _build(spec["vendor"], spec["options"])
    started = time.perf_counter()
    with emulator.serve() as handle:
        _say(answers, {"url": handle.url})
        for command in commands:
            if command.strip() == "stop":
                _say(answers, {})
                return
            usage = resource.getrusage(resource.RUSAGE_SELF)
            stats = ServerStats(
                create_requests=emulator.create_requests,
                requests=dict(emulator.requests()),
                duplicates=len(emulator.duplicates()),
                cpu_s=usage.ru_utime + usage.ru_stime,
                wall_s=time.perf_counter() - started,
            )
            _say(answers, asdict(stats))


def _say(answers: IO[str], message: dict[str, Any]) -> None:
    answers.write(json.dumps(message) + "\n")
    answers.flush()


def _build(vendor: str, options: dict[str, Any]) -> Any:
    from frame_batch.testing import Faults, ParallelEmulator, RespellEmulator, VectorShiftEmulator

    kinds: dict[str, Any] = {
        "respell": RespellEmulator,
        "parallel": ParallelEmulator,
        "vectorshift": VectorShiftEmulator,
    }
    knobs = dict(options)
    if "faults" in knobs:
        knobs["faults"] = Faults(**knobs["faults"])
    return kinds[vendor](**knobs)


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]), sys.stdin, sys.stdout)
