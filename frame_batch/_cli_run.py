"""``frame-batch run``, ``status`` and ``cancel``: a table in, the same table enriched out.

``run`` reads INPUT (``.xlsx``, ``.csv`` or ``.parquet``, through the guards of ``tables``),
runs the workflow over its rows and writes OUTPUT:

- xlsx in, xlsx out: the output and status columns are written back into a copy of the
  user's sheet (``workbook.write_back``: styles, formulas, merged cells, other sheets kept),
  or into a new workbook with ``--new-workbook``;
- otherwise ``tables.write_table`` (Excel-safe xlsx, CSV with formula leaders escaped, Parquet).

An xlsx OUTPUT is also the run's checkpoint: while the run goes it is rewritten atomically
with the results so far and a hidden state sheet (``_checkpoint``), before each create
request leaves and after its answer, and every ``--checkpoint-every`` seconds. Running the
same command again resumes from the cache, and from OUTPUT's state sheet when the cache
directory was deleted: finished rows are never paid again, recorded batches are polled.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from . import _run, errors
from ._checkpoint import Checkpoint
from .store import Store
from .tables import read_table, write_table
from .workbook import read_state, write_back, write_state

EXIT_OK, EXIT_ROWS_FAILED, EXIT_RUN_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 130
BEYOND_MAX_ROWS = "not run: beyond --max-rows (run again without it to finish)"


def add_run_parser(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="run a workflow over every row of a table (.xlsx, .csv, .parquet)",
        description="Run a workflow over every row of INPUT and write OUTPUT with one column per "
        "output plus bulk_status/bulk_error/bulk_run_id. Results are cached: the same command "
        "again resumes and pays nothing twice. An .xlsx OUTPUT keeps the input sheet's formatting "
        "and a hidden checkpoint, so it resumes even without the cache.",
        epilog="example: frame-batch run leads.xlsx --provider respell --workflow SPELL_ID "
        "--map search_topic=Company --out leads.enriched.xlsx",
    )
    run.add_argument("input", help="the table to read: .xlsx, .csv or .parquet")
    run.add_argument("--provider", required=True, choices=["respell", "parallel", "vectorshift"])
    run.add_argument("--workflow", required=True, help="spell id / task id / pipeline id")
    run.add_argument("--sheet", help="xlsx: the sheet to read (name or 0-based number; default the first)")
    run.add_argument(
        "--map", action="append", default=[], metavar="INPUT=COLUMN", help="input name from a column"
    )
    run.add_argument("--out", help="OUTPUT path (default: INPUT's name with .enriched before the suffix)")
    run.add_argument("--cache", default=_run.DEFAULT_CACHE, help="cache directory (default: %(default)s)")
    run.add_argument("--base-url", help="the vendor's API base URL (e.g. an emulator's)")
    run.add_argument("--processor", help="parallel: the processor (e.g. base, core, pro)")
    run.add_argument("--output-schema", help="parallel: a JSON schema file for structured outputs")
    run.add_argument(
        "--option", action="append", default=[], metavar="NAME=VALUE", help="any run/provider option"
    )
    run.add_argument("--max-rows", type=int, help="run only the first N rows now")
    run.add_argument("--batch-size", type=int, help="rows per create request")
    run.add_argument("--dry-run", action="store_true", help="print the plan; send nothing")
    run.add_argument(
        "--new-workbook", action="store_true", help="xlsx: write a new workbook, not into a copy"
    )
    run.add_argument(
        "--checkpoint-every",
        type=float,
        default=30.0,
        help="seconds between checkpoints (default: %(default)s)",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_status_parser(sub: Any) -> None:
    status = sub.add_parser(
        "status",
        help="what a cache (or an output workbook's checkpoint) holds",
        description="Print the batches of a cache directory by state and its stored results, or "
        "the rows recorded in an output workbook's checkpoint.",
        epilog="examples: frame-batch status --cache .frame_batch   frame-batch status leads.enriched.xlsx",
    )
    status.add_argument("workbook", nargs="?", help="an output .xlsx written by frame-batch run")
    status.add_argument("--cache", default=_run.DEFAULT_CACHE, help="cache directory (default: %(default)s)")


def add_cancel_parser(sub: Any) -> None:
    cancel = sub.add_parser(
        "cancel",
        help="ask the vendor to stop the batches a cache has in flight",
        description="For every batch the cache records as submitted and not collected, ask its vendor "
        "to cancel it (where the vendor allows it). The cache stays resumable: a later run polls "
        "those batches and stores what they ended with.",
        epilog="example: frame-batch cancel --cache .frame_batch --provider respell",
    )
    cancel.add_argument("--cache", default=_run.DEFAULT_CACHE, help="cache directory (default: %(default)s)")
    cancel.add_argument("--provider", required=True, choices=["respell", "parallel", "vectorshift"])
    cancel.add_argument("--base-url", help="the vendor's API base URL")


# --------------------------------------------------------------------------- run


def run_command(args: argparse.Namespace) -> int:
    source = Path(args.input)
    target = Path(args.out) if args.out else source.with_name(f"{source.stem}.enriched{source.suffix}")
    if target.resolve() == source.resolve():
        raise errors.ConfigError("--out must differ from INPUT: the input file is never overwritten")
    sheet = _sheet(args.sheet)
    df = read_table(source, sheet=sheet)
    options = _options(args)
    inputs = _mapping(args.map)
    head = df if args.max_rows is None else df.head(max(args.max_rows, 0))
    if args.dry_run:
        print(_run.plan(head, args.workflow, inputs=inputs, cache=args.cache, **_plan_options(options)))
        return EXIT_OK
    writer = _Writer(source, target, sheet, df, new_workbook=args.new_workbook)
    resume = read_state(target) if target.suffix.lower() == ".xlsx" and target.exists() else None
    result = _run.run(
        head,
        args.workflow,
        inputs=inputs,
        cache=args.cache,
        progress=not args.no_progress,
        checkpoint=writer.write if target.suffix.lower() == ".xlsx" else None,
        checkpoint_every=args.checkpoint_every,
        resume_from=resume,
        **options,
    )
    frame = _with_rest(df, result.frame)
    writer.save(frame)
    print(f"wrote {target}", file=sys.stderr)
    status = frame["bulk_status"] if "bulk_status" in frame else pd.Series(dtype=object)
    return EXIT_OK if (status == "succeeded").all() else EXIT_ROWS_FAILED


def _sheet(value: str | None) -> str | int | None:
    return int(value) if value is not None and value.isdigit() else value


def _mapping(pairs: list[str]) -> dict[str, str] | None:
    if not pairs:
        return None
    mapping = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        if not sep or not name or not column:
            raise errors.ConfigError(f"--map takes INPUT=COLUMN, not {pair!r}")
        mapping[name] = column
    return mapping


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"provider": args.provider}
    if args.base_url:
        options["base_url"] = args.base_url
    if args.batch_size:
        options["batch_size"] = args.batch_size
    if args.processor:
        options["processor"] = args.processor
    if args.output_schema:
        try:
            options["output_schema"] = orjson.loads(Path(args.output_schema).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise errors.ConfigError(
                f"--output-schema {args.output_schema}: not a JSON file ({exc})"
            ) from None
    for pair in args.option:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            raise errors.ConfigError(f"--option takes NAME=VALUE, not {pair!r}")
        options[name.replace("-", "_")] = _value(text)
    return options


def _value(text: str) -> Any:
    """JSON when it parses (numbers, true/false, lists), else the text itself."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _plan_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in ("max_in_flight", "poll_interval", "timeout")}


