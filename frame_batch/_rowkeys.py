"""Row keys held for a whole frame without a Python object per row.

Planning a million rows used to keep a million key strings (a list by position and a set for
de-duplication) alive for the whole run: ~120 MB at 1M rows, allocated among the run's
short-lived payloads and answers. Here keys are Python strings only while their chunk is
planned; after that they live in Arrow (by position) and in sorted numpy arrays (the set).
With the releases of ``_memory`` and the join's ``Handover`` this took the peak at 1M rows
from 1,000 to ~670 MB (``benchmarks.memory``); on its own it moved the peak little.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ._keys import KEY_BYTES

_Run = tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]  # (high, low) halves, sorted by high


class KeySet:
    """A set of row keys (``KEY_BYTES`` bytes, as hex text).

    Keys are added one by one to a small Python set (the chunk being planned); ``seal``
    moves them into a sorted run of numpy integers. Runs of similar size are merged, so a
    lookup searches O(log n) runs and each key is copied O(log n) times in all.
    """

    def __init__(self) -> None:
        self._runs: list[_Run] = []
        self._sealed = 0
        self.recent: set[str] = set()  # added since the last ``seal``

    def __len__(self) -> int:
        return self._sealed + len(self.recent)

    def add(self, key: str) -> None:
        self.recent.add(key)

    def contains(self, keys: Sequence[str]) -> npt.NDArray[np.bool_]:
        """For each key, whether it was sealed into the set (``recent`` is not searched)."""
        if not keys or not self._runs:
            return np.zeros(len(keys), dtype=bool)
        high, low = _halves(keys)
        # Searched in sorted order, each run is walked once front to back: 3.5x faster than
        # random probes into a run of a million.
        order = np.argsort(high)
        high, low = high[order], low[order]
        found = np.zeros(len(keys), dtype=bool)
        for run in self._runs:
            found |= _in_run(run, high, low)
        unsorted = np.empty_like(found)
        unsorted[order] = found
        return unsorted

    def seal(self) -> None:
        """Move the keys added since the last call into the sorted runs."""
        if not self.recent:
            return
        high, low = _halves(list(self.recent))
        order = np.argsort(high)
        self._runs.append((high[order], low[order]))
        self._sealed += len(self.recent)
        self.recent = set()
        # Merge while the run before is not much bigger: a binary counter of run sizes.
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0]):
            newer, older = self._runs.pop(), self._runs.pop()
            self._runs.append(_merge(older, newer))


def _merge(big: _Run, small: _Run) -> _Run:
    """Two sorted runs as one, in O(n): each of ``small``'s keys goes where it sorts in
    ``big``, shifted by the keys of ``small`` before it."""
    at = np.searchsorted(big[0], small[0]) + np.arange(len(small[0]))
    rest = np.ones(len(big[0]) + len(small[0]), dtype=bool)
    rest[at] = False
    merged: list[npt.NDArray[np.uint64]] = []
    for old, new in zip(big, small, strict=True):
        out = np.empty(len(rest), dtype=np.uint64)
        out[at] = new
        out[rest] = old
        merged.append(out)
    return merged[0], merged[1]


def _halves(keys: Sequence[str]) -> _Run:
    """The keys' bytes as two big-endian integers each (one C call, no object per key)."""
    try:
        raw = bytes.fromhex("".join(keys))
    except ValueError:
        raw = b""
    if len(raw) != KEY_BYTES * len(keys):
        raise ValueError(f"row keys must be {KEY_BYTES * 2} hex characters each")
    pairs = np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def _in_run(run: _Run, high: npt.NDArray[np.uint64], low: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
    run_high, run_low = run
    at = np.searchsorted(run_high, high)
    inside = np.minimum(at, len(run_high) - 1)
    same_high = (at < len(run_high)) & (run_high[inside] == high)
    found: npt.NDArray[np.bool_] = same_high & (run_low[inside] == low)
    # Distinct keys sharing their high 8 bytes (odds ~n²/2⁶⁵): look past the first of them.
    for i in np.flatnonzero(same_high & ~found):
        j = int(at[i]) + 1
        while j < len(run_high) and run_high[j] == high[i]:
            if run_low[j] == low[i]:
                found[i] = True
                break
            j += 1
    return found


class RowKeys:
    """Every row's key by frame position (None: the row is not sent), as planned so far.

    ``current`` is the chunk being planned (Python strings, appended row by row); ``seal``
    turns it into an Arrow array. Another thread may read (``to_list``, ``array``) while
    planning goes on: the sealed chunks and the current list are swapped in as one tuple.
    """

    def __init__(self) -> None:
        # (sealed chunks, how many rows they hold, the current chunk)
        self._view: tuple[tuple[pa.Array, ...], int, list[str | None]] = ((), 0, [])

    @property
    def current(self) -> list[str | None]:
        return self._view[2]

    def __len__(self) -> int:
        _, sealed, current = self._view
        return sealed + len(current)

    def seal(self) -> None:
        chunks, sealed, current = self._view
        if current:
            self._view = ((*chunks, pa.array(current, pa.string())), sealed + len(current), [])

    def array(self) -> pa.Array:
        chunks, _, current = self._view
        parts = [*chunks, pa.array(list(current), pa.string())]
        return pa.concat_arrays(parts)

    def to_list(self) -> list[str | None]:
        chunks, _, current = self._view
        out: list[str | None] = []
        for chunk in chunks:
            out.extend(chunk.to_pylist())
        out.extend(list(current))
        return out


def count_unique(keys: pa.Array, positions: pa.Array | None = None) -> int:
    """Distinct keys (None not counted). ``positions``: each key's row in a table of unique
    keys (null: not there), when known. Counting those integers takes a small fraction of
    the memory hashing a million key strings takes (~110 MB at 1M rows)."""
    if positions is None:
        return int(pc.count_distinct(keys, mode="only_valid").as_py())
    # Positions are small non-negative integers: counting them in a numpy bincount took
    # 2.5 ms at 300k rows against 8-20 ms for Arrow's hash count (150 ms on its first call).
    at = positions.drop_null().to_numpy()
    found = int(np.count_nonzero(np.bincount(at))) if len(at) else 0
    rest = keys.filter(pc.and_(positions.is_null(), keys.is_valid()))
    return found + int(pc.count_distinct(rest, mode="only_valid").as_py())


# -- checking keys are distinct, in bulk --------------------------------------------------
# Arrow's ``count_distinct`` hashes the strings: at 1M keys it costs ~0.5 s and ~100 MB while
# it runs. A key is 32 ASCII hex characters, which Arrow stores back to back: four 64-bit
# words per key, read in place and mixed into one. Distinct mixed words prove distinct keys
# (equal keys mix alike); if two mix alike, Arrow's exact count answers instead.
_HEX_CHARS = KEY_BYTES * 2
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9))


