"""One run of one frame: the store it holds, its plan so far, the engine, and how it ends.

``frame_batch.run`` drives a session to the end in the caller's thread (or a worker thread
inside a running loop); a ``Job`` drives it on its own loop in a background thread and
asks it for the frame so far meanwhile. Either way the order is the same:

1. ``Session(...)``: arguments checked, the store opened and locked (nothing sent yet);
2. ``execute()``: the engine runs, on one event loop; the store is only touched there;
3. ``snapshot()`` (on that loop, while it runs): the frame so far, unfinished rows pending;
4. ``finish()``: the stored results joined back by key, and the summary; ``close()``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from . import errors
from ._checkpoint import Checkpointer, CheckpointIds, seed
from ._cost import CostModel, check_cost_options
from ._engine import Engine, EngineOptions, EngineReport, RunContext
from ._files import FileReader, check_file_outputs
from ._http import ApiClient
from ._join import Handover, join_results, with_pending
from ._keys import fingerprint
from ._manifest import KnownPlan, Plans, input_columns
from ._manifest import fingerprint as frame_fingerprint
from ._memory import old_objects_frozen
from ._memory import release as release_memory
from ._planning import BatchSizer, Budget, PlanState
from ._rowkeys import RowKeys, count_unique
from ._setup import RunOptions, Setup, resolve, stream_batches
from ._types import ProgressCallback, RunSummary
from .store import FINAL_STATUSES, JOINED, MERGED, OUTPUTS, Store

log = logging.getLogger("frame_batch")


UNJOINED = ("batch_id", "finished_at")  # stored, but not part of the joined frame
KEYLESS = ("status", "error", "run_id", OUTPUTS)  # joined by recorded positions


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``execute`` leaves for ``finish``."""

    create_requests: int
    report: EngineReport
    stored: Handover  # taken apart by the join
    stopped: str | None = None  # why the run ended early: "cancelled", a deadline...


@dataclass(frozen=True, slots=True)
class KnownJoin:
    """Every row's key, and where its result is in the stored table: from a recorded plan,
    or found once at the end of the run, for both the plan and the join."""

    keys: pa.Array
    indexer: pa.Array
    unique: int  # distinct keys


@dataclass(frozen=True, slots=True)
class RunResult:
    """The enriched frame, what the run did, and the rows that may have been paid twice."""

    frame: pd.DataFrame
    summary: RunSummary
    possibly_duplicated: pd.Index

    def __iter__(self) -> Any:  # ``out, summary = frame_batch.run(...)``
        yield self.frame
        yield self.summary


