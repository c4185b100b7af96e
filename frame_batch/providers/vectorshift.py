"""VectorShift pipelines: ``bulk_run`` (one synchronous request per batch), or background runs.

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
are; a dict cell becomes ``{"type": "map", "items": ...}``; a file cell (``_files``: bytes, or
a path under ``file_root=``) becomes ``{"type": "file", "raw_bytes", "metadata"}``. A batch
holding a file goes as multipart/form-data with the docs' part names (field ``runs`` with the
JSON, part ``runs.<i>.inputs.<name>`` per file; ``files_as="json"`` sends files inline
instead). Outputs come back the same way: maps become dicts (flattened into ``parent.child``
columns by the join), files become ``FileOutput`` values, saved by the store.

Batches are small (10 rows by default) so that one synchronous call stays well inside
server and proxy timeouts; the engine halves them after a 413, a 504 or a timeout, and
grows them back after successes.

``mode="background"`` is for pipelines too slow for a synchronous call: each row is a
``POST /pipeline/{id}/run`` with ``background: true`` (one row per batch, so each start is
journaled with its own task id), polled at ``GET /pipeline/{id}/run/status/{task_id}``.
States are mapped defensively (api-contracts §3.3): ``completed|succeeded|success`` done,
``failed|error`` failed, ``cancelled|terminated`` cancelled (sent again on a rerun),
``in_progress|running|queued|...`` waiting, anything else waiting and reported once. A
completed run's ``result`` may appear some seconds after its status: it is waited for up to
``result_wait`` seconds (then an empty result counts as no outputs, a missing one as a
failure). Cancel (``cancel_on_interrupt=True``) sends ``POST /pipeline/{id}/terminate``.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import httpx
import orjson

from .. import errors
from .._files import FILE_MARK, is_marker
from .._http import ApiClient, HttpConfig, Secret, json_or_none, resolve_key
from .._types import (
    UNKNOWN,
    Batch,
    BatchPoll,
    BatchRef,
    FileOutput,
    OutputShape,
    ProviderLimits,
    Reconciliation,
    RowResult,
)

log = logging.getLogger("frame_batch")

DEFAULT_BASE_URL = "https://api.vectorshift.ai/v1"
SUCCEEDED = frozenset({"success", "succeeded", "completed", "complete"})
FAILED = frozenset({"failed", "failure", "error", "errored"})
CANCELLED = frozenset({"cancelled", "canceled", "terminated", "stopped"})
RUNNING = frozenset({"in_progress", "running", "queued", "pending", "processing", "started", "paused"})
TASK = "task:"  # remote ids of background runs; bulk answers are "bulk:..."
BULK_LIMITS = ProviderLimits(
    max_rows_per_batch=10,  # one synchronous call must finish inside proxy timeouts
    max_bytes_per_batch=64_000_000,
    poll_interval=0.05,  # nothing to wait for: the answer is already here
    first_poll=0.0,
    max_in_flight=4,
)
BACKGROUND_LIMITS = ProviderLimits(
    max_rows_per_batch=1,  # one run per start, so each start is journaled with its task id
    max_bytes_per_batch=64_000_000,
    poll_interval=5.0,
    first_poll=1.0,
    max_in_flight=8,  # per-org concurrency limits: do not fan out thousands at once
    hard_max_rows=1,
)
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
    accepts_files: ClassVar[bool] = True
    env_var: ClassVar[str] = "VECTORSHIFT_API_KEY"

    def __init__(
        self,
        *,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        bulk_path: Literal["bulk-run", "bulk_run"] = "bulk-run",
        conversation_id: str | None = None,
        files_as: Literal["multipart", "json"] = "multipart",
        mode: Literal["bulk", "background"] = "bulk",
        result_wait: float = 60.0,
        version: str = "",
        request_timeout: float | None = None,
        limits: ProviderLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if bulk_path not in ("bulk-run", "bulk_run"):
            raise errors.ConfigError(f"bulk_path must be 'bulk-run' or 'bulk_run', not {bulk_path!r}")
        if mode not in ("bulk", "background"):
            raise errors.ConfigError(f"mode must be 'bulk' or 'background', not {mode!r}")
        timeout = request_timeout or (600.0 if mode == "bulk" else 60.0)
        for label, seconds in (("request_timeout", timeout), ("result_wait", result_wait)):
            if not seconds >= 0 or (label == "request_timeout" and not seconds > 0):
                raise errors.ConfigError(f"{label} must be a positive number of seconds, not {seconds!r}")
        self._api_key = api_key  # resolved on first use: a dry run (plan) needs no key
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.bulk_path = bulk_path
        self.conversation_id = conversation_id
        if files_as not in ("multipart", "json"):
            raise errors.ConfigError(f"files_as must be 'multipart' or 'json', not {files_as!r}")
        self.files_as = files_as
        self.mode = mode
        self.result_wait = result_wait
        self.version = version
        self.timeout = timeout
        self.limits = limits or (BULK_LIMITS if mode == "bulk" else BACKGROUND_LIMITS)
        if mode == "background" and self.limits.max_rows_per_batch != 1:
            raise errors.ConfigError(
                "mode='background' starts one run per row: limits must allow 1 row per batch"
            )
        self._answers: dict[str, tuple[RowResult, ...]] = {}
        self._ids = itertools.count()
        self._clock = clock
        self._completed_at: dict[str, float] = {}  # task id -> when it was first seen completed

    def __repr__(self) -> str:
        return f"VectorShift(base_url={self.base_url!r}, mode={self.mode!r}, bulk_path={self.bulk_path!r})"

    def _key(self) -> Secret:
        return resolve_key(self._api_key, self.env_var, self.name)

    def http_config(self) -> HttpConfig:
        return HttpConfig(
            provider=self.name,
            base_url=self.base_url,
            headers={"accept": "application/json", "authorization": f"Bearer {self._key().reveal()}"},
            key_hint=f"${self.env_var} or api_key=",
            timeout=self.timeout,  # in bulk mode one synchronous call runs every row of its batch
        )

    def secrets(self) -> tuple[str, ...]:
        return (self._key().reveal(),)

    def scope(self, workflow: str) -> tuple[str, str, str]:
        return (self.name, workflow, self.version)

    def row_cost(self, workflow: str, payload: bytes) -> float | None:
        return None  # VectorShift publishes no per-run price in its API: give cost_per_row= instead

    def output_shape(self, workflow: str) -> OutputShape:
        return OutputShape()  # pipelines declare no output types to the API: pandas infers

    async def stage(self, api: ApiClient, workflow: str, batch: Batch) -> str | None:
        return None

    async def submit(self, api: ApiClient, workflow: str, batch: Batch, staged: str | None) -> str:
        if self.mode == "background":
            return await self._start(api, workflow, batch)
        runs = [self._run(payload) for payload in batch.payloads]
        body, headers = self._body(runs)
        path = f"/pipeline/{workflow}/{self.bulk_path}"
        response = await api.create("POST", path, content=body, headers=headers)
        results = _read_answer(json_or_none(response.content), batch.keys, response.content)
        remote_id = f"bulk:{batch.batch_id}:{next(self._ids)}"
        self._answers[remote_id] = results
        return remote_id

    async def _start(self, api: ApiClient, workflow: str, batch: Batch) -> str:
        """One background run (batches are one row here, so each start is journaled alone)."""
        body, headers = self._single_body(self._run(batch.payloads[0]))
        response = await api.create("POST", f"/pipeline/{workflow}/run", content=body, headers=headers)
        data = json_or_none(response.content)
        task_id = data.get("task_id") if isinstance(data, dict) else None
        if isinstance(task_id, str) and task_id:
            return f"{TASK}{task_id}"
        # No task id: a server that ignored ``background`` answers like a plain run.
        remote_id = f"bulk:{batch.batch_id}:{next(self._ids)}"
        single = {"status": data.get("status"), "run_outputs": [data]} if isinstance(data, dict) else data
        self._answers[remote_id] = _read_answer(single, batch.keys, response.content)
        return remote_id

    def _single_body(self, run: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        """A background run: JSON, or multipart with ``inputs`` JSON and ``inputs.<name>`` parts."""
        files = self._take_files(run["inputs"], "inputs.")
        if not files:
            return orjson.dumps({**run, "background": True}), {}
        fields = {"inputs": orjson.dumps(run["inputs"]).decode(), "background": "true"}
        if "conversation_id" in run:
            fields["conversation_id"] = run["conversation_id"]
        return _multipart(fields, files)

    def _body(self, runs: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
        """JSON, or multipart/form-data with the docs' part names when a run holds a file:
        field ``runs`` (the JSON without the files) and one part ``runs.<i>.inputs.<name>``
        per file input."""
        files = [
            part
            for i, run in enumerate(runs)
            for part in self._take_files(run["inputs"], f"runs.{i}.inputs.")
        ]
        if not files:
            return orjson.dumps({"runs": runs}), {}
        return _multipart({"runs": orjson.dumps(runs).decode()}, files)

    def _take_files(self, inputs: dict[str, Any], prefix: str) -> list[tuple[str, tuple[str, bytes, str]]]:
        """Move the file inputs out of ``inputs`` into multipart parts (none with files_as="json")."""
        if self.files_as != "multipart":
            return []
        names = [name for name, value in inputs.items() if _is_file(value)]
        return [(prefix + name, _part(inputs.pop(name), name)) for name in names]

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
        if ref.remote_id.startswith(TASK):
            return await self._poll_task(api, workflow, ref)
        results = self._answers.pop(ref.remote_id, None)
        if results is None:
            # Journaled as sent, but the answer died with an earlier process.
            return BatchPoll(done=True, results=tuple(RowResult(k, "failed", error=LOST) for k in ref.keys))
        return BatchPoll(done=True, results=results, kept=False)  # the bulk call's answer: only here

    async def _poll_task(self, api: ApiClient, workflow: str, ref: BatchRef) -> BatchPoll:
        """``GET /run/status/{task}``; states mapped defensively (api-contracts §3.3)."""
        task_id = ref.remote_id.removeprefix(TASK)
        response = await api.read("GET", f"/pipeline/{workflow}/run/status/{task_id}")
        data = json_or_none(response.content)
        data = data if isinstance(data, dict) else {}
        state = str(data.get("status") or "").lower()
        key = ref.keys[0]
        if state in SUCCEEDED:
            return self._completed(task_id, key, data.get("result"))
        if state in FAILED or state in CANCELLED:
            self._completed_at.pop(task_id, None)
            why = data.get("error") or f"vectorshift reported the background run {state}"
            status: Literal["failed", "cancelled"] = "cancelled" if state in CANCELLED else "failed"
            return BatchPoll(done=True, results=(RowResult(key, status, error=str(why), run_id=task_id),))
        if state in RUNNING:
            return BatchPoll(done=False)
        return BatchPoll(done=False, unknown=(state or "<no status>",))

    def _completed(self, task_id: str, key: str, result: object) -> BatchPoll:
        """A completed run whose ``result`` may lag behind its status: wait up to ``result_wait``."""
        now = self._clock()
        first = self._completed_at.setdefault(task_id, now)
        waited = now - first
        if isinstance(result, dict) and (result or waited >= self.result_wait):
            self._completed_at.pop(task_id, None)
            outputs = {name: from_datatype(v) for name, v in result.items()}
            return BatchPoll(
                done=True, results=(RowResult(key, "succeeded", outputs=outputs, run_id=task_id),)
            )
        if waited < self.result_wait:
            return BatchPoll(done=False)
        self._completed_at.pop(task_id, None)
        why = f"vectorshift reported the run completed, but no result appeared within {self.result_wait:g} s"
        return BatchPoll(done=True, results=(RowResult(key, "failed", error=why, run_id=task_id),))

    async def cancel(self, api: ApiClient, workflow: str, ref: BatchRef) -> None:
        if not ref.remote_id.startswith(TASK):
            return None  # a synchronous bulk call has nothing left running once it has answered
        body = {"run_id": ref.remote_id.removeprefix(TASK)}
        await api.read("POST", f"/pipeline/{workflow}/terminate", json=body)

    async def reconcile(
        self, api: ApiClient, workflow: str, batch_id: str, keys: tuple[str, ...], staged: str | None
    ) -> Reconciliation:
        return UNKNOWN  # no way to list bulk calls: the run's on_ambiguous policy decides


def to_datatype(value: object) -> object:
    """A JSON value as VectorShift DataType: file markers become files, dicts maps, recursively."""
    if is_marker(value):
        return _file_datatype(value[FILE_MARK])  # type: ignore[index]
    if isinstance(value, dict):
        return {"type": "map", "items": {k: to_datatype(v) for k, v in value.items()}}
    if isinstance(value, list):
        return [to_datatype(v) for v in value]
    return value


def _file_datatype(marker: dict[str, object]) -> dict[str, object]:
    value: dict[str, object] = {"type": "file", "raw_bytes": marker["raw_bytes"]}
    metadata = {k: marker[k] for k in ("name", "mime_type") if k in marker}
    if metadata:
        value["metadata"] = metadata
    return value


def _is_file(value: object) -> bool:
    return isinstance(value, dict) and value.get("type") == "file" and "raw_bytes" in value


def _multipart(
    fields: dict[str, str], files: list[tuple[str, tuple[str, bytes, str]]]
) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body and its content type, encoded by httpx."""
    request = httpx.Request("POST", "/", data=fields, files=files)
    return request.read(), {"content-type": request.headers["content-type"]}


