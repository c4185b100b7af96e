"""Webhook verification: Standard Webhooks v1 as Parallel documents it (raw UTF-8 secret)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import string
import threading
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from frame_batch import Secret
from frame_batch.errors import ConfigError, InputError, WebhookError, WebhookReplayed
from frame_batch.webhooks import ReplayGuard, sign, verify

SECRET = "pw-SENTINEL-webhook-secret-91c4e7"
OTHER_SECRET = "pw-other-secret-0b2d"
WID = "whevent_0123456789abcdef"
NOW = 1_700_000_000
BODY = orjson.dumps(
    {
        "timestamp": "2025-08-12T10:00:00Z",
        "type": "task_run.status",
        "data": {"run_id": "trun_1", "status": "completed"},
    }
)


def reference_signature(secret: bytes, webhook_id: str, timestamp: str, body: bytes) -> str:
    """The header value computed straight from the documented scheme, not through ``sign``."""
    mac = hmac.new(secret, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def delivery(
    *,
    body: bytes = BODY,
    secret: str = SECRET,
    webhook_id: str = WID,
    timestamp: int | str = NOW,
    signature: str | None = None,
) -> dict[str, str]:
    """Headers for a delivery signed with ``secret`` (or carrying ``signature`` as given)."""
    ts = str(timestamp)
    if signature is None:
        signature = reference_signature(secret.encode(), webhook_id, ts, body)
    return {"webhook-id": webhook_id, "webhook-timestamp": ts, "webhook-signature": signature}


def check(headers: Any, body: bytes | str = BODY, secret: Any = SECRET, **kw: Any) -> dict[str, Any]:
    kw.setdefault("now", float(NOW))
    return verify(headers, body, secret, **kw)


# --- the basic vectors -----------------------------------------------------------------------


def test_valid_delivery_returns_the_parsed_body() -> None:
    """A delivery signed per the documented scheme is accepted and its JSON returned."""
    assert check(delivery()) == orjson.loads(BODY)


def test_sign_agrees_with_the_reference_computation() -> None:
    """``sign`` produces the same v1 value as an HMAC computed by hand."""
    assert sign(SECRET, WID, NOW, BODY) == reference_signature(SECRET.encode(), WID, str(NOW), BODY)


def test_tampered_body_is_rejected() -> None:
    """One changed byte in the body fails the signature check."""
    tampered = BODY.replace(b"completed", b"completeD")
    with pytest.raises(WebhookError, match="webhook-signature: the v1 entry does not match"):
        check(delivery(), tampered)


def test_wrong_secret_is_rejected() -> None:
    """A delivery signed with another secret is refused."""
    with pytest.raises(WebhookError, match="check the secret"):
        check(delivery(secret=OTHER_SECRET))


def test_tampered_id_or_timestamp_is_rejected() -> None:
    """The id and timestamp are signed too: changing either breaks the signature."""
    good = delivery()
    for name, value in (("webhook-id", "whevent_other"), ("webhook-timestamp", str(NOW - 1))):
        with pytest.raises(WebhookError, match="does not match"):
            check({**good, name: value})


def test_secret_is_raw_utf8_not_base64_decoded() -> None:
    """A ``whsec_``-looking secret is used as its raw bytes, with no prefix stripping or decoding."""
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef").decode()
    assert check(delivery(secret=secret), secret=secret) == orjson.loads(BODY)
    decoded = base64.b64decode(secret.removeprefix("whsec_"))
    standard = reference_signature(decoded, WID, str(NOW), BODY)
    with pytest.raises(WebhookError, match="does not match"):
        check(delivery(signature=standard), secret=secret)


@pytest.mark.parametrize(
    ("offset", "error"),
    [
        (-301, "webhook-timestamp is 301 s old \\(tolerance 300 s\\)"),
        (-300, None),
        (0, None),
        (300, None),
        (301, "webhook-timestamp is 301 s in the future \\(tolerance 300 s\\)"),
    ],
)
def test_timestamp_tolerance_boundaries(offset: int, error: str | None) -> None:
    """Just outside the tolerance (past or future) fails; just inside passes."""
    headers = delivery(timestamp=NOW + offset)
    if error is None:
        assert check(headers)["type"] == "task_run.status"
    else:
        with pytest.raises(WebhookError, match=error):
            check(headers)


def test_stale_message_says_what_to_check() -> None:
    """The stale-timestamp message names the age, the tolerance and the likely causes."""
    with pytest.raises(WebhookError) as info:
        check(delivery(timestamp=NOW - 412))
    assert str(info.value).startswith(
        "webhook-timestamp is 412 s old (tolerance 300 s): the delivery is stale or the clocks differ"
    )


def test_custom_tolerance_and_default_clock() -> None:
    """``tolerance`` is honoured, and without ``now`` the real clock is used."""
    with pytest.raises(WebhookError, match="11 s old \\(tolerance 10 s\\)"):
        check(delivery(timestamp=NOW - 11), tolerance=10)
    with pytest.raises(WebhookError, match="s old"):  # NOW is in 2023: stale against time.time()
        verify(delivery(), BODY, SECRET)


def test_second_of_two_signatures_valid_is_accepted() -> None:
    """With two v1 entries, a match on the second one is enough."""
    wrong = reference_signature(OTHER_SECRET.encode(), WID, str(NOW), BODY)
    right = reference_signature(SECRET.encode(), WID, str(NOW), BODY)
    assert check(delivery(signature=f"{wrong} {right}"))["type"] == "task_run.status"


def test_rotation_with_a_list_of_secrets() -> None:
    """Any secret of a sequence may match; none matching fails."""
    headers = delivery(secret=OTHER_SECRET)
    assert check(headers, secret=[SECRET, OTHER_SECRET])["type"] == "task_run.status"
    assert check(headers, secret=(b"old", OTHER_SECRET.encode()))["type"] == "task_run.status"
    with pytest.raises(WebhookError, match="any of the 2 secrets"):
        check(headers, secret=[SECRET, "yet-another"])


def test_secret_forms_bytes_and_secret_object() -> None:
    """The secret may be bytes or a ``frame_batch.Secret``."""
    assert check(delivery(), secret=SECRET.encode())["type"] == "task_run.status"
    assert check(delivery(), secret=Secret(SECRET))["type"] == "task_run.status"
    assert check(delivery(), secret=[Secret(OTHER_SECRET), Secret(SECRET)])["type"] == "task_run.status"


# --- replay ----------------------------------------------------------------------------------


def test_replayed_id_raises_webhook_replayed() -> None:
    """A second delivery of an accepted id raises WebhookReplayed, a WebhookError."""
    guard = ReplayGuard()
    assert check(delivery(), seen=guard)["type"] == "task_run.status"
    with pytest.raises(WebhookReplayed, match="acknowledge it with 2xx") as info:
        check(delivery(), seen=guard, now=NOW + 5.0)
    assert isinstance(info.value, WebhookError)
    assert check(delivery(webhook_id="whevent_next"), seen=guard)["type"] == "task_run.status"


def test_rejected_delivery_does_not_burn_the_id() -> None:
    """An id is recorded only when verify succeeds: a forged first try does not block the real one."""
    guard = ReplayGuard()
    with pytest.raises(WebhookError):
        check(delivery(secret=OTHER_SECRET), seen=guard)
    with pytest.raises(WebhookError, match="not valid JSON"):
        check(delivery(body=b"{oops"), b"{oops", seen=guard)
    assert len(guard) == 0
    assert check(delivery(), seen=guard)["type"] == "task_run.status"


def test_replay_guard_forgets_after_ttl_and_discard() -> None:
    """Ids expire (and leave memory) after ``ttl`` seconds; ``discard`` forgets one at once."""
    guard = ReplayGuard(ttl=10)
    assert guard.check_and_add("a", now=100.0)
    assert guard.check_and_add("b", now=100.0)
    assert not guard.check_and_add("a", now=110.0)
    assert guard.check_and_add("a", now=121.0)
    assert len(guard) == 1  # expired "b" was dropped from memory
    guard.discard("a")
    assert guard.check_and_add("a", now=122.0)


def test_replay_guard_memory_is_bounded() -> None:
    """Past ``max_ids`` the oldest id is evicted."""
    guard = ReplayGuard(max_ids=2)
    for i, wid in enumerate(["a", "b", "c"]):
        assert guard.check_and_add(wid, now=float(i))
    assert len(guard) == 2
    assert guard.check_and_add("a", now=3.0)  # evicted, so new again
    assert not guard.check_and_add("c", now=3.0)


def test_replay_guard_is_thread_safe() -> None:
    """Sixteen threads adding the same 200 ids: each id is won exactly once."""
    guard = ReplayGuard()
    wins: list[bool] = []
    barrier = threading.Barrier(16)

    def add() -> None:
        barrier.wait()
        wins.extend(guard.check_and_add(f"id{i}", now=1.0) for i in range(200))

    threads = [threading.Thread(target=add) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(wins) == 200
    assert len(guard) == 200


def test_replay_guard_must_outlive_the_replay_window() -> None:
    """A guard whose ttl is shorter than 2 × tolerance is refused, since replays could slip through."""
    with pytest.raises(ConfigError, match="use ttl >= 600"):
        check(delivery(), seen=ReplayGuard(ttl=300))
    assert check(delivery(), seen=ReplayGuard(ttl=20), tolerance=10)["type"] == "task_run.status"


# --- malformed input -------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header(missing: str) -> None:
    """Each of the three headers is required, and the message names the missing one."""
    headers = {k: v for k, v in delivery().items() if k != missing}
    with pytest.raises(WebhookError, match=f"missing header\\(s\\) {missing}:"):
        check(headers)


def test_empty_header_counts_as_missing() -> None:
    """A blank header value is as good as absent."""
    with pytest.raises(WebhookError, match="missing header\\(s\\) webhook-signature"):
        check({**delivery(), "webhook-signature": "  "})


def _good_b64() -> str:
    return reference_signature(SECRET.encode(), WID, str(NOW), BODY).removeprefix("v1,")


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param("v1" + "x" * 44, id="no-comma"),
        pytest.param("v1,not*base64!", id="bad-base64"),
        pytest.param("v1," + _good_b64().rstrip("="), id="unpadded"),
        pytest.param("v1," + _good_b64().replace("=", "") + "====", id="over-padded"),
        pytest.param("v1,YWJj", id="too-short"),
        pytest.param("v2," + _good_b64(), id="v2-only"),
        pytest.param("V1," + _good_b64(), id="wrong-case-version"),
        pytest.param(_good_b64(), id="bare-base64"),
    ],
)
def test_malformed_signature_entries(signature: str) -> None:
    """Entries without ``v1,``, or not padded standard base64 of 32 bytes, are never accepted."""
    with pytest.raises(WebhookError, match="no usable 'v1,<base64>' entry"):
        check(delivery(signature=signature))


def test_malformed_entries_are_skipped_when_a_good_one_follows() -> None:
    """A v2 entry or junk beside a valid v1 entry does not spoil it."""
    header = f"v2,{_good_b64()} junk v1,!! v1,{_good_b64()}"
    assert check(delivery(signature=header))["type"] == "task_run.status"


@pytest.mark.parametrize(
    "timestamp",
    ["1700000000.5", "abc", "-1700000000", "+1700000000", "1.7e9", "1_700_000_000", "١٧٠٠٠٠٠٠٠٠"],
)
def test_non_integer_timestamp(timestamp: str) -> None:
    """Only plain ASCII digits are a timestamp, even when the signature covers the odd value."""
    with pytest.raises(WebhookError, match="is not an integer of Unix seconds"):
        check(delivery(timestamp=timestamp))


def test_non_json_or_non_object_body() -> None:
    """A correctly signed body that is not a JSON object is refused after verification."""
    with pytest.raises(WebhookError, match="not valid JSON"):
        check(delivery(body=b"not json"), b"not json")
    with pytest.raises(WebhookError, match="JSON list, not an object"):
        check(delivery(body=b"[1, 2]"), b"[1, 2]")


def test_signature_is_checked_before_parsing() -> None:
    """An unsigned non-JSON body fails on the signature, never reaching the parser."""
    with pytest.raises(WebhookError, match="webhook-signature"):
        check(delivery(), b"not json")


def test_body_given_as_str() -> None:
    """A str body is encoded as UTF-8 before verification."""
    text = '{"type":"task_run.status","data":{"note":"café ☕"}}'
    headers = delivery(body=text.encode("utf-8"))
    assert check(headers, text)["data"]["note"] == "café ☕"


def test_header_lookup_is_case_insensitive() -> None:
    """Mixed-case dict keys, httpx.Headers and ASGI-style byte pairs all work."""
    good = delivery()
    mixed = {"Webhook-Id": good["webhook-id"], "WEBHOOK-TIMESTAMP": good["webhook-timestamp"]}
    mixed["Webhook-Signature"] = good["webhook-signature"]
    assert check(mixed)["type"] == "task_run.status"
    assert check(httpx.Headers(mixed))["type"] == "task_run.status"
    assert check([(k.upper().encode(), v.encode()) for k, v in good.items()])["type"] == "task_run.status"


def test_repeated_headers() -> None:
    """Repeated signature headers are pooled; a repeated id with two values is refused."""
    wrong = reference_signature(OTHER_SECRET.encode(), WID, str(NOW), BODY)
    good = delivery()
    pairs = [*good.items(), ("webhook-signature", wrong)]
    pairs.insert(0, ("Webhook-Signature", wrong))
    assert check(httpx.Headers(pairs))["type"] == "task_run.status"
    assert check(pairs)["type"] == "task_run.status"
    with pytest.raises(WebhookError, match="webhook-id is repeated with different values"):
        check([*good.items(), ("webhook-id", "whevent_other")])


# --- configuration and secrecy ---------------------------------------------------------------


@pytest.mark.parametrize("tolerance", [-1.0, math.nan])
def test_bad_tolerance_is_a_config_error(tolerance: float) -> None:
    """Negative or NaN tolerance is a ConfigError."""
    with pytest.raises(ConfigError, match="tolerance must be >= 0"):
        check(delivery(), tolerance=tolerance)


@pytest.mark.parametrize("secret", ["", b"", [], [SECRET, ""], Secret("")])
def test_empty_secret_is_a_config_error(secret: Any) -> None:
    """An empty secret, or an empty list of them, is a ConfigError (also from ``sign``)."""
    with pytest.raises(ConfigError, match="secret"):
        check(delivery(), secret=secret)
    if not isinstance(secret, list):
        with pytest.raises(ConfigError, match="secret"):
            sign(secret, WID, NOW, BODY)


def test_bad_replay_guard_options() -> None:
    """ReplayGuard refuses a negative or NaN ttl and a non-positive max_ids."""
    for kwargs in ({"ttl": -1.0}, {"ttl": math.nan}, {"max_ids": 0}, {"max_ids": True}):
        with pytest.raises(ConfigError):
            ReplayGuard(**kwargs)


def test_webhook_error_is_an_input_error() -> None:
    """WebhookError sits under InputError, WebhookReplayed under WebhookError."""
    assert issubclass(WebhookError, InputError)
    assert issubclass(WebhookReplayed, WebhookError)


def test_secret_and_expected_signature_never_in_messages() -> None:
    """No error message holds the secret or the signature verify expected."""
    expected = _good_b64()
    guard = ReplayGuard()
    check(delivery(), seen=guard)
    cases: list[tuple[Any, bytes, Any, dict[str, Any]]] = [
        (delivery(), BODY + b" ", SECRET, {}),
        (delivery(secret=OTHER_SECRET), BODY, [SECRET, SECRET.encode()], {}),
        (delivery(timestamp=NOW - 9999), BODY, SECRET, {}),
        (delivery(timestamp=NOW + 9999), BODY, SECRET, {}),
        (delivery(timestamp="x"), BODY, SECRET, {}),
        (delivery(signature="v2,abc"), BODY, SECRET, {}),
        ({}, BODY, SECRET, {}),
        (delivery(), BODY, SECRET, {"seen": guard}),
        (delivery(), BODY, SECRET, {"tolerance": -1}),
        (delivery(), BODY, [SECRET, 5], {}),
    ]
    raised = 0
    for headers, body, secret, kw in cases:
        try:
            check(headers, body, secret, **kw)
        except InputError as exc:
            raised += 1
            text = f"{exc} {exc!r} {exc.args!r}"
            assert SECRET not in text
            assert expected not in text
            assert expected.rstrip("=") not in text
    assert raised == len(cases)


# --- properties ------------------------------------------------------------------------------

_ids = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation, min_size=1, max_size=60)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_events = st.dictionaries(st.text(max_size=10), _json, max_size=5)
_secrets = st.text(min_size=1, max_size=40) | st.binary(min_size=1, max_size=40)


@given(event=_events, webhook_id=_ids, secret=_secrets, skew=st.integers(-300, 300))
def test_sign_then_verify_round_trips(event: dict[str, Any], webhook_id: str, secret: Any, skew: int) -> None:
    """verify(sign(...)) returns the event for any JSON object, id, secret and in-tolerance skew."""
    body = orjson.dumps(event)
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(NOW + skew),
        "webhook-signature": sign(secret, webhook_id, NOW + skew, body),
    }
    assert check(headers, body, secret) == event


@given(body=st.binary(min_size=1, max_size=200), data=st.data())
def test_flipping_any_body_byte_fails(body: bytes, data: st.DataObject) -> None:
    """For any body, flipping any bits of any one byte fails the signature check."""
    headers = delivery(body=body, signature=sign(SECRET, WID, NOW, body))
    index = data.draw(st.integers(0, len(body) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    flipped = bytearray(body)
    flipped[index] ^= mask
    with pytest.raises(WebhookError, match="does not match"):
        check(headers, bytes(flipped))
