"""frame_batch against what a user would write instead, on the same emulator and rows.

    .venv/bin/python -m benchmarks --only compare

Each pair runs in one fresh worker against one emulator process (so the client CPU is the
client's own), on the same rows and emulator settings:

- ``apply``: a plain ``df.apply`` calling Respell's single-run route (``/spells/start``,
  ``wait: true``) with httpx, one row per request, vs ``frame_batch.run`` (bulkStart +
  getBulkRuns). Every run takes 200 ms for both: a wait-mode single run answers after it, a
  bulk run reads ``running`` until then. ``df.apply`` sends one row at a time, so it needs
  200 ms per row: this pair runs 120 rows (50 with ``--quick``) to stay near a minute.
- ``parallel``: the ``parallel-web`` SDK the way its docs show a task group (create a
  group, add runs 1,000 at a time, poll the group until it is inactive, read the runs
  stream with outputs), vs ``frame_batch.run(provider="parallel")``; runs take 200 ms.
- ``vectorshift``: the ``vectorshift`` SDK's ``Pipeline.bulk_run`` in a loop of 10-row
  chunks (its default batch size in frame_batch too), and its async ``abulk_run`` four
  calls at a time (frame_batch's default concurrency there), vs ``frame_batch.run(provider=
  "vectorshift")``; a 10-row bulk call takes 200 ms (20 ms per run, summed by the emulator).

frame_batch runs twice where concurrency differs: with the alternative's concurrency
(``matched``) and with its own default. The target compares each alternative with the
frame_batch line at the same concurrency. Its poll interval is 20 ms everywhere, as is the
SDK loop's. Every client is warmed up on 10 rows first (imports, pools), then timed.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import time
from collections.abc import Callable
from typing import Any

import frame_batch
from benchmarks._common import (
    API_KEY,
    WORKFLOW,
    Json,
    clocked,
    make_frame,
    run_worker,
    scratch_dir,
    us_per_row,
)
from benchmarks._emulator import EmulatorProcess

POLL_INTERVAL = 0.02
LATENCY = 0.2
PIPELINE = "6630f1a2b3c4d5e6f7a8b9c0"
PARALLEL_CHUNK = 1000
VECTORSHIFT_CHUNK = 10
SDK_ASYNC_IN_FLIGHT = 4  # frame_batch's default for VectorShift bulk calls
WARM_ROWS = 10
# df.apply waits LATENCY per row, one row at a time: 120 rows x 2 reps + warm-up ~ 50 s.
APPLY_ROWS = 120
APPLY_ROWS_QUICK = 50


def suite(quick: bool) -> list[Json]:
    reps = 1 if quick else 2
    return [
        run_worker(apply_pair, rows=APPLY_ROWS_QUICK if quick else APPLY_ROWS, reps=reps),
        run_worker(parallel_pair, rows=5_000 if quick else 20_000, reps=reps),
        run_worker(vectorshift_pair, rows=100 if quick else 400, reps=reps),
    ]


# -- Respell: df.apply on the single-run route ----------------------------------------------


def apply_pair(rows: int, reps: int) -> Json:
    import httpx  # imported before timing, like frame_batch itself

    df = make_frame(rows)
    with EmulatorProcess("respell", latency=LATENCY) as emulator:
        url = emulator.url
        lines = [
            _line(
                f"df.apply + httpx {httpx.__version__}, /spells/start",
                1,
                lambda d: _apply(d, url),
                df,
                reps,
            ),
            _line("frame_batch.run, matched C=1", 1, lambda d: _respell(d, url, 1), df, reps),
            _line("frame_batch.run, default C=4", 4, lambda d: _respell(d, url, None), df, reps),
        ]
    return {"pair": "respell: df.apply vs frame_batch", "latency_s": LATENCY, "rows": rows, "lines": lines}


def _apply(df: Any, url: str) -> int:
    import httpx
    import pandas as pd

    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {API_KEY}"}) as http:

        def call(row: Any) -> Any:
            body = {"spellId": WORKFLOW, "inputs": row.to_dict(), "wait": True}
            response = http.post("/spells/start", json=body)
            response.raise_for_status()
            return response.json().get("outputs", {})

        safe = df.assign(founded=df["founded"].astype(str))  # stdlib json cannot send Timestamps
        outputs = safe.apply(call, axis=1)
    out = df.join(pd.DataFrame(outputs.tolist(), index=df.index))
    return int(out["summary"].notna().sum())


def _respell(df: Any, url: str, in_flight: int | None) -> int:
    provider = frame_batch.Respell(base_url=url, api_key=API_KEY)
    return _frame_batch(df, WORKFLOW, provider=provider, max_in_flight=in_flight)


# -- Parallel: the parallel-web SDK's task group -----------------------------------------------


def parallel_pair(rows: int, reps: int) -> Json:
    import parallel  # imported before timing, like frame_batch itself

    df = make_frame(rows)
    groups = math.ceil(rows / PARALLEL_CHUNK)
    sdk = f"parallel-web {parallel.__version__}: one group, add_runs x1000, poll, get_runs"
    with EmulatorProcess("parallel", latency=LATENCY) as emulator:
        url = emulator.url
        lines = [
            _line(sdk, groups, lambda d: _sdk_group(d, url), df, reps),
            _line(
                f"frame_batch.run, matched C={groups}",
                groups,
                lambda d: _parallel(d, url, groups),
                df,
                reps,
            ),
            _line("frame_batch.run, default C=8", 8, lambda d: _parallel(d, url, None), df, reps),
        ]
    return {
        "pair": "parallel: SDK task group vs frame_batch",
        "latency_s": LATENCY,
        "rows": rows,
        "lines": lines,
    }


def _sdk_group(df: Any, url: str) -> int:
    import pandas as pd
    import parallel

    client = parallel.Parallel(api_key=API_KEY, base_url=url)
    group = client.task_group.create(metadata={"job": WORKFLOW}).task_group_id
    records = _records(df)
    for start in range(0, len(records), PARALLEL_CHUNK):
        chunk = records[start : start + PARALLEL_CHUNK]
        runs: list[Any] = [
            {"input": record, "processor": "lite", "metadata": {"row": str(start + i)}}
            for i, record in enumerate(chunk)
        ]
        client.task_group.add_runs(group, inputs=runs)
    while client.task_group.retrieve(group).status.is_active:
        time.sleep(POLL_INTERVAL)
    outputs: dict[int, object] = {}
    for event in client.task_group.get_runs(group, include_output=True):
        output = getattr(event, "output", None)
        if event.type == "task_run.state" and output is not None and event.run.metadata:
            outputs[int(event.run.metadata["row"])] = output.content
    out = df.assign(output=pd.Series(outputs, dtype=object).reindex(range(len(df))).to_numpy())
    return int(out["output"].notna().sum())


def _parallel(df: Any, url: str, in_flight: int | None) -> int:
    provider = frame_batch.Parallel(base_url=url, api_key=API_KEY, processor="lite")
    return _frame_batch(df, WORKFLOW, provider=provider, max_in_flight=in_flight)


# -- VectorShift: the vectorshift SDK's bulk_run in a loop -------------------------------------


def vectorshift_pair(rows: int, reps: int) -> Json:
    df = make_frame(rows)
    per_run = LATENCY / VECTORSHIFT_CHUNK  # the emulator sums each run's latency over a bulk call
    with EmulatorProcess("vectorshift", latency=per_run) as emulator:
        url = emulator.url + "/v1"
        pipeline = _sdk_pipeline(url)  # imported before timing, like frame_batch itself
        lines = [
            _line(
                "vectorshift SDK: Pipeline.bulk_run x10 in a loop",
                1,
                lambda d: _sdk_bulk(d, pipeline),
                df,
                reps,
            ),
            _line("frame_batch.run, matched C=1", 1, lambda d: _vectorshift(d, url, 1), df, reps),
            _line(
                f"vectorshift SDK: Pipeline.abulk_run x10, {SDK_ASYNC_IN_FLIGHT} at a time (asyncio)",
                SDK_ASYNC_IN_FLIGHT,
                lambda d: _sdk_bulk_async(d, pipeline, SDK_ASYNC_IN_FLIGHT),
                df,
                reps,
            ),
            _line("frame_batch.run, default C=4", 4, lambda d: _vectorshift(d, url, None), df, reps),
        ]
    return {
        "pair": "vectorshift: SDK bulk_run (loop; async) vs frame_batch",
        "latency_s": LATENCY,
        "rows": rows,
        "lines": lines,
    }


def _sdk_pipeline(url: str) -> Any:
    os.environ["VECTORSHIFT_BASE_URL"] = url  # the SDK reads both once, at import
    os.environ["VECTORSHIFT_API_KEY"] = API_KEY
    from vectorshift.pipeline import Pipeline

    return Pipeline(id=PIPELINE)


def _sdk_bulk(df: Any, pipeline: Any) -> int:
    import pandas as pd

    records = _records(df)
    outputs: list[dict[str, Any]] = []
    for start in range(0, len(records), VECTORSHIFT_CHUNK):
        answer: Any = pipeline.bulk_run(records[start : start + VECTORSHIFT_CHUNK])
        outputs.extend(entry["outputs"] for entry in answer["run_outputs"])
    out = df.join(pd.DataFrame(outputs, index=df.index))
    return int(out["output"].notna().sum())


def _sdk_bulk_async(df: Any, pipeline: Any, in_flight: int) -> int:
    """The SDK's async ``abulk_run``, ``in_flight`` calls at a time: what a user who wants
    the SDK at frame_batch's concurrency would write (the SDK keeps one aiohttp session a
    loop, closed here)."""
    import pandas as pd

    records = _records(df)
    chunks = [records[s : s + VECTORSHIFT_CHUNK] for s in range(0, len(records), VECTORSHIFT_CHUNK)]

    async def run_all() -> list[Any]:
        from vectorshift.request import async_request_client

        gate = asyncio.Semaphore(in_flight)

        async def one(chunk: list[dict[str, Any]]) -> Any:
            async with gate:
                return await pipeline.abulk_run(chunk)

        try:
            return await asyncio.gather(*(one(chunk) for chunk in chunks))
        finally:
            await async_request_client.close()  # type: ignore[no-untyped-call]  # its aiohttp session

    answers = asyncio.run(run_all())
    outputs = [entry["outputs"] for answer in answers for entry in answer["run_outputs"]]
    out = df.join(pd.DataFrame(outputs, index=df.index))
    return int(out["output"].notna().sum())


def _vectorshift(df: Any, url: str, in_flight: int | None) -> int:
    provider = frame_batch.VectorShift(base_url=url, api_key=API_KEY)
    return _frame_batch(df, PIPELINE, provider=provider, max_in_flight=in_flight)


# -- shared ---------------------------------------------------------------------------------


def _frame_batch(df: Any, workflow: str, **options: Any) -> int:
    with scratch_dir() as cache:
        result = frame_batch.run(
            df, workflow, cache=cache, poll_interval=POLL_INTERVAL, progress=False, **options
        )
    return int(result.summary.succeeded)


def _records(df: Any) -> list[dict[str, Any]]:
    """The rows as JSON-safe dicts, the way a user would make them for an SDK."""
    records: list[dict[str, Any]] = df.assign(founded=df["founded"].astype(str)).to_dict("records")
    return records


def _line(name: str, in_flight: int, work: Callable[[Any], int], df: Any, reps: int) -> Json:
    """Best of ``reps`` runs of ``work(df)`` (wall and CPU each at their best), after a warm-up
    on the first rows (first-call costs: lazy imports, connection pools, caches)."""
    work(df.head(WARM_ROWS))
    walls, cpus, succeeded = [], [], 0
    for _ in range(reps):
        gc.collect()
        with clocked() as clock:
            succeeded = work(df)
        walls.append(clock.wall_s)
        cpus.append(clock.cpu_s)
    return {
        "client": name,
        "in_flight": in_flight,
        "succeeded": succeeded,
        "wall_s": round(min(walls), 2),
        "rows_per_s": round(succeeded / min(walls), 1),
        "client_cpu_us_per_row": us_per_row(min(cpus), succeeded),
        "frame_batch": name.startswith("frame_batch"),
    }
