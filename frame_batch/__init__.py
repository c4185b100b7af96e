"""frame-batch: run AI-workflow bulk APIs over every row of a DataFrame.

``import frame_batch`` registers the ``df.bulk`` accessor::

    out = df.bulk.run("spell_id", provider="respell", inputs={"search_topic": "topic"})

See ``frame_batch.run`` for every option, ``frame_batch.errors`` for the error tree and
``frame_batch.testing`` for offline emulators of each vendor.
"""

from __future__ import annotations

from . import accessor as _accessor  # registers df.bulk
from . import errors
from ._http import Secret
from ._retry import RetryPolicy
from ._run import DEFAULT_CACHE, PlanReport, RunResult, plan, run
from ._types import Progress, ProviderLimits, RunSummary
from .providers import Parallel, Provider, Respell, VectorShift
from .tables import read_table, write_table

__all__ = [
    "DEFAULT_CACHE",
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
    "errors",
    "plan",
    "read_table",
    "run",
    "write_table",
]

__version__ = "0.1.0"
del _accessor
