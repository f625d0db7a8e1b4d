"""One approval policy, and one approval question, for every face.

A face shows `question(request.tool, request.always_covers)` (or buttons saying the same), reads the user's
answer with `parse_answer` (None: not an answer, ask again) and passes it on with `request.approve()` /
`request.deny(reason)`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

APPROVAL_MODES = ("ask", "auto-edit", "full-auto", "read-only")
APPROVAL_ORDER = ("read-only", "ask", "auto-edit", "full-auto")  # from the least to the most permissive
Decision = Literal["allow", "ask", "deny"]


@dataclass(frozen=True)
class Allowance:
    """What an "always for this session" answer allows from then on: that one tool, never every tool of its kind;
    for a tool scoped by an argument (run_command by its `command`), only calls with exactly that value."""

    tool: str
    argument: str | None = None
    value: str | None = None

    @classmethod
    def of(cls, tool: str, scope: str | None, arguments: Mapping[str, Any]) -> Allowance:
        """The allowance an "always" to this call gives (`scope`: the tool's `always_scope`)."""
        if scope is None:
            return cls(tool)
        value = arguments.get(scope)
        return cls(tool, scope, value if isinstance(value, str) else json.dumps(value, sort_keys=True))

    def describe(self) -> str:
        """What it covers, for the faces: "this exact command", "every write_file call"."""
        return f"this exact {self.argument}" if self.argument is not None else f"every {self.tool} call"


class ApprovalPolicy:
    """Decides whether a tool call runs, asks first, or is refused.

    ask: writes, edits and commands need a yes. auto-edit: writes and edits pass, commands ask.
    full-auto: nothing asks. read-only: writes, edits and commands are refused. Reads never ask.
    "Always for this session" answers are remembered as `Allowance`s (one tool; for run_command one command).
    `ceiling` (the site's allow.max_approval_mode) caps every mode, however it was chosen.
    """

    def __init__(self, mode: str = "ask", ceiling: str | None = None) -> None:
        if mode not in APPROVAL_MODES:
            raise ValueError(f"unknown approval mode {mode!r}; expected one of {', '.join(APPROVAL_MODES)}")
        self.mode = mode
        self.ceiling = ceiling
        self.always_allowed: set[Allowance] = set()

    def effective(self, mode: str | None = None) -> str:
        """`mode` (else the policy's), capped at the ceiling."""
        mode = mode or self.mode
        if self.ceiling is not None and APPROVAL_ORDER.index(mode) > APPROVAL_ORDER.index(self.ceiling):
            return self.ceiling
        return mode

    def decide(self, kind: str, mode: str | None = None, allowance: Allowance | None = None) -> Decision:
        """`mode` overrides the policy's mode for one turn (the session's answers "for this session" still count);
        `allowance` is what an "always" would cover for this call: allowed if the user already said always to it."""
        mode = self.effective(mode)
        if kind == "read":
            return "allow"
        if mode == "read-only":
            return "deny"
        if mode == "full-auto" or (allowance is not None and allowance in self.always_allowed):
            return "allow"
        if mode == "auto-edit" and kind == "write":
            return "allow"
        return "ask"

    def allow_always(self, allowance: Allowance) -> None:
        self.always_allowed.add(allowance)

    def reset(self) -> None:
        self.always_allowed.clear()


# -- the question and its answers ------------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    allowed: bool
    always: bool = False
    reason: str = ""  # with a no: what the model reads
    run: bool = False  # accept a notebook change and run the cell (Accept & Run)


_YES, _ALWAYS, _NO, _RUN = {"y", "yes"}, {"a", "always"}, {"n", "no", "deny"}, {"r", "run"}
_ANSWER = re.compile(r"(?P<word>[A-Za-z]+)[\s:,;.!-]*(?P<rest>.*)", re.DOTALL)
ANSWER_HELP = "Please answer y (yes), n (no; a reason for the model may follow: n use the other file) or a (always)."


def question(tool: str, always_covers: str, can_run: bool = False) -> str:
    """The one approval question of the text faces (terminal, REPL, magics); `can_run`: a notebook change that
    leaves a code cell, which [r]un accepts and runs."""
    covers = f" ({always_covers}, this session)" if always_covers else " (this session)"
    run = " / [r]un it after" if can_run else ""
    return f"Allow {tool}? [y]es / [n]o [reason] / [a]lways{covers}{run}: "


def parse_answer(text: str, can_run: bool = False) -> Answer | None:
    """An answer as typed in any face: y / yes, a / always, or n / no / deny with an optional reason after it
    ("n use pytest", "no: not that file"); with `can_run`, r / run too (accept and run the cell). None for anything
    else, a typo or an empty line: ask again."""
    match = _ANSWER.fullmatch(text.strip())
    if match is None:
        return None
    word, rest = match.group("word").lower(), match.group("rest").strip()
    if word in _NO:
        return Answer(False, reason=rest)
    if rest:
        return None
    if word in _YES:
        return Answer(True)
    if word in _ALWAYS:
        return Answer(True, always=True)
    if can_run and word in _RUN:
        return Answer(True, run=True)
    return None
