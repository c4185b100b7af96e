"""A stateful fake of Respell's bulk spell API (see ``api-contracts.md`` §1 and §5).

Routes (all ``POST``, JSON bodies, at the root like ``https://api-v2.respell.ai``):

- ``/spells/bulkStart`` ``{spellId, inputs: [{...}, ...]}`` -> ``{"runId"}``; every input
  is charged once, here, whatever its run's fate.
- ``/spells/getBulkRuns`` ``{groupId}`` -> ``{"runs": [{id, index, state, inputs,
  outputs | error}]}``; ``runId`` and ``bulkRunId`` are accepted for ``groupId`` because
  Respell's own sources name the id all three ways.
- ``/spells/cancelBulk`` ``{groupId}`` -> ``{"success": true}``; unfinished runs become
  ``cancelled`` and keep their charge.
- ``/spells/start`` ``{spellId, inputs: {...}, wait}`` -> a single run (``wait`` may be a
  bool or ``"true"``/``"false"``, as public code sends it). With ``wait`` the connection
  stays open until the run is done (Respell's "wait mode"): the answer, with ``state`` and
  ``outputs`` or ``error``, comes after the run's ``latency`` (+ jitter). Without it the
  answer is just ``{"id"}``, at once. Either way the input is charged when the run starts.

A bulk run's state is computed lazily from the clock: ``running`` until its creation time
plus ``latency`` (+ jitter), then ``success`` or ``failed``. A wait-mode single run has no
one polling it, so the handler itself waits out its latency with ``sleep`` (``time.sleep``
unless injected), as does ``create_delay``; that happens in-process too, inside the
client's call (an ``AsyncClient``'s event loop is blocked meanwhile), so tests pass a fake
``sleep`` (e.g. one that moves their fake ``clock``). Outcomes are decided at creation and
a failure depends only on the input's content, so a rerun of the same input fails the same
way. Everything that touches state holds one lock (the socket server is threaded); running
a spell and sleeping happen outside it.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Literal

import httpx
import orjson

from frame_batch.testing._books import Books
from frame_batch.testing._faults import (
    Faults,
    RequestOp,
    in_process,
)

__all__ = ["RespellEmulator", "Spell", "default_spell"]

Spell = Callable[[dict[str, object]], dict[str, object]]
RunState = Literal["running", "success", "failed", "cancelled"]
_Outcome = tuple[Literal["success", "failed"], dict[str, object] | str]

_ID_KEYS = ("groupId", "runId", "bulkRunId")
_EMULATED_FAILURE = "Spell run failed (emulated failure_rate)"


def default_spell(inputs: dict[str, object]) -> dict[str, object]:
    """Deterministic outputs built from the input values (sorted by input name)."""
    values = (value for _, value in sorted(inputs.items()))
    text = " ".join(v if isinstance(v, str) else orjson.dumps(v).decode() for v in values)
    return {"summary": f"Summary: {text}", "length": len(text)}


class _ApiError(Exception):
    """A 4xx answer, raised from deep inside a route."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class _Route:
    name: str
    op: RequestOp


_ROUTES = {
    "/spells/bulkStart": _Route("bulkStart", "create"),
    "/spells/getBulkRuns": _Route("getBulkRuns", "read"),
    "/spells/cancelBulk": _Route("cancelBulk", "cancel"),
    "/spells/start": _Route("start", "create"),
}


@dataclass
class _Run:
    id: str
    index: int
    inputs: dict[str, object]
    finishes_at: float
    outcome: _Outcome
    cancelled: bool = False

    def state(self, now: float) -> RunState:
        if self.cancelled:
            return "cancelled"
        return "running" if now < self.finishes_at else self.outcome[0]

    def to_json(self, now: float) -> dict[str, object]:
        state = self.state(now)
        run: dict[str, object] = {
            "id": self.id,
            "index": self.index,
            "state": state,
            "inputs": self.inputs,
        }
        if state in ("success", "failed"):
            run["outputs" if state == "success" else "error"] = self.outcome[1]
        return run


