"""What the client sees of a session: the agent's events as `session/update` notifications, approvals as
`session/request_permission`, and a saved conversation replayed on `session/load`."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..agent import CUT_OFF
from ..approvals import Allowance
from ..events import (
    ApprovalRequest,
    ErrorEvent,
    Event,
    Notice,
    ReasoningDelta,
    TextDelta,
    ToolCallStarted,
    ToolResult,
    TurnDone,
    UsageUpdate,
    assert_never,
)
from ..session import Session
from ..text import prompt_of, scrub, show_controls, truncate
from ..tools.filesystem import FileChange, planned_change
from ..tools.registry import ToolError
from .wire import RpcError

# The agent's TurnDone reasons as ACP stop reasons (an ErrorEvent makes the prompt an error instead).
STOP_REASONS = {"stop": "end_turn", "max_iterations": "max_turn_requests", "repeated_call": "end_turn",
                "cancelled": "cancelled"}
TOOL_KINDS = {"read_file": "read", "list_directory": "read", "write_file": "edit", "edit_file": "edit",
              "run_command": "execute"}
PATH_TOOLS = ("read_file", "list_directory", "write_file", "edit_file")
SHOWN_OUTPUT_CHARS = 20_000  # of a tool's result in the client (the model gets all of it)
PERMISSION_OPTIONS = [
    {"optionId": "allow_once", "name": "Allow", "kind": "allow_once"},
    {"optionId": "allow_always", "name": "Always allow (this session)", "kind": "allow_always"},
    {"optionId": "reject_once", "name": "Reject", "kind": "reject_once"},
    {"optionId": "reject_always", "name": "Always reject", "kind": "reject_always"},
]


def permission_options(always_covers: str) -> list[dict[str, str]]:
    """The client's buttons; "always" names what it allows from then on (one tool, or one exact command line)."""
    covers = f"{always_covers}, this session" if always_covers else "this session"
    return [{**option, "name": f"Always allow ({covers})"} if option["kind"] == "allow_always" else option
            for option in PERMISSION_OPTIONS]


REJECTED_FOR_GOOD = "The user rejected this and does not want to be asked again: do not try it again."
CANCELLED = "The user cancelled the request."


class Updates:
    """The `session/update` notifications of one session. Every string goes through `text.scrub` with the
    session's secrets, and streamed text keeps back an end that may be the start of a secret, so a secret split
    across two pieces is never sent by halves."""

    def __init__(self, session_id: str, session: Session, notify: Callable[[str, Any], None]) -> None:
        self.session_id = session_id
        self.session = session
        self._notify = notify
        self._held = ""
        self._held_kind = ""

    def hide(self, value: Any) -> Any:
        """`value` (JSON-able) with every secret of the session hidden in its strings."""
        secrets = self.session.secret_values()
        return _scrubbed(value, lambda text: scrub(text, secrets))

    def send(self, update: dict[str, Any]) -> None:
        self.flush()
        self._notify("session/update", {"sessionId": self.session_id, "update": self.hide(update)})

    def stream(self, kind: str, text: str) -> None:
        """A piece of streamed text (`agent_message_chunk`, `agent_thought_chunk`)."""
        if kind != self._held_kind:
            self.flush()
        secrets = [secret for secret in self.session.secret_values() if secret]
        pending = scrub(self._held + text, secrets)
        keep = max((_secret_start_at_end(pending, secret) for secret in secrets), default=0)
        ready, self._held, self._held_kind = pending[:len(pending) - keep], pending[len(pending) - keep:], kind
        if ready:
            self._chunk(kind, ready)

    def flush(self) -> None:
        held, self._held = self._held, ""
        if held:
            self._chunk(self._held_kind, held)

    def _chunk(self, kind: str, text: str) -> None:
        self._notify("session/update", {"sessionId": self.session_id, "update": {
            "sessionUpdate": kind, "content": {"type": "text", "text": text}}})


