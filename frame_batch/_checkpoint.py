"""Checkpoints: a run's state as one plain table (kept in the output workbook), and back.

The store (cache directory) is the source of truth while a run goes. A checkpoint copies
what a rerun needs into a table of text cells, so that a workbook can carry it on a hidden
sheet and a rerun on that workbook resumes even when the cache directory is gone:

- one row per row key with a final result (``succeeded`` / ``failed``): its ``error``,
  ``remote_id`` (the vendor's run id) and ``outputs`` (the output map as JSON). Those rows
  are never sent again;
- one row per row key of a batch that is ``submitted`` (``remote_id`` = the batch's remote
  id: it is polled, not sent again) or ``submitting`` (``remote_id`` = the staged id, if
  any: it is reconciled, like any batch whose create answer was lost).

Rows not in the table are simply planned again. ``outputs`` longer than one Excel cell holds
are split over ``outputs``, ``outputs_2``, ``outputs_3``... (joined back in order).

:func:`seed` writes a checkpoint into a store: results the store lacks become a part file
named ``seed-...``; batches the journal does not know are recorded in their state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass

import orjson
import pandas as pd
import pyarrow as pa

from ._join import join_results, with_pending
from ._planning import PlanState
from ._types import OutputShape, RowResult
from .store import JournalBatch, Store
from .store.columns import outputs_json

log = logging.getLogger("frame_batch")

__all__ = ["CHECKPOINT_COLUMNS", "Checkpoint", "CheckpointIds", "Checkpointer", "seed", "state_table"]

CHECKPOINT_COLUMNS = ("row_key", "status", "remote_id", "batch_id", "error", "outputs")
CELL_CHARS = 32_000  # under Excel's 32,767 characters per cell
_DONE = ("succeeded", "failed")
_OPEN = ("submitted", "submitting")


@dataclass(frozen=True, slots=True)
class CheckpointIds:
    """Where a checkpoint belongs in a store: the run's scope and journal identity."""

    scope: str
    provider: str
    workflow: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a checkpoint writer gets: the enriched frame so far (rows not finished yet are
    ``pending``) and the state table of the module docstring."""

    frame: pd.DataFrame
    state: pd.DataFrame
    final: bool = False


class Checkpointer:
    """Hands checkpoints to ``write`` while a run goes: every ``every`` seconds, before a
    create request leaves (``sync``: the batch is in the checkpoint as ``submitting``
    before it can be paid), and once at the end. Writes run in a worker thread, one at a time;
    creates that wait together share one write (group commit)."""

    def __init__(
        self,
        store: Store,
        ids: CheckpointIds,
        frame: pd.DataFrame,
        plan: PlanState,
        shape: OutputShape,
        files: Callable[[Mapping[str, object]], object],
        write: Callable[[Checkpoint], None],
        every: float,
    ) -> None:
        self._store, self._ids, self._frame, self._plan = store, ids, frame, plan
        self._shape, self._files, self._write, self._every = shape, files, write, every
        self._lock = asyncio.Lock()
        self._started = 0  # writes started so far: a caller needs one that starts after it asks
        self.written = 0

    async def sync(self) -> None:
        """Return once a checkpoint written after this call began is saved (shared by callers)."""
        need = self._started + 1
        async with self._lock:
            if self._started >= need:
                return  # a write that began after we asked has finished meanwhile
            await self._write_now(final=False)

    async def write(self, *, final: bool = False) -> None:
        async with self._lock:
            await self._write_now(final=final)

    @contextlib.asynccontextmanager
    async def periodic(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._every_so_often())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _every_so_often(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            await self.write()

    async def _write_now(self, *, final: bool) -> None:
        self._started += 1
        # Read the store here, in the loop's thread (the journal's connection is not shared
        # across threads); join and write in a worker so polling goes on meanwhile.
        stored = self._store.latest(self._ids.scope)
        open_batches = self._store.journal.open_batches(self._ids.scope)
        keys = self._plan.key_array()  # a copy: Arrow arrays are immutable
        errors = dict(self._plan.errors)
        await asyncio.to_thread(self._build_and_write, stored, open_batches, keys, errors, final)
        self.written += 1

    def _build_and_write(
        self,
        stored: pa.Table,
        open_batches: list[JournalBatch],
        keys: pa.Array,
        errors: dict[int, str],
        final: bool,
    ) -> None:
        padded = with_pending(keys, len(self._frame))
        frame, _ = join_results(self._frame, padded, errors, stored, self._shape, files=self._files)
        self._write(Checkpoint(frame, state_table(stored, open_batches), final))


def state_table(results: pa.Table, open_batches: Iterable[JournalBatch]) -> pd.DataFrame:
    """The checkpoint of ``results`` (``Store.latest``) and the journal's open batches."""
    rows: list[dict[str, str | None]] = []
    done = set()
    for key, status, error, run_id, outputs in zip(
        *(results[c].to_pylist() for c in ("key", "status", "error", "run_id")),
        outputs_json(results),
        strict=True,
    ):
        if status in _DONE:
            done.add(key)
            rows.append(_row(key, status, run_id, None, error, outputs))
    for batch in open_batches:
        rows.extend(
            _row(key, batch.state, batch.remote_id, batch.batch_id, None, None)
            for key in batch.keys
            if key not in done
        )
    return _split_outputs(pd.DataFrame(rows, columns=list(CHECKPOINT_COLUMNS), dtype=object))


