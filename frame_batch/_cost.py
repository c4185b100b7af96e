"""Cost estimates for ``plan()`` and ``max_cost=``: one row's price, and where it came from.

None of the three APIs reports what a run cost in its answers, so an estimate comes from,
in order:

1. ``cost_per_row=`` given by the user (any unit: USD, credits...);
2. the provider's list price (Parallel publishes a price per run for each processor);
3. this workflow's recorded history: what earlier runs on this cache were estimated to cost
   per row (so a ``cost_per_row=`` given once keeps serving later plans);

else the cost is unknown and a plan reports counts only. ``max_cost=`` needs an estimate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from . import errors
from .providers import Provider

GIVEN, LISTED, HISTORY = "cost_per_row=", "list price", "history"


@dataclass(slots=True)
class CostModel:
    """Callable: a row payload -> its estimated cost (None: unknown); counts the sources used."""

    provider: Provider
    workflow: str
    given: float | None = None
    history: tuple[int, float] = (0, 0.0)  # (rows, cost) recorded for this workflow
    used: Counter[str] = field(default_factory=Counter)

    @property
    def history_per_row(self) -> float | None:
        rows, cost = self.history
        return cost / rows if rows else None

    def __call__(self, payload: bytes) -> float | None:
        if self.given is not None:
            self.used[GIVEN] += 1
            return self.given
        price = self.provider.row_cost(self.workflow, payload)
        if price is not None:
            self.used[LISTED] += 1
            return price
        past = self.history_per_row
        if past is not None:
            self.used[HISTORY] += 1
        return past

    def basis(self) -> str:
        """Where the estimate came from, for a plan or a summary."""
        if not self.used:
            return "no cost data"
        parts = []
        if self.used[GIVEN]:
            parts.append(f"cost_per_row={self.given:g}")
        if self.used[LISTED]:
            parts.append(f"{self.provider.name} list price, USD")
        if self.used[HISTORY]:
            rows, cost = self.history
            parts.append(f"this workflow's history ({cost:g} over {rows:,} rows)")
        return ", ".join(parts)

    def require(self, sample: bytes = b"{}") -> None:
        """Refuse ``max_cost=`` when no row could ever be priced."""
        unpriced = self.provider.row_cost(self.workflow, sample) is None
        if self.given is None and self.history_per_row is None and unpriced:
            raise errors.ConfigError(
                f"max_cost= needs a cost per row, and {self.provider.name} reports none for this "
                "workflow: pass cost_per_row= (your price per run, in the unit of max_cost), "
                "or use max_rows= instead"
            )


def check_cost_options(max_rows: object, max_cost: object, cost_per_row: object) -> None:
    if max_rows is not None and (not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 0):
        raise errors.ConfigError(f"max_rows must be a whole number of rows (0 or more), not {max_rows!r}")
    for name, value in (("max_cost", max_cost), ("cost_per_row", cost_per_row)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0
        ):
            raise errors.ConfigError(f"{name} must be a number, 0 or more, not {value!r}")
