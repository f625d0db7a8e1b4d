"""Server-sent events, read tolerantly: the `data` of each event, as bytes.

Real servers differ from the spec in small ways; this accepts all of these: CRLF or CR line ends,
`data:` with or without the space, comment lines (`: keep-alive`), `event:`/`id:`/`retry:` lines,
events split anywhere across network reads, a last event with no blank line after it, and a body
that is not SSE at all (a JSON error with no `data:` prefix), which comes out as one event.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

_IGNORED_FIELDS = (b"event", b"id", b"retry")


def _field_value(line: bytes) -> bytes | None:
    """The data a line adds to the current event, or None for lines that carry none."""
    if line.startswith(b"data:"):
        value = line[5:]
        return value[1:] if value[:1] == b" " else value
    if line.startswith(b":") or line.partition(b":")[0] in _IGNORED_FIELDS:
        return None
    return line  # not an SSE field: a raw body line, kept so that a bare JSON body still parses


async def iter_sse_data(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Yield the data of each event (its `data` lines joined by newlines); empty events are skipped."""
    pending = b""
    data: list[bytes] = []
    skip_lf = False  # the previous read ended in "\r": a "\n" starting this one belongs to it
    async for chunk in chunks:
        if skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        if b"\r" in chunk:
            skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            skip_lf = False
        lines = (pending + chunk).split(b"\n") if pending else chunk.split(b"\n")
        pending = lines.pop()
        for line in lines:
            if line:
                if line.startswith(b"data: "):  # the common case, kept short
                    data.append(line[6:])
                else:
                    value = _field_value(line)
                    if value is not None:
                        data.append(value)
            elif data:
                yield data[0] if len(data) == 1 else b"\n".join(data)
                data = []
    if pending:
        value = _field_value(pending)
        if value is not None:
            data.append(value)
    if data:
        yield b"\n".join(data)
