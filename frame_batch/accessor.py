"""``df.bulk``: the pandas accessor. A thin, stateless shell over ``frame_batch.run``.

pandas 3 builds a fresh accessor object on every ``df.bulk``, so nothing may live here
between calls: state is in the cache directory, never on the accessor or in ``df.attrs``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from . import _job, _run
from .errors import ConfigError
from .tables import write_table


@pd.api.extensions.register_dataframe_accessor("bulk")
class BulkAccessor:
    """Run AI-workflow bulk APIs over this frame's rows: ``df.bulk.run(workflow, provider=...)``."""

    __slots__ = ("_df",)

    def __init__(self, df: pd.DataFrame) -> None:
        self._df = df

    def run(self, workflow: str, **options: Any) -> pd.DataFrame:
        """Return a new frame with one column per output plus bulk_status/error/run_id.

        Takes the keyword options of ``frame_batch.run``; use that function to also get the
        run's summary.
        """
        return _run.run(self._df, workflow, **options).frame

    def to_excel(self, path: str | os.PathLike[str], *, sheet_name: str = "results") -> Path:
        """Write this frame to a new ``.xlsx`` safely: text stays text (``=1+1`` is never a
        formula), control characters are removed, long text is cut visibly, atomically."""
        if Path(path).suffix.lower() != ".xlsx":
            raise ConfigError(
                f"to_excel writes .xlsx files, not {Path(path).name}; see frame_batch.write_table"
            )
        return write_table(self._df, path, sheet_name=sheet_name)

    def submit(self, workflow: str, **options: Any) -> _job.Job:
        """Start the run in the background and return its ``Job`` at once (works inside
        Jupyter's running loop). Running the same cell again returns the same job."""
        return _job.submit(self._df, workflow, **options)

    def plan(self, workflow: str, **options: Any) -> _run.PlanReport:
        """A dry run: rows cached, to submit, batches, requests and estimated cost. Sends nothing."""
        return _run.plan(self._df, workflow, **options)

    def preview(self, workflow: str, *, n: int = 5, **options: Any) -> pd.DataFrame:
        """Run the first ``n`` rows only (stored: the full run does not pay for them again)."""
        return _run.preview(self._df, workflow, n=n, **options)
