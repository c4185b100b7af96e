"""``frame-batch demo``: a bundled table of sales leads through a vendor, on its emulator.

``--provider respell`` (the default) runs a spell; ``--provider parallel`` asks Parallel's Task
API for structured outputs (an output schema with integer, boolean and date fields, plus the
per-field basis: reasoning and citations) and shows the typed columns that come back.

Nothing leaves the machine: the emulator answers in-process (``httpx.MockTransport``) with a
few seconds of simulated latency per batch. The run is cached next to the outputs, so a second
``frame-batch demo`` is served from the cache with zero create requests.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

import httpx
import pandas as pd

from ._run import run
from ._types import ProviderLimits, RunSummary
from .excel import write_xlsx
from .providers import Parallel, Provider, Respell
from .testing import ParallelEmulator, RespellEmulator

DEMO_SPELL = "clxdq2y1w008g2l7by88758uh"
DEMO_TASK = "lead-research"
INPUTS = {"company": "company", "industry": "industry", "employees": "employees", "notes": "notes"}
LEAD_SCHEMA = {
    "type": "object",
    "properties": {
        "segment": {"type": "string", "description": "SMB, Mid-market or Enterprise"},
        "priority": {"type": "integer", "description": "1 (low) to 5 (high)"},
        "hiring": {"type": "boolean", "description": "Is the company hiring now?"},
        "next_review": {"type": "string", "format": "date", "description": "When to look again"},
        "opener": {"type": "string", "description": "A first line for an outreach email"},
    },
    "required": ["segment", "priority", "hiring", "next_review", "opener"],
    "additionalProperties": False,
}


def load_leads() -> pd.DataFrame:
    """The bundled sample table (fictional companies on .example / .test domains)."""
    with (files("frame_batch") / "data" / "leads.csv").open("rb") as handle:
        return pd.read_csv(handle)


def lead_research(inputs: dict[str, object]) -> dict[str, object]:
    """The demo spell: segment, priority and an opening line for a sales lead."""
    notes = str(inputs.get("notes") or "").strip()
    if not notes:
        raise ValueError("step 'Research' failed: no notes to work from")
    employees = int(inputs.get("employees") or 0)  # type: ignore[call-overload]
    segment = "Enterprise" if employees >= 1000 else "Mid-market" if employees >= 100 else "SMB"
    priority = min(5, 1 + len(notes) // 40 + (2 if segment == "Enterprise" else 0))
    company = inputs.get("company")
    industry = str(inputs.get("industry") or "their industry").lower()
    return {
        "segment": segment,
        "priority": priority,
        "opener": f"Saw that {company} is growing in {industry}; {notes[:80].rstrip('.')}.",
    }


def lead_facts(task_input: object, output_schema: object) -> dict[str, object] | str:
    """The demo's Parallel task: the spell's answer plus a boolean and a date field."""
    inputs = task_input if isinstance(task_input, dict) else {"notes": str(task_input)}
    answer = lead_research(inputs)
    notes = str(inputs.get("notes") or "").lower()
    month = 1 + len(notes) % 12
    return {
        **answer,
        "hiring": any(word in notes for word in ("hiring", "grow", "expand", "new", "launch")),
        "next_review": f"2027-{month:02d}-{1 + len(notes) % 28:02d}",
    }


def main(
    out_dir: str | Path = "frame-batch-demo",
    *,
    provider: str = "respell",
    latency: float = 1.0,
    progress: bool = True,
) -> RunSummary:
    """Run the demo; write ``leads_enriched[_parallel].xlsx`` and ``.parquet`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    leads = load_leads()
    vendor, workflow, transport, columns = _vendor(provider, latency)
    print(f"frame-batch demo: {len(leads)} sales leads -> {vendor.name} {workflow} (emulator, in-process)")
    result = run(
        leads,
        workflow,
        provider=vendor,
        inputs=INPUTS,
        cache=out / ".frame_batch",
        transport=transport,
        progress=progress,
        batch_size=50 if provider == "parallel" else None,  # a few batches: visible progress
    )
    frame, summary = result.frame, result.summary
    stem = "leads_enriched" if provider == "respell" else f"leads_enriched_{provider}"
    xlsx = write_xlsx(frame, out / f"{stem}.xlsx")
    parquet = out / f"{stem}.parquet"
    frame.to_parquet(parquet, index=False)
    again = "frame-batch demo" + ("" if provider == "respell" else f" --provider {provider}")
    _report(frame, columns, summary, xlsx, parquet, out, again)
    return summary


def _vendor(name: str, latency: float) -> tuple[Provider, str, httpx.AsyncBaseTransport, list[str]]:
    """The provider, workflow, in-process emulator transport and the columns to show."""
    if name == "parallel":
        parallel = ParallelEmulator(latency=latency, jitter=latency, out_of_order=True, task=lead_facts)
        provider = Parallel(
            api_key="demo-key-not-secret", processor="lite", output_schema=LEAD_SCHEMA, basis=True
        )
        shown = ["company", "segment", "priority", "hiring", "next_review", "bulk_status"]
        return provider, DEMO_TASK, parallel.transport(), shown
    if name != "respell":
        raise ValueError(f"the demo runs on 'respell' or 'parallel', not {name!r}")
    respell = RespellEmulator(latency=latency, jitter=latency * 2, spells={DEMO_SPELL: lead_research})
    limits = ProviderLimits(
        max_rows_per_batch=25, max_bytes_per_batch=1_000_000, poll_interval=1.0, max_in_flight=4
    )
    provider_ = Respell(api_key="demo-key-not-secret", limits=limits)
    return (
        provider_,
        DEMO_SPELL,
        respell.transport(),
        ["company", "segment", "priority", "bulk_status", "bulk_error"],
    )


def _report(
    frame: pd.DataFrame,
    columns: list[str],
    summary: RunSummary,
    xlsx: Path,
    parquet: Path,
    out: Path,
    again: str,
) -> None:
    print(frame[columns].head(8).to_string(index=False, max_colwidth=48))
    typed = {c: str(frame[c].dtype) for c in columns if c not in ("company", "bulk_status", "bulk_error")}
    print("column types: " + ", ".join(f"{c}={t}" for c, t in typed.items()))
    print(f"\nwrote {xlsx} and {parquet}")
    if summary.create_requests == 0 and summary.submitted == 0 and summary.complete:
        print(
            f"served entirely from the cache ({summary.cached} stored results, 0 create requests). "
            f"Delete {out / '.frame_batch'} to pay for the rows again."
        )
    else:
        print(f"summary: {summary}")
        print(f"run `{again}` again: it is served from the cache with zero submissions.")
    sys.stdout.flush()