def all_distinct(keys: pa.Array | pa.ChunkedArray) -> bool:
    """Whether no key is there twice (nulls count as keys). 0.04 s at 1M keys."""
    chunks = keys.chunks if isinstance(keys, pa.ChunkedArray) else [keys]
    mixed = [_mixed(words) for words in map(_words, chunks) if words is not None]
    if sum(map(len, mixed)) == len(keys):  # every key read in place (no chunk declined)
        ordered = np.sort(np.concatenate(mixed)) if mixed else np.empty(0, np.uint64)
        if not np.any(ordered[1:] == ordered[:-1]):
            return True
    return bool(pc.count_distinct(keys, mode="all").as_py() == len(keys))


def _words(keys: pa.Array) -> npt.NDArray[np.uint64] | None:
    """Each key's 32 characters as four 64-bit words (n x 4), read in place; None if not
    all keys are 32 characters of plain string (no nulls)."""
    if keys.type != pa.string() or keys.null_count or len(keys) == 0:
        return None
    offsets = np.frombuffer(keys.buffers()[1], dtype=np.int32)[keys.offset : keys.offset + len(keys) + 1]
    if not np.all(np.diff(offsets) == _HEX_CHARS):
        return None
    data = np.frombuffer(keys.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data.view(np.uint64).reshape(-1, 4)  # 32 bytes a key: whole words


def _mixed(words: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """One 64-bit word per key from its four (multiplication wraps around: that is the mix)."""
    mixed: npt.NDArray[np.uint64] = words[:, 0] ^ (words[:, 1] * _MIX[0])
    mixed ^= words[:, 2] * _MIX[1]
    mixed ^= words[:, 3] * _MIX[2]
    return mixed
