"""``frame-batch demo``: a bundled table of sales leads through Respell, on the emulator.

Nothing leaves the machine: the Respell emulator answers in-process (``httpx.MockTransport``)
with a few seconds of simulated latency per batch. The run is cached next to the outputs, so
a second ``frame-batch demo`` is served from the cache with zero create requests.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

import pandas as pd

from ._run import run
from ._types import ProviderLimits, RunSummary
from .excel import write_xlsx
from .providers import Respell
from .testing import RespellEmulator

DEMO_SPELL = "clxdq2y1w008g2l7by88758uh"
INPUTS = {"company": "company", "industry": "industry", "employees": "employees", "notes": "notes"}


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


def main(
    out_dir: str | Path = "frame-batch-demo", *, latency: float = 1.0, progress: bool = True
) -> RunSummary:
    """Run the demo; write ``leads_enriched.xlsx`` and ``.parquet`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    leads = load_leads()
    emulator = RespellEmulator(latency=latency, jitter=latency * 2, spells={DEMO_SPELL: lead_research})
    provider = Respell(
        api_key="demo-key-not-secret",
        limits=ProviderLimits(
            max_rows_per_batch=25, max_bytes_per_batch=1_000_000, poll_interval=1.0, max_in_flight=4
        ),
    )
    print(f"frame-batch demo: {len(leads)} sales leads -> Respell spell {DEMO_SPELL} (emulator, in-process)")
    result = run(
        leads,
        DEMO_SPELL,
        provider=provider,
        inputs=INPUTS,
        cache=out / ".frame_batch",
        transport=emulator.transport(),
        progress=progress,
    )
    frame, summary = result.frame, result.summary
    xlsx = write_xlsx(frame, out / "leads_enriched.xlsx")
    parquet = out / "leads_enriched.parquet"
    frame.to_parquet(parquet, index=False)
    _report(frame, summary, xlsx, parquet, out)
    return summary


def _report(frame: pd.DataFrame, summary: RunSummary, xlsx: Path, parquet: Path, out: Path) -> None:
    shown = frame[["company", "segment", "priority", "bulk_status", "bulk_error"]].head(8)
    print(shown.to_string(index=False, max_colwidth=48))
    print(f"\nwrote {xlsx} and {parquet}")
    if summary.create_requests == 0 and summary.submitted == 0 and summary.complete:
        print(
            f"served entirely from the cache ({summary.cached} stored results, 0 create requests). "
            f"Delete {out / '.frame_batch'} to pay for the rows again."
        )
    else:
        print(f"summary: {summary}")
        print("run `frame-batch demo` again: it is served from the cache with zero submissions.")
    sys.stdout.flush()
