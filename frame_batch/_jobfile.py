"""A background job's record in its cache, so ``frame_batch.attach`` can reach it from a new
kernel: ``<cache>/jobs/latest.json`` (what was asked, and how it ended) and the input frame
as ``<cache>/jobs/<id>.parquet``.

Never recorded: the API key (invariant 5: keys reach no store), the transport, callables.
An option that is not plain JSON (a pydantic model, a Provider object) is named in
``unsaved`` and must be given again to ``attach``. A frame Parquet cannot hold (mixed
object columns) is not saved either: ``attach(frame=df)`` takes it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import errors
from ._fs import atomic_write
from ._setup import RunOptions

log = logging.getLogger("frame_batch")

RECORD = "latest.json"
_NOT_RECORDED = {"api_key", "transport", "progress", "checkpoint", "resume_from", "cache", "provider_options"}
_NOT_RECORDED |= {"retry"}  # behaviour, not identity: attach uses the default unless given one


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    workflow: str
    state: str  # running / finished / cancelled / failed
    options: dict[str, Any]  # RunOptions fields and provider options, plain JSON
    unsaved: tuple[str, ...]  # options that could not be recorded
    frame: str | None  # the saved input frame's file name, under jobs/
    summary: str = ""
    updated_at: float = 0.0


def folder(root: Path) -> Path:
    return root / "jobs"


def record_of(job_id: str, workflow: str, options: RunOptions) -> JobRecord:
    plain: dict[str, Any] = {}
    unsaved: list[str] = []
    given = {f.name: getattr(options, f.name) for f in fields(options) if f.name not in _NOT_RECORDED}
    for name, value in [*given.items(), *options.provider_options.items()]:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if name == "provider" and not isinstance(value, str):
            unsaved.append(name)
            continue
        try:
            orjson.dumps(value)
        except TypeError:
            unsaved.append(name)
            continue
        plain[name] = value
    return JobRecord(job_id, workflow, "running", plain, tuple(unsaved), None)


def save_frame(root: Path, job_id: str, df: pd.DataFrame) -> str | None:
    """The frame as Parquet under jobs/; None (and a log line) when Parquet cannot hold it."""
    name = f"{job_id}.parquet"
    try:
        table = pa.Table.from_pandas(df, preserve_index=True)
        folder(root).mkdir(exist_ok=True)
        with atomic_write(folder(root) / name) as handle:
            pq.write_table(table, handle)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        log.info("the job's frame was not saved (%s): attach(frame=df) will need it", exc)
        return None
    return name


def write(root: Path, record: JobRecord) -> None:
    folder(root).mkdir(exist_ok=True)
    data = {f.name: getattr(record, f.name) for f in fields(record)} | {"updated_at": time.time()}
    with atomic_write(folder(root) / RECORD) as handle:
        handle.write(orjson.dumps(data, option=orjson.OPT_INDENT_2))


def read(root: Path) -> JobRecord:
    path = folder(root) / RECORD
    try:
        data = orjson.loads(path.read_bytes())
        data["unsaved"] = tuple(data["unsaved"])
        return JobRecord(**data)
    except FileNotFoundError:
        raise errors.ConfigError(
            f"no job is recorded in {root}: start one with df.bulk.submit(...), or pass the cache= it used"
        ) from None
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise errors.StoreError(f"the job record {path} is damaged ({exc}); submit the job again") from None


def load_frame(root: Path, record: JobRecord) -> pd.DataFrame | None:
    if record.frame is None:
        return None
    frame: pd.DataFrame = pq.read_table(folder(root) / record.frame).to_pandas()
    return frame


def options_for(record: JobRecord, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded options with ``overrides`` on top; unsaved ones must be overridden."""
    missing = [name for name in record.unsaved if name not in overrides]
    if missing:
        raise errors.ConfigError(
            f"this job's {', '.join(missing)} could not be recorded (not plain JSON); pass "
            f"{'it' if len(missing) == 1 else 'them'} again: frame_batch.attach(cache=..., "
            + ", ".join(f"{m}=..." for m in missing)
            + ")"
        )
    return {**record.options, **overrides}
