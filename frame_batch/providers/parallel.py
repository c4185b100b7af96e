"""Parallel's Task API: Task Groups (the default) or the legacy Batch API (``api="batch"``).

Vendor facts: api-contracts.md §2 and the seed page. Task Groups, one group per batch:

- ``stage``: ``POST /v1/tasks/groups`` with metadata naming the batch. Creating a group costs
  nothing, and its id is journaled *before* any paid request, so a lost answer can be looked
  for afterwards.
- ``submit``: ``POST /v1/tasks/groups/{id}/runs`` with at most 1,000 runs, each carrying its
  processor and the row key as the metadata tag ``fb_row``, plus a ``default_task_spec`` from
  ``output_schema``.
- ``poll``: the group's status; once ``is_active`` is false, one pass over the runs stream
  (SSE, ``include_output=true``; a broken stream resumes from ``last_event_id``). Runs are
  matched to rows by their tag, never by position.
- ``reconcile``: after a lost add-runs answer, the staged group's runs stream says whether
  the runs exist (adopted) or not (sent again, nothing paid twice). A batch with no staged
  group never sent its add-runs request at all.
- There is no cancel endpoint for groups: ``cancel`` only says so.

A group per batch keeps each batch's status one cheap GET, and makes "done" exact without
reading every run of a large group on every poll.

``action_required`` is neither active nor done: such rows stay pending and the run says
why, instead of taking the group's ``is_active: false`` for success.

The legacy Batch API (the seed page; paths not published, taken as in the emulator):
``POST /v0/tasks/{task}/batches``, status map ``GET .../batches/{id}``, results exported as
JSON or CSV (``GET .../batches/{id}/results?format=``), a failed run's message from
``GET /v0/tasks/{task}/runs/{run}``. Its runs carry no tags, so the run ids of the create
answer are journaled with the batch and results are joined by run id. CSV cells are text:
``output_schema`` gives their types; without one, cells that read as JSON numbers, booleans,
lists or objects are taken as such, so both exports give the same frame.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

import orjson

from .. import errors
from .._http import ApiClient, HttpConfig, Secret, json_or_none, resolve_key
from .._keys import fingerprint
from .._schema import OutputSchema, parse_output_schema
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

_BASE_PRICES = {"lite": 0.005, "base": 0.01, "core": 0.025, "core2x": 0.05, "pro": 0.1, "ultra": 0.3}
_BASE_PRICES |= {"ultra2x": 0.6, "ultra4x": 1.2, "ultra8x": 2.4}
LIST_PRICES = {**_BASE_PRICES, **{f"{name}-fast": price for name, price in _BASE_PRICES.items()}}
"""USD per run by processor (Parallel's published prices per 1,000 runs, / 1,000; "-fast"
variants cost the same). Used for ``plan()`` estimates and ``max_cost=``; the invoice is the truth."""

DEFAULT_BASE_URL = "https://api.parallel.ai"
ROW_TAG = "fb_row"  # metadata keys are at most 16 characters; values at most 512
MAX_RUNS_PER_REQUEST = 1000
MAX_SPEC_AND_INPUT_CHARS = 25_000
ACTIVE = frozenset({"queued", "running", "cancelling"})
WEBHOOK_BETA = "webhook-2025-08-12"

_RESUME = "work already submitted is recorded: run again to resume"
_ERRORS: dict[int, tuple[type[errors.ProviderError], str]] = {
    402: (
        errors.PaymentRequired,
        "Parallel reserves credits for every run of a request up front, so this can happen with "
        f"a positive balance: add credits or pass a smaller batch_size; {_RESUME}",
    ),
    403: (
        errors.RequestRejected,
        "Parallel refused the processor (or this key may not use it): check processor= "
        "(lite, base, core, core2x, pro, ultra, ultra2x, ultra4x, ultra8x, each also as -fast)",
    ),
    422: (
        errors.RequestRejected,
        "Parallel rejected the request; the detail above names the field (for the output schema: "
        "the root must be an object with properties, at most 100 fields, no $ref)",
    ),
}


class Parallel:
    """The Parallel adapter. ``api_key`` defaults to ``$PARALLEL_API_KEY``.

    The workflow is a name of your choosing for the task (it tags each group) with Task
    Groups, and the task id with the legacy Batch API (``api="batch"``). ``processor``
    applies to every row; ``processor_input`` names an input (of ``inputs=``) whose value,
    when set, is that row's own processor (runner) and is not sent as input.
    """

    name: ClassVar[str] = "parallel"
    accepts_files: ClassVar[bool] = False
    env_var: ClassVar[str] = "PARALLEL_API_KEY"

    def __init__(
        self,
        *,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        processor: str = "base",
        output_schema: object = None,
        basis: bool = False,
        api: Literal["groups", "batch"] = "groups",
        export: Literal["json", "csv"] = "json",
        api_version: Literal["v1", "v1beta"] = "v1",
        webhook_url: str | None = None,
        webhook_events: Sequence[str] = ("task_run.status",),
        processor_input: str | None = None,
        limits: ProviderLimits | None = None,
    ) -> None:
        _check_choice("api", api, ("groups", "batch"))
        _check_choice("export", export, ("json", "csv"))
        _check_choice("api_version", api_version, ("v1", "v1beta"))
        if not isinstance(processor, str) or not processor.strip():
            raise errors.ConfigError("processor must be a processor name such as 'base' or 'core'")
        if webhook_url is not None and not webhook_url.startswith(("https://", "http://")):
            raise errors.ConfigError(f"webhook_url must be an http(s) URL, not {webhook_url!r}")
        self._api_key = api_key  # resolved on first use: a dry run (plan) needs no key
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.processor = processor.strip()
        self.processor_input = processor_input
        self.schema: OutputSchema = parse_output_schema(output_schema)
        self.basis = basis
        self.api = api
        self.export = export
        self.groups_path = f"/{api_version}/tasks/groups"
        self.webhook = (
            {"url": webhook_url, "event_types": list(webhook_events)} if webhook_url is not None else None
        )
        self._task_spec = {"output_schema": self.schema.spec} if self.schema.spec is not None else None
        self.limits = limits or self._default_limits()

    def _default_limits(self) -> ProviderLimits:
        spec_chars = len(orjson.dumps(self._task_spec).decode()) if self._task_spec else 0
        if spec_chars >= MAX_SPEC_AND_INPUT_CHARS:
            raise errors.ConfigError(
                f"the output schema is {spec_chars:,} characters; Parallel allows "
                f"{MAX_SPEC_AND_INPUT_CHARS:,} for task spec and input together: shorten it"
            )
        return ProviderLimits(
            max_rows_per_batch=MAX_RUNS_PER_REQUEST,
            hard_max_rows=MAX_RUNS_PER_REQUEST,
            max_bytes_per_batch=20_000_000,
            poll_interval=10.0,  # the docs' examples poll group status every 10 s
            max_in_flight=8,
            max_row_chars=MAX_SPEC_AND_INPUT_CHARS - spec_chars,
            max_creates_per_minute=2000,  # per key, counting every add-runs POST
            reconcile_delay=1.0,
        )

    def __repr__(self) -> str:
        return f"Parallel(base_url={self.base_url!r}, processor={self.processor!r}, api={self.api!r})"

    def _key(self) -> Secret:
        return resolve_key(self._api_key, self.env_var, self.name)

    def http_config(self) -> HttpConfig:
        return HttpConfig(
            provider=self.name,
            base_url=self.base_url,
            headers={"accept": "application/json", "x-api-key": self._key().reveal()},
            key_hint=f"${self.env_var} or api_key=",
            errors=_ERRORS,
        )

    def secrets(self) -> tuple[str, ...]:
        return (self._key().reveal(),)

    def scope(self, workflow: str) -> tuple[str, str, str]:
        # The processor and the task spec change what a row's answer means: part of the key.
        return (self.name, workflow, fingerprint(self.processor, orjson.dumps(self._task_spec).decode()))

    def row_cost(self, workflow: str, payload: bytes) -> float | None:
        """The published price of the row's processor (USD per run); None if not listed."""
        processor = self.processor
        if self.processor_input is not None:
            own = self._own_processor(payload)[1]
            processor = orjson.loads(own) if own is not None else processor
        return LIST_PRICES.get(processor)

    def output_shape(self, workflow: str) -> OutputShape:
        return OutputShape(types=self.schema.types, hidden=() if self.basis else ("basis",))

    # -- submit ---------------------------------------------------------------------------
    async def stage(self, api: ApiClient, workflow: str, batch: Batch) -> str | None:
        if self.api == "batch":
            return None
        # Not paid, so retried like a read: a duplicate empty group costs nothing.
        metadata = {"fb_batch": batch.batch_id, "fb_flow": workflow[:512]}
        response = await api.read("POST", self.groups_path, json={"metadata": metadata})
        return _field(response.content, "taskgroup_id", "creating a task group")

    async def submit(self, api: ApiClient, workflow: str, batch: Batch, staged: str | None) -> str:
        if self.api == "batch":
            return await self._submit_legacy(api, workflow, batch)
        if staged is None:
            raise errors.ProviderError("internal: a task group must be staged first", provider=self.name)
        headers = {"parallel-beta": WEBHOOK_BETA} if self.webhook else None
        await api.create(
            "POST",
            f"{self.groups_path}/{staged}/runs",
            content=self._runs_body(batch),
            params={"refresh_status": "false"},  # the cached status answers faster; we poll anyway
            headers=headers,
        )
        return staged

    def _runs_body(self, batch: Batch) -> bytes:
        """Splice each row's canonical JSON in as a run's input: no decode and re-encode."""
        default = orjson.dumps(self.processor)
        extra = b',"webhook":' + orjson.dumps(self.webhook) if self.webhook is not None else b""
        tag = b',"metadata":{"' + ROW_TAG.encode() + b'":"'
        runs = []
        for key, payload in zip(batch.keys, batch.payloads, strict=True):
            run_input, processor = self._own_processor(payload)
            runs.append(
                b'{"input":'
                + run_input
                + b',"processor":'
                + (processor or default)
                + extra
                + tag
                + key.encode()
                + b'"}}'
            )
        spec = b',"default_task_spec":' + orjson.dumps(self._task_spec) if self._task_spec else b""
        return b'{"inputs":[' + b",".join(runs) + b"]" + spec + b"}"

    def _own_processor(self, payload: bytes) -> tuple[bytes, bytes | None]:
        """A row's input without its ``processor_input`` field, and that processor (JSON)."""
        if self.processor_input is None:
            return payload, None
        row = orjson.loads(payload)
        value = row.pop(self.processor_input, None)
        own = orjson.dumps(str(value)) if isinstance(value, str) and value.strip() else None
        return orjson.dumps(row, option=orjson.OPT_SORT_KEYS), own

    # -- poll -----------------------------------------------------------------------------
    async def poll(self, api: ApiClient, workflow: str, ref: BatchRef) -> BatchPoll:
        if self.api == "batch":
            return await self._poll_legacy(api, workflow, ref)
        response = await api.read("GET", f"{self.groups_path}/{ref.remote_id}")
        if not _settled(_loads(response.content).get("status"), len(ref.keys)):
            return BatchPoll(done=False)
        runs = await self._runs(api, ref.remote_id, include_output=True)
        return self._read_group(runs, ref)

    async def _runs(self, api: ApiClient, group: str, *, include_output: bool) -> list[dict[str, Any]]:
        """Every run of a group, from the runs stream; resumes from the last event on a break."""
        params = {"include_output": "true"} if include_output else {}
        runs: list[dict[str, Any]] = []
        async for event in api.events(f"{self.groups_path}/{group}/runs", params=params, cursor=_event_id):
            if not isinstance(event, dict):
                continue
            if event.get("type") == "error":
                raise errors.ServerError(
                    f"parallel's runs stream for group {group} sent an error: {event.get('error')}; "
                    f"{_RESUME}",
                    provider=self.name,
                )
            if event.get("type") == "task_run.state" and isinstance(event.get("run"), dict):
                runs.append(event)
        return runs

    def _read_group(self, events: list[dict[str, Any]], ref: BatchRef) -> BatchPoll:
        wanted = set(ref.keys)
        results: dict[str, RowResult] = {}
        waiting = active = 0
        unknown: list[str] = []
        for event in events:
            run = event["run"]
            key = _tag(run)
            if key not in wanted or key in results:
                continue
            status = str(run.get("status") or "")
            if status == "action_required":
                waiting += 1
            elif status == "completed":
                results[key] = RowResult(
                    key, "succeeded", outputs=self._outputs(event.get("output")), run_id=_run_id(run)
                )
            elif status == "failed":
                results[key] = RowResult(key, "failed", error=_run_error(run), run_id=_run_id(run))
            elif status == "cancelled":
                results[key] = RowResult(key, "cancelled", error="cancelled on Parallel", run_id=_run_id(run))
            elif status in ACTIVE:
                active += 1  # the group said inactive a moment ago: look again next poll
            else:
                unknown.append(status or "<missing status>")
        attention = (
            (
                f"{waiting} runs are in action_required: Parallel waits for you (e.g. to approve a "
                "tool call); they stay pending until resolved on Parallel, then run again",
            )
            if waiting
            else ()
        )
        # Done when every run of ours is terminal; a row the stream never mentions is then
        # reported failed by the engine rather than waited for forever.
        done = not (waiting or active or unknown)
        return BatchPoll(
            done=done, results=tuple(results.values()), unknown=tuple(unknown), attention=attention
        )

    def _outputs(self, output: object) -> dict[str, object]:
        """A run's output as the stored outputs: JSON fields, or ``output`` for text; basis apart."""
        if not isinstance(output, dict):
            return {}
        content = output.get("content")
        outputs: dict[str, object] = dict(content) if isinstance(content, dict) else {"output": content}
        basis = _basis(output.get("basis"))
        if basis:
            outputs["basis"] = basis
        return outputs

    # -- cancel / reconcile ---------------------------------------------------------------
    async def cancel(self, api: ApiClient, workflow: str, ref: BatchRef) -> None:
        log.warning(
            "parallel has no endpoint to cancel runs: batch %s keeps running (and is paid for); "
            "its results are collected by the next run",
            ref.remote_id.split(":", 1)[0],
        )

    async def reconcile(
        self, api: ApiClient, workflow: str, batch_id: str, keys: tuple[str, ...], staged: str | None
    ) -> Reconciliation:
        if self.api == "batch":
            return UNKNOWN  # the v0 API cannot list a task's batches
        if staged is None:
            # The add-runs request is sent only after the staged group is journaled.
            return Reconciliation(absent=True)
        try:
            events = await self._runs(api, staged, include_output=False)
        except errors.NotFoundError:
            return UNKNOWN
        tagged = {_tag(e["run"]) for e in events} & set(keys)
        if tagged:
            log.info(
                "group %s holds %d of %d runs of a lost add-runs request: adopted",
                staged,
                len(tagged),
                len(keys),
            )
            return Reconciliation(remote_id=staged)
        return Reconciliation(absent=True) if not events else UNKNOWN

    # -- the legacy Batch API -------------------------------------------------------------
    async def _submit_legacy(self, api: ApiClient, task: str, batch: Batch) -> str:
        callback = b',"callback_webhook":' + orjson.dumps(self.webhook["url"]) if self.webhook else b""
        requests = []
        for payload in batch.payloads:
            arguments, runner = self._own_processor(payload)
            runner_field = b',"runner":' + runner if runner else b""
            requests.append(b'{"arguments":' + arguments + runner_field + callback + b"}")
        body = (
            b'{"task_run_requests":['
            + b",".join(requests)
            + b'],"runner":'
            + orjson.dumps(self.processor)
            + b"}"
        )
        response = await api.create("POST", f"/v0/tasks/{task}/batches", content=body)
        data = _loads(response.content)
        batch_run = data.get("batch_run_id")
        run_ids = data.get("run_ids")
        if not isinstance(batch_run, str) or not isinstance(run_ids, list) or len(run_ids) != len(batch.keys):
            raise errors.ProviderError(
                f"parallel accepted the batch but its answer does not list one run id per row "
                f"({response.text[:300]!r}); the batch may be running unseen: contact Parallel support",
                provider=self.name,
                status_code=response.status_code,
            )
        # The create answer is the only link from a v0 run to its row: journal it with the batch.
        return f"{batch_run}:{','.join(map(str, run_ids))}"

    async def _poll_legacy(self, api: ApiClient, task: str, ref: BatchRef) -> BatchPoll:
        batch_run, _, joined = ref.remote_id.partition(":")
        key_of = dict(zip(joined.split(","), ref.keys, strict=False))
        response = await api.read("GET", f"/v0/tasks/{task}/batches/{batch_run}")
        data = _loads(response.content)
        groups = data.get("status") if isinstance(data.get("status"), dict) else data
        waiting = [r for name in ("queued", "running", "awaiting_tool_calls") for r in _ids(groups, name)]
        if any(run in key_of for run in waiting):
            tools = sum(run in key_of for run in _ids(groups, "awaiting_tool_calls"))
            note = (f"{tools} runs are awaiting tool calls on Parallel; they stay pending until answered",)
            return BatchPoll(done=False, attention=note if tools else ())
        rows = await self._export(api, task, batch_run)
        results = [await self._legacy_result(api, task, row, key_of) for row in rows]
        found = tuple(r for r in results if r is not None)
        return BatchPoll(done=True, results=found)

    async def _export(self, api: ApiClient, task: str, batch_run: str) -> list[dict[str, Any]]:
        path = f"/v0/tasks/{task}/batches/{batch_run}/results"
        response = await api.read("GET", path, params={"format": self.export})
        if self.export == "json":
            data = json_or_none(response.content)
            items = data.get("results") if isinstance(data, dict) else data
            return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []
        return _csv_rows(response.text, self.schema.types)

    async def _legacy_result(
        self, api: ApiClient, task: str, row: dict[str, Any], key_of: Mapping[str, str]
    ) -> RowResult | None:
        run_id = str(row.get("run_id") or "")
        key = key_of.get(run_id)
        if key is None:
            return None
        status = str(row.get("status") or "")
        if status == "complete":
            output = row.get("output")
            # Sorted, as the CSV export's columns are: both exports give the same frame.
            outputs = dict(sorted(output.items())) if isinstance(output, dict) else {}
            return RowResult(key, "succeeded", outputs=outputs, run_id=run_id)
        if status == "failed":
            response = await api.read("GET", f"/v0/tasks/{task}/runs/{run_id}")
            return RowResult(key, "failed", error=_legacy_error(_loads(response.content)), run_id=run_id)
        return None


