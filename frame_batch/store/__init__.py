"""The durable store behind ``cache=``: a journal (SQLite) plus result parts (Parquet).

Directory layout::

    <cache>/
      journal.sqlite3          batches: submitting / submitted(remote id) / collected ...
      results/<scope>/part-<batch_id>.parquet
      files/<sha256[:2]>/<sha256><ext>   file outputs, by content (see _files.py)
      lock                     held (flock) by the run using this cache

``<scope>`` is a hash of provider + workflow (+ version), so one cache directory serves
many workflows without mixing them. A run holds the lock for its whole length: a second run
on the same cache waits for it rather than paying for the same rows at the same time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

import pyarrow as pa
import pyarrow.compute as pc

from .._rowkeys import all_distinct
from .._types import RowResult
from ..errors import StoreError
from .journal import Journal, JournalBatch
from .parts import MERGED, OUTPUTS, RESULT_SCHEMA, PartStore, part_name

__all__ = [
    "JOINED",
    "MERGED",
    "OUTPUTS",
    "RESULT_SCHEMA",
    "Journal",
    "JournalBatch",
    "PartStore",
    "Store",
]

ALL_COLUMNS = (*RESULT_SCHEMA.names, OUTPUTS)
JOINED = ("key", "status", "error", "run_id", OUTPUTS)  # what joining results onto a frame reads
FINAL_STATUSES = ("succeeded", "failed")  # a stored cancelled row is sent again on rerun


class Store:
    """Journal + parts + the run lock, for one cache directory."""

    def __init__(self, root: Path, *, temporary: bool = False) -> None:
        self.root = root
        self.temporary = temporary
        try:
            root.mkdir(parents=True, exist_ok=True)
            (root / "results").mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the cache directory {root}: {exc}; pass cache=<a writable dir>"
            ) from None
        self.journal = Journal(root / "journal.sqlite3")
        self.parts = PartStore(root / "results", files=root / "files")
        self._lock_fd: int | None = None
        self.parts_written = 0  # by this process: tells a reader whether its table is stale

    @classmethod
    def open(cls, cache: str | os.PathLike[str] | None) -> Store:
        """``cache=None`` gives a throwaway store (deleted on close): nothing resumes."""
        if cache is None:
            return cls(Path(tempfile.mkdtemp(prefix="frame-batch-")), temporary=True)
        return cls(Path(cache).expanduser())

    # -- locking ------------------------------------------------------------------------
    def acquire(self, *, timeout: float = 30.0) -> None:
        """Take the cache lock; wait up to ``timeout`` for another run to finish with it."""
        import fcntl

        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StoreError(
                        f"another run is using the cache {self.root}; wait for it to finish "
                        "or pass a different cache="
                    ) from None
                time.sleep(0.05)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def close(self) -> None:
        self.release()
        self.journal.close()
        if self.temporary:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- results ------------------------------------------------------------------------
    @property
    def files(self) -> Path:
        """Where file outputs are saved (written before the part that points at them)."""
        return self.root / "files"

    def write_results(self, scope: str, batch_id: str, results: list[RowResult]) -> None:
        """Persist a collected batch, then mark it collected (that order: see parts.py)."""
        self.write_batches(scope, [(batch_id, results)])

    def write_batches(self, scope: str, batches: Sequence[tuple[str, Sequence[RowResult]]]) -> None:
        """Persist several collected batches as one part, then mark them all collected.

        After a crash between the two steps ``open_batches`` closes every batch of the part
        from its rows (it is named after the first only)."""
        if not batches:
            return
        self.parts.write_batches(scope, batches)
        self.parts_written += 1
        self.journal.collected(*(batch_id for batch_id, _ in batches))

    def open_batches(self, scope: str) -> list[JournalBatch]:
        """The journal's open batches, after closing those whose results are stored already:
        a crash between writing a batch's part and journaling it leaves the part complete
        (parts are atomic) and the batch open. Polling it again would be wasted, and for a
        vendor whose answer came with the create (nothing to poll) it would store the
        paid-for rows as lost over their results."""
        batches = self.journal.open_batches(scope)
        stored = {p.name for p in self.parts.parts(scope)}
        unnamed = any(part_name(batch.batch_id) not in stored for batch in batches)
        # Read the parts' batch ids only when some open batch has no part of its own name:
        # after a crash, or a run that stopped with batches out; never on a finished run.
        shared = self.parts.whole_batches(scope) if unnamed else set()
        closed = {b.batch_id for b in batches if part_name(b.batch_id) in stored or b.batch_id in shared}
        if closed:
            self.journal.collected(*closed)  # one transaction
        return [b for b in batches if b.batch_id not in closed]

    def write_partial(self, scope: str, batch_id: str, part: int, results: list[RowResult]) -> None:
        """Persist some rows of a batch that is still open (it stays ``submitted``)."""
        self.parts.write(scope, f"{batch_id}.{part}", results)
        self.parts_written += 1

    def done_keys(
        self, scope: str, *, retry_failed: bool = False, latest: pa.Table | None = None
    ) -> set[str]:
        """Keys whose latest stored result is final: they are never submitted again."""
        table = self.latest(scope, columns=("key", "status")) if latest is None else latest
        final = ("succeeded",) if retry_failed else FINAL_STATUSES
        mask = pc.is_in(table["status"], value_set=pa.array(final))
        return set(table.filter(mask)["key"].to_pylist())

    def latest(self, scope: str, columns: Iterable[str] = ALL_COLUMNS) -> pa.Table:
        """One row per key: the most recently collected result."""
        names = list(dict.fromkeys([*columns, "key", "finished_at"]))
        table, parts = self.parts.read_counted(scope, names)
        return newest_per_key(table, unique=parts <= 1)

    def compact(self, scope: str) -> pa.Table | None:
        """Merge the scope's parts into one when there are many (the end of a run); the
        merged table is ``latest(scope)``, or None if nothing was merged."""
        merged = self.parts.compact(scope, newest_per_key)
        if merged is not None:
            self.parts_written += 1
        return merged


def newest_per_key(table: pa.Table, *, unique: bool = False) -> pa.Table:
    """The newest row (largest ``finished_at``) of each key; ``unique``: each key is known
    to be there once (one part: one batch, or a merge) and the table is kept as is."""
    if unique or table.num_rows == 0 or all_distinct(table["key"]):
        return table
    table = table.sort_by("finished_at")  # stable: ties keep their order
    reversed_table = table.take(pa.array(range(table.num_rows - 1, -1, -1)))
    keys = reversed_table["key"]
    first = pc.equal(pc.index_in(keys, value_set=keys), pa.array(range(table.num_rows)))
    return reversed_table.filter(first)
