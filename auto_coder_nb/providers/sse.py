"""Server-sent events, read tolerantly: the `data` of each event, as bytes.

Real servers differ from the spec in small ways; this accepts all of these: CRLF or CR line ends,
`data:` with or without the space, comment lines (`: keep-alive`), `event:`/`id:`/`retry:` lines,
events split anywhere across network reads, a last event with no blank line after it, and a body
that is not SSE at all (a JSON error with no `data:` prefix), which comes out as one event.

The parser is fed network reads and returns whole events; it does no I/O, so the caller's loop
stays the only async layer (this is the hot path of every streamed answer).
"""

from __future__ import annotations

_IGNORED_FIELDS = (b"event", b"id", b"retry")


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

    def __init__(self) -> None:
        self._pending = b""  # an incomplete last line
        self._data: list[bytes] = []  # data lines of the event being read
        self._skip_lf = False  # the previous read ended in "\r": a "\n" starting this one belongs to it

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        if b"\r" in chunk:
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            self._skip_lf = False
        lines = (self._pending + chunk).split(b"\n") if self._pending else chunk.split(b"\n")
        self._pending = lines.pop()
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if line:
                if line.startswith(b"data: "):  # the common case, kept short
                    data.append(line[6:])
                else:
                    value = _field_value(line)
                    if value is not None:
                        data.append(value)
            elif data:
                events.append(data[0] if len(data) == 1 else b"\n".join(data))
                data.clear()
        return events

    def close(self) -> list[bytes]:
        if self._pending:
            value = _field_value(self._pending)
            if value is not None:
                self._data.append(value)
            self._pending = b""
        events = [b"\n".join(self._data)] if self._data else []
        self._data.clear()
        return events
