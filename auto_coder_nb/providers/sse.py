"""Server-sent events, read tolerantly: the `data` of each event, as bytes.

Real servers differ from the spec in small ways; this accepts all of these: CRLF or CR line ends,
`data:` with or without the space, comment lines (`: keep-alive`), `event:`/`id:`/`retry:` lines,
events split anywhere across network reads, a last event with no blank line after it, and a body
that is not SSE at all (a JSON error with no `data:` prefix), which comes out as one event.

The parser is fed network reads and returns whole events; it does no I/O, so the caller's loop
stays the only async layer (this is the hot path of every streamed answer). Its work is linear in
the stream's size: a line split over many reads is joined once, when its end arrives. One event
may hold at most `max_event_bytes`; beyond that `EventTooLarge` is raised, so a hostile or broken
server cannot make the client hold an unbounded line in memory.
"""

from __future__ import annotations

MAX_EVENT_BYTES = 16 * 1024 * 1024  # a streamed delta is a few bytes; a whole answer in one event stays far below

_IGNORED_FIELDS = (b"event", b"id", b"retry")


class EventTooLarge(ValueError):
    """One event (or one line) exceeded the parser's `max_event_bytes`."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"one event of the stream is larger than {limit / 1048576:g} MiB")
        self.limit = limit


def _field_value(line: bytes) -> bytes | None:
    """The data a line adds to the current event, or None for lines that carry none."""
    if line.startswith(b"data:"):
        value = line[5:]
        return value[1:] if value[:1] == b" " else value
    if line.startswith(b":") or line.partition(b":")[0] in _IGNORED_FIELDS:
        return None
    return line  # not an SSE field: a raw body line, kept so that a bare JSON body still parses


class SSEParser:
    """`feed(read)` returns the data of the events that read completed; `close()` those left at the end."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._pending: list[bytes] = []  # the pieces of an incomplete last line, joined once it ends
        self._pending_size = 0
        self._data: list[bytes] = []  # data lines of the event being read
        self._data_size = 0
        self._skip_lf = False  # the previous read ended in "\r": a "\n" starting this one belongs to it

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        if b"\r" in chunk:
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            self._skip_lf = False
        if b"\n" not in chunk:  # the middle of a long line: keep the piece, join nothing yet
            if chunk:
                self._pending.append(chunk)
                self._pending_size += len(chunk)
                self._check_size()
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending.clear()
        lines = chunk.split(b"\n")
        last = lines.pop()
        self._pending_size = len(last)
        if last:
            self._pending.append(last)
        events: list[bytes] = []
        data = self._data
        size = self._data_size
        for line in lines:
            if line:
                if line.startswith(b"data: "):  # the common case, kept short
                    data.append(line[6:])
                    size += len(line)
                else:
                    value = _field_value(line)
                    if value is not None:
                        data.append(value)
                        size += len(value)
            elif data:
                events.append(data[0] if len(data) == 1 else b"\n".join(data))
                data.clear()
                size = 0
        self._data_size = size  # a read is bounded by the transport, so checking once per read suffices
        self._check_size()
        return events

    def close(self) -> list[bytes]:
        if self._pending:
            value = _field_value(b"".join(self._pending))
            if value is not None:
                self._data.append(value)
            self._pending.clear()
            self._pending_size = 0
        events = [b"\n".join(self._data)] if self._data else []
        self._data.clear()
        self._data_size = 0
        return events

    def _check_size(self) -> None:
        if self._data_size + self._pending_size > self.max_event_bytes:
            raise EventTooLarge(self.max_event_bytes)