# -- helpers --------------------------------------------------------------------------------
def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise errors.ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}, not {value!r}")


def _loads(content: bytes) -> dict[str, Any]:
    data = json_or_none(content)
    return data if isinstance(data, dict) else {}


def _field(content: bytes, name: str, doing: str) -> str:
    value = _loads(content).get(name)
    if not isinstance(value, str) or not value:
        raise errors.ProviderError(
            f"parallel answered {doing} without {name!r}: {content[:300]!r}", provider="parallel"
        )
    return value


def _settled(status: object, sent: int) -> bool:
    """Worth reading the runs: the group is inactive, or its counts say every run ended.

    ``is_active`` is the documented signal; the counts are the check Parallel's own tooling
    adds (completed + failed covering every run), in case the flag lags behind.
    """
    if not isinstance(status, dict):
        return False
    if status.get("is_active") is False:
        return True
    counts = status.get("task_run_status_counts")
    total = status.get("num_task_runs")
    if not isinstance(counts, dict) or not isinstance(total, int) or total < sent:
        return False
    ended = sum(n for state, n in counts.items() if state not in ACTIVE and isinstance(n, int))
    return ended >= total


def _event_id(event: Any) -> str | None:
    value = event.get("event_id") if isinstance(event, dict) else None
    return str(value) if value is not None else None


