"""Giving freed memory back to the operating system between the stages of a big run.

Allocators keep memory a program has freed, to hand it out again quickly: Arrow's pool
(mimalloc) and the C library's ``malloc`` (which Python uses for every object over 512
bytes: request bodies, answers, lists of a chunk's rows). A run's network stage frees
hundreds of megabytes of such short-lived buffers at 1M rows, and the join that follows
builds the output frame on top of what is kept: that is where the process peaked (RSS at
1M rows: ~120 MB kept by the allocators at the end of the network stage, measured with
``benchmarks.memory``). The join cannot reuse that memory for Arrow's own pool or numpy's
large arrays, so it is returned first. Dask's workers do the same (``malloc_trim``).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable

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
