"""Progress display: a tqdm bar (terminal or notebook) fed by the engine's callback."""

from __future__ import annotations

from typing import Any

from ._types import Progress


class TqdmProgress:
    """Callable progress sink; the bar opens on the first update and closes on ``close``."""

    def __init__(self, description: str) -> None:
        self._description = description
        self._bar: Any = None

    def __call__(self, progress: Progress) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=progress.total, desc=self._description, unit="row", dynamic_ncols=True)
        bar = self._bar
        if progress.total != bar.total:
            bar.total = progress.total
        bar.n = progress.done
        bar.set_postfix(failed=progress.failed, in_flight=progress.batches_in_flight, refresh=False)
        bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
