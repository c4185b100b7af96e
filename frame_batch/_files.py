"""File cells in and file outputs out, for providers that take files (VectorShift).

Inputs. A provider that accepts files (``Provider.accepts_files``) gets, instead of the
"bytes cannot be sent" row error, a file marker for each file cell::

    {"$file": {"raw_bytes": <base64>, "name": <str>?, "mime_type": <str>?}}

The marker is part of the row's canonical JSON, so a row's key covers the file's content:
the same bytes are paid for once, a changed file runs again. The adapter turns the marker
into its vendor's shape (VectorShift: the ``file`` DataType, or a multipart part). Rules:

- ``bytes``/``bytearray``/``memoryview`` cells are files (no name, no type).
- Local files are read only when the user opts in with ``file_root=``: then
  ``pathlib.Path`` cells, and ``str`` cells of the inputs named in ``file_inputs=``, are paths
  (relative ones from the root). The path is resolved with symlinks followed, and must end up
  inside the resolved root: ``../`` tricks and links pointing out are refused. The name sent is
  the file's base name; the type is guessed from its extension.
- A file larger than ``max_file_bytes`` is refused (checked on the open file, so a file that
  grows after ``stat`` cannot slip through). Each refusal is that row's error, with the reason.
- A file must be a whole cell: bytes nested in a list or dict are refused like any bytes.

Outputs. The adapter decodes a file output into a :class:`FileOutput`. When results are
stored, :func:`file_saver` (the part writer's orjson ``default``) writes each one under
``<cache>/files/`` (content-addressed: ``<sha256[:2]>/<sha256><ext>``, written atomically, a
file already there is reused) and puts a stored marker
``{"$file": {"path", "sha256", "size", "name", "mime_type"}}`` in its place.
At join time :func:`FileReader` turns a stored marker into the file's absolute path (the
default) or its bytes (``file_outputs="bytes"``).
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Literal

from ._fs import atomic_write
from ._types import FileOutput
from .errors import ConfigError

FILE_MARK = "$file"
DEFAULT_MAX_FILE_BYTES = 16 * 1024 * 1024
FileOutputs = Literal["path", "bytes"]
_SAFE_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}")


class FileRejected(Exception):
    """A file cell that cannot be sent; the message is the row's error."""


@dataclass(frozen=True, slots=True)
class FileInputs:
    """How file cells are read for one run (see the module docstring)."""

    root: Path | None = None  # None: no local file is ever opened
    path_inputs: frozenset[str] = frozenset()
    max_bytes: int = DEFAULT_MAX_FILE_BYTES

    @classmethod
    def from_options(
        cls, root: str | os.PathLike[str] | None, path_inputs: object, max_bytes: int | None
    ) -> FileInputs:
        names = _names(path_inputs)
        if names and root is None:
            raise ConfigError(
                f"file_inputs={sorted(names)!r} names path inputs, but no file_root= is given; "
                "pass file_root=<the folder the files are in> to allow reading them"
            )
        limit = DEFAULT_MAX_FILE_BYTES if max_bytes is None else max_bytes
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"max_file_bytes must be a positive int, not {max_bytes!r}")
        return cls(_root(root), names, limit)


def _names(value: object) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset({value})
    if isinstance(value, list | tuple | set | frozenset) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise ConfigError(f"file_inputs must be an input name or a list of them, not {value!r}")


def _root(root: str | os.PathLike[str] | None) -> Path | None:
    if root is None:
        return None
    try:
        resolved = Path(root).expanduser().resolve(strict=True)
    except OSError as exc:
        raise ConfigError(f"file_root {str(root)!r} cannot be used: {exc.strerror or exc}") from None
    if not resolved.is_dir():
        raise ConfigError(f"file_root {str(root)!r} is not a folder")
    return resolved


def file_marker(data: bytes, name: str | None = None, mime_type: str | None = None) -> dict[str, object]:
    """The canonical JSON form of a file cell."""
    body: dict[str, object] = {"raw_bytes": base64.b64encode(data).decode("ascii")}
    if name:
        body["name"] = name
    if mime_type:
        body["mime_type"] = mime_type
    return {FILE_MARK: body}