class RespellEmulator(Books):
    """A fake Respell: in-process via :meth:`transport`, over a socket via :meth:`serve`.

    Knobs: ``latency`` seconds per run plus up to ``jitter`` (bulk runs read as ``running``
    until then; a wait-mode ``/spells/start`` answers only then, waiting with ``sleep``);
    ``failure_rate`` fails inputs by content; ``out_of_order`` shuffles ``getBulkRuns``;
    ``faults`` (random 429 / 5xx / drops, see :class:`Faults`); ``create_delay`` seconds a
    ``bulkStart`` waits, after recording its work, before answering; ``max_inputs`` per
    ``bulkStart`` (400 above); ``api_keys`` (None = any); ``spells`` maps spell ids to
    functions from inputs to outputs (None accepts any id and runs :func:`default_spell`);
    ``clock`` and ``sleep`` are injectable so tests need not wait.

    Accounting (:meth:`charges`, :meth:`duplicates`, :meth:`requests`,
    :attr:`create_requests`) lets a test prove that nothing was paid for twice.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        failure_rate: float = 0.0,
        out_of_order: bool = False,
        faults: Faults = Faults(),  # noqa: B008 - frozen, so one shared default is safe
        api_keys: Collection[str] | None = None,
        spells: Mapping[str, Spell] | None = None,
        create_delay: float = 0.0,
        max_inputs: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        seed: int = 0,
    ) -> None:
        if latency < 0 or jitter < 0 or create_delay < 0:
            raise ValueError("latency, jitter and create_delay are seconds and must be >= 0")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be between 0 and 1, got {failure_rate!r}")
        if max_inputs is not None and max_inputs < 1:
            raise ValueError(f"max_inputs must be >= 1 or None, got {max_inputs!r}")
        self.latency = latency
        self.jitter = jitter
        self.failure_rate = failure_rate
        self.out_of_order = out_of_order
        self.create_delay = create_delay
        self.max_inputs = max_inputs
        self.seed = seed
        self._api_keys = None if api_keys is None else frozenset(api_keys)
        self._spells = None if spells is None else dict(spells)
        self._clock = clock
        self._sleep = sleep
        self._rng = random.Random(seed)
        self._init_books(faults)
        self._groups: dict[str, list[_Run]] = {}

    def __repr__(self) -> str:
        keys = "any" if self._api_keys is None else f"<{len(self._api_keys)} keys>"
        return (
            f"RespellEmulator(latency={self.latency}, jitter={self.jitter}, "
            f"failure_rate={self.failure_rate}, out_of_order={self.out_of_order}, "
            f"faults={self._faults.faults}, api_keys={keys})"
        )

    # -- public surface ------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        """An in-process transport for ``httpx.Client`` and ``httpx.AsyncClient`` alike."""
        return httpx.MockTransport(in_process(self.handler))

    # -- request handling ----------------------------------------------------------------

    def handler(self, request: httpx.Request) -> httpx.Response:
        """Answer one request; raises :class:`DropConnection` for an injected drop."""
        route = _ROUTES.get(request.url.path.rstrip("/"))
        if route is None:
            return _json(404, {"error": f"Not found: {request.url.path}"})
        if request.method != "POST":
            return _json(405, {"error": f"Method {request.method} not allowed"}, allow="POST")
        return self._with_faults(route.name, route.op, lambda: self._process(route, request))

    def _process(self, route: _Route, request: httpx.Request) -> httpx.Response:
        try:
            self._authenticate(request)
            body = _json_body(request)
            if route.name == "bulkStart":
                return _json(200, self._bulk_start(body))
            if route.name == "getBulkRuns":
                return _json(200, self._get_bulk_runs(body))
            if route.name == "cancelBulk":
                return _json(200, self._cancel_bulk(body))
            return _json(200, self._start(body))
        except _ApiError as exc:
            return _json(exc.status, {"error": exc.message})

    def _authenticate(self, request: httpx.Request) -> None:
        key = _api_key(request.headers)
        if not key:
            raise _ApiError(401, "Missing API key")
        if self._api_keys is not None and key not in self._api_keys:
            raise _ApiError(401, "Invalid API key")  # never echo the key

    # -- routes ----------------------------------------------------------------------------

    def _bulk_start(self, body: dict[str, object]) -> dict[str, object]:
        spell = self._spell(body)
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise _ApiError(400, "inputs must be a non-empty list of objects")
        for i, item in enumerate(inputs):
            if not isinstance(item, dict):
                raise _ApiError(400, f"inputs[{i}] must be an object, got {type(item).__name__}")
        if self.max_inputs is not None and len(inputs) > self.max_inputs:
            raise _ApiError(400, f"Too many inputs: {len(inputs)} > {self.max_inputs} per request")
        outcomes = [self._run_spell(spell, item) for item in inputs]  # user code: no lock held
        group_id = _new_id()
        with self._lock:
            now = self._clock()
            self._groups[group_id] = [
                _Run(_new_id(), i, item, now + self._run_latency(), outcome)
                for i, (item, outcome) in enumerate(zip(inputs, outcomes, strict=True))
            ]
            self._charge(inputs)
            self._create_requests += 1
        if self.create_delay:
            self._sleep(self.create_delay)  # recorded and charged; the answer is still pending
        return {"runId": group_id}

    def _get_bulk_runs(self, body: dict[str, object]) -> dict[str, object]:
        with self._lock:
            runs = self._group(body)
            now = self._clock()
            listed = [run.to_json(now) for run in runs]
            if self.out_of_order:
                self._shuffle(listed)
        return {"runs": listed}

    def _cancel_bulk(self, body: dict[str, object]) -> dict[str, object]:
        with self._lock:
            runs = self._group(body)
            now = self._clock()
            for run in runs:
                if run.state(now) == "running":
                    run.cancelled = True  # the charge stays: the work was started
        return {"success": True}

    def _start(self, body: dict[str, object]) -> dict[str, object]:
        spell = self._spell(body)
        inputs = body.get("inputs")
        if not isinstance(inputs, dict):
            raise _ApiError(400, "inputs must be an object of input name -> value")
        wait = _parse_wait(body.get("wait", False))
        state, result = self._run_spell(spell, inputs)
        run_id = _new_id()
        with self._lock:
            duration = self._run_latency() if wait else 0.0
            self._charge([inputs])
        if not wait:
            return {"id": run_id}
        if duration > 0:
            self._sleep(duration)  # charged already: a client that gives up now still pays
        return {"id": run_id, "state": state, "outputs" if state == "success" else "error": result}

    # -- helpers (callers hold the lock where state is touched) ---------------------------

    def _spell(self, body: dict[str, object]) -> Spell:
        spell_id = body.get("spellId")
        if not isinstance(spell_id, str) or not spell_id:
            raise _ApiError(400, "spellId must be a non-empty string")
        if self._spells is None:
            return default_spell
        spell = self._spells.get(spell_id)
        if spell is None:
            raise _ApiError(404, f"Spell not found: {spell_id}")
        return spell

    def _run_spell(self, spell: Spell, inputs: dict[str, object]) -> _Outcome:
        if self._fails(inputs):
            return ("failed", _EMULATED_FAILURE)
        try:
            outputs: object = spell(inputs)  # user code: trust nothing about the type
        except Exception as exc:  # a spell's exception is that run's failure, not ours
            return ("failed", str(exc) or type(exc).__name__)
        if not isinstance(outputs, dict):
            return ("failed", f"spell returned {type(outputs).__name__}, expected an object")
        return ("success", outputs)

    def _fails(self, inputs: dict[str, object]) -> bool:
        """Decided by content alone, so the same input fails on every rerun."""
        if self.failure_rate <= 0:
            return False
        digest = hashlib.blake2b(
            f"{self.seed}\n".encode() + _canonical(inputs).encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.failure_rate

    def _run_latency(self) -> float:
        return self.latency + (self._rng.uniform(0, self.jitter) if self.jitter else 0.0)

    def _charge(self, inputs: list[dict[str, object]]) -> None:
        self._charges.update(_canonical(item) for item in inputs)

    def _group(self, body: dict[str, object]) -> list[_Run]:
        group_id = next((body[k] for k in _ID_KEYS if isinstance(body.get(k), str)), None)
        if not group_id:
            raise _ApiError(400, "groupId must be a non-empty string")
        runs = self._groups.get(str(group_id))
        if runs is None:
            raise _ApiError(404, f"Bulk run not found: {group_id}")
        return runs

    def _shuffle(self, listed: list[dict[str, object]]) -> None:
        before = [run["index"] for run in listed]
        self._rng.shuffle(listed)
        if len(listed) > 1 and [run["index"] for run in listed] == before:
            listed.append(listed.pop(0))  # a shuffle may be the identity; never let it be


def _api_key(headers: httpx.Headers) -> str:
    scheme, _, key = str(headers.get("authorization", "")).strip().partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return key.strip()
    return str(headers.get("x-api-key", "")).strip()


def _json_body(request: httpx.Request) -> dict[str, object]:
    try:
        body = orjson.loads(request.content)
    except orjson.JSONDecodeError as exc:
        raise _ApiError(400, f"Invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise _ApiError(400, "Request body must be a JSON object")
    return body


def _parse_wait(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _ApiError(400, 'wait must be true, false, "true" or "false"')


def _canonical(inputs: dict[str, object]) -> str:
    return orjson.dumps(inputs, option=orjson.OPT_SORT_KEYS).decode()


def _new_id() -> str:
    # cuid-like (Respell ids look like "clxdq2y1w008g2l7by88758uh"); random, not seeded,
    # so a restarted emulator never hands out an id a client still holds from before.
    return "cm" + secrets.token_hex(12)


def _json(status: int, body: dict[str, object], *, allow: str | None = None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if allow:
        headers["allow"] = allow
    return httpx.Response(status, content=orjson.dumps(body), headers=headers)
