"""Runaway output: a model that repeats the same text until the token limit.

Small local models fall into loops ("I am here to help. I am here to help. ...") that only the output limit
ends, minutes later on a CPU. `RepetitionGuard` watches a stream's text and says when it ends in one chunk
repeated over and over: a period of 1 to `max_period` characters, repeated at least `min_repeats` times AND
over at least `min_tail` characters. Both are needed so that ordinary output is never cut: a `====` line, a
Markdown table or a column of similar lines are far shorter, or not exactly periodic.
"""

from __future__ import annotations

MAX_PERIOD = 200
MIN_TAIL = 1000
MIN_REPEATS = 10
KEY = 32  # the last characters looked for earlier in the text to find the candidate periods
CHECK_EVERY = 64  # characters of new text between two checks (each check is cheap, but not free)

REPETITION_NOTICE = ("The model repeated the same text over and over, so its answer was cut here (it would have "
                     "run until the output token limit). Ask again, perhaps differently, or try another model.")


class RepetitionGuard:
    """Feed it the text of one stream as it arrives; `feed` returns True once the text ends in a runaway repeat."""

    def __init__(self, *, max_period: int = MAX_PERIOD, min_tail: int = MIN_TAIL, min_repeats: int = MIN_REPEATS,
                 check_every: int = CHECK_EVERY) -> None:
        self.max_period, self.min_tail, self.min_repeats = max_period, min_tail, min_repeats
        self.check_every = check_every
        self._window = max(min_tail, min_repeats * max_period)  # the longest tail a check looks at
        self._text = ""  # the end of the stream, at most the window (plus one check's growth)
        self._unchecked = 0
        self.tripped = False

    def feed(self, text: str) -> bool:
        if self.tripped or not text:
            return self.tripped
        self._text = (self._text + text)[-(self._window + self.check_every):]
        self._unchecked += len(text)
        if self._unchecked >= self.check_every and len(self._text) >= self.min_tail:
            self._unchecked = 0
            self.tripped = repeated_period(self._text, self.max_period, self.min_tail, self.min_repeats) is not None
        return self.tripped


def repeated_period(text: str, max_period: int = MAX_PERIOD, min_tail: int = MIN_TAIL,
                    min_repeats: int = MIN_REPEATS) -> int | None:
    """The shortest period p (1..max_period) such that the last max(min_tail, min_repeats * p) characters of
    `text` repeat with period p, or None."""
    size = len(text)
    key_size = min(KEY, min_tail)
    if size < min_tail or key_size == 0:
        return None
    key = text[size - key_size:]
    lowest = max(0, size - key_size - max_period)
    end = size - 1
    # Only the shifts at which the last characters occur again can be periods: find them (nearest first) in C.
    while True:
        start = text.rfind(key, lowest, end)
        if start < 0:
            return None
        period = size - key_size - start
        tail = max(min_tail, min_repeats * period)
        if tail <= size and text[size - tail + period:] == text[size - tail:size - period]:
            return period
        end = start + key_size - 1
