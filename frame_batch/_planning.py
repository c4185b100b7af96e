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
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from ._types import Batch, EncodedChunk


@dataclass(slots=True)
class PlanState:
    """What planning learned about every row while streaming batches out."""

    keys: list[str | None] = field(default_factory=list)  # per frame position; None = skipped
    errors: dict[int, str] = field(default_factory=dict)  # position -> reason for skipping
    cached: int = 0  # rows whose key already had a stored result
    in_flight: int = 0  # rows whose key is in a batch submitted by an earlier run
    planned: set[str] = field(default_factory=set)  # unique keys sent (or to send) this run
    batches: int = 0

    @property
    def rows(self) -> int:
        return len(self.keys)


def plan_batches(
    chunks: Iterable[EncodedChunk],
    *,
    key_of: Callable[[bytes], str],
    is_done: Callable[[str], bool],
    in_flight: Callable[[str], bool] = lambda key: False,
    max_rows: int,
    max_bytes: int,
    state: PlanState,
    max_chars: int | None = None,
) -> Iterator[Batch]:
    """Yield batches of rows to submit; fill ``state`` with every row's key and fate."""
    keys: list[str] = []
    payloads: list[bytes] = []
    size = 0
    for chunk in chunks:
        state.errors.update(chunk.errors)
        for payload in chunk.payloads:
            if payload is None:
                state.keys.append(None)
                continue
            key = key_of(payload)
            state.keys.append(key)
            if key in state.planned:
                continue  # a duplicate of a row already planned: fanned out at join time
            if is_done(key):
                state.cached += 1
                continue
            if in_flight(key):
                state.in_flight += 1
                continue
            too_big = _too_big(payload, len(state.keys) - 1, max_bytes, max_chars)
            if too_big is not None:
                state.errors[len(state.keys) - 1] = too_big
                state.keys[-1] = None
                continue
            if keys and (len(keys) >= max_rows or size + len(payload) > max_bytes):
                yield _batch(keys, payloads, state)
                keys, payloads, size = [], [], 0
            state.planned.add(key)
            keys.append(key)
            payloads.append(payload)
            size += len(payload)
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
