"""Bad input end to end: a frame of every awkward dtype goes through run() without a crash."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from conftest import KEY, SPELL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import frame_batch
from frame_batch import Respell, RetryPolicy
from frame_batch.testing import RespellEmulator

BAD = (math.inf, -math.inf, b"raw", "\udcff", decimal.Decimal("Infinity"), complex(1, 2), 2**70)

cells = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=False),
    st.text(max_size=20),
    st.booleans(),
    st.datetimes(timezones=st.none() | st.just(dt.UTC)),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.lists(st.integers(-5, 5) | st.floats(allow_nan=True, allow_infinity=False), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(0, 9) | st.none(), max_size=3),
    st.sampled_from([pd.NA, pd.NaT, np.nan, np.int64(7), np.float32(1.5), np.bool_(True)]),
)


def typed_columns(n: int) -> dict[str, object]:
    """Columns of pandas' own dtypes, every other value missing."""

    def alternate(value: object) -> list[object]:
        return [value if i % 2 == 0 else None for i in range(n)]

    return {
        "Int64": pd.array(alternate(1), dtype="Int64"),
        "boolean": pd.array(alternate(True), dtype="boolean"),
        "string": pd.array(alternate("a"), dtype="string"),
        "category": pd.Categorical(alternate("x")),
        "tz": pd.to_datetime(alternate("2024-01-02T03:04:05Z"), utc=True),
        "naive": pd.to_datetime(alternate("2024-01-02 03:04:05")),
        "float": [1.5 if i % 2 == 0 else np.nan for i in range(n)],
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    objects=st.lists(cells, min_size=1, max_size=12),
    bad_rows=st.sets(st.integers(0, 11), max_size=4),
    bad_value=st.sampled_from(BAD),
)
def test_every_dtype_gives_valid_requests_and_row_errors(
    tmp_path_factory: object, objects: list[object], bad_rows: set[int], bad_value: object
) -> None:
    """Good rows reach the vendor as valid JSON and succeed; bad rows are skipped with a reason."""
    n = len(objects)
    bad_rows = {i for i in bad_rows if i < n}
    mixed = [bad_value if i in bad_rows else value for i, value in enumerate(objects)]
    df = pd.DataFrame({"mixed": pd.Series(mixed, dtype=object), **typed_columns(n)})
    emu = RespellEmulator(spells={SPELL: lambda inputs: {"keys": sorted(inputs)}})
    cache = Path(str(tmp_path_factory.mktemp("bad")))  # type: ignore[attr-defined]
    out = frame_batch.run(
        df, SPELL, provider=Respell(api_key=KEY), transport=emu.transport(), cache=cache,
        progress=False, retry=RetryPolicy.testing(), poll_interval=0.01,
    )  # fmt: skip
    status = out.frame["bulk_status"]
    for i in range(n):
        if i in bad_rows:
            assert status.iloc[i] == "skipped"
            assert "'mixed'" in out.frame["bulk_error"].iloc[i]
            assert f"row {i}" in out.frame["bulk_error"].iloc[i]
        else:
            assert status.iloc[i] == "succeeded", out.frame["bulk_error"].iloc[i]
            assert out.frame["keys"].iloc[i] == sorted(df.columns)
    for sent in emu.charges():  # everything the vendor received was valid JSON
        assert set(orjson.loads(sent)) == set(df.columns)
