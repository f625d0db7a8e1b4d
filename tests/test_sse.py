"""The SSE parser on its own: linear in the stream's size, and a cap on one event."""

from __future__ import annotations

import pytest

from auto_coder_nb.providers.sse import MAX_EVENT_BYTES, EventTooLarge, SSEParser

READ = 4096  # a small network read, so a long line arrives in thousands of pieces


def feed_in_reads(parser: SSEParser, data: bytes, size: int = READ) -> list[bytes]:
    events: list[bytes] = []
    for start in range(0, len(data), size):
        events += parser.feed(data[start:start + size])
    return events


@pytest.mark.timeout(120)  # joined once: well under a second; re-joined on every read it would take many minutes
def test_a_20_mb_line_in_thousands_of_reads_is_joined_once() -> None:
    payload = b"x" * (20 * 1024 * 1024)
    parser = SSEParser(max_event_bytes=32 * 1024 * 1024)
    events = feed_in_reads(parser, b"data: " + payload + b"\n\n")
    assert len(events) == 1 and events[0] == payload


@pytest.mark.timeout(120)
def test_a_line_beyond_the_cap_is_refused_as_soon_as_it_passes_it() -> None:
    parser = SSEParser()
    fed = 0
    line = b"data: " + b"x" * (20 * 1024 * 1024)
    with pytest.raises(EventTooLarge, match="larger than 16 MiB"):
        for start in range(0, len(line), 65536):
            fed += 65536
            parser.feed(line[start:start + 65536])
    assert fed <= MAX_EVENT_BYTES + 65536


def test_many_data_lines_of_one_event_count_towards_the_cap() -> None:
    parser = SSEParser(max_event_bytes=1000)
    assert parser.feed(b"data: " + b"a" * 400 + b"\n" + b"data: " + b"b" * 400 + b"\n") == []
    with pytest.raises(EventTooLarge):
        parser.feed(b"data: " + b"c" * 400 + b"\n")


def test_the_cap_is_per_event_not_per_stream() -> None:
    parser = SSEParser(max_event_bytes=1000)
    events = feed_in_reads(parser, b"".join(b"data: " + b"e" * 900 + b"\n\n" for _ in range(50)), size=700)
    assert len(events) == 50 and all(len(event) == 900 for event in events)


def test_a_line_split_over_reads_with_crlf_between_them() -> None:
    parser = SSEParser()
    reads = (b"data: ab", b"cd\r", b"\n\r", b"\ndata: [DONE]\r\n\r\n")
    events = [event for read in reads for event in parser.feed(read)]
    assert events == [b"abcd", b"[DONE]"]
