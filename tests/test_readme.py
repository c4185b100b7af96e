"""The README's two Quick start commands: the same test command as CI, and the demo works fresh."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    """Two commands: demo, then tests; .ci/run runs the second verbatim."""
    commands = quick_start_commands()
    assert len(commands) == 2
    demo, tests = commands
    assert demo.endswith("frame-batch demo")
    assert "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


@pytest.mark.fresh_venv
def test_demo_command_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    """The README's first command, run as written in a copy of the checkout, succeeds twice."""
    demo = quick_start_commands()[0]
    copy_checkout(tmp_path)
    first = subprocess.run(["bash", "-c", demo], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (tmp_path / "frame-batch-demo" / "leads_enriched.xlsx").is_file()
    second = subprocess.run(
        [str(tmp_path / ".venv" / "bin" / "frame-batch"), "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert second.returncode == 0
    assert "served entirely from the cache" in second.stdout
