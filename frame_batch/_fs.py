"""Crash-safe file replacement, shared by the result store and the workbook writer.

A file is written under a temp name in the *same* directory (so the final step is a rename),
starting with ``.`` (dataset discovery and globs skip it), flushed and fsynced, moved onto its
final name with ``os.replace``, and then the directory is fsynced so the rename itself
survives a power loss. After a crash the final name holds either the old file or the new one,
never half of one. On failure the temp file is removed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_write(target: Path) -> Iterator[BinaryIO]:
    """Yield a binary handle; when the block ends cleanly it becomes ``target`` atomically."""
    temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temp, "xb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; Windows cannot open a directory)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
