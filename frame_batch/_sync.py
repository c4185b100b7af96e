"""Run the async engine from synchronous code, in a script or inside a running event loop.

In a plain script ``asyncio.run`` is used: on Ctrl-C it cancels the run (the engine leaves the
journal consistent) and re-raises KeyboardInterrupt. Inside a running loop (Jupyter), a loop
cannot be nested, so the run gets its own loop on a worker thread; Ctrl-C in the waiting
thread cancels the worker's task the same way and waits for it to wind down.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    return _run_in_thread(make)


def _run_in_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    outcome: dict[str, Any] = {}
    ready = threading.Event()

    def worker() -> None:
        loop = asyncio.new_event_loop()
        task = loop.create_task(make())
        outcome["cancel"] = lambda: loop.call_soon_threadsafe(task.cancel)
        ready.set()
        try:
            outcome["value"] = loop.run_until_complete(task)
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            outcome["error"] = exc
        finally:
            loop.close()

    thread = threading.Thread(target=worker, name="frame-batch-run", daemon=True)
    thread.start()
    ready.wait()
    try:
        while thread.is_alive():
            thread.join(0.1)
    except KeyboardInterrupt:
        outcome["cancel"]()
        thread.join()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]
