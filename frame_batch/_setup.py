"""A run's arguments checked and resolved, and the frame streamed into planned batches.

Everything here fails fast, before a store is opened or a request sent: an unknown provider,
a missing column, a batch size the vendor refuses, file options for a provider that takes
no files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import httpx
import pandas as pd

from . import errors
from ._encode import CHUNK_ROWS, encode_frame, resolve_inputs
from ._files import FileInputs
from ._keys import fingerprint, row_keys, scope_of
from ._planning import BatchSizer, Budget, PlanState, plan_batches
from ._retry import RetryPolicy
from ._types import Batch, ProgressCallback, ProviderLimits
from .providers import Provider, resolve_provider

if TYPE_CHECKING:
    from ._checkpoint import Checkpoint

FILE_CHUNK_ROWS = 64  # rows encoded at once when cells may name files to read

Inputs = Mapping[str, Hashable] | Sequence[str] | None
Cache = str | os.PathLike[str] | None

DEFAULT_CACHE = ".frame_batch"
"""The default ``cache=``: a ``.frame_batch/`` directory in the current working directory."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """Every keyword option of ``frame_batch.run`` (documented there), as one value."""

    provider: str | Provider
    inputs: Inputs = None
    cache: Cache = DEFAULT_CACHE
    api_key: str | None = None
    base_url: str | None = None
    transport: httpx.AsyncBaseTransport | None = None
    batch_size: int | None = None
    max_bytes: int | None = None
    max_in_flight: int | None = None
    poll_interval: float | None = None
    timeout: float | None = None
    retry_failed: bool = False
    on_ambiguous: Literal["resubmit", "fail"] = "resubmit"
    cancel_on_interrupt: bool = False
    progress: bool | ProgressCallback = True
    retry: RetryPolicy | None = None
    chunk_rows: int = CHUNK_ROWS
    file_root: str | os.PathLike[str] | None = None
    file_inputs: str | Sequence[str] | None = None
    max_file_bytes: int | None = None
    file_outputs: Literal["path", "bytes"] = "path"
    checkpoint: Callable[[Checkpoint], None] | None = None
    checkpoint_every: float = 30.0
    resume_from: pd.DataFrame | None = None
    max_rows: int | None = None
    max_cost: float | None = None
    cost_per_row: float | None = None
    provider_options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> RunOptions:
        """Options given as keywords: the ones ``run`` names, the rest go to the provider."""
        if "provider" not in options:
            raise errors.ConfigError(
                "provider= is required: 'respell', 'parallel', 'vectorshift' or a Provider object"
            )
        known = {f.name for f in fields(cls)} - {"provider_options"}
        ours = {k: v for k, v in options.items() if k in known}
        return cls(**ours, provider_options={k: v for k, v in options.items() if k not in known})


@dataclass(frozen=True, slots=True)
class Setup:
    """A run's arguments, checked and resolved: nothing is sent before this succeeds."""

    provider: Provider
    workflow: str
    pairs: tuple[tuple[str, Hashable], ...]
    limits: ProviderLimits
    scope: bytes
    scope_id: str
    files: FileInputs | None  # None: the provider takes no files (bytes cells are row errors)


def resolve(df: pd.DataFrame, workflow: str, options: RunOptions) -> Setup:
    if not isinstance(df, pd.DataFrame):
        raise errors.InputError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if not isinstance(workflow, str) or not workflow.strip():
        raise errors.ConfigError("workflow must be a non-empty string (the spell / pipeline / task id)")
    prov = resolve_provider(
        options.provider, api_key=options.api_key, base_url=options.base_url, **options.provider_options
    )
    pairs = resolve_inputs(df, options.inputs)
    limits = _limits(
        prov.limits, options.batch_size, options.max_bytes, options.max_in_flight, options.poll_interval
    )
    scope_parts = prov.scope(workflow)
    scope_id = fingerprint("scope", *scope_parts)
    files = FileOptions(options.file_root, options.file_inputs, options.max_file_bytes)
    return Setup(prov, workflow, pairs, limits, scope_of(*scope_parts), scope_id, _file_inputs(prov, files))


@dataclass(frozen=True, slots=True)
class FileOptions:
    """The run's file options as given (checked against the provider in ``_file_inputs``)."""

    root: str | os.PathLike[str] | None = None
    inputs: object = None
    max_bytes: int | None = None

    @property
    def given(self) -> bool:
        return self.root is not None or self.inputs is not None or self.max_bytes is not None


def _file_inputs(provider: Provider, options: FileOptions) -> FileInputs | None:
    if not provider.accepts_files:
        if options.given:
            raise errors.ConfigError(
                f"file_root/file_inputs/max_file_bytes apply to providers that take files; "
                f"{provider.name} takes none"
            )
        return None
    return FileInputs.from_options(options.root, options.inputs, options.max_bytes)


def stream_batches(
    df: pd.DataFrame,
    setup: Setup,
    state: PlanState,
    done: set[str],
    in_flight: set[str],
    chunk_rows: int,
    sizer: BatchSizer | None = None,
    budget: Budget | None = None,
) -> Iterator[Batch]:
    """The frame, encoded chunk by chunk and planned into batches (lazily)."""
    if setup.files is not None and setup.files.root is not None:
        chunk_rows = min(chunk_rows, FILE_CHUNK_ROWS)  # files are read while a chunk is encoded
    return plan_batches(
        encode_frame(df, setup.pairs, chunk_rows=chunk_rows, files=setup.files),
        keys_of=partial(row_keys, setup.scope),
        is_done=done.__contains__,
        in_flight=in_flight.__contains__,
        max_rows=sizer or setup.limits.max_rows_per_batch,
        max_bytes=setup.limits.max_bytes_per_batch,
        max_chars=setup.limits.max_row_chars,
        state=state,
        budget=budget,
    )


def _limits(
    base: ProviderLimits,
    batch_size: int | None,
    max_bytes: int | None,
    in_flight: int | None,
    poll: float | None,
) -> ProviderLimits:
    for name, value in (("batch_size", batch_size), ("max_bytes", max_bytes), ("max_in_flight", in_flight)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise errors.ConfigError(f"{name} must be a positive integer, not {value!r}")
    if poll is not None and not poll > 0:
        raise errors.ConfigError(f"poll_interval must be a positive number of seconds, not {poll!r}")
    cap = base.hard_max_rows
    if batch_size is not None and cap is not None and batch_size > cap:
        raise errors.ConfigError(
            f"batch_size={batch_size} is more than this provider accepts per request ({cap}); "
            f"pass batch_size={cap} or less"
        )
    return replace(
        base,
        max_rows_per_batch=batch_size or base.max_rows_per_batch,
        max_bytes_per_batch=max_bytes or base.max_bytes_per_batch,
        poll_interval=poll or base.poll_interval,
        first_poll=min(base.first_poll, poll or base.poll_interval),
        max_in_flight=in_flight or base.max_in_flight,
    )
