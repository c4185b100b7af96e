"""Path routing shared by the emulators: ``/pipeline/{id}/run`` style templates -> routes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from frame_batch.testing._faults import RequestOp


@dataclass(frozen=True)
class Route:
    name: str  # counted in the emulator's requests()
    method: str
    pattern: re.Pattern[str]
    op: RequestOp  # which faults apply: create, read or cancel
    action: str  # the handler to call (several spellings of a path may share one)


def route(name: str, method: str, path: str, op: RequestOp, action: str | None = None) -> Route:
    """``{name}`` in ``path`` matches one path segment; the rest of ``path`` is a regex."""
    pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
    return Route(name, method, re.compile(pattern), op, action or name)


def find_route(request: httpx.Request, routes: Sequence[Route]) -> tuple[Route, dict[str, str]] | list[str]:
    """The route and its path parameters, or the methods the path allows (empty: no such path)."""
    path = request.url.path.rstrip("/")
    allowed: list[str] = []
    for candidate in routes:
        found = candidate.pattern.fullmatch(path)
        if found is None:
            continue
        if candidate.method == request.method:
            return candidate, found.groupdict()
        allowed.append(candidate.method)
    return allowed
