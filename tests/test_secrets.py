"""Invariant 5: API keys never reach the store, outputs, logs, reprs or error messages."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import httpx
import pandas as pd
import pytest
from conftest import SPELL, topics

import frame_batch
from frame_batch import Respell, RetryPolicy, Secret
from frame_batch.excel import write_xlsx
from frame_batch.testing import RespellEmulator

KEY = "sk-SENTINEL-4c1d-a9f2-7e3b-distinctive"


def everything_under(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.rglob("*") if p.is_file())


@pytest.mark.e2e
@pytest.mark.parametrize("auth", ["bearer", "x-api-key"])
def test_key_appears_nowhere_after_a_run(tmp_path: Path, caplog: pytest.LogCaptureFixture, auth: str) -> None:
    """Store, xlsx, parquet, DEBUG logs of every library: no trace of the key."""
    caplog.set_level(logging.DEBUG)
    emu = RespellEmulator(api_keys={KEY}, failure_rate=0.2)
    with emu.serve() as server:
        provider = Respell(api_key=KEY, base_url=server.url, auth=auth)  # type: ignore[arg-type]
        result = frame_batch.run(
            topics(30),
            SPELL,
            provider=provider,
            cache=tmp_path / "cache",
            progress=False,
            retry=RetryPolicy.testing(),
            poll_interval=0.01,
        )
    assert result.summary.succeeded > 0
    write_xlsx(result.frame, tmp_path / "out.xlsx")
    result.frame.to_parquet(tmp_path / "out.parquet")
    result.frame.to_csv(tmp_path / "out.csv")
    assert KEY.encode() not in everything_under(tmp_path)
    assert KEY not in caplog.text
    assert "HTTP Request" in caplog.text  # the logs were really captured
    assert KEY not in repr(provider) + str(result.summary) + repr(result)


def test_wrong_key_error_does_not_show_the_key(run_with: object, tmp_path: Path) -> None:
    """A 401 raises AuthenticationError whose str and repr hold no key, and says what to do."""
    emu = RespellEmulator(api_keys={"the-right-one"})
    with pytest.raises(frame_batch.errors.AuthenticationError) as info:
        frame_batch.run(
            topics(3),
            SPELL,
            provider=Respell(api_key=KEY),
            transport=emu.transport(),
            cache=tmp_path / "c",
            progress=False,
        )
    err = info.value
    assert err.status_code == 401
    assert "RESPELL_API_KEY" in str(err)
    for text in (str(err), repr(err), err.body, repr(err.args)):
        assert KEY not in text


def test_a_server_echoing_the_key_is_redacted(tmp_path: Path) -> None:
    """Even when the vendor echoes the key in an error body, the raised error shows '***'."""

    def echo_key(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": f"bad request from {request.headers['authorization']}"})

    with pytest.raises(frame_batch.errors.RequestRejected) as info:
        frame_batch.run(
            topics(2),
            SPELL,
            provider=Respell(api_key=KEY),
            transport=httpx.MockTransport(echo_key),
            cache=tmp_path / "c",
            progress=False,
        )
    assert KEY not in str(info.value)
    assert KEY not in info.value.body
    assert "Bearer ***" in str(info.value)


def test_secret_wrapper_hides_itself() -> None:
    """Secret's repr/str are masked and it refuses to be pickled (to a worker, a cache...)."""
    secret = Secret(KEY)
    assert KEY not in repr(secret)
    assert KEY not in str(secret)
    assert KEY not in f"{secret}"
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(secret)
    assert secret.reveal() == KEY
    assert len(secret.fingerprint()) == 8
    assert secret.fingerprint() not in KEY


def test_missing_key_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No argument and no environment variable: ConfigError naming RESPELL_API_KEY, nothing sent."""
    monkeypatch.delenv("RESPELL_API_KEY", raising=False)
    emu = RespellEmulator()
    with pytest.raises(frame_batch.errors.ConfigError, match="RESPELL_API_KEY"):
        frame_batch.run(
            pd.DataFrame({"a": ["x"]}), SPELL, provider="respell", transport=emu.transport(), cache=tmp_path
        )
    assert sum(emu.requests().values()) == 0


def test_key_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """RESPELL_API_KEY is used when no api_key= is given."""
    monkeypatch.setenv("RESPELL_API_KEY", KEY)
    emu = RespellEmulator(api_keys={KEY})
    out = frame_batch.run(
        topics(2), SPELL, provider="respell", transport=emu.transport(), cache=tmp_path, progress=False
    ).frame
    assert out["bulk_status"].eq("succeeded").all()
