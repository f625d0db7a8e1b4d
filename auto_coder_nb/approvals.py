"""One approval policy for every face."""

from __future__ import annotations

from typing import Literal

APPROVAL_MODES = ("ask", "auto-edit", "full-auto", "read-only")
Decision = Literal["allow", "ask", "deny"]


class ApprovalPolicy:
    """Decides whether a tool call runs, asks first, or is refused.

    ask: writes, edits and commands need a yes. auto-edit: writes and edits pass, commands ask.
    full-auto: nothing asks. read-only: writes, edits and commands are refused. Reads never ask.
    "Always for this session" answers are remembered per kind ("write" or "command").
    """

    def __init__(self, mode: str = "ask") -> None:
        if mode not in APPROVAL_MODES:
            raise ValueError(f"unknown approval mode {mode!r}; expected one of {', '.join(APPROVAL_MODES)}")
        self.mode = mode
        self.always_allowed: set[str] = set()

    def decide(self, kind: str, mode: str | None = None) -> Decision:
        """`mode` overrides the policy's mode for one turn (the session's answers "for this session" still count)."""
        mode = mode or self.mode
        if kind == "read":
            return "allow"
        if mode == "read-only":
            return "deny"
        if mode == "full-auto" or kind in self.always_allowed:
            return "allow"
        if mode == "auto-edit" and kind == "write":
            return "allow"
        return "ask"

    def allow_always(self, kind: str) -> None:
        self.always_allowed.add(kind)

    def reset(self) -> None:
        self.always_allowed.clear()
