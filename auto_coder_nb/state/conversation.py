"""Conversation state: the message history and the correlation id that ties its requests together."""

from __future__ import annotations

import json
import uuid
from typing import Any, Protocol

from ..providers.base import ToolCall, Usage

INTERRUPTED = "interrupted: the user stopped this turn before the tool ran"
# Rough but stable: about four characters a token for English and code.
CHARS_PER_TOKEN = 4


def new_correlation_id() -> str:
    return str(uuid.uuid4())


class ConversationObserver(Protocol):
    """Told of every change to the history as it happens (the saved-conversation recorder, `history.py`)."""

    def message_added(self, message: dict[str, Any]) -> None: ...

    def cleared(self) -> None: ...

    def shortened(self, changed: int) -> None: ...


class Conversation:
    def __init__(self, system_prompt: str | None = None) -> None:
        self.system_prompt = system_prompt
        self.messages: list[dict[str, Any]] = []
        self.correlation_id = new_correlation_id()
        self.usage = Usage()  # tokens used this session, across clear()
        self.observer: ConversationObserver | None = None
        self.clear()

    def clear(self) -> None:
        """Forget the history and start a new correlation id. The tokens used so far stay counted."""
        self.messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        self.correlation_id = new_correlation_id()
        if self.observer is not None:
            self.observer.cleared()

    def restore(self, messages: list[dict[str, Any]], correlation_id: str) -> None:
        """Continue a saved conversation: its messages after this conversation's own system prompt, its id."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        self.messages = system + [m for m in messages if m.get("role") != "system"]
        self.correlation_id = correlation_id

    @property
    def headers(self) -> dict[str, str]:
        return {"x-correlation-id": self.correlation_id}

    def _append(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if self.observer is not None:
            self.observer.message_added(message)

    def add_user(self, content: str) -> None:
        self._append({"role": "user", "content": content})

    def add_assistant(self, content: str, tool_calls: list[ToolCall] = (), reasoning: str = "") -> None:  # type: ignore[assignment]
        message: dict[str, Any] = {"role": "assistant", "content": content or None}
        if tool_calls:
            message["tool_calls"] = [call.to_message() for call in tool_calls]
        elif not content:
            message["content"] = ""
        if reasoning:
            # Thinking-mode servers (DeepSeek) reject tool-call turns whose reasoning is not sent back.
            message["reasoning_content"] = reasoning
        self._append(message)

    def add_tool_result(self, call_id: str, content: str) -> None:
        self._append({"role": "tool", "tool_call_id": call_id, "content": content})

    def pending_tool_calls(self) -> list[str]:
        """Ids of tool calls in the last assistant message that have no result yet."""
        for i in range(len(self.messages) - 1, -1, -1):
            message = self.messages[i]
            if message["role"] == "assistant":
                answered = {m.get("tool_call_id") for m in self.messages[i + 1:] if m["role"] == "tool"}
                return [c["id"] for c in message.get("tool_calls") or [] if c["id"] not in answered]
        return []

    def repair(self, reason: str = INTERRUPTED) -> int:
        """Give every unanswered tool call a result so the next request is one a strict server accepts."""
        missing = self.pending_tool_calls()
        for call_id in missing:
            self.add_tool_result(call_id, reason)
        return len(missing)

    # -- context window ----------------------------------------------------------------------

    def estimate_tokens(self, extra: int = 0) -> int:
        return (len(json.dumps(self.messages)) + extra) // CHARS_PER_TOKEN

    def shorten(self, budget_tokens: int, extra: int = 0) -> int:
        """Shorten the history until it fits `budget_tokens`; return how many messages were changed."""
        changed = self._shorten(budget_tokens, extra)
        if changed and self.observer is not None:
            self.observer.shortened(changed)
        return changed

    def _shorten(self, budget_tokens: int, extra: int = 0) -> int:
        """Old tool outputs are elided first, then the oldest exchanges are dropped whole (a user
        message with everything up to the next user message), so a tool call never loses its
        result. The system prompt and the latest user message stay.
        """
        changed = 0
        for message in self.messages[:-1]:
            if self.estimate_tokens(extra) <= budget_tokens:
                return changed
            if message["role"] == "tool" and len(message["content"]) > 200:
                message["content"] = message["content"][:100] + "\n[... old tool output removed to save context ...]"
                changed += 1
        start = 1 if self.system_prompt else 0
        while self.estimate_tokens(extra) > budget_tokens:
            users = [i for i, m in enumerate(self.messages) if m["role"] == "user" and i >= start]
            if len(users) < 2:
                break
            dropped = users[1] - users[0]
            del self.messages[users[0]:users[1]]
            changed += dropped
        return changed
