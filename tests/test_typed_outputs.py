"""Output schemas become typed columns; SSE decoding; create pacing; provider options."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pytest

import frame_batch
from frame_batch._join import join_results
from frame_batch._schema import parse_output_schema
from frame_batch._sse import Decoder
from frame_batch._types import OutputShape
from frame_batch.store.columns import output_columns

SCHEMA = {
    "type": "object",
    "properties": {
        "employees": {"type": "integer"},
        "revenue": {"type": "number"},
        "public": {"type": "boolean"},
        "founded": {"type": "string", "format": "date"},
        "updated": {"type": "string", "format": "date-time"},
        "hq": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "integer"}}},
        "ceo": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "rank": {"type": ["integer", "null"]},
    },
}


def _table(rows: list[tuple[str, dict[str, Any] | None]]) -> pa.Table:
    return pa.table(
        {
            "key": [k for k, _ in rows],
            "status": ["succeeded" if o is not None else "failed" for _, o in rows],
            "error": [None if o is not None else "boom" for _, o in rows],
            "run_id": [f"r{i}" for i in range(len(rows))],
            **output_columns([o for _, o in rows]),  # the store's layout (store/columns.py)
        }
    )


def test_schema_types_follow_json_schema_including_nested_and_optional() -> None:
    """Each declared field maps to a column type; nested objects flatten with a dot."""
    types = parse_output_schema(SCHEMA).types
    assert types == {
        "employees": "integer",
        "revenue": "number",
        "public": "boolean",
        "founded": "date",
        "updated": "datetime",
        "hq.city": "string",
        "hq.zip": "integer",
        "ceo": "string",
        "rank": "integer",
    }


def test_text_and_missing_schemas_give_one_output_column() -> None:
    """A description or no schema means a text answer in the ``output`` column."""
    assert parse_output_schema("a one-line summary").spec == {
        "type": "text",
        "description": "a one-line summary",
    }
    assert parse_output_schema(None).types == {"output": "string"}
    wrapped = parse_output_schema({"type": "json", "json_schema": SCHEMA})
    assert wrapped.spec == {"type": "json", "json_schema": SCHEMA}


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"type": "array"}, "describe an object"),
        ({"type": "object", "properties": {}}, "at least one field"),
        ("  ", "empty string"),
        (42, "JSON-schema dict"),
        (int, "not a pydantic model"),
    ],
)
def test_bad_schemas_say_what_to_pass(bad: object, match: str) -> None:
    """A schema that cannot work is refused before anything is sent."""
    with pytest.raises(frame_batch.errors.ConfigError, match=match):
        parse_output_schema(bad)


def test_pydantic_model_schema_is_inlined_and_typed() -> None:
    """A pydantic model class works as output_schema; nested models are inlined, not $ref."""
    pydantic = pytest.importorskip("pydantic")

    class Address(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        city: str
        zip_code: int

    class Company(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        name: str
        founded: dt.date
        headcount: int | None = None
        address: Address

    parsed = parse_output_schema(Company)
    assert "$ref" not in orjson.dumps(parsed.spec).decode()
    assert parsed.types["founded"] == "date"
    assert parsed.types["headcount"] == "integer"
    assert parsed.types["address.zip_code"] == "integer"


def test_join_gives_declared_dtypes_and_keeps_ints_with_missing_rows() -> None:
    """Integers stay integers (nullable) even when a row failed; dates become datetimes."""
    df = pd.DataFrame({"q": ["a", "b", "c"]})
    out = {
        "employees": 12,
        "revenue": 1.5,
        "public": True,
        "founded": "2001-02-03",
        "updated": "2024-01-02T03:04:05Z",
        "hq": {"city": "Oslo", "zip": 150},
        "ceo": None,
        "rank": 3,
    }
    table = _table([("k1", out), ("k2", {**out, "employees": 7, "ceo": "Ada"}), ("k3", None)])
    frame, status = join_results(
        df, ["k1", "k2", "k3"], {}, table, OutputShape(parse_output_schema(SCHEMA).types)
    )
    assert str(frame["employees"].dtype) == "Int64"
    assert frame["employees"].tolist()[:2] == [12, 7]
    assert frame["employees"].isna().iloc[2]
    assert frame["revenue"].dtype == np.float64
    assert str(frame["public"].dtype) == "boolean"
    assert frame["founded"].iloc[0] == pd.Timestamp("2001-02-03")
    assert frame["updated"].iloc[0] == pd.Timestamp("2024-01-02T03:04:05Z")
    assert str(frame["hq.zip"].dtype) == "Int64"
    assert list(status) == ["succeeded", "succeeded", "failed"]


def test_values_that_disagree_with_the_schema_are_kept_and_warned_about() -> None:
    """A value the schema did not promise is never coerced to NaN silently."""
    df = pd.DataFrame({"q": ["a", "b"]})
    table = _table([("k1", {"employees": "about 40"}), ("k2", {"employees": 3})])
    with pytest.warns(UserWarning, match="employees"):
        frame, _ = join_results(df, ["k1", "k2"], {}, table, OutputShape({"employees": "integer"}))
    assert frame["employees"].tolist() == ["about 40", 3]


def test_hidden_outputs_are_dropped_from_the_frame_only() -> None:
    """``hidden`` prefixes (basis unless asked for) do not become columns."""
    df = pd.DataFrame({"q": ["a"]})
    table = _table([("k1", {"name": "x", "basis": {"name": {"reasoning": "r", "citations": ["u"]}}})])
    shown, _ = join_results(df, ["k1"], {}, table, OutputShape(hidden=("basis",)))
    assert "basis.name.reasoning" not in shown.columns
    assert "name" in shown.columns
    full, _ = join_results(df, ["k1"], {}, table, OutputShape())
    assert full["basis.name.reasoning"].iloc[0] == "r"
    assert full["basis.name.citations"].iloc[0] == ["u"]


# -- server-sent events --------------------------------------------------------------------
RAW = (
    b'event: task_run.state\ndata: {"a":1}\n\n'
    b": keep-alive comment\r\n\r\n"
    b"event: x\r\ndata: line 1\r\ndata:line 2\r\nid: 7\r\n\r\n"
    b"data: no event name\r\r"
    b"event: half\ndata: never finished"
)


def _events(chunks: list[bytes]) -> list[tuple[str, str, str | None]]:
    decoder = Decoder()
    events = [e for chunk in chunks for e in decoder.feed(chunk)] + decoder.end()
    return [(e.event, e.data, e.id) for e in events]


EXPECTED = [
    ("task_run.state", '{"a":1}', None),
    ("x", "line 1\nline 2", "7"),
    ("message", "no event name", "7"),
]


def test_sse_decoder_handles_every_line_ending_comments_and_multiline_data() -> None:
    """Frames split on \\n, \\r\\n and \\r; comments skipped; a cut-off last event is dropped."""
    assert _events([RAW]) == EXPECTED


def test_sse_decoder_gives_the_same_events_whatever_the_chunking() -> None:
    """Byte-at-a-time delivery (a '\\r\\n' split across chunks) decodes identically."""
    assert _events([RAW[i : i + 1] for i in range(len(RAW))]) == EXPECTED
    assert _events([RAW[:37], RAW[37:38], RAW[38:]]) == EXPECTED


# -- pacing and options --------------------------------------------------------------------
def test_unknown_provider_option_names_the_ones_accepted() -> None:
    """A typo in a provider option is a ConfigError listing the provider's options."""
    df = pd.DataFrame({"q": ["a"]})
    with pytest.raises(frame_batch.errors.ConfigError, match="output_schema") as info:
        frame_batch.plan(df, "task", provider="parallel", output_shema={"type": "object"}, cache=None)
    assert "output_shema" in str(info.value)


def test_batch_size_over_the_vendor_cap_is_refused() -> None:
    """Parallel takes at most 1,000 runs per request: a larger batch_size is a clear error."""
    df = pd.DataFrame({"q": ["a"]})
    with pytest.raises(frame_batch.errors.ConfigError, match="1000"):
        frame_batch.plan(df, "task", provider="parallel", batch_size=5000, cache=None)


def test_rows_over_the_character_limit_are_skipped_before_sending() -> None:
    """Spec + input over 25,000 characters is a row error in the plan, not a failed batch."""
    df = pd.DataFrame({"q": ["short", "é" * 24_990, "x" * 30_000]})
    report = frame_batch.plan(df, "task", provider="parallel", output_schema="a summary", cache=None)
    assert report.skipped == 2
    assert report.to_submit == 1
    assert "characters" in report.errors[0]
