"""The journal: what was sent, under which remote id, and what came of it (SQLite, WAL).

Batch lifecycle (one row per batch)::

    submitting(staged id?) ──> submitted(remote_id) ──> collected
        │               └──> (cancel requested: stays submitted; the next poll collects)
        ├──> rejected    the server answered the create with an error, or a lost create was
        │                reconciled as never made: nothing was started
        └──> ambiguous   the create may have reached the server but its answer was lost and
                         could not be reconciled; its rows are recorded in ``possible_duplicates``

``submitting`` is committed *before* the create request leaves and ``submitted`` right after
it returns, so a crash anywhere leaves a state the next run can act on: ``submitted`` batches
are polled, ``submitting`` batches are reconciled or handled by the ambiguous-create policy.
The journal holds row keys and remote ids only: never inputs, outputs or secrets.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from .._types import BatchRef
from ..errors import StoreError

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    batch_id    TEXT PRIMARY KEY,
    scope       TEXT NOT NULL,
    provider    TEXT NOT NULL,
    workflow    TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    state       TEXT NOT NULL,
    remote_id   TEXT,
    keys        BLOB NOT NULL,
    n_rows      INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    note        TEXT
);
CREATE INDEX IF NOT EXISTS batches_scope_state ON batches (scope, state);
CREATE TABLE IF NOT EXISTS spend (
    scope     TEXT NOT NULL,
    n_rows    INTEGER NOT NULL,
    cost      REAL NOT NULL,
    noted_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS possible_duplicates (
    row_key   TEXT NOT NULL,
    batch_id  TEXT NOT NULL,
    noted_at  REAL NOT NULL,
    PRIMARY KEY (row_key, batch_id)
);
"""


@dataclass(frozen=True, slots=True)
class JournalBatch:
    batch_id: str
    state: str
    remote_id: str | None
    keys: tuple[str, ...]
    created_at: float


