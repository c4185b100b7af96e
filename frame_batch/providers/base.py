"""The one protocol every vendor adapter implements.

An adapter knows its vendor's paths, body shapes, id field names and state names — nothing
else. It never retries, sleeps, stores or touches pandas: the engine does those, through the
``ApiClient`` it hands in (``api.read`` for idempotent calls, ``api.create`` for calls that
start paid work). Adding a vendor is one adapter, one emulator and one test file.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

from .._http import ApiClient, HttpConfig
from .._types import Batch, BatchPoll, BatchRef, OutputShape, ProviderLimits, Reconciliation


@runtime_checkable
class Provider(Protocol):
    """A vendor's bulk API, seen as: submit a batch, poll it, cancel it, find a lost one.

    Submitting is two steps so that a lost answer can be found again: ``stage`` creates
    whatever must exist before the paid request (Parallel: the task group) and its id is
    journaled; only then does ``submit`` send the paid request.
    """

    name: ClassVar[str]
    accepts_files: ClassVar[bool]  # file cells become file markers for it (see ``_files``)
    limits: ProviderLimits

    def http_config(self) -> HttpConfig:
        """Base URL, auth headers and how to fix a bad key."""
        ...

    def secrets(self) -> tuple[str, ...]:
        """Values that must be redacted wherever text could leak (the API key)."""
        ...

    def scope(self, workflow: str) -> tuple[str, str, str]:
        """(provider, workflow id, workflow version): hashed into every row key."""
        ...

    def output_shape(self, workflow: str) -> OutputShape:
        """Column types and hidden outputs for the join (empty when the vendor has no schema)."""
        ...

    def row_cost(self, workflow: str, payload: bytes) -> float | None:
        """The vendor's price for one row (its canonical JSON input), or None when unknown."""
        ...

    async def stage(self, api: ApiClient, workflow: str, batch: Batch) -> str | None:
        """Create what the paid request needs first (not paid); its id, or None."""
        ...

    async def submit(self, api: ApiClient, workflow: str, batch: Batch, staged: str | None) -> str:
        """Send one create request for ``batch``; return the remote id to poll."""
        ...

    async def poll(self, api: ApiClient, workflow: str, ref: BatchRef) -> BatchPoll:
        """Look at a submitted batch once; results keyed by row key."""
        ...

    async def cancel(self, api: ApiClient, workflow: str, ref: BatchRef) -> None:
        """Ask the vendor to stop a submitted batch (best effort)."""
        ...

    async def reconcile(
        self, api: ApiClient, workflow: str, batch_id: str, keys: tuple[str, ...], staged: str | None
    ) -> Reconciliation:
        """Find out whether a create whose answer was lost made anything (and adopt it)."""
        ...
