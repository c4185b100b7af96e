"""``frame-batch run``/``status``/``cancel``: workbook round trips, Excel safety, crash and resume."""

from __future__ import annotations

import csv
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from openpyxl.styles import Font, PatternFill

from frame_batch import cli
from frame_batch.testing import ParallelEmulator, VectorShiftEmulator

PIPE = "64b2f0c1e4b0a1b2c3d4e5f6"
HOSTILE = ["=1+1", '=HYPERLINK("http://example.invalid","x")', "@SUM(A1)", "-2+3"]
ENV = {"PARALLEL_API_KEY": "parallel-test-key", "VECTORSHIFT_API_KEY": "vectorshift-test-key"}


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def leads_workbook(path: Path, rows: int = 12) -> None:
    """Two sheets, a styled header, formulas, merged cells, dates, numbers, a frozen pane."""
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = "Leads"
    ws.append(["Company", "Employees", "Founded", "Double"])
    for cell in ws[1]:
        cell.font = Font(bold=True, color="FFFFFF")
        cell.fill = PatternFill("solid", fgColor="1F4E78")
    for i in range(rows):
        ws.append([f"Company {i}", 10 * i, dt.datetime(2000 + i, 1, 15), f"=B{i + 2}*2"])
        ws.cell(row=i + 2, column=3).number_format = "yyyy-mm-dd"
    ws.freeze_panes = "A2"
    ws.column_dimensions["A"].width = 31
    notes = wb.create_sheet("Notes")
    notes["A1"] = "Owner"
    notes["B1"] = "Sales team"
    notes.merge_cells("B1:D1")
    notes["A3"] = "=SUM(Leads!B2:B13)"
    wb.save(path)


def main(*args: str) -> int:
    return cli.main([str(a) for a in args])


def test_round_trip_keeps_the_workbook_and_fills_the_new_columns(tmp_path: Path) -> None:
    source, out = tmp_path / "leads.xlsx", tmp_path / "leads.enriched.xlsx"
    leads_workbook(source)
    emu = ParallelEmulator()
    with emu.serve() as server:
        code = main(
            "run", source, "--provider", "parallel", "--workflow", "enrich", "--base-url", server.url,
            "--map", "company=Company", "--cache", tmp_path / "cache", "--batch-size", "5",
            "--option", "poll_interval=0.05", "--no-progress",
        )  # fmt: skip
    assert code == 0
    wb = openpyxl.load_workbook(out)
    assert wb.sheetnames[:2] == ["Leads", "Notes"]
    ws, notes = wb["Leads"], wb["Notes"]
    assert ws.freeze_panes == "A2"
    assert ws.column_dimensions["A"].width == 31
    assert [c.value for c in ws[1]][:4] == ["Company", "Employees", "Founded", "Double"]
    headers = {c.value: c for c in ws[1]}
    assert {"output", "bulk_status", "bulk_error", "bulk_run_id"} <= set(headers)
    assert headers["output"].font.b
    assert headers["output"].fill.fgColor.rgb == ws["A1"].fill.fgColor.rgb
    assert ws["D2"].value == "=B2*2"  # the user's formula stays a formula
    assert ws["C3"].value == dt.datetime(2001, 1, 15)
    assert ws["C3"].number_format == "yyyy-mm-dd"
    assert ws["B4"].value == 20
    assert "B1:D1" in {str(r) for r in notes.merged_cells.ranges}
    assert notes["A3"].value == "=SUM(Leads!B2:B13)"
    status_col = [c.value for c in ws[1]].index("bulk_status") + 1
    output_col = [c.value for c in ws[1]].index("output") + 1
    assert [ws.cell(row=r, column=status_col).value for r in range(2, 14)] == ["succeeded"] * 12
    assert "Company 3" in ws.cell(row=5, column=output_col).value
    assert wb["_frame_batch_state"].sheet_state == "veryHidden"


def hostile_pipeline(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"answer": HOSTILE[int(float(str(inputs["n"])))]}