def _row(
    key: str, status: str, remote: str | None, batch: str | None, error: str | None, outputs: str | None
) -> dict[str, str | None]:
    return {
        "row_key": key,
        "status": status,
        "remote_id": remote,
        "batch_id": batch,
        "error": error,
        "outputs": outputs,
    }


def _split_outputs(table: pd.DataFrame) -> pd.DataFrame:
    longest = max((len(v) for v in table["outputs"] if isinstance(v, str)), default=0)
    parts = max(1, -(-longest // CELL_CHARS))
    if parts == 1:
        return table
    texts = table["outputs"].tolist()
    for n in range(parts):
        name = "outputs" if n == 0 else f"outputs_{n + 1}"
        table[name] = [
            t[n * CELL_CHARS : (n + 1) * CELL_CHARS] or None if isinstance(t, str) else None for t in texts
        ]
    return table


def _joined_outputs(table: pd.DataFrame) -> list[str | None]:
    extra = sorted((c for c in table.columns if str(c).startswith("outputs_")), key=lambda c: int(str(c)[8:]))
    names = ["outputs", *extra]
    joined = []
    for parts in zip(*(table[n].tolist() for n in names), strict=True):
        text = "".join(p for p in parts if isinstance(p, str))
        joined.append(text or None)
    return joined


def seed(store: Store, ids: CheckpointIds, table: pd.DataFrame) -> tuple[int, int]:
    """Write a checkpoint into ``store``; return (results added, batches added)."""
    results = _missing_results(store, ids.scope, table)
    if results:
        store.parts.write(ids.scope, f"seed-{uuid.uuid4().hex}", results)
        store.parts_written += 1
    return len(results), _restore_batches(store, ids, table)


def _missing_results(store: Store, scope: str, table: pd.DataFrame) -> list[RowResult]:
    have = store.done_keys(scope)
    outputs = _joined_outputs(table)
    found: dict[str, RowResult] = {}
    for i, (key, status, remote, error) in enumerate(
        zip(table["row_key"], table["status"], table["remote_id"], table["error"], strict=True)
    ):
        if status not in _DONE or not isinstance(key, str) or key in have or key in found:
            continue
        text = outputs[i]
        values = orjson.loads(text) if text else None
        found[key] = RowResult(key, status, outputs=values, error=error or None, run_id=remote or None)
    return list(found.values())


def _restore_batches(store: Store, ids: CheckpointIds, table: pd.DataFrame) -> int:
    open_rows = table[table["status"].isin(_OPEN) & table["batch_id"].notna()]
    added = 0
    for batch_id, group in open_rows.groupby("batch_id", sort=False):
        if store.journal.has(str(batch_id)):
            continue  # the journal knows it better than a checkpoint does
        state = str(group["status"].iloc[0])
        remote = group["remote_id"].iloc[0]
        store.journal.restore(
            str(batch_id),
            tuple(str(k) for k in group["row_key"]),
            state=state,
            remote_id=remote if isinstance(remote, str) and remote else None,
            scope=ids.scope,
            provider=ids.provider,
            workflow=ids.workflow,
            fingerprint=ids.fingerprint,
        )
        added += 1
    return added
