"""VectorShift file inputs and outputs: bytes and path cells, multipart bodies, saved outputs."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

import frame_batch
from frame_batch import RetryPolicy
from frame_batch.errors import ConfigError
from frame_batch.testing import VectorShiftEmulator
from frame_batch.testing.vectorshift import file_value

KEY = "vectorshift-test-key"
PIPE = "64b2f0c1e4b0a1b2c3d4e5f6"


def pipeline(inputs: dict[str, Any]) -> dict[str, Any]:
    """Reads the ``doc`` file input; answers with its size and a report file about it."""
    doc = inputs.get("doc")
    if not (isinstance(doc, dict) and doc.get("type") == "file"):
        return {"size": -1.0}
    data = base64.b64decode(str(doc["raw_bytes"]))
    name = doc.get("metadata", {}).get("name", "")
    if data == b"poison":
        raise RuntimeError("the PDF parser choked")
    report = file_value(b"report:" + data, name=f"{name or 'doc'}.txt", mime_type="text/plain")
    return {"size": float(len(data)), "name": name, "report": report}


def run(df: pd.DataFrame, emu: VectorShiftEmulator, tmp_path: Path, **options: Any) -> frame_batch.RunResult:
    options.setdefault("cache", tmp_path / "cache")
    options.setdefault("transport", emu.transport())
    return frame_batch.run(
        df, PIPE, provider="vectorshift", api_key=KEY, progress=False, retry=RetryPolicy.testing(), **options
    )


def recording(emu: VectorShiftEmulator, seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        return emu.handler(request)

    return httpx.MockTransport(handle)


def test_bytes_cells_go_as_multipart_parts_with_the_documented_names(tmp_path: Path) -> None:
    """A batch holding files is multipart: field ``runs`` plus ``runs.<i>.inputs.<name>`` parts."""
    emu = VectorShiftEmulator(pipelines={PIPE: pipeline})
    seen: list[httpx.Request] = []
    df = pd.DataFrame({"doc": [b"alpha", b"beta!"], "topic": ["a", "b"]})
    out = run(df, emu, tmp_path, transport=recording(emu, seen)).frame
    assert out["size"].tolist() == [5.0, 5.0]
    (request,) = seen
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    body = request.content
    assert b'name="runs.0.inputs.doc"' in body
    assert b'name="runs.1.inputs.doc"' in body
    assert b"alpha" in body  # raw bytes in the part, not base64
    runs_field = body.split(b'name="runs"\r\n\r\n', 1)[1].split(b"\r\n--", 1)[0]
    runs = json.loads(runs_field)
    assert [r["inputs"] for r in runs] == [{"topic": "a"}, {"topic": "b"}]  # files only as parts


def test_files_as_json_sends_the_file_datatype_inline(tmp_path: Path) -> None:
    """``files_as="json"``: the documented ``{type: file, raw_bytes}`` inside the JSON body."""
    emu = VectorShiftEmulator(pipelines={PIPE: pipeline})
    seen: list[httpx.Request] = []
    df = pd.DataFrame({"doc": [b"alpha"]})
    out = run(df, emu, tmp_path, transport=recording(emu, seen), files_as="json").frame
    assert out["size"].tolist() == [5.0]
    body = json.loads(seen[0].content)
    assert body["runs"][0]["inputs"]["doc"] == {
        "type": "file",
        "raw_bytes": base64.b64encode(b"alpha").decode(),
    }


def test_file_outputs_land_as_files_with_the_right_bytes(tmp_path: Path) -> None:
    """Each file output is saved under the cache's files/ folder; the column holds its path."""
    emu = VectorShiftEmulator(pipelines={PIPE: pipeline})
    docs = [f"document {i}".encode() * (i + 1) for i in range(7)]
    out = run(pd.DataFrame({"doc": docs}), emu, tmp_path).frame
    for data, path in zip(docs, out["report"], strict=True):
        saved = Path(path)
        assert saved.is_relative_to(tmp_path / "cache" / "files")
        assert saved.read_bytes() == b"report:" + data
        assert saved.suffix == ".txt"
        assert saved.stem == hashlib.sha256(b"report:" + data).hexdigest()  # by content
    leftovers = list((tmp_path / "cache" / "files").rglob(".*"))
    assert leftovers == []  # written atomically: no temp file is left behind


def test_file_outputs_as_bytes_on_request_and_with_no_cache(tmp_path: Path) -> None:
    """``file_outputs="bytes"`` puts the bytes in the column; ``cache=None`` always does."""
    emu = VectorShiftEmulator(pipelines={PIPE: pipeline})
    df = pd.DataFrame({"doc": [b"one", b"two"]})
    out = run(df, emu, tmp_path, file_outputs="bytes").frame
    assert out["report"].tolist() == [b"report:one", b"report:two"]
    out = run(df, emu, tmp_path, cache=None).frame
    assert out["report"].tolist() == [b"report:one", b"report:two"]
    with pytest.raises(ConfigError, match="file_outputs"):
        run(df, emu, tmp_path, file_outputs="url")