class TurnView:
    """Renders one turn: the face of the ACP agent. `ask(params)` sends session/request_permission and returns the
    client's answer."""

    def __init__(self, updates: Updates, ask: Callable[[dict[str, Any]], Awaitable[Any]]) -> None:
        self.updates = updates
        self.session = updates.session
        self.ask = ask
        self.stop_reason = "end_turn"
        self.error: str | None = None
        self._answered = False  # some answer text was sent: a notice starts a paragraph of its own
        self._changes: dict[str, FileChange] = {}  # what each write call changes, for its diff

    async def handle(self, event: Event) -> None:
        match event:
            case TextDelta():
                self.updates.stream("agent_message_chunk", event.text)
                self._answered = True
            case ReasoningDelta():
                self.updates.stream("agent_thought_chunk", event.text)
            case ToolCallStarted():
                self.updates.send(self._tool_call(event))
            case ApprovalRequest():
                await self._approve(event)
            case ToolResult():
                self.updates.send(self._tool_result(event))
            case Notice():
                if event.text == CUT_OFF:
                    self.stop_reason = "max_tokens"
                self.notice(event.text)
            case UsageUpdate():
                pass  # the context share is reported once, with the end of the turn
            case ErrorEvent():
                self.error = event.message
            case TurnDone():
                if event.reason in STOP_REASONS and self.stop_reason != "max_tokens":
                    self.stop_reason = STOP_REASONS[event.reason]
            case _:
                assert_never(event)

    def notice(self, text: str) -> None:
        """Something the user should know that is not the answer, as a quoted paragraph of the message."""
        quoted = "> " + text.replace("\n", "\n> ")
        self.updates.stream("agent_message_chunk", ("\n\n" if self._answered else "") + quoted + "\n\n")
        self._answered = True

    def _tool_call(self, event: ToolCallStarted) -> dict[str, Any]:
        arguments = event.arguments or {}
        tool = self.session.tools.get(event.name)
        asks = tool is not None and self.session.policy.decide(
            tool.kind, allowance=Allowance.of(tool.name, tool.always_scope, arguments)) == "ask"
        update = {"sessionUpdate": "tool_call", "toolCallId": event.call_id,
                  "title": tool_title(event.name, arguments, self.session),
                  "kind": tool_kind(event.name, tool.kind if tool else None),
                  "status": "pending" if asks else "in_progress", "rawInput": arguments,
                  "locations": tool_locations(event.name, arguments, self.session)}
        change = planned_change(self.session.workspace, event.name, arguments) if tool is not None else None
        if change is not None:
            self._changes[event.call_id] = change
            update["content"] = [diff_content(change)]
        return update

    async def _approve(self, request: ApprovalRequest) -> None:
        change = self._changes.get(request.call_id)
        content = [diff_content(change)] if change is not None else [text_content(fenced(show_controls(
            request.preview)))]
        tool_call = {"toolCallId": request.call_id, "title": tool_title(request.tool, request.arguments, self.session),
                     "kind": tool_kind(request.tool, request.kind), "status": "pending", "content": content,
                     "rawInput": request.arguments,
                     "locations": tool_locations(request.tool, request.arguments, self.session)}
        self.updates.flush()
        params = self.updates.hide({"sessionId": self.updates.session_id, "toolCall": tool_call,
                                    "options": permission_options(request.always_covers)})
        try:
            answer = await self.ask(params)
        except RpcError as exc:
            request.deny(f"The client could not ask the user ({exc.message}).")
            return
        outcome = answer.get("outcome") if isinstance(answer, dict) else None
        chosen = outcome.get("optionId") if isinstance(outcome, dict) and outcome.get("outcome") == "selected" \
            else None
        if chosen in ("allow_once", "allow_always"):
            request.approve(always=chosen == "allow_always")
            self.updates.send({"sessionUpdate": "tool_call_update", "toolCallId": request.call_id,
                               "status": "in_progress"})
        elif chosen == "reject_always":
            request.deny(REJECTED_FOR_GOOD)
        elif chosen == "reject_once":
            request.deny("")
        else:  # cancelled, or an answer that is not one of the options
            request.deny(CANCELLED)

    def _tool_result(self, event: ToolResult) -> dict[str, Any]:
        update: dict[str, Any] = {"sessionUpdate": "tool_call_update", "toolCallId": event.call_id,
                                  "status": "failed" if event.is_error else "completed"}
        change = self._changes.pop(event.call_id, None)
        if change is not None and not event.is_error:
            update["content"] = [diff_content(change), text_content(event.output)]
        elif TOOL_KINDS.get(event.name) == "execute":
            update["content"] = [text_content(fenced(truncate(event.output, SHOWN_OUTPUT_CHARS)))]
        else:
            update["content"] = [text_content(truncate(event.output, SHOWN_OUTPUT_CHARS))]
        return update