def _part(value: dict[str, Any], input_name: str) -> tuple[str, bytes, str]:
    """(file name, bytes, content type) of a file DataType, for a multipart part."""
    metadata = value.get("metadata") or {}
    name = metadata.get("name") or input_name  # a part needs a file name to be a file
    mime = metadata.get("mime_type") or "application/octet-stream"
    return name, base64.b64decode(value["raw_bytes"]), mime


def from_datatype(value: object) -> object:
    """DataType back to plain values: maps become dicts, files FileOutput (saved by the store)."""
    if isinstance(value, dict):
        if value.get("type") == "map" and isinstance(value.get("items"), dict):
            return {k: from_datatype(v) for k, v in value["items"].items()}
        if value.get("type") == "file":
            return _file_output(value)
        return value
    if isinstance(value, list):
        return [from_datatype(v) for v in value]
    return value


def _file_output(value: dict[str, Any]) -> object:
    try:
        data = base64.b64decode(value.get("raw_bytes") or "", validate=True)
    except (binascii.Error, ValueError, TypeError):
        return value  # not a file we can decode: kept as sent, for the user to see
    metadata = value.get("metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    name, mime = metadata.get("name"), metadata.get("mime_type")
    return FileOutput(data, name if isinstance(name, str) else None, mime if isinstance(mime, str) else None)


def _read_answer(data: Any, keys: tuple[str, ...], raw: bytes) -> tuple[RowResult, ...]:
    """``{status, run_outputs}`` -> one result per key, in the order the runs were sent.
    ``raw`` (the answer's bytes) is decoded only for an error message, never on success."""
    entries = data.get("run_outputs") if isinstance(data, dict) else None
    status = str(data.get("status") or "") if isinstance(data, dict) else ""
    if not isinstance(entries, list) or len(entries) != len(keys):
        why = data.get("error") if isinstance(data, dict) else None
        message = (
            f"vectorshift answered the bulk call with status {status or '?'!r}: {why}"
            if why
            else "vectorshift's answer does not hold one output per run sent "
            f"({raw[:200].decode(errors='replace')!r})"
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
