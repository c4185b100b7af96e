"""``frame-batch demo`` and ``frame-batch emulate``, plus the public surface."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openpyxl
import pandas as pd
import pytest

import frame_batch
from frame_batch.cli import main


def test_demo_runs_then_is_served_from_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """First demo run pays for the rows and writes xlsx + parquet; the second sends nothing."""
    assert main(["demo", "--out", str(tmp_path), "--latency", "0.02", "--no-progress"]) == 0
    first = capsys.readouterr().out
    assert "summary:" in first
    assert "create requests" in first
    frame = pd.read_parquet(tmp_path / "leads_enriched.parquet")
    assert len(frame) >= 250
    assert {"segment", "priority", "opener", "bulk_status"} <= set(frame.columns)
    assert frame["bulk_status"].isin(["succeeded", "failed"]).all()
    assert (frame["bulk_status"] == "failed").any()  # empty notes: the spell fails those rows
    sheet = openpyxl.load_workbook(tmp_path / "leads_enriched.xlsx").active
    assert sheet is not None
    assert sheet.max_row == len(frame) + 1

    assert main(["demo", "--out", str(tmp_path), "--latency", "0.02", "--no-progress"]) == 0
    second = capsys.readouterr().out
    assert "served entirely from the cache" in second
    assert "0 create requests" in second
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "leads_enriched.parquet"), frame)


def test_help_texts_have_examples(capsys: pytest.CaptureFixture[str]) -> None:
    """Every subcommand's --help shows an example line."""
    for command in (["demo"], ["emulate"]):
        with pytest.raises(SystemExit) as info:
            main([*command, "--help"])
        assert info.value.code == 0
        assert "frame-batch " in capsys.readouterr().out.split("example")[1]


def test_parallel_demo_shows_typed_structured_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`demo --provider parallel`: integer, boolean and date columns plus citations; rerun is free."""
    argv = ["demo", "--provider", "parallel", "--out", str(tmp_path), "--latency", "0.02", "--no-progress"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "priority=Int64" in first
    assert "hiring=boolean" in first
    frame = pd.read_parquet(tmp_path / "leads_enriched_parallel.parquet")
    assert str(frame["priority"].dtype) == "Int64"
    assert frame["next_review"].dtype.kind == "M"
    ok = frame[frame["bulk_status"] == "succeeded"]
    assert len(ok) >= 250
    assert all(len(c) >= 1 for c in ok["basis.segment.citations"])
    assert main(argv) == 0
    assert "served entirely from the cache" in capsys.readouterr().out


@contextmanager
def emulating(vendor: str) -> Iterator[str]:
    """`frame-batch emulate VENDOR --port 0` in a child; yields its URL, then stops it with SIGINT."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-m", "frame_batch.cli", "emulate", vendor, "--port", "0", "--latency", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert f"{vendor} emulator listening on" in line
        url = line.split("listening on ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        child.send_signal(signal.SIGINT)
        child.wait(timeout=10)
    assert child.returncode == 0


@pytest.mark.e2e
def test_emulate_serves_respell_on_a_loopback_port() -> None:
    """`frame-batch emulate respell --port 0` answers bulkStart, and stops on SIGINT."""
    with emulating("respell") as url:
        response = httpx.post(
            f"{url}/spells/bulkStart", json={"spellId": "s", "inputs": [{"a": 1}]}, headers={"x-api-key": "k"}
        )
    assert response.status_code == 200
    assert "runId" in response.json()


@pytest.mark.e2e
def test_emulate_serves_parallel_on_a_loopback_port() -> None:
    """`frame-batch emulate parallel --port 0` answers the task-group API, and stops on SIGINT."""
    with emulating("parallel") as url:
        response = httpx.post(
            f"{url}/v1/tasks/groups", json={"metadata": {"a": "b"}}, headers={"x-api-key": "k"}
        )
    assert response.status_code == 200
    assert response.json()["taskgroup_id"].startswith("tgrp_")


@pytest.mark.e2e
def test_emulate_serves_vectorshift_on_a_loopback_port() -> None:
    """`frame-batch emulate vectorshift --port 0` answers bulk-run under /v1."""
    with emulating("vectorshift") as url:
        body = {"runs": [{"inputs": {"q": "hi"}}]}
        response = httpx.post(
            f"{url}/v1/pipeline/p1/bulk-run", json=body, headers={"authorization": "Bearer k"}
        )
    assert response.status_code == 200
    assert response.json()["status"] == "success"


def test_public_api_is_explicit_and_sorted() -> None:
    """__all__ is sorted, every name in it exists, and the accessor is registered on import."""
    assert frame_batch.__all__ == sorted(frame_batch.__all__)
    for name in frame_batch.__all__:
        assert hasattr(frame_batch, name), name
    assert hasattr(pd.DataFrame({"a": [1]}), "bulk")
    import frame_batch.testing as testing

    assert testing.__all__ == sorted(testing.__all__)


def test_error_tree_matches_its_docstring() -> None:
    """Every exception class is drawn in errors.py's docstring and derives from FrameBatchError."""
    from frame_batch import errors

    doc = errors.__doc__ or ""
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert name in doc, name
        assert issubclass(cls, errors.FrameBatchError)
