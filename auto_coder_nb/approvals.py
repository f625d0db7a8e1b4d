"""One approval policy for every face."""

from __future__ import annotations

from typing import Literal

APPROVAL_MODES = ("ask", "auto-edit", "full-auto", "read-only")
APPROVAL_ORDER = ("read-only", "ask", "auto-edit", "full-auto")  # from the least to the most permissive
Decision = Literal["allow", "ask", "deny"]


class ApprovalPolicy:
    """Decides whether a tool call runs, asks first, or is refused.

    ask: writes, edits and commands need a yes. auto-edit: writes and edits pass, commands ask.
    full-auto: nothing asks. read-only: writes, edits and commands are refused. Reads never ask.
    "Always for this session" answers are remembered per kind ("write" or "command").
    `ceiling` (the site's allow.max_approval_mode) caps every mode, however it was chosen.
    """

    def __init__(self, mode: str = "ask", ceiling: str | None = None) -> None:
        if mode not in APPROVAL_MODES:
            raise ValueError(f"unknown approval mode {mode!r}; expected one of {', '.join(APPROVAL_MODES)}")
        self.mode = mode
        self.ceiling = ceiling
        self.always_allowed: set[str] = set()

    def effective(self, mode: str | None = None) -> str:
        """`mode` (else the policy's), capped at the ceiling."""
        mode = mode or self.mode
        if self.ceiling is not None and APPROVAL_ORDER.index(mode) > APPROVAL_ORDER.index(self.ceiling):
            return self.ceiling
        return mode

    def decide(self, kind: str, mode: str | None = None) -> Decision:
        """`mode` overrides the policy's mode for one turn (the session's answers "for this session" still count)."""
        mode = self.effective(mode)
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
