"""Planning, with no I/O: which rows need a remote run, and how they are batched.

Rules, in order:
1. A row with an encoding error is *skipped* (it has its reason already); it is never sent.
2. Rows are identified by key. A key whose result is already stored is not planned again,
   nor is a key in a batch an earlier run submitted (that batch is polled instead).
3. Identical keys in one frame are planned once; the result fans out to every such row.
4. Batches hold at most ``max_rows`` rows and at most ``max_bytes`` bytes of row payloads.
   A single row bigger than ``max_bytes`` (or longer than the provider's ``max_chars``) is
   not sent: it becomes a skipped row with a reason.
5. Planning streams: a batch is yielded as soon as it is full, so the payloads of the whole
   frame never sit in memory at once.
6. ``max_rows`` may be a ``BatchSizer`` the engine adapts while the run goes: a batch takes
   the size current when it is formed, which is just before it is sent.
7. A ``Budget`` (the run's ``max_rows=``/``max_cost=``) admits rows until the next one would
   pass a limit; from then on no row is planned. Rows held back keep their key and no
   result: they are pending, and the next run plans them like any other.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa

from ._memory import release_if_grown as release_memory_if_grown
from ._rowkeys import KeySet, RowKeys
from ._types import Batch, EncodedChunk


@dataclass(slots=True)
class BatchSizer:
    """Rows per batch, adapted to what the vendor copes with (a synchronous bulk call must
    finish inside server and proxy timeouts).

    A request refused as too large (413) or that ran out of time (504, read timeout) halves
    the size below the rows it carried; ``grow_after`` successes in a row at the current
    size double it again, never above ``ceiling`` (the configured batch size). A 413 is a
    hard limit, so it also lowers the ceiling below the refused size: growing back never
    asks for a refusal again. A timeout may pass (a busy moment), so it does not.
    """

    ceiling: int
    grow_after: int = 4
    current: int = 0
    _streak: int = 0

    def __post_init__(self) -> None:
        self.current = self.current or self.ceiling

    def __call__(self) -> int:
        return self.current

    def shrink(self, sent: int, *, hard: bool = False) -> int:
        """A request of ``sent`` rows was too much: the new, smaller size."""
        if hard:
            self.ceiling = max(1, min(self.ceiling, sent - 1))
        self.current = max(1, min(self.current, sent // 2))
        self._streak = 0
        return self.current

    def succeeded(self, sent: int) -> None:
        if sent < self.current or self.current >= self.ceiling:
            return  # a small last batch says nothing about the current size
        self._streak += 1
        if self._streak >= self.grow_after:
            self.current = min(self.ceiling, self.current * 2)
            self._streak = 0


@dataclass(slots=True)
class Budget:
    """What one run may send: at most ``max_rows`` new rows and ``max_cost`` estimated cost.

    ``cost_of`` estimates one row's cost from its payload (None: unknown). ``spent`` and
    ``costed`` add up the estimates of admitted rows whose cost was known.
    """

    max_rows: int | None = None
    max_cost: float | None = None
    cost_of: Callable[[bytes], float | None] | None = None
    rows: int = 0
    spent: float = 0.0
    costed: int = 0
    stopped: str | None = None  # the limit that stopped planning, e.g. "max_rows=100"

    def admit(self, payload: bytes) -> bool:
        if self.stopped is not None:
            return False  # stop at the limit: later rows wait for the next run, in order
        if self.max_rows is not None and self.rows >= self.max_rows:
            self.stopped = f"max_rows={self.max_rows}"
            return False
        cost = self.cost_of(payload) if self.cost_of is not None else None
        if self.max_cost is not None and (cost is None or self.spent + cost > self.max_cost * (1 + 1e-9)):
            unknown = " (the next row's cost is unknown)" if cost is None else ""
            self.stopped = f"max_cost={self.max_cost:g}{unknown}"
            return False
        self.rows += 1
        if cost is not None:
            self.spent += cost
            self.costed += 1
        return True


@dataclass(slots=True)
class PlanState:
    """What planning learned about every row while streaming batches out."""

    keys: RowKeys = field(default_factory=RowKeys)  # per frame position; None = skipped
    errors: dict[int, str] = field(default_factory=dict)  # position -> reason for skipping
    cached: int = 0  # rows whose key already had a stored result
    in_flight: int = 0  # rows whose key is in a batch submitted by an earlier run
    held: int = 0  # rows not sent because the budget (max_rows=/max_cost=) was reached
    planned: KeySet = field(default_factory=KeySet)  # unique keys sent (or to send) this run
    batches: int = 0
    # Every row's key read from a recorded plan (``_manifest``) instead of planned, or moved
    # there once planning is over: ``keys`` is then empty.
    known: pa.Array | None = None

    @property
    def rows(self) -> int:
        return len(self.known) if self.known is not None else len(self.keys)

    def key_list(self) -> list[str | None]:
        """Every planned row's key (None: skipped), as a new list."""
        return self.known.to_pylist() if self.known is not None else self.keys.to_list()

    def key_array(self) -> pa.Array:
        """Every planned row's key (null: skipped), as one Arrow array."""
        return self.known if self.known is not None else self.keys.array()


