"""Frozen values passed between modules.

Everything the encoder, planner, engine, store and providers hand each other is one of
these: immutable, typed, and free of pandas (the engine knows nothing about frames).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

RowStatus = Literal["succeeded", "failed", "cancelled", "skipped", "pending"]
"""The state a row ends a run in. ``pending`` rows are resumable by running again."""


@dataclass(frozen=True, slots=True)
class EncodedChunk:
    """A slice of the frame, encoded: one canonical JSON object per row, or an error.

    ``payloads[i]`` belongs to frame position ``start + i``; it is ``None`` exactly when
    ``errors`` holds a message for that position.
    """

    start: int
    payloads: list[bytes | None]
    errors: dict[int, str]


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows to send in one create request: the unit of payment."""

    batch_id: str
    keys: tuple[str, ...]
    payloads: tuple[bytes, ...]  # canonical JSON objects, in the order of ``keys``

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.payloads)


@dataclass(frozen=True, slots=True)
class BatchRef:
    """What polling a submitted batch needs; all of it survives a restart (journal)."""

    batch_id: str
    remote_id: str
    keys: tuple[str, ...]  # the order the rows were sent in


class RowResult(NamedTuple):
    """The outcome of one remote run, keyed by row key (never by position). A NamedTuple,
    not a frozen dataclass: one is built per row, and a frozen dataclass's ``__init__``
    costs twice as much (0.7 µs against 0.37 here, a million times per million rows)."""

    key: str
    status: Literal["succeeded", "failed", "cancelled"]
    outputs: dict[str, object] | None = None
    error: str | None = None
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class FileOutput:
    """A file a vendor returned as an output value; the store saves it under ``files/``."""

    data: bytes = field(repr=False)
    name: str | None = None
    mime_type: str | None = None


@dataclass(frozen=True, slots=True)
class BatchPoll:
    """One look at a submitted batch.

    ``done`` is true only when every row has a terminal result in ``results``. Rows in a
    state the provider does not document are counted in ``unknown`` and keep the batch
    open: an unknown state is never taken for success. ``kept``: the vendor keeps these
    results to be read again, so a crash before they are stored loses nothing (False for
    an answer that exists only in this process, like a synchronous bulk call's).
    """

    done: bool
    results: tuple[RowResult, ...] = ()
    unknown: tuple[str, ...] = ()
    attention: tuple[str, ...] = ()  # rows waiting on the user (e.g. Parallel's action_required)
    kept: bool = True


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What a provider found out about a create request whose answer was lost.

    ``remote_id`` set: the create did happen; poll that instead of sending again.
    ``absent``: the create certainly never happened; sending again pays nothing twice.
    Neither: the API cannot tell; the run's ``on_ambiguous`` policy decides.
    """

    remote_id: str | None = None
    absent: bool = False


UNKNOWN = Reconciliation()


@dataclass(frozen=True, slots=True)
class OutputShape:
    """How a provider's stored outputs become columns (applied at join time, not stored).

    ``types`` maps a flattened output column to ``integer``, ``number``, ``boolean``,
    ``date``, ``datetime`` or ``string``; ``hidden`` names output prefixes kept in the
    store but not shown (e.g. Parallel's per-field basis unless asked for).
    """

    types: Mapping[str, str] = field(default_factory=dict)
    hidden: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    """How a provider wants to be driven; every field can be overridden per run."""

    max_rows_per_batch: int
    max_bytes_per_batch: int
    poll_interval: float  # seconds between polls once a batch has been running a while
    first_poll: float = 0.25  # the first poll comes sooner; the interval grows to poll_interval
    max_in_flight: int = 4
    hard_max_rows: int | None = None  # the vendor's own per-request cap (batch_size may not exceed it)
    max_row_chars: int | None = None  # longer rows are skipped with a reason, never sent
    max_creates_per_minute: int | None = None  # create requests are paced to stay under it
    reconcile_delay: float = 0.0  # after a lost create answer, wait this long before looking


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot handed to the progress callback after every change."""

    total: int  # rows that need a remote result in this run (after cache and dedupe)
    done: int  # of those, rows with a terminal result
    failed: int
    batches_submitted: int
    batches_in_flight: int


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True, slots=True, repr=False)
class RunSummary:
    """What a run did, in counts. Returned next to the frame by ``frame_batch.run``."""

    rows: int
    unique_inputs: int
    cached: int
    submitted: int
    succeeded: int
    failed: int
    cancelled: int
    skipped: int
    pending: int
    create_requests: int
    batches: int
    possibly_duplicated: int
    elapsed_s: float
    cache_dir: str | None
    notes: tuple[str, ...] = field(default=())
    errors: tuple[tuple[str, int], ...] = field(default=())  # the commonest failure reasons, counted
    estimated_cost: float | None = None  # of the rows this run sent, when a price was known

    @property
    def complete(self) -> bool:
        """True when no row is left pending."""
        return self.pending == 0

    def __str__(self) -> str:
        parts = [
            f"{self.rows} rows",
            f"{self.succeeded} succeeded",
            f"{self.failed} failed",
        ]
        if self.cancelled:
            parts.append(f"{self.cancelled} cancelled")
        if self.skipped:
            parts.append(f"{self.skipped} skipped (bad input)")
        if self.pending:
            parts.append(f"{self.pending} pending (rerun to resume)")
        parts.append(f"{self.cached} from cache")
        parts.append(f"{self.create_requests} create requests")
        if self.possibly_duplicated:
            parts.append(f"{self.possibly_duplicated} possibly paid twice")
        return ", ".join(parts) + f" in {self.elapsed_s:.1f}s" + "".join(f"\n  note: {n}" for n in self.notes)

    def __repr__(self) -> str:
        return f"<RunSummary: {self}>"

    def _repr_html_(self) -> str:
        from ._display import summary_html

        return summary_html(self)


JobState = Literal["starting", "running", "finished", "failed", "cancelled"]


@dataclass(frozen=True, slots=True, repr=False)
class JobStatus:
    """Where a background ``Job`` is: counts, speed, and time left. Returned by ``job.status()``."""

    state: JobState
    rows: int  # rows in the frame
    to_run: int  # rows needing a remote result this run (after the cache and duplicates)
    done: int  # of those, rows with a result
    failed: int
    cached: int  # rows answered from the cache (planned so far)
    batches_in_flight: int
    elapsed_s: float
    rows_per_s: float | None  # results per second since the job started
    eta_s: float | None
    error: str | None = None  # why the job failed

    @property
    def succeeded(self) -> int:
        return self.done - self.failed

    @property
    def waiting(self) -> int:
        return max(0, self.to_run - self.done)

    def __str__(self) -> str:
        text = f"{self.state}: {self.done:,}/{self.to_run:,} rows done"
        if self.failed:
            text += f" ({self.failed:,} failed)"
        if self.cached:
            text += f", {self.cached:,} from cache"
        if self.state == "running":
            text += f", {self.batches_in_flight} batches in flight"
            if self.rows_per_s:
                text += f", {self.rows_per_s:,.1f} rows/s"
            if self.eta_s is not None:
                text += f", about {_duration(self.eta_s)} left"
        text += f" ({_duration(self.elapsed_s)} elapsed)"
        if self.error:
            text += f"; error: {self.error}"
        return text

    def __repr__(self) -> str:
        return f"<JobStatus: {self}>"

    def _repr_html_(self) -> str:
        from ._display import status_html

        return status_html(self)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
