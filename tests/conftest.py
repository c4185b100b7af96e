"""Shared fixtures: emulators in-process, a small frame, and a run helper with no waiting."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import frame_batch
from frame_batch import Respell, RetryPolicy
from frame_batch.testing import RespellEmulator

# A runner may start the suite with SIGINT ignored (a background job without job control).
# Ignored SIGINT is inherited by child processes, so the Ctrl-C tests would wait for an
# interrupt that never comes. A Python handler here is reset to the default in children.
signal.signal(signal.SIGINT, signal.default_int_handler)

SPELL = "clxdq2y1w008g2l7by88758uh"
KEY = "test-key"


def topics(n: int) -> pd.DataFrame:
    """A frame of ``n`` distinct rows with a string and an int column."""
    return pd.DataFrame({"topic": [f"topic {i}" for i in range(n)], "n": list(range(n))})


class HandClock:
    """A clock the test moves by hand (``clock.now = ...``): no sleeping for latency."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def stored_parts(cache: Path) -> int:
    """How many result part files the cache holds (until a merge: one per lone batch stored,
    or per group of batches stored together, see ``frame_batch._pending``)."""
    return len(list((cache / "results").rglob("part-*.parquet")))


@pytest.fixture
def emulator() -> RespellEmulator:
    return RespellEmulator()


@pytest.fixture
def run_with(tmp_path: Path) -> Callable[..., frame_batch.RunResult]:
    """Run against an emulator in-process: no sleeping between retries, fast polling."""

    def go(df: pd.DataFrame, emu: RespellEmulator, **options: Any) -> frame_batch.RunResult:
        options.setdefault("cache", tmp_path / "cache")
        options.setdefault("progress", False)
        options.setdefault("retry", RetryPolicy.testing())
        options.setdefault("poll_interval", 0.01)
        provider = options.pop("provider", None) or Respell(api_key=options.pop("api_key", KEY))
        return frame_batch.run(df, SPELL, provider=provider, transport=emu.transport(), **options)

    return go