def plan_batches(
    chunks: Iterable[EncodedChunk],
    *,
    keys_of: Callable[[list[bytes | None]], list[str | None]],
    is_done: Callable[[str], bool],
    in_flight: Callable[[str], bool] = lambda key: False,
    max_rows: int | BatchSizer,
    max_bytes: int,
    state: PlanState,
    max_chars: int | None = None,
    budget: Budget | None = None,
) -> Iterator[Batch]:
    """Yield batches of rows to submit; fill ``state`` with every row's key and fate."""
    fixed = max_rows if isinstance(max_rows, int) else 0
    rows_limit: Callable[[], int] = max_rows if isinstance(max_rows, BatchSizer) else (lambda: fixed)
    keys: list[str] = []
    payloads: list[bytes] = []
    size = 0
    # Only a row too long for either limit is looked at closely (``_too_big``).
    long_row = max_bytes if max_chars is None else min(max_bytes, max_chars)
    for chunk in chunks:
        # Read once per stretch of planning: the size changes only while batches are out
        # (after a ``yield``), and a call per row cost ~0.1 µs.
        limit = rows_limit()
        state.errors.update(chunk.errors)
        chunk_keys = keys_of(chunk.payloads)
        # Keys planned in earlier chunks, found in one vectorised search; this chunk's
        # own repeats are in ``planned.recent``.
        earlier = state.planned.contains([k for k in chunk_keys if k is not None])
        seen = iter(earlier.tolist())
        row_keys, recent, base = state.keys.current, state.planned.recent, len(state.keys)
        for i, (payload, key) in enumerate(zip(chunk.payloads, chunk_keys, strict=True)):
            row_keys.append(key)
            if payload is None or key is None:
                continue
            if next(seen) or key in recent:
                continue  # a duplicate of a row already planned: fanned out at join time
            if is_done(key):
                state.cached += 1
                continue
            if in_flight(key):
                state.in_flight += 1
                continue
            too_big = _too_big(payload, base + i, max_bytes, max_chars) if len(payload) > long_row else None
            if too_big is not None:
                state.errors[base + i] = too_big
                row_keys[-1] = None
                continue
            if budget is not None and not budget.admit(payload):
                state.held += 1
                continue
            if keys and (len(keys) >= limit or size + len(payload) > max_bytes):
                yield _batch(keys, payloads, state)
                keys, payloads, size = [], [], 0
                limit = rows_limit()
            recent.add(key)
            keys.append(key)
            payloads.append(payload)
            size += len(payload)
        # The chunk's keys leave Python objects for Arrow and numpy (see ``_rowkeys``), and
        # what the chunk's payloads and answers took goes back to the system (``_memory``).
        state.keys.seal()
        state.planned.seal()
        release_memory_if_grown(len(state.keys))
    if keys:
        yield _batch(keys, payloads, state)


def _too_big(payload: bytes, position: int, max_bytes: int, max_chars: int | None) -> str | None:
    """Why a row cannot be sent at all (too large for one request, or for the vendor)."""
    if len(payload) > max_bytes:
        return (
            f"row {position}: its inputs encode to {len(payload):,} bytes, more than "
            f"the {max_bytes:,}-byte request limit; shorten the inputs"
        )
    # Bytes >= characters in UTF-8: only a long payload needs decoding to count characters.
    chars = len(payload.decode()) if max_chars is not None and len(payload) > max_chars else 0
    if max_chars is not None and chars > max_chars:
        return (
            f"row {position}: its inputs are {chars:,} characters, more than the "
            f"{max_chars:,} the provider accepts per row (together with the task spec); shorten the "
            "inputs or the output schema"
        )
    return None


def _batch(keys: list[str], payloads: list[bytes], state: PlanState) -> Batch:
    state.batches += 1
    return Batch(batch_id=uuid.uuid4().hex, keys=tuple(keys), payloads=tuple(payloads))


def split(batch: Batch, rows: int) -> list[Batch]:
    """``batch`` as batches of at most ``rows`` rows, each with a new id (a new create)."""
    step = max(1, rows)
    return [
        Batch(uuid.uuid4().hex, batch.keys[i : i + step], batch.payloads[i : i + step])
        for i in range(0, len(batch.keys), step)
    ]