def test_model_output_that_looks_like_a_formula_stays_text(tmp_path: Path) -> None:
    """Injection: outputs starting = @ - are string cells in xlsx and escaped in CSV."""
    source = tmp_path / "in.csv"
    source.write_text("n,topic\n0,a\n1,b\n2,c\n3,d\n", encoding="utf-8")
    emu = VectorShiftEmulator(pipelines={PIPE: hostile_pipeline})
    with emu.serve() as server:
        for out in ("out.xlsx", "out.csv"):
            code = main(
                "run", source, "--provider", "vectorshift", "--workflow", PIPE, "--out", tmp_path / out,
                "--base-url", server.url + "/v1", "--cache", tmp_path / "cache", "--no-progress",
            )  # fmt: skip
            assert code == 0
    ws = openpyxl.load_workbook(tmp_path / "out.xlsx").active
    assert ws is not None
    column = [c.value for c in ws[1]].index("answer") + 1
    cells = [ws.cell(row=r, column=column) for r in range(2, 6)]
    assert [c.value for c in cells] == HOSTILE
    assert all(c.data_type == "s" for c in cells)
    with open(tmp_path / "out.csv", encoding="utf-8-sig", newline="") as handle:
        answers = [row["answer"] for row in csv.DictReader(handle)]
    assert answers == ["'" + text for text in HOSTILE]


def test_exit_codes_dry_run_and_max_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.csv"
    source.write_text("n,topic\n" + "".join(f"{i},t{i}\n" for i in range(6)), encoding="utf-8")
    emu = VectorShiftEmulator(failure_rate=0.0)
    with emu.serve() as server:
        base = ["--provider", "vectorshift", "--workflow", PIPE, "--base-url", server.url + "/v1"]
        base += ["--cache", str(tmp_path / "cache"), "--no-progress"]
        assert main("run", source, *base, "--dry-run") == 0
        assert "6 to submit" in capsys.readouterr().out
        assert main("run", source, *base, "--max-rows", "2", "--out", tmp_path / "part.csv") == 1
        assert emu.create_requests == 1
        with open(tmp_path / "part.csv", encoding="utf-8-sig", newline="") as handle:
            statuses = [row["bulk_status"] for row in csv.DictReader(handle)]
        assert statuses == ["succeeded"] * 2 + ["pending"] * 4
        assert main("run", source, *base, "--out", tmp_path / "all.csv") == 0
    assert emu.duplicates() == {}
    assert main("run", tmp_path / "missing.xlsx", *base) == 2
    assert "missing.xlsx" in capsys.readouterr().err
    (tmp_path / "fake.xlsx").write_text("not a workbook")
    assert main("run", tmp_path / "fake.xlsx", *base) == 2
    err = capsys.readouterr().err
    assert "frame-batch: error:" in err
    assert "Traceback" not in err


def test_status_reports_a_cache_and_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source, out = tmp_path / "leads.xlsx", tmp_path / "out.xlsx"
    leads_workbook(source, rows=3)
    emu = VectorShiftEmulator()
    with emu.serve() as server:
        args = ["--provider", "vectorshift", "--workflow", PIPE, "--base-url", server.url + "/v1"]
        assert main("run", source, "--out", out, "--cache", tmp_path / "c", "--no-progress", *args) == 0
    capsys.readouterr()
    assert main("status", out) == 0
    assert "'succeeded': 3" in capsys.readouterr().out
    assert main("status", "--cache", tmp_path / "c") == 0
    assert "'collected': 1" in capsys.readouterr().out
    assert main("status", "--cache", tmp_path / "nowhere") == 2


def start_cli(args: list[str]) -> subprocess.Popen[bytes]:
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "frame_batch.cli", "run", *args, "--no-progress"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.e2e
@pytest.mark.parametrize("delete_cache", [False, True], ids=["with-cache", "cache-deleted"])
def test_sigkill_then_rerun_on_the_output_workbook_pays_nothing_twice(
    tmp_path: Path, delete_cache: bool
) -> None:
    """Kill the CLI mid-run; rerun the same command (with or without the cache directory):
    it finishes, every row succeeded, and the emulator charged each input once."""
    source, out, cache = tmp_path / "leads.xlsx", tmp_path / "out.xlsx", tmp_path / "cache"
    leads_workbook(source, rows=40)
    emu = ParallelEmulator(latency=0.4)
    with emu.serve() as server:
        args = [str(source), "--provider", "parallel", "--workflow", "enrich", "--base-url", server.url]
        args += ["--map", "company=Company", "--out", str(out), "--cache", str(cache), "--batch-size", "4"]
        args += ["--option", "poll_interval=0.05", "--option", "max_in_flight=3"]
        child = start_cli(args)
        deadline = time.monotonic() + 60
        while emu.create_requests < 4 or not out.exists():
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.005)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        if delete_cache:
            shutil.rmtree(cache)
        rerun = start_cli(args)
        _, stderr = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, stderr.decode()
    assert emu.duplicates() == {}
    assert len(emu.charges()) == 40
    ws = openpyxl.load_workbook(out)["Leads"]
    header = [c.value for c in ws[1]]
    statuses = [ws.cell(row=r, column=header.index("bulk_status") + 1).value for r in range(2, 42)]
    outputs = [ws.cell(row=r, column=header.index("output") + 1).value for r in range(2, 42)]
    assert statuses == ["succeeded"] * 40
    assert all(f"Company {i}" in text for i, text in enumerate(outputs))


