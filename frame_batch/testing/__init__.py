"""Offline fakes of the vendors' bulk APIs, for your tests, demos and benchmarks.

Each emulator is a stateful fake of one vendor's documented API. It answers like the
vendor (ids, run states, errors), can misbehave on demand (latency, failed runs, 429s
with ``Retry-After``, 5xx, dropped connections, out-of-order results) and keeps the
books: how many times each input was *charged*, so a test can prove nothing was paid
for twice, even across retries, crashes and resumes.

Use it in-process, with no socket at all, through ``emulator.transport()`` (an
``httpx.MockTransport`` for ``httpx.Client`` and ``httpx.AsyncClient``), or over a real
loopback socket with ``with emulator.serve() as server:`` (``server.url`` is the base
URL), or from a shell with ``frame-batch emulate respell --port 8787``::

    from frame_batch.testing import Faults, RespellEmulator

    emulator = RespellEmulator(latency=0.2, failure_rate=0.1, faults=Faults(rate_429=0.05))
    with emulator.serve() as server:  # point your pipeline's base URL at server.url
        run_my_pipeline(base_url=server.url, api_key="any-key")
    assert not emulator.duplicates()  # no input was charged twice

For deterministic tests, script the next faults instead of using rates, e.g.
``emulator.inject("drop", op="create")`` loses the answer of the next create *after* the
server recorded and charged it — the ambiguous case a careful client must reconcile.
"""

from __future__ import annotations

from frame_batch.testing._faults import Faults
from frame_batch.testing._server import DropConnection, ServerHandle, serve, serve_forever
from frame_batch.testing.parallel import ParallelEmulator
from frame_batch.testing.respell import RespellEmulator
from frame_batch.testing.vectorshift import VectorShiftEmulator

__all__ = [
    "DropConnection",
    "Faults",
    "ParallelEmulator",
    "RespellEmulator",
    "ServerHandle",
    "VectorShiftEmulator",
    "serve",
    "serve_forever",
]
