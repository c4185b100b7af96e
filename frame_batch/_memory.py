"""Giving freed memory back to the operating system between the stages of a big run.

Allocators keep memory a program has freed, to hand it out again quickly: Arrow's pool
(mimalloc) and the C library's ``malloc`` (which Python uses for every object over 512
bytes: request bodies, answers, lists of a chunk's rows). A run's network stage frees
hundreds of megabytes of such short-lived buffers at 1M rows, and the join that follows
builds the output frame on top of what is kept: that is where the process peaked (RSS at
1M rows: ~120 MB kept by the allocators at the end of the network stage, measured with
``benchmarks.memory``). The join cannot reuse that memory for Arrow's own pool or numpy's
large arrays, so it is returned first. Dask's workers do the same (``malloc_trim``).

Also here: keeping Python's cyclic garbage collector off the objects that existed before a run
(``old_objects_frozen``). See its docstring for why.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyarrow as pa

RELEASE_FROM_ROWS = 250_000  # smaller runs peak low anyway; releasing costs page faults


def release(rows: int) -> None:
    """Return memory the allocators hold but nothing uses, in a run of ``rows`` rows.

    Memory given back is faulted in again when the next stage allocates (at 100k rows that
    cost ~0.5 µs a row, for a peak that did not matter), so only big runs release."""
    if rows < RELEASE_FROM_ROWS:
        return
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    _last[0] = _resident()


def release_if_grown(rows: int, step: int = 64 * 2**20) -> None:
    """``release``, if the process grew by ``step`` bytes since the last time. Within a
    stage: releasing after every chunk cost ~1.4 µs a row in page faults, as the next chunk
    took the same memory back from the system."""
    if rows >= RELEASE_FROM_ROWS and _resident() - _last[0] >= step:
        release(rows)


_last = [0]  # resident bytes after the last release


def _resident() -> int:
    """Resident bytes now (Linux; 0 elsewhere, where nothing is released either)."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, where there is one (Linux with glibc; not musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # the C library already loaded
    except (OSError, AttributeError):
        return None
    return trim


@contextmanager
def old_objects_frozen() -> Iterator[None]:
    """While the block runs, the cyclic garbage collector skips the objects that existed
    before it (``gc.freeze``); they are handed back to it (``gc.unfreeze``) at the end.

    Why: a run allocates thousands of containers a second (each answer's parsed runs), so
    the collector's full pass comes every few dozen batches, and a full pass walks every
    object of the process: ~90k with pandas and pyarrow loaded, ~40 ms each time. That was
    1.2-1.5 µs a row of client CPU at 200k rows, and a 40 ms stall of the event loop each
    time. New objects are still collected as usual; an old object that becomes garbage
    during the run is collected after it. Nested or concurrent runs (jobs in threads) share
    one freeze, undone when the last ends; a freeze the program made itself (``gc.freeze()``
    before forking, say) is left as it is."""
    _FREEZE.enter()
    try:
        yield
    finally:
        _FREEZE.leave()


class _Freeze:
    """The one process-wide freeze, counted across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self._ours = False  # whether the first run froze (and so the last unfreezes)

    def enter(self) -> None:
        with self._lock:
            if self._runs == 0:
                self._ours = gc.get_freeze_count() == 0
                if self._ours:
                    gc.freeze()
            self._runs += 1

    def leave(self) -> None:
        with self._lock:
            self._runs -= 1
            if self._runs == 0 and self._ours:
                gc.unfreeze()


_FREEZE = _Freeze()