def test_python_side_reads_and_writes_safely(tmp_path: Path) -> None:
    """frame_batch.read_table and df.bulk.to_excel apply the CLI's rules."""
    import pandas as pd

    import frame_batch

    df = pd.DataFrame({"answer": HOSTILE})
    path = df.bulk.to_excel(tmp_path / "x.xlsx")
    ws = openpyxl.load_workbook(path).active
    assert ws is not None
    assert [ws.cell(row=r, column=1).data_type for r in range(2, 6)] == ["s"] * 4
    assert frame_batch.read_table(path)["answer"].tolist() == HOSTILE
    with pytest.raises(frame_batch.errors.ConfigError, match=r"\.xlsx"):
        df.bulk.to_excel(tmp_path / "x.csv")


def test_cancel_asks_the_vendor_to_stop_the_batches_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run stopped by its deadline leaves batches submitted; cancel stops them remotely."""
    import pandas as pd

    import frame_batch
    from frame_batch.testing import RespellEmulator

    monkeypatch.setenv("RESPELL_API_KEY", "respell-test-key")
    emu = RespellEmulator(latency=60.0)
    df = pd.DataFrame({"topic": [f"t{i}" for i in range(6)]})
    with emu.serve() as server:
        result = frame_batch.run(
            df, "spell", provider="respell", base_url=server.url, cache=tmp_path / "c",
            batch_size=2, timeout=1.0, progress=False,
        )  # fmt: skip
        assert result.summary.pending == 6
        assert (
            main("cancel", "--provider", "respell", "--cache", tmp_path / "c", "--base-url", server.url) == 0
        )
    assert emu.requests()["cancelBulk"] == 3
    assert "cancel 3 batches" in capsys.readouterr().out


def _replace_sheet(path: Path, xml: bytes) -> Path:
    """A real one-sheet workbook whose sheet XML is swapped for ``xml``."""
    import zipfile

    wb = openpyxl.Workbook()
    wb.save(path)
    with zipfile.ZipFile(path) as zf:
        parts = {info.filename: zf.read(info) for info in zf.infolist()}
    parts["xl/worksheets/sheet1.xml"] = xml
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in parts.items():
            zf.writestr(name, data)
    return path


def _sheet(body: str, prolog: str = "", dimension: str = "") -> bytes:
    dim = f'<dimension ref="{dimension}"/>' if dimension else ""
    ns = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    xml = (
        f'<?xml version="1.0"?>{prolog}<worksheet xmlns="{ns}">{dim}<sheetData>{body}</sheetData></worksheet>'
    )
    return xml.encode()


HOSTILE_FILES = {
    "zip-bomb": lambda p: _replace_sheet(p / "bomb.xlsx", bytes(40 << 20)),
    "entity-bomb": lambda p: _replace_sheet(
        p / "laughs.xlsx",
        _sheet(
            '<row r="1"><c r="A1" t="inlineStr"><is><t>&a5;</t></is></c></row>',
            prolog="<!DOCTYPE worksheet [<!ENTITY a0 'lol'>"
            + "".join(f"<!ENTITY a{i} '{f'&a{i - 1};' * 10}'>" for i in range(1, 6))
            + "]>",
        ),
    ),
    "huge-dimension": lambda p: _replace_sheet(
        p / "huge.xlsx",
        _sheet('<row r="1"><c r="A1" t="inlineStr"><is><t>a</t></is></c></row>', dimension="A1:XFD1048576"),
    ),
    "not-utf8-csv": lambda p: (p / "latin.csv", (p / "latin.csv").write_bytes(b"name\nCaf\xe9 \xff\n"))[0],
    "not-a-workbook": lambda p: (p / "text.xlsx", (p / "text.xlsx").write_text("just text"))[0],
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_FILES))
def test_hostile_files_are_a_clear_error_without_a_traceback(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = HOSTILE_FILES[kind](tmp_path)
    code = main("run", path, "--provider", "vectorshift", "--workflow", PIPE, "--cache", tmp_path / "c")
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("frame-batch: error:")
    assert path.name in err
    assert "Traceback" not in err
    assert not (tmp_path / "c").exists()  # refused before anything was set up
