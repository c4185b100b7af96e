"""The run's memory housekeeping: the garbage collector's freeze around a run (``_memory``)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator

import pytest
from conftest import topics

import frame_batch
from frame_batch._memory import old_objects_frozen
from frame_batch.testing import RespellEmulator


@pytest.fixture(autouse=True)
def no_freeze() -> Iterator[None]:
    """Each test starts with nothing frozen and leaves nothing frozen."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_a_run_keeps_the_collector_off_older_objects_and_hands_them_back(
    emulator: RespellEmulator, run_with: Callable[..., frame_batch.RunResult]
) -> None:
    """While the batches are sent and polled, what existed before is frozen; after, nothing."""
    frozen: list[int] = []
    result = run_with(
        topics(30), emulator, batch_size=10, progress=lambda _: frozen.append(gc.get_freeze_count())
    )
    assert result.summary.succeeded == 30
    assert frozen
    assert min(frozen) > 0
    assert gc.get_freeze_count() == 0


def test_a_freeze_the_program_made_is_left_in_place(
    emulator: RespellEmulator, run_with: Callable[..., frame_batch.RunResult]
) -> None:
    """A program that froze its objects itself (before forking workers, say) keeps them frozen."""
    gc.freeze()
    before = gc.get_freeze_count()
    run_with(topics(10), emulator, batch_size=5)
    assert gc.get_freeze_count() >= before > 0


def test_runs_in_threads_share_one_freeze_undone_when_the_last_ends() -> None:
    """The first run to end does not unfreeze under a run still going in another thread."""
    first_in, first_out = threading.Event(), threading.Event()
    seen: list[int] = []

    def other_run() -> None:
        with old_objects_frozen():
            first_in.set()
            first_out.wait(timeout=10)
            seen.append(gc.get_freeze_count())

    thread = threading.Thread(target=other_run)
    thread.start()
    assert first_in.wait(timeout=10)
    with old_objects_frozen():
        pass  # this run ends while the other still runs
    first_out.set()
    thread.join(timeout=10)
    assert seen
    assert seen[0] > 0
    assert gc.get_freeze_count() == 0