# -- pieces ----------------------------------------------------------------------------------------------------


def tool_kind(name: str, kind: str | None) -> str:
    """The ACP kind of a tool: read, edit or execute for the workspace tools; read for other read-only tools."""
    return TOOL_KINDS.get(name) or ("read" if kind == "read" else "other")


def tool_title(name: str, arguments: dict[str, Any], session: Session) -> str:
    shown = show_controls
    if name in PATH_TOOLS:
        path = arguments.get("path") or "."
        verb = {"read_file": "Read", "list_directory": "List", "write_file": "Write", "edit_file": "Edit"}[name]
        return f"{verb} {shown(str(path))}"
    if name == "run_command":
        command = str(arguments.get("command", ""))
        return f"Run `{shown(truncate(command, 200))}`"
    brief = ", ".join(f"{key}={truncate(json.dumps(value, ensure_ascii=False), 60)}"
                      for key, value in arguments.items())
    return shown(f"{name}({truncate(brief, 200)})")


def tool_locations(name: str, arguments: dict[str, Any], session: Session) -> list[dict[str, Any]]:
    """The file a workspace tool works on, as an absolute path (inside the workspace, or none)."""
    if name not in PATH_TOOLS:
        return []
    try:
        path = session.workspace.resolve(arguments.get("path") or ".")
    except ToolError:
        return []
    location: dict[str, Any] = {"path": str(path)}
    line = arguments.get("offset")
    if name == "read_file" and isinstance(line, int) and not isinstance(line, bool) and line >= 1:
        location["line"] = line
    return [location]


def text_content(text: str) -> dict[str, Any]:
    return {"type": "content", "content": {"type": "text", "text": text}}


def diff_content(change: FileChange) -> dict[str, Any]:
    return {"type": "diff", "path": str(change.path), "oldText": change.before, "newText": change.after}


def fenced(text: str) -> str:
    """`text` as a Markdown code block whose fence no line of it can close."""
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}\n{text}\n{fence}"


# -- replay -------------------------------------------------------------------------------------------------------


def replay(messages: Iterable[dict[str, Any]], session: Session) -> list[dict[str, Any]]:
    """A saved history as the updates a client shows: what the user said, the answers, and each tool call with
    its result."""
    updates: list[dict[str, Any]] = []
    results = {message.get("tool_call_id"): message.get("content") for message in messages
               if message["role"] == "tool"}
    for message in messages:
        role, content = message["role"], message.get("content")
        if role == "user":
            updates.append(_chunk("user_message_chunk", prompt_of(_text_of(content))))
        elif role == "assistant":
            if _text_of(content):
                updates.append(_chunk("agent_message_chunk", _text_of(content)))
            for call in message.get("tool_calls") or []:
                updates.append(_replayed_call(call, results.get(call.get("id")), session))
    return updates


def _replayed_call(call: dict[str, Any], result: Any, session: Session) -> dict[str, Any]:
    function = call.get("function") or {}
    name = str(function.get("name", ""))
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except ValueError:
        arguments = {}
    arguments = arguments if isinstance(arguments, dict) else {}
    tool = session.tools.get(name)
    update = {"sessionUpdate": "tool_call", "toolCallId": str(call.get("id", "")),
              "title": tool_title(name, arguments, session), "kind": tool_kind(name, tool.kind if tool else None),
              "status": "completed", "rawInput": arguments, "locations": tool_locations(name, arguments, session)}
    if isinstance(result, str):
        update["content"] = [text_content(truncate(result, SHOWN_OUTPUT_CHARS))]
    return update


def _chunk(kind: str, text: str) -> dict[str, Any]:
    return {"sessionUpdate": kind, "content": {"type": "text", "text": text}}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict)
                         and part.get("type") == "text")
    return ""


def _scrubbed(value: Any, hide: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return hide(value)
    if isinstance(value, dict):
        return {key: _scrubbed(item, hide) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrubbed(item, hide) for item in value]
    return value


def _secret_start_at_end(text: str, secret: str) -> int:
    """How many characters at the end of `text` begin `secret` (0 if none)."""
    for size in range(min(len(secret) - 1, len(text)), 0, -1):
        if text.endswith(secret[:size]):
            return size
    return 0
