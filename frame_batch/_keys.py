"""Row keys and run fingerprints: content hashes, stable across processes and machines.

A row key names *what is being paid for*: the provider, the workflow (id and version) and
the row's canonical input JSON. It never depends on the row's position or index label, so
reordering, filtering or appending rows keeps every cached result, editing one cell re-runs
one row, and identical rows share one key (submitted once, fanned out on the way back).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import orjson

KEY_BYTES = 16  # 128-bit keys: collision odds are nil at any table size we will meet


def scope_of(provider: str, workflow: str, version: str = "") -> bytes:
    """The part of every key shared by one provider + workflow (+ version)."""
    return orjson.dumps([provider, workflow, version]) + b"\n"


def row_key(scope: bytes, payload: bytes) -> str:
    """The key of one canonical input payload (``orjson`` with sorted keys) in ``scope``."""
    return hashlib.blake2b(scope + payload, digest_size=KEY_BYTES).hexdigest()


def row_keys(scope: bytes, payloads: Iterable[bytes | None]) -> list[str | None]:
    """``row_key`` of each payload (None stays None), the same keys, ~0.16 µs a row cheaper:
    the scope is hashed once and the hasher copied, with no concatenation per row."""
    copy = hashlib.blake2b(scope, digest_size=KEY_BYTES).copy
    keys: list[str | None] = []
    for payload in payloads:
        if payload is None:
            keys.append(None)
            continue
        hasher = copy()
        hasher.update(payload)
        keys.append(hasher.hexdigest())
    return keys


def fingerprint(*parts: object) -> str:
    """A short stable hash of the run's options (never of secrets), for the journal."""
    return hashlib.blake2b(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS), digest_size=8).hexdigest()