def test_paths_are_read_only_under_file_root_with_symlinks_resolved(tmp_path: Path) -> None:
    """Path cells and file_inputs str cells are files under the root; anything else is refused."""
    root, outside = tmp_path / "docs", tmp_path / "secret"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "a.pdf").write_bytes(b"%PDF-a")
    (root / "sub" / "b.txt").write_bytes(b"bee")
    (outside / "key.pem").write_bytes(b"PRIVATE")
    (root / "link.pem").symlink_to(outside / "key.pem")
    (root / "big.bin").write_bytes(b"x" * 101)
    cells = [
        "a.pdf",
        str(root / "sub" / "b.txt"),
        "../secret/key.pem",
        "link.pem",
        str(outside / "key.pem"),
        "missing.pdf",
        "big.bin",
        "sub",
    ]
    df = pd.DataFrame({"doc": cells})
    emu = VectorShiftEmulator(pipelines={PIPE: pipeline})
    out = run(df, emu, tmp_path, file_root=root, file_inputs=["doc"], max_file_bytes=100).frame
    assert out["bulk_status"].tolist() == ["succeeded"] * 2 + ["skipped"] * 6
    assert out["size"].tolist()[:2] == [6.0, 3.0]
    assert out["name"].tolist()[:2] == ["a.pdf", "b.txt"]  # the base name is sent, not the path
    errors = out["bulk_error"].tolist()
    assert "outside file_root" in errors[2]
    assert "outside file_root" in errors[3]  # the symlink is followed, then refused
    assert "outside file_root" in errors[4]
    assert "cannot be opened" in errors[5]
    assert "max_file_bytes=100" in errors[6]
    assert "not a regular file" in errors[7]
    assert not any(b"PRIVATE" in bytes(k, "utf-8") for k in emu.charges())
    assert len(emu.charges()) == 2  # refused rows were never sent


def test_path_objects_need_file_root_and_other_vendors_take_no_files(tmp_path: Path) -> None:
    """Without file_root a Path cell is a row error; file options elsewhere are config errors."""
    (tmp_path / "a.txt").write_bytes(b"a")
    df = pd.DataFrame({"doc": [Path("a.txt"), b"inline"]})
    emu = VectorShiftEmulator(pipelines={PIPE: pipeline})
    out = run(df, emu, tmp_path).frame
    assert out["bulk_status"].tolist() == ["skipped", "succeeded"]
    assert "pass file_root=" in out.loc[0, "bulk_error"]
    with pytest.raises(ConfigError, match="no file_root"):
        run(df, emu, tmp_path, file_inputs=["doc"])
    with pytest.raises(ConfigError, match="not inputs of this run"):
        run(df, emu, tmp_path, file_root=tmp_path, file_inputs=["nope"])
    with pytest.raises(ConfigError, match="respell takes none"):
        frame_batch.run(df, "spell", provider="respell", api_key="k" * 20, file_root=tmp_path, progress=False)


def test_a_file_is_keyed_by_its_content(tmp_path: Path) -> None:
    """Same bytes under another path cost nothing again; a changed file runs again."""
    root = tmp_path / "docs"
    root.mkdir()
    for name, data in (("a.txt", b"same"), ("b.txt", b"other")):
        (root / name).write_bytes(data)
    emu = VectorShiftEmulator(pipelines={PIPE: pipeline})
    df = pd.DataFrame({"doc": [Path("a.txt"), Path("b.txt")]})
    run(df, emu, tmp_path, file_root=root)
    (root / "b.txt").write_bytes(b"changed")
    again = run(df, emu, tmp_path, file_root=root)
    assert again.summary.cached == 1
    assert again.summary.submitted == 1
    assert again.frame["size"].tolist() == [4.0, 7.0]
    assert emu.duplicates() == {}


def test_a_failing_file_row_fails_alone(tmp_path: Path) -> None:
    """A pipeline failing on one file fails that row; the others in its batch succeed."""
    emu = VectorShiftEmulator(pipelines={PIPE: pipeline})
    df = pd.DataFrame({"doc": [b"fine", b"poison", b"also fine"]})
    out = run(df, emu, tmp_path).frame
    assert out["bulk_status"].tolist() == ["succeeded", "failed", "succeeded"]
    assert "PDF parser choked" in out.loc[1, "bulk_error"]


def test_a_symlinked_root_is_resolved_before_comparing(tmp_path: Path) -> None:
    """file_root itself may be a symlink: files under its target are inside it."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.txt").write_bytes(b"abc")
    (tmp_path / "alias").symlink_to(real)
    emu = VectorShiftEmulator(pipelines={PIPE: pipeline})
    out = run(pd.DataFrame({"doc": [Path("a.txt")]}), emu, tmp_path, file_root=tmp_path / "alias").frame
    assert out["size"].tolist() == [3.0]


def test_background_runs_send_files_as_multipart_and_save_file_outputs(tmp_path: Path) -> None:
    """mode="background": a file input goes as an ``inputs.<name>`` part; its output is saved."""
    emu = VectorShiftEmulator(pipelines={PIPE: pipeline})
    seen: list[httpx.Request] = []
    df = pd.DataFrame({"doc": [b"first", b"second"]})
    out = run(df, emu, tmp_path, transport=recording(emu, seen), mode="background", poll_interval=0.02).frame
    starts = [r for r in seen if r.url.path.endswith("/run")]
    assert len(starts) == 2
    assert all(b'name="inputs.doc"' in r.content for r in starts)
    assert [Path(p).read_bytes() for p in out["report"]] == [b"report:first", b"report:second"]