def _with_rest(df: pd.DataFrame, ran: pd.DataFrame) -> pd.DataFrame:
    """The run's frame, with the rows beyond --max-rows added back as not run."""
    if len(ran) == len(df):
        return ran
    rest = df.iloc[len(ran) :].copy()
    rest["bulk_status"] = "pending"
    rest["bulk_error"] = BEYOND_MAX_ROWS
    return pd.concat([ran, rest], axis=0)


class _Writer:
    """Writes OUTPUT: each checkpoint while the run goes (xlsx), and the final table."""

    def __init__(
        self, source: Path, target: Path, sheet: str | int | None, df: pd.DataFrame, *, new_workbook: bool
    ) -> None:
        self.source, self.target, self.sheet, self.df = source, target, sheet, df
        xlsx = source.suffix.lower() == ".xlsx" and target.suffix.lower() == ".xlsx"
        self.into_copy = xlsx and not new_workbook
        self.last_state: pd.DataFrame | None = None

    def write(self, checkpoint: Checkpoint) -> None:
        self.last_state = checkpoint.state
        if not checkpoint.final:  # the final one is written by ``save`` with the whole table
            self.save(_with_rest(self.df, checkpoint.frame))

    def save(self, frame: pd.DataFrame) -> None:
        if self.into_copy:
            # The join appends outputs and status columns after the input frame's columns.
            new = [str(c) for c in frame.columns[len(self.df.columns) :]]
            write_back(
                self.source, self.target, frame=frame, sheet=self.sheet, columns=new, state=self.last_state
            )
            return
        write_table(frame, self.target)
        if self.target.suffix.lower() == ".xlsx" and self.last_state is not None:
            write_state(self.target, self.target, state=self.last_state)


# --------------------------------------------------------------------------- status, cancel


def status_command(args: argparse.Namespace) -> int:
    if args.workbook:
        state = read_state(args.workbook)
        if state is None:
            raise errors.InputError(f"{args.workbook} has no frame-batch checkpoint sheet")
        rows = state["status"].value_counts().to_dict()
        print(f"{args.workbook}: checkpoint of {len(state)} rows: {rows}")
        return EXIT_OK
    cache = Path(args.cache)
    if not (cache / "journal.sqlite3").exists():
        raise errors.InputError(f"{cache} is not a frame-batch cache (no journal.sqlite3); pass --cache DIR")
    with Store.open(cache) as store:
        counts = store.journal.counts()
        parts = sum(1 for _ in (cache / "results").rglob("part-*.parquet"))
    print(f"{cache}: batches by state {counts or '{}'}; {parts} result parts stored")
    return EXIT_OK


def cancel_command(args: argparse.Namespace) -> int:
    from ._cancel import cancel_open_batches

    cancelled = cancel_open_batches(Path(args.cache), args.provider, base_url=args.base_url)
    print(f"asked {args.provider} to cancel {cancelled} batches in flight; run again to collect them")
    return EXIT_OK