def _tag(run: dict[str, Any]) -> str | None:
    metadata = run.get("metadata")
    value = metadata.get(ROW_TAG) if isinstance(metadata, dict) else None
    return value if isinstance(value, str) else None


def _run_id(run: dict[str, Any]) -> str | None:
    value = run.get("run_id")
    return str(value) if value is not None else None


def _run_error(run: dict[str, Any]) -> str:
    # The message only: the run id (bulk_run_id) is what Parallel support asks for.
    error = run.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or "Parallel reported the run failed, with no message")
    return "Parallel reported the run failed, with no message"


def _basis(value: object) -> dict[str, object]:
    """Per-field basis -> ``{field: {reasoning, confidence, citations: [urls]}}``."""
    if not isinstance(value, list):
        return {}
    out: dict[str, object] = {}
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("field"), str):
            continue
        citations = item.get("citations")
        urls = [c.get("url") for c in citations if isinstance(c, dict)] if isinstance(citations, list) else []
        out[item["field"]] = {
            "reasoning": item.get("reasoning"),
            "confidence": item.get("confidence"),
            "citations": [u for u in urls if isinstance(u, str)],
        }
    return out


def _ids(groups: object, name: str) -> list[str]:
    values = groups.get(name) if isinstance(groups, dict) else None
    return [str(v) for v in values] if isinstance(values, list) else []


def _legacy_error(run: dict[str, Any]) -> str:
    error = run.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error) if error else "Parallel reported the run failed, with no message"


def _csv_rows(text: str, types: Mapping[str, str]) -> list[dict[str, Any]]:
    """CSV export rows in the JSON export's shape: ``{run_id, status, output: {...}}``."""
    rows: list[dict[str, Any]] = []
    for record in csv.DictReader(io.StringIO(text)):
        output = {
            name.removeprefix("output."): _cell(value, types.get(name.removeprefix("output.")))
            for name, value in record.items()
            if name is not None and name.startswith("output.") and value not in (None, "")
        }
        rows.append({"run_id": record.get("run_id"), "status": record.get("status"), "output": output})
    return rows


def _cell(value: str, kind: str | None) -> object:
    """A CSV cell back to a value: text stays text for string fields; else JSON when it parses."""
    if kind in ("string", "date", "datetime"):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
