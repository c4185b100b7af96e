"""Every example notebook in notebooks/ executes top to bottom against the emulators."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.e2e


def test_the_five_example_notebooks_are_there() -> None:
    names = {path.stem for path in NOTEBOOKS}
    assert names == {
        "01_quickstart_respell",
        "02_excel_round_trip",
        "03_parallel_structured_outputs",
        "04_vectorshift_files",
        "05_interrupt_and_resume",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path: Path, tmp_path: Path) -> None:
    """Run in a scratch folder (each writes its cache and files there); any cell error fails."""
    book = nbformat.read(path, as_version=4)
    NotebookClient(
        book, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert "The real service is this one line" in "".join(c.source for c in book.cells)