def bytes_marker(value: bytes | bytearray | memoryview, policy: FileInputs) -> dict[str, object]:
    data = bytes(value)
    _check_size(len(data), policy.max_bytes, "the bytes")
    return file_marker(data)


def path_marker(value: str | PurePath, policy: FileInputs) -> dict[str, object]:
    """Read the file a cell names, inside the allowed root; raise FileRejected otherwise."""
    if policy.root is None:
        raise FileRejected(
            f"path {str(value)!r} is a local file; pass file_root=<folder> to allow reading files there"
        )
    shown = str(value)
    if not shown.strip():
        raise FileRejected("the path is empty")
    try:
        target = (policy.root / Path(shown).expanduser()).resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # missing, a symlink loop, unreadable
        why = getattr(exc, "strerror", None) or exc
        raise FileRejected(f"file {shown!r} cannot be opened: {why}") from None
    if not target.is_relative_to(policy.root):
        raise FileRejected(
            f"file {shown!r} resolves to {str(target)!r}, outside file_root {str(policy.root)!r}; "
            "move it under the root or pass a wider file_root="
        )
    if not target.is_file():
        raise FileRejected(f"file {shown!r} is not a regular file")
    data = _read_capped(target, policy.max_bytes, shown)
    return file_marker(data, target.name, mimetypes.guess_type(target.name)[0])


def _read_capped(path: Path, limit: int, shown: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)  # one byte over tells "too big" without reading it all
    except OSError as exc:
        raise FileRejected(f"file {shown!r} cannot be read: {exc.strerror or exc}") from None
    _check_size(len(data), limit, f"file {shown!r}")
    return data


def _check_size(size: int, limit: int, what: str) -> None:
    if size > limit:
        raise FileRejected(
            f"{what} is larger than max_file_bytes={limit:,}; pass a larger max_file_bytes= to send it"
        )


def is_marker(value: object) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(FILE_MARK), dict)


# --------------------------------------------------------------------------- outputs


def file_saver(folder: Path) -> Callable[[object], object]:
    """An orjson ``default``: saves each FileOutput under ``folder``, writes a stored marker in
    its place. orjson calls it only for values it cannot write itself, so outputs without
    files cost nothing extra."""

    def save(value: object) -> object:
        if isinstance(value, FileOutput):
            return {FILE_MARK: _save(value, folder)}
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    return save


def _save(file: FileOutput, folder: Path) -> dict[str, object]:
    digest = hashlib.sha256(file.data).hexdigest()
    relative = Path(digest[:2]) / (digest + _suffix(file))
    target = folder / relative
    if not (target.is_file() and target.stat().st_size == len(file.data)):
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target) as handle:
            handle.write(file.data)
    stored: dict[str, object] = {"path": relative.as_posix(), "sha256": digest, "size": len(file.data)}
    if file.name:
        stored["name"] = file.name
    if file.mime_type:
        stored["mime_type"] = file.mime_type
    return stored


def _suffix(file: FileOutput) -> str:
    """The extension to save under: the vendor's file name's, else one for its type."""
    # Only a short alphanumeric extension is taken: never a vendor's name with path parts.
    for suffix in (PurePath(file.name or "").suffix, mimetypes.guess_extension(file.mime_type or "") or ""):
        if _SAFE_SUFFIX.fullmatch(suffix):
            return suffix
    return ""


@dataclass(frozen=True, slots=True)
class FileReader:
    """Turns a stored marker into what the output column shows."""

    folder: Path
    mode: FileOutputs = "path"

    def __call__(self, stored: Mapping[str, object]) -> object:
        relative = stored.get("path")
        if not isinstance(relative, str):
            return None
        path = self.folder / relative
        if self.mode == "bytes":
            try:
                return path.read_bytes()
            except OSError:
                return None  # deleted by the user: the column shows it missing
        return str(path)


def check_file_outputs(mode: object) -> FileOutputs:
    if mode == "path" or mode == "bytes":
        return mode
    raise ConfigError(f"file_outputs must be 'path' or 'bytes', not {mode!r}")
