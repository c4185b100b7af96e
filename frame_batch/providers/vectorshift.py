"""VectorShift pipeline ``bulk_run``: one synchronous request per batch returns every output.

Vendor facts: api-contracts.md §3 and the OpenAPI in the seed page. The dangers differ from
the polling vendors: there is nothing to poll and nothing to list, so

- ``submit`` sends ``POST /pipeline/{id}/bulk-run`` (``bulk_path="bulk_run"`` for the docs'
  spelling) and keeps the answer in memory; ``poll`` hands it over at once (the engine polls
  a VectorShift batch immediately, so the results reach the store within milliseconds);
- a bulk call whose connection breaks after sending may have run (and charged) every row:
  it is an ambiguous create, ``reconcile`` cannot tell, and ``on_ambiguous`` decides (by
  default the rows are sent again and reported as possibly paid twice);
- an answer that was received but not stored before the process died cannot be fetched
  again: those rows come back ``failed`` with an explanation (``retry_failed=True`` sends
  them again);
- ``run_outputs`` carries no input echo or tag: entries are matched to rows in the order the
  runs were sent ("one entry per input set"), and an answer whose length differs fails the
  batch's rows rather than guessing.

Cells go out as VectorShift DataType: strings, numbers, booleans, null and lists as they
are; a dict cell becomes ``{"type": "map", "items": ...}``. Outputs come back the same way:
maps become dicts (flattened into ``parent.child`` columns by the join). File DataType
values are kept as sent (``type``/``raw_bytes``/``metadata``) for now.

Batches are small (10 rows by default) so that one synchronous call stays well inside
server and proxy timeouts.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, ClassVar, Literal

import orjson

from .. import errors
from .._http import ApiClient, HttpConfig, Secret, json_or_none, resolve_key
from .._types import (
    UNKNOWN,
    Batch,
    BatchPoll,
    BatchRef,
    OutputShape,
    ProviderLimits,
    Reconciliation,
    RowResult,
)

log = logging.getLogger("frame_batch")

DEFAULT_BASE_URL = "https://api.vectorshift.ai/v1"
SUCCEEDED = frozenset({"success", "succeeded", "completed", "complete"})
LOST = (
    "the bulk call's answer arrived but was not stored before the run stopped, and VectorShift "
    "cannot send it again; the row was paid: run with retry_failed=True to run it again"
)


class VectorShift:
    """The VectorShift adapter. ``api_key`` defaults to ``$VECTORSHIFT_API_KEY``.

    The workflow is the pipeline id. ``conversation_id`` names an input (of ``inputs=``)
    whose value is sent as each run's ``conversation_id`` instead of as a pipeline input.
    """

    name: ClassVar[str] = "vectorshift"
    env_var: ClassVar[str] = "VECTORSHIFT_API_KEY"

    def __init__(
        self,
        *,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        bulk_path: Literal["bulk-run", "bulk_run"] = "bulk-run",
        conversation_id: str | None = None,
        version: str = "",
        timeout: float = 600.0,
        limits: ProviderLimits | None = None,
    ) -> None:
        if bulk_path not in ("bulk-run", "bulk_run"):
            raise errors.ConfigError(f"bulk_path must be 'bulk-run' or 'bulk_run', not {bulk_path!r}")
        if not timeout > 0:
            raise errors.ConfigError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self._api_key = api_key  # resolved on first use: a dry run (plan) needs no key
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.bulk_path = bulk_path
        self.conversation_id = conversation_id
        self.version = version
        self.timeout = timeout
        self.limits = limits or ProviderLimits(
            max_rows_per_batch=10,
            max_bytes_per_batch=20_000_000,
            poll_interval=0.05,  # nothing to wait for: the answer is already here
            first_poll=0.0,
            max_in_flight=4,
        )
        self._answers: dict[str, tuple[RowResult, ...]] = {}
        self._ids = itertools.count()

    def __repr__(self) -> str:
        return f"VectorShift(base_url={self.base_url!r}, bulk_path={self.bulk_path!r})"

    def _key(self) -> Secret:
        return resolve_key(self._api_key, self.env_var, self.name)

    def http_config(self) -> HttpConfig:
        return HttpConfig(
            provider=self.name,
            base_url=self.base_url,
            headers={"accept": "application/json", "authorization": f"Bearer {self._key().reveal()}"},
            key_hint=f"${self.env_var} or api_key=",
            timeout=self.timeout,  # one synchronous call runs every row of its batch
        )

    def secrets(self) -> tuple[str, ...]:
        return (self._key().reveal(),)

    def scope(self, workflow: str) -> tuple[str, str, str]:
        return (self.name, workflow, self.version)

    def output_shape(self, workflow: str) -> OutputShape:
        return OutputShape()  # pipelines declare no output types to the API: pandas infers

    async def stage(self, api: ApiClient, workflow: str, batch: Batch) -> str | None:
        return None

    async def submit(self, api: ApiClient, workflow: str, batch: Batch, staged: str | None) -> str:
        runs = [self._run(payload) for payload in batch.payloads]
        body = orjson.dumps({"runs": runs})
        response = await api.create("POST", f"/pipeline/{workflow}/{self.bulk_path}", content=body)
        results = _read_answer(json_or_none(response.content), batch.keys, response.text)
        remote_id = f"bulk:{batch.batch_id}:{next(self._ids)}"
        self._answers[remote_id] = results
        return remote_id

    def _run(self, payload: bytes) -> dict[str, Any]:
        inputs = orjson.loads(payload)
        run: dict[str, Any] = {}
        if self.conversation_id is not None and self.conversation_id in inputs:
            conversation = inputs.pop(self.conversation_id)
            if conversation is not None:
                run["conversation_id"] = str(conversation)
        run["inputs"] = {name: to_datatype(value) for name, value in inputs.items()}
        return run

    async def poll(self, api: ApiClient, workflow: str, ref: BatchRef) -> BatchPoll:
        results = self._answers.pop(ref.remote_id, None)
        if results is None:
            # Journaled as sent, but the answer died with an earlier process.
            return BatchPoll(done=True, results=tuple(RowResult(k, "failed", error=LOST) for k in ref.keys))
        return BatchPoll(done=True, results=results)

    async def cancel(self, api: ApiClient, workflow: str, ref: BatchRef) -> None:
        return None  # a synchronous bulk call has nothing left running once it has answered

    async def reconcile(
        self, api: ApiClient, workflow: str, batch_id: str, keys: tuple[str, ...], staged: str | None
    ) -> Reconciliation:
        return UNKNOWN  # no way to list bulk calls: the run's on_ambiguous policy decides


def to_datatype(value: object) -> object:
    """A JSON value as VectorShift DataType: dicts become maps, recursively."""
    if isinstance(value, dict):
        return {"type": "map", "items": {k: to_datatype(v) for k, v in value.items()}}
    if isinstance(value, list):
        return [to_datatype(v) for v in value]
    return value


def from_datatype(value: object) -> object:
    """DataType back to plain values: maps become dicts (files are kept as sent)."""
    if isinstance(value, dict):
        if value.get("type") == "map" and isinstance(value.get("items"), dict):
            return {k: from_datatype(v) for k, v in value["items"].items()}
        return value
    if isinstance(value, list):
        return [from_datatype(v) for v in value]
    return value


def _read_answer(data: Any, keys: tuple[str, ...], text: str) -> tuple[RowResult, ...]:
    """``{status, run_outputs}`` -> one result per key, in the order the runs were sent."""
    entries = data.get("run_outputs") if isinstance(data, dict) else None
    status = str(data.get("status") or "") if isinstance(data, dict) else ""
    if not isinstance(entries, list) or len(entries) != len(keys):
        why = data.get("error") if isinstance(data, dict) else None
        message = (
            f"vectorshift answered the bulk call with status {status or '?'!r}: {why}"
            if why
            else f"vectorshift's answer does not hold one output per run sent ({text[:200]!r})"
        )
        return tuple(RowResult(key, "failed", error=message) for key in keys)
    return tuple(_entry(key, entry, status) for key, entry in zip(keys, entries, strict=True))


def _entry(key: str, entry: object, batch_status: str) -> RowResult:
    if not isinstance(entry, dict):
        return RowResult(key, "failed", error=f"vectorshift sent {entry!r} instead of a run's outputs")
    run_id = str(entry["run_id"]) if entry.get("run_id") is not None else None
    state = str(entry.get("status") or batch_status).lower()
    outputs = entry.get("outputs")
    failed = entry.get("error") is not None or state not in SUCCEEDED
    # A failed batch status with outputs for this run: the run itself succeeded.
    if failed and not (isinstance(outputs, dict) and outputs and entry.get("error") is None):
        message = entry.get("error") or f"vectorshift reported status {state!r} for this run"
        return RowResult(key, "failed", error=str(message), run_id=run_id)
    values = {name: from_datatype(v) for name, v in outputs.items()} if isinstance(outputs, dict) else {}
    return RowResult(key, "succeeded", outputs=values, run_id=run_id)
