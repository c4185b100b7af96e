"""frame-batch: run AI-workflow bulk APIs over every row of a DataFrame.

``import frame_batch`` registers the ``df.bulk`` accessor::

    out = df.bulk.run("spell_id", provider="respell", inputs={"search_topic": "topic"})
    job = df.bulk.submit("spell_id", provider="respell")  # in the background (notebooks)

See ``frame_batch.run`` for every option, ``frame_batch.errors`` for the error tree and
``frame_batch.testing`` for offline emulators of each vendor.
"""

from __future__ import annotations

from . import accessor as _accessor  # registers df.bulk
from . import errors
from ._http import Secret
from ._job import Job, attach, submit
from ._retry import RetryPolicy
from ._run import DEFAULT_CACHE, PlanReport, RunResult, plan, preview, run
from ._types import JobStatus, Progress, ProviderLimits, RunSummary
from .providers import Parallel, Provider, Respell, VectorShift
from .tables import read_table, write_table

__all__ = [
    "DEFAULT_CACHE",
    "Job",
    "JobStatus",
    "Parallel",
    "PlanReport",
    "Progress",
    "Provider",
    "ProviderLimits",
    "Respell",
    "RetryPolicy",
    "RunResult",
    "RunSummary",
    "Secret",
    "VectorShift",
    "attach",
    "errors",
    "plan",
    "preview",
    "read_table",
    "run",
    "submit",
    "write_table",
]

__version__ = "0.1.0"
del _accessor
