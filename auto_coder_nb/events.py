"""What a turn of the agent yields. The faces (CLI, magics, panel) only render these."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from .approvals import Answer
from .images import Image
from .providers.base import Usage

if TYPE_CHECKING:
    from .cell_changes import CellChange


@dataclass
class TextDelta:
    text: str


@dataclass
class ReasoningDelta:
    text: str


@dataclass
class ToolCallStarted:
    call_id: str
    name: str
    arguments: dict[str, Any] | None  # None when the model sent arguments that are not valid JSON
    raw_arguments: str


@dataclass
class ApprovalRequest:
    """The agent waits on this until a face calls `approve()` or `deny()` (or `reply()` with a parsed answer).

    `kind` is "write" or "command"; `preview` is a unified diff for file changes and the
    command line for commands. `always_covers` says what "always for this session" would allow from then on
    ("this exact command", "every write_file call"): faces show it with the question. Answering before the agent
    awaits is fine. Answer from the event loop that runs the turn (a face on another thread uses
    `loop.call_soon_threadsafe`).

    A change to a notebook carries `cells`: one `CellChange` per cell it would change (shown as a card per cell
    with its diff: Accept / Reject / Accept & Run). When `can_run` (a code cell stays and the tool can run it),
    `accept_and_run()` approves and has the agent run the cell right after the change (`run_after`).
    """

    call_id: str
    tool: str
    kind: str
    arguments: dict[str, Any]
    preview: str
    always_covers: str = ""
    cells: list[CellChange] = field(default_factory=list)
    can_run: bool = False
    run_after: bool = False
    _decision: asyncio.Future[tuple[bool, str, bool]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._decision = asyncio.get_running_loop().create_future()

    def approve(self, *, always: bool = False) -> None:
        """Allow this call; `always` allows what `always_covers` says for the rest of the session."""
        self._answer(True, "", always)

    def deny(self, reason: str = "") -> None:
        self._answer(False, reason, False)

    def reply(self, answer: Answer) -> None:
        """Answer with what `approvals.parse_answer` read."""
        if answer.run:
            self.accept_and_run()
        elif answer.allowed:
            self.approve(always=answer.always)
        else:
            self.deny(answer.reason)

    def accept_and_run(self) -> None:
        """Allow this change, then run the cell it changed (Accept & Run; only when `can_run`)."""
        if not self.answered:
            self.run_after = self.can_run
        self.approve()

    @property
    def answered(self) -> bool:
        return self._decision is not None and self._decision.done()

    def _answer(self, allowed: bool, reason: str, always: bool) -> None:
        if self._decision is not None and not self._decision.done():
            self._decision.set_result((allowed, reason, always))

    async def wait(self) -> tuple[bool, str, bool]:
        assert self._decision is not None
        return await self._decision


@dataclass
class ToolResult:
    call_id: str
    name: str
    output: str  # exactly what the model receives
    is_error: bool = False
    images: list[Image] = field(default_factory=list)  # images the tool produced, as fitted for the model
    cells: list[CellChange] = field(default_factory=list)  # the notebook cells the call changed (Revert undoes one)


@dataclass
class UsageUpdate:
    turn: Usage
    session: Usage


@dataclass
class Notice:
    """Something the user should know that is not part of the answer (history shortened, retrying...)."""

    text: str


@dataclass
class ContextUsage:
    """How full the model's context window is: `used` tokens (reported by the server for the last request,
    else estimated from the history) of `window` (agent.context_window)."""

    used: int
    window: int
    estimated: bool = False

    @property
    def share(self) -> float:
        return self.used / self.window if self.window else 0.0

    def __str__(self) -> str:
        approximately = "~" if self.estimated else ""
        return f"context {approximately}{self.share:.0%} of {_thousands(self.window)}"


def _thousands(tokens: int) -> str:
    if tokens < 10000:
        return str(tokens)
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else f"{round(tokens / 1000)}k"


@dataclass
class TurnDone:
    # "stop", "max_iterations", "repeated_call", "turn_timeout", "cancelled", "error", "cut_off", "busy"
    reason: str = "stop"
    context: ContextUsage | None = field(default=None, compare=False)  # how full the window is after the turn
    # Calls of write/command tools this turn: refused (by the approval mode or the user) and allowed.
    actions_refused: int = field(default=0, compare=False)
    actions_allowed: int = field(default=0, compare=False)

    @property
    def all_actions_refused(self) -> bool:
        """The model asked for changes or commands and none was allowed: nothing the user asked for was done."""
        return self.actions_refused > 0 and self.actions_allowed == 0


@dataclass
class ErrorEvent:
    """The turn failed; `message` is one readable line with no secrets."""

    message: str
    error: BaseException | None = field(default=None, repr=False)


Event = (
    TextDelta
    | ReasoningDelta
    | ToolCallStarted
    | ApprovalRequest
    | ToolResult
    | UsageUpdate
    | Notice
    | TurnDone
    | ErrorEvent
)


def assert_never(event: NoReturn) -> NoReturn:
    """The last `case _:` of a face's `match event:`. mypy reports a call that can be reached, so a new event
    type that a face does not handle is a type error. (typing.assert_never is 3.11+; we support 3.10.)"""
    raise AssertionError(f"unhandled event: {event!r}")
