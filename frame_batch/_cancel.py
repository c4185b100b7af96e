"""``frame-batch cancel``: ask the vendor to stop every batch a cache has in flight."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ._http import ApiClient
from ._sync import run_sync
from .errors import InputError
from .providers import resolve_provider
from .store import Store


def cancel_open_batches(cache: Path, provider_name: str, *, base_url: str | None = None) -> int:
    """Cancel the ``submitted`` batches of ``provider_name`` in ``cache``; return how many."""
    if not (cache / "journal.sqlite3").exists():
        raise InputError(f"{cache} is not a frame-batch cache (no journal.sqlite3); pass --cache DIR")
    provider = resolve_provider(provider_name, base_url=base_url)
    with Store.open(cache) as store:
        batches = [b for b in store.journal.in_flight() if b[0] == provider.name]
    if not batches:
        return 0

    async def cancel_all() -> int:
        api = ApiClient(provider.http_config(), secrets=provider.secrets())
        try:
            for _, workflow, ref in batches:
                await asyncio.wait_for(provider.cancel(api, workflow, ref), timeout=30)
        finally:
            await api.aclose()
        return len(batches)

    return run_sync(cancel_all)


__all__ = ["cancel_open_batches"]