class Session:
    def __init__(self, df: pd.DataFrame, workflow: str, options: RunOptions) -> None:
        self.df, self.options = df, options
        self.output_files = check_file_outputs(options.file_outputs)
        check_cost_options(options.max_rows, options.max_cost, options.cost_per_row)
        self.setup: Setup = resolve(df, workflow, options)
        if options.on_ambiguous not in ("resubmit", "fail"):
            raise errors.ConfigError(
                f"on_ambiguous must be 'resubmit' or 'fail', not {options.on_ambiguous!r}"
            )
        if options.timeout is not None and not options.timeout > 0:
            raise errors.ConfigError(f"timeout must be a positive number of seconds, not {options.timeout!r}")
        self.http = self.setup.provider.http_config()  # resolves the API key: fails before any work
        self.ids = CheckpointIds(
            self.setup.scope_id,
            self.setup.provider.name,
            workflow,
            fingerprint(self.setup.scope_id, self.setup.pairs),
        )
        self.state = PlanState()
        self.progress: ProgressCallback | None = None
        self.started = time.monotonic()
        self.engine: Engine | None = None
        self.api: ApiClient | None = None
        self.store = Store.open(options.cache)
        try:
            self._open()
        except BaseException:
            self.store.close()
            raise

    def _open(self) -> None:
        self.store.acquire()
        if self.options.resume_from is not None:
            added = seed(self.store, self.ids, self.options.resume_from)
            log.info("from the checkpoint: %d stored results and %d open batches added to the cache", *added)
        self.plans = Plans(self.store.root / "plans")
        self.known: KnownJoin | None = None
        self.plan_found: KnownPlan | None = None
        self.print_ = frame_fingerprint(
            self.df,
            input_columns(self.df, self.setup.pairs),
            [self.ids.fingerprint, self.setup.limits.max_bytes_per_batch, self.setup.limits.max_row_chars],
            reads_files=self.setup.files is not None and self.setup.files.root is not None,
        )
        self.reader = FileReader(self.store.files, "bytes" if self.store.temporary else self.output_files)
        self.shape = self.setup.provider.output_shape(self.setup.workflow)
        self.costs = CostModel(
            self.setup.provider,
            self.setup.workflow,
            self.options.cost_per_row,
            self.store.journal.spend(self.setup.scope_id),
        )
        if self.options.max_cost is not None:
            self.costs.require()
        self.budget = Budget(self.options.max_rows, self.options.max_cost, self._cost_of())
        write = self.options.checkpoint
        self.saver = (
            None
            if write is None
            else Checkpointer(
                self.store,
                self.ids,
                self.df,
                self.state,
                self.shape,
                self.reader,
                write,
                self.options.checkpoint_every,
            )
        )

    def _cost_of(self) -> CostModel | None:
        """Price rows only when a price can exist: asking costs ~1 µs a row for nothing."""
        given = self.options.cost_per_row is not None or self.options.max_cost is not None
        listed = self.setup.provider.row_cost(self.setup.workflow, b"{}") is not None
        if given or listed or self.costs.history_per_row is not None:
            return self.costs
        return None

    # -- running ----------------------------------------------------------------------
    async def execute(self) -> Outcome:
        # The collector's full passes skip what existed before the run (see ``_memory``).
        with old_objects_frozen():
            return await self._execute()

    async def _execute(self) -> Outcome:
        setup, store = self.setup, self.store
        limits = setup.limits
        self.api = api = ApiClient(
            self.http,
            secrets=setup.provider.secrets(),
            transport=self.options.transport,
            policy=self.options.retry,
            max_connections=max(4, limits.max_in_flight * 2),
            creates_per_minute=limits.max_creates_per_minute,
        )
        in_flight: set[str] = set()
        sizer = BatchSizer(limits.max_rows_per_batch)
        self.engine = engine = Engine(
            RunContext(setup.provider, setup.workflow, setup.scope_id, self.ids.fingerprint),
            api,
            store,
            self._engine_options(),
            progress=self.progress,
            # Unique rows needing a remote result: exact once planning has seen every row,
            # an upper bound before (rows not yet planned count as needing one).
            total=lambda: len(in_flight) + len(self.state.planned) + (len(self.df) - self.state.rows),
            sizer=sizer,
            checkpoint=None if self.saver is None else self.saver.sync,
        )
        try:
            refs = await engine.prepare(store.open_batches(setup.scope_id))
            in_flight.update(k for ref in refs for k in ref.keys)
            stored, written = self._stored_at_start(refs), store.parts_written
            if refs or not self._adopt_known_plan(stored):
                if "key" not in stored.column_names:  # read for a recorded plan that did not apply
                    stored = store.latest(setup.scope_id, JOINED)
                done = store.done_keys(setup.scope_id, retry_failed=self.options.retry_failed, latest=stored)
                batches = stream_batches(
                    self.df, setup, self.state, done, in_flight, self.options.chunk_rows, sizer, self.budget
                )
            else:
                batches = iter(())  # every row is stored: nothing to encode or send
            async with self.saver.periodic() if self.saver else contextlib.nullcontext():
                report = await engine.run(refs, batches)
            if self.saver is not None:
                await self.saver.write(final=True)
            # The network stage's buffers go back before results are merged and joined.
            release_memory(len(self.df))
            # Many parts are merged into one, so the next run starts by reading one file.
            # Otherwise, nothing written since (a resumed, finished run): ``stored`` is current.
            merged = store.compact(setup.scope_id)
            if merged is not None:
                stored = merged
            elif store.parts_written != written:
                stored = store.latest(setup.scope_id, JOINED)
            release_memory(len(self.df))  # the merge's write buffers
            self._record_plan(stored)
            # Only what the join reads stays in memory (with the positions found, not even the
            # keys), and the parts this run wrote are let go: the frame is built next.
            unused = UNJOINED if self.known is None else (*UNJOINED, "key")
            stored = stored.select([n for n in stored.column_names if n not in unused])
            store.parts.forget()
            release_memory(len(self.df))  # the parts' tables and the merge's buffers: the join comes next
            return Outcome(api.create_requests, report, Handover(stored))
        finally:
            await api.aclose()

    # -- plans of earlier runs (see _manifest) -------------------------------------------
    def _stored_at_start(self, refs: list[Any]) -> pa.Table:
        """The stored results; without their keys when a recorded plan of this frame says
        where each row's result is in the one merged part (the keys are not needed then)."""
        self.plan_found = self.plans.load(self.setup.scope_id, self.print_) if self.print_ else None
        parts = self.store.parts.parts(self.setup.scope_id)
        known = self.plan_found
        if (
            not refs
            and known is not None
            and known.rows is not None
            and [p.name for p in parts] == [known.merged]
        ):
            return self.store.parts.read(self.setup.scope_id, KEYLESS)
        return self.store.latest(self.setup.scope_id, JOINED)

    def _adopt_known_plan(self, stored: pa.Table) -> bool:
        """Take every row's key from a recorded plan of this very frame, if each keyed row
        has a final stored result (a finished run run again); False: plan as usual."""
        known = self.plan_found
        if known is None:
            return False
        indexer = self._positions(known, stored)
        final = ("succeeded",) if self.options.retry_failed else FINAL_STATUSES
        done = pc.is_in(stored["status"].take(indexer), value_set=pa.array(final))
        if not pc.all(pc.or_kleene(done, known.keys.is_null())).as_py():
            return False  # some rows still need a run: their payloads are needed
        self.state.known = known.keys
        self.state.errors = dict(known.errors)
        self.state.cached = len(known.keys) - known.keys.null_count
        self.known = KnownJoin(known.keys, indexer, known.unique)
        return True

    def _positions(self, known: KnownPlan, stored: pa.Table) -> pa.Array:
        """Where each row's result is in ``stored``: recorded, when ``stored`` is the merged
        part the plan was recorded with (read without keys: none hashed), else by key."""
        if "key" not in stored.column_names:  # read keyless for the recorded positions
            assert known.rows is not None
            return known.rows
        return pc.index_in(known.keys, value_set=stored["key"])

    def _record_plan(self, stored: pa.Table) -> None:
        """Save a complete plan of a frame planned from its rows, for the next run; keep
        its keys and result positions for this run's join too."""
        if self.known is not None or self.state.rows != len(self.df):
            return
        # From here the keys are one Arrow array (``key_list`` makes a list if asked), and
        # the chunks they were planned in are let go before Arrow hashes them below.
        keys = self.state.key_array()
        self.state.known, self.state.keys = keys, RowKeys()
        release_memory(len(self.df))
        indexer = pc.index_in(keys, value_set=stored["key"])
        self.known = KnownJoin(keys, indexer, count_unique(keys, indexer))
        if self.print_:
            parts = self.store.parts.parts(self.setup.scope_id)
            merged = parts[0].name if len(parts) == 1 and parts[0].name.startswith(MERGED) else None
            plan = KnownPlan(keys, self.state.errors, self.known.unique, merged, indexer if merged else None)
            self.plans.save(self.setup.scope_id, self.print_, plan)

    def _engine_options(self) -> EngineOptions:
        limits = self.setup.limits
        return EngineOptions(
            max_in_flight=limits.max_in_flight,
            poll_interval=limits.poll_interval,
            first_poll=limits.first_poll,
            deadline=self.options.timeout,
            on_ambiguous=self.options.on_ambiguous,
            cancel_on_interrupt=self.options.cancel_on_interrupt,
            reconcile_delay=limits.reconcile_delay,
        )

    def stop(self, *, cancel_remote: bool) -> None:
        """Before the run's task is cancelled: ask the vendor to stop its batches too?"""
        if self.engine is not None:
            self.engine.options = replace(self.engine.options, cancel_on_interrupt=cancel_remote)

    def stopped_outcome(self, why: str | None) -> Outcome:
        """The outcome of a run cancelled on purpose (``Job.cancel``): what is stored so far."""
        report = self.engine.report if self.engine is not None else EngineReport()
        creates = self.api.create_requests if self.api is not None else 0
        return Outcome(creates, report, Handover(self.store.latest(self.setup.scope_id)), stopped=why)

    def view(self) -> Outcome:
        """Every row's key and the stored results, with nothing sent (a job that ended)."""
        stored = self.store.latest(self.setup.scope_id)
        done = self.store.done_keys(self.setup.scope_id, latest=stored)
        nothing = Budget(max_rows=0)  # plan every row, admit none
        for _ in stream_batches(
            self.df, self.setup, self.state, done, set(), self.options.chunk_rows, None, nothing
        ):
            pass
        return Outcome(0, EngineReport(), Handover(stored))

    def snapshot(self) -> pd.DataFrame:
        """The frame so far: rows not planned or not finished yet are ``pending``. Safe from
        another thread while ``execute`` runs: it reads only result parts (files replaced
        atomically, never changed) and copies of the plan's lists."""
        stored = self.store.latest(self.setup.scope_id)
        padded = with_pending(self.state.key_array(), len(self.df))  # a copy, immutable
        frame, _ = join_results(
            self.df, padded, dict(self.state.errors), stored, self.shape, files=self.reader
        )
        return frame

    # -- the end ----------------------------------------------------------------------
    def finish(self, outcome: Outcome) -> RunResult:
        self.store.journal.record_spend(self.setup.scope_id, self.budget.costed, self.budget.spent)
        known = self.known
        # Rows never planned (a limit or the deadline stopped planning) join as pending.
        keys = known.keys if known else with_pending(self.state.key_array(), len(self.df))
        frame, status = join_results(
            self.df,
            keys,
            self.state.errors,
            outcome.stored,
            self.shape,
            files=self.reader,
            indexer=known.indexer if known else None,
        )
        summary, dup_index = self._summarize(frame, status, outcome)
        return RunResult(frame, summary, dup_index)

    def close(self) -> None:
        self.store.close()

    def _summarize(
        self, frame: pd.DataFrame, status: np.ndarray, outcome: Outcome
    ) -> tuple[RunSummary, pd.Index]:
        counts = pd.Series(status, copy=False).value_counts()  # hashed in C: a million rows in ms
        dups = self.store.journal.possible_duplicates()
        flags = [k is not None and k in dups for k in self.state.key_list()] if dups else []
        flags += [False] * (len(self.df) - len(flags))
        summary = RunSummary(
            rows=len(self.df),
            unique_inputs=self._unique_inputs(),
            cached=self.state.cached,
            submitted=len(self.state.planned),
            succeeded=int(counts.get("succeeded", 0)),
            failed=int(counts.get("failed", 0)),
            cancelled=int(counts.get("cancelled", 0)),
            skipped=int(counts.get("skipped", 0)),
            pending=int(counts.get("pending", 0)),
            create_requests=outcome.create_requests,
            batches=outcome.report.batches_submitted,
            possibly_duplicated=sum(flags),
            elapsed_s=time.monotonic() - self.started,
            cache_dir=None if self.store.temporary else str(self.store.root),
            notes=tuple(self._notes(outcome)),
            errors=error_kinds(frame, status) if counts.get("failed", 0) or counts.get("skipped", 0) else (),
            estimated_cost=self.budget.spent if self.budget.costed else None,
        )
        return summary, self.df.index[flags]

    def _unique_inputs(self) -> int:
        if self.known is not None:
            return self.known.unique
        return count_unique(self.state.key_array())

    def _notes(self, outcome: Outcome) -> list[str]:
        report = outcome.report
        notes: list[str] = []
        if outcome.stopped:
            notes.append(outcome.stopped)
        if self.budget.stopped:
            notes.append(
                f"{self.budget.stopped} reached: {self.state.held} rows were not sent (pending); "
                "run again without the limit, or with a higher one, to send them "
                "(stored rows are not paid again)"
            )
        if report.timed_out:
            notes.append("the deadline (timeout=) was reached: pending rows resume on the next run")
        notes.extend(sorted(report.attention))
        if report.shrunk:
            notes.append(
                f"requests were too large or too slow {report.shrunk} times: batches were made smaller"
            )
        if report.unknown_states:
            notes.append(f"undocumented states seen: {', '.join(sorted(report.unknown_states))}")
        return notes


_NUMBERS = re.compile(r"\d+")


def error_kinds(frame: pd.DataFrame, status: np.ndarray, top: int = 5) -> tuple[tuple[str, int], ...]:
    """The most common reasons rows failed or were skipped, numbers blurred (``row N: ...``)."""
    bad = (status == "failed") | (status == "skipped")
    if not bad.any():
        return ()
    messages = frame.iloc[:, -2].to_numpy()[bad]  # bulk_error, whatever name it got (join)
    kinds = Counter(_NUMBERS.sub("N", str(m))[:120] for m in messages)
    return tuple(kinds.most_common(top))
