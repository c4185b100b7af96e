"""Server-sent events: bytes in, events out. No I/O here (h11 style).

The rules kept (WHATWG "server-sent events", the parts vendors use):
- Lines end in ``\\r\\n``, ``\\n`` or ``\\r``; a blank line ends an event.
- ``field: value`` with one optional space after the colon; ``data`` lines of one event are
  joined with ``\\n``; a line starting with ``:`` is a comment (keep-alive) and is ignored.
- An event with no ``data`` is not dispatched; a half-received event at the end of the
  stream is dropped (the connection broke before the blank line that completes it).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    event: str
    data: str
    id: str | None = None


class Decoder:
    """Feed byte chunks, get complete events; keeps the partial line between chunks."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        buffer = self._buffer + chunk
        events: list[Event] = []
        start = 0
        while True:
            cut = _line_end(buffer, start)
            # A '\r' as the last byte may be the first half of '\r\n': wait for more bytes.
            if cut < 0 or (buffer[cut] == 0x0D and cut == len(buffer) - 1):
                break
            event = self._line(buffer[start:cut].decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
            start = cut + (2 if buffer[cut] == 0x0D and buffer[cut + 1 : cut + 2] == b"\n" else 1)
        self._buffer = buffer[start:]
        return events

    def end(self) -> list[Event]:
        """The stream ended: a trailing '\r' was a complete line end after all."""
        return self.feed(b"\n") if self._buffer.endswith(b"\r") else []

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> Event | None:
        if not self._data:
            self._event = ""
            return None
        event = Event(self._event or "message", "\n".join(self._data), self._id)
        self._event, self._data = "", []
        return event


def _line_end(buffer: bytes, start: int) -> int:
    """Index of the first '\n' or '\r' at or after ``start``; -1 when there is none."""
    ends = [i for i in (buffer.find(b"\n", start), buffer.find(b"\r", start)) if i >= 0]
    return min(ends) if ends else -1


async def aiter_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[Event]:
    decoder = Decoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.end():
        yield event