class Journal:
    """One SQLite file in the cache directory; every write is its own committed transaction."""

    def __init__(self, path: Path) -> None:
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed 'submitting' must survive power loss, or a batch could be paid twice.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
            self._check_version()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"the journal {path} cannot be opened ({exc}); if it is damaged, move the cache "
                "directory aside and run again (stored results in its results/ folder stay readable)"
            ) from None

    def _check_version(self) -> None:
        row = self._db.execute("SELECT v FROM meta WHERE k = 'schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta (k, v) VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise StoreError(f"journal schema {row[0]} is not supported (expected {SCHEMA_VERSION})")

    def close(self) -> None:
        self._db.close()

    def begin(
        self,
        batch_id: str,
        keys: tuple[str, ...],
        *,
        scope: str,
        provider: str,
        workflow: str,
        fingerprint: str,
    ) -> None:
        """Record ``submitting`` — committed before the create request is sent."""
        now = time.time()
        self._db.execute(
            "INSERT INTO batches (batch_id, scope, provider, workflow, fingerprint, state, keys,"
            " n_rows, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'submitting', ?, ?, ?, ?)",
            (batch_id, scope, provider, workflow, fingerprint, orjson.dumps(keys), len(keys), now, now),
        )

    def has(self, batch_id: str) -> bool:
        found = self._db.execute("SELECT 1 FROM batches WHERE batch_id = ?", (batch_id,)).fetchone()
        return found is not None

    def restore(
        self,
        batch_id: str,
        keys: tuple[str, ...],
        *,
        state: str,
        remote_id: str | None,
        scope: str,
        provider: str,
        workflow: str,
        fingerprint: str,
    ) -> None:
        """Record a batch known from a checkpoint (the cache was lost): ``submitted`` batches
        are then polled and ``submitting`` ones reconciled, exactly as after a crash."""
        if state not in ("submitting", "submitted"):
            raise ValueError(f"only open batches are restored, not {state!r}")
        self.begin(batch_id, keys, scope=scope, provider=provider, workflow=workflow, fingerprint=fingerprint)
        self._set(batch_id, state, remote_id=remote_id)

    def staged(self, batch_id: str, staged_id: str) -> None:
        """Remember what was created before the paid request (state stays ``submitting``)."""
        self._set(batch_id, "submitting", remote_id=staged_id)

    def submitted(self, batch_id: str, remote_id: str) -> None:
        self._set(batch_id, "submitted", remote_id=remote_id)

    def collected(self, *batch_ids: str) -> None:
        """Mark batches collected, in one transaction. Their part is on disk (fsynced) before
        this is called, and a batch left open is closed from its part or polled again on the
        next run (``Store.open_batches``), so this commit does not wait for the disk: the next
        FULL commit flushes it with the rest of the log. One fsync less per part."""
        now = time.time()
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "UPDATE batches SET state = 'collected', updated_at = ? WHERE batch_id = ?",
                    [(now, batch_id) for batch_id in batch_ids],
                )
        finally:
            self._db.execute("PRAGMA synchronous=FULL")

    def rejected(self, batch_id: str, note: str) -> None:
        self._set(batch_id, "rejected", note=note)

    def ambiguous(self, batch_id: str, keys: Iterable[str], note: str, *, record_duplicates: bool) -> None:
        """Close a batch whose create may have been paid; remember its rows if sent again."""
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE batches SET state = 'ambiguous', note = ?, updated_at = ? WHERE batch_id = ?",
                (note, now, batch_id),
            )
            if not record_duplicates:
                return
            self._db.executemany(
                "INSERT OR IGNORE INTO possible_duplicates (row_key, batch_id, noted_at) VALUES (?, ?, ?)",
                [(key, batch_id, now) for key in keys],
            )

    def _set(
        self, batch_id: str, state: str, *, remote_id: str | None = None, note: str | None = None
    ) -> None:
        self._db.execute(
            "UPDATE batches SET state = ?, remote_id = COALESCE(?, remote_id),"
            " note = COALESCE(?, note), updated_at = ? WHERE batch_id = ?",
            (state, remote_id, note, time.time(), batch_id),
        )

    def open_batches(self, scope: str) -> list[JournalBatch]:
        """Batches of this scope that are submitting or submitted, oldest first."""
        rows = self._db.execute(
            "SELECT batch_id, state, remote_id, keys, created_at FROM batches"
            " WHERE scope = ? AND state IN ('submitting', 'submitted') ORDER BY created_at",
            (scope,),
        ).fetchall()
        return [
            JournalBatch(
                batch_id=r[0], state=r[1], remote_id=r[2], keys=tuple(orjson.loads(r[3])), created_at=r[4]
            )
            for r in rows
        ]

    def in_flight(self) -> list[tuple[str, str, BatchRef]]:
        """(provider, workflow, ref) of every ``submitted`` batch, any scope: for cancel."""
        rows = self._db.execute(
            "SELECT provider, workflow, batch_id, remote_id, keys FROM batches"
            " WHERE state = 'submitted' AND remote_id IS NOT NULL ORDER BY created_at"
        ).fetchall()
        return [(r[0], r[1], BatchRef(r[2], r[3], tuple(orjson.loads(r[4])))) for r in rows]

    def record_spend(self, scope: str, rows: int, cost: float) -> None:
        """Remember what ``rows`` rows sent by one run were estimated to cost (plan's history)."""
        if rows > 0:
            self._db.execute(
                "INSERT INTO spend (scope, n_rows, cost, noted_at) VALUES (?, ?, ?, ?)",
                (scope, rows, cost, time.time()),
            )

    def spend(self, scope: str) -> tuple[int, float]:
        """(rows, cost) recorded for this scope so far."""
        rows, cost = self._db.execute(
            "SELECT COALESCE(SUM(n_rows), 0), COALESCE(SUM(cost), 0.0) FROM spend WHERE scope = ?", (scope,)
        ).fetchone()
        return int(rows), float(cost)

    def possible_duplicates(self) -> set[str]:
        """Row keys whose create may have been paid more than once (any scope)."""
        return {r[0] for r in self._db.execute("SELECT DISTINCT row_key FROM possible_duplicates")}

    def counts(self) -> dict[str, int]:
        """Batches by state, for ``frame-batch status``."""
        return dict(self._db.execute("SELECT state, COUNT(*) FROM batches GROUP BY state").fetchall())
