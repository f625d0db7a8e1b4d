"""Conversation state: the message history and the correlation id that ties its requests together."""

from __future__ import annotations

import json
import math
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from ..images import Image
from ..providers.base import ToolCall, Usage
from ..text import escape_undecodable, escaped_everywhere

INTERRUPTED = "interrupted: the user stopped this turn before the tool ran"
# Rough but stable: about four characters a token for English and code.
CHARS_PER_TOKEN = 4
DEFAULT_MAX_IMAGES = 3
UNKNOWN_IMAGE_TOKENS = 765  # an image part we did not add ourselves: counted like a 1024 px square


def new_correlation_id() -> str:
    return str(uuid.uuid4())


class ConversationObserver(Protocol):
    """Told of every change to the history as it happens (the saved-conversation recorder, `history.py`)."""

    def message_added(self, message: dict[str, Any]) -> None: ...

    def cleared(self) -> None: ...

    def shortened(self, changed: int) -> None: ...


class Conversation:
    def __init__(self, system_prompt: str | None = None, *, max_images: int = DEFAULT_MAX_IMAGES) -> None:
        self.system_prompt = system_prompt
        self.messages: list[dict[str, Any]] = []
        self.correlation_id = new_correlation_id()
        self.usage = Usage()  # tokens used this session, across clear()
        self.observer: ConversationObserver | None = None
        self.max_images = max_images  # images kept in the history; older ones become a placeholder
        self._images: deque[tuple[dict[str, Any], Image]] = deque()  # the image parts in the history, oldest first
        # Messages dropped from the front by shortening: `position + dropped` names a message for good (rewind).
        self.dropped = 0
        self.clear()

    def clear(self) -> None:
        """Forget the history and start a new correlation id. The tokens used so far stay counted."""
        self.messages = [{"role": "system", "content": escape_undecodable(self.system_prompt)}] \
            if self.system_prompt else []
        self._images.clear()
        self.dropped = 0
        self.correlation_id = new_correlation_id()
        if self.observer is not None:
            self.observer.cleared()

    def restore(self, messages: list[dict[str, Any]], correlation_id: str) -> None:
        """Continue a saved conversation: its messages after this conversation's own system prompt, its id."""
        system = [{"role": "system", "content": escape_undecodable(self.system_prompt)}] if self.system_prompt else []
        self.messages = system + [m for m in messages if m.get("role") != "system"]
        self.correlation_id = correlation_id
        self.dropped = 0
        self._images.clear()  # saved conversations keep no images (history.py), so none is in `messages`

    @property
    def position(self) -> int:
        """Where the next message goes, counted so that shortening does not move it (see `truncate`)."""
        return len(self.messages) + self.dropped

    def truncate(self, position: int) -> int:
        """Forget the messages from `position` (a `position` seen earlier) on: a rewind. Returns how many went.
        The observer is not told: the rewind records itself (`rewind.py`)."""
        first = 1 if self.system_prompt else 0
        keep = max(first, position - self.dropped)
        dropped = self.messages[keep:]
        del self.messages[keep:]
        if dropped:
            kept = {id(part) for message in self.messages if isinstance(message["content"], list)
                    for part in message["content"]}
            self._images = deque(entry for entry in self._images if id(entry[0]) in kept)
        return len(dropped)

    @property
    def headers(self) -> dict[str, str]:
        return {"x-correlation-id": self.correlation_id}

    def _append(self, message: dict[str, Any]) -> None:
        message = escaped_everywhere(message)  # a file name that is not UTF-8 must not stop a request or a save
        self.messages.append(message)
        if self.observer is not None:
            self.observer.message_added(message)

    def add_user(self, content: str, images: Sequence[Image] = ()) -> None:
        """A user message; with images its content becomes parts (text first), as Chat Completions wants."""
        if not images:
            self._append({"role": "user", "content": content})
            return
        self._append({"role": "user", "content": [{"type": "text", "text": content}, *self._image_parts(images)]})
        self._keep_last_images()

    def add_images(self, images: Sequence[Image], text: str) -> None:
        """Images a tool produced, in a user message (tool messages cannot hold images). Add it after every
        tool message of the step, so the history stays one a strict server accepts."""
        if images:
            self.add_user(text, images)

    @property
    def images(self) -> list[Image]:
        """The images still in the history, oldest first."""
        return [image for _, image in self._images]

    def _image_parts(self, images: Sequence[Image]) -> list[dict[str, Any]]:
        parts = []
        for image in images:
            part = image.message_part()
            self._images.append((part, image))
            parts.append(part)
        return parts

    def drop_images(self) -> None:
        """Replace every image by its placeholder: the model no longer sees images."""
        self._keep_last_images(0)

    def _keep_last_images(self, keep: int | None = None) -> None:
        """Replace the oldest image parts by a placeholder text, in place, until `keep` (default `max_images`)
        remain: 0 when the model changed to one that does not see images."""
        while len(self._images) > (self.max_images if keep is None else keep):
            part, image = self._images.popleft()
            part.clear()
            part.update({"type": "text", "text": f"[image removed to keep the context small: {image.describe()}]"})

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
        images = self._image_sizes()
        return (sum(_size(message, images) for message in self.messages) + extra) // CHARS_PER_TOKEN

    def _image_sizes(self) -> dict[int, int]:
        """What each image part costs, in characters, by the part's id."""
        return {id(part): image_tokens(image) * CHARS_PER_TOKEN for part, image in self._images}

    def shorten(self, budget_tokens: int, extra: int = 0) -> int:
        """Shorten the history until it fits `budget_tokens`; return how many messages were changed."""
        changed = self._shorten(budget_tokens, extra)
        if changed and self.observer is not None:
            self.observer.shortened(changed)
        return changed

    def _shorten(self, budget_tokens: int, extra: int = 0) -> int:
        """Old tool outputs are elided first, then the oldest exchanges are dropped whole (a user
        message with everything up to the next user message), so a tool call never loses its
        result. The system prompt and the latest user message stay. Each message is measured once.
        """
        budget = budget_tokens * CHARS_PER_TOKEN - extra
        images = self._image_sizes()
        sizes = [_size(message, images) for message in self.messages]
        total = sum(sizes)
        changed = 0
        for index, message in enumerate(self.messages[:-1]):
            if total <= budget:
                return changed
            if message["role"] == "tool" and len(message["content"]) > 200:
                message["content"] = message["content"][:100] + "\n[... old tool output removed to save context ...]"
                size = _size(message, images)
                total += size - sizes[index]
                sizes[index] = size
                changed += 1
        start = 1 if self.system_prompt else 0
        users = [i for i, m in enumerate(self.messages) if m["role"] == "user" and i >= start]
        kept = 0  # users[kept] is the first user message that stays
        while total > budget and len(users) - kept >= 2:
            total -= sum(sizes[users[kept]:users[kept + 1]])
            kept += 1
        if kept:
            changed += users[kept] - users[0]
            self.dropped += users[kept] - users[0]
            del self.messages[users[0]:users[kept]]
            remaining = {id(part) for message in self.messages if isinstance(message["content"], list)
                         for part in message["content"]}
            self._images = deque(entry for entry in self._images if id(entry[0]) in remaining)
        return changed


def _size(message: dict[str, Any], images: dict[int, int]) -> int:
    """A message's length in characters as the model counts it: an image by its tokens, not its base64."""
    content = message.get("content")
    if not isinstance(content, list):
        return len(json.dumps(message))
    pictures = [part for part in content if part.get("type") == "image_url"]
    if not pictures:
        return len(json.dumps(message))
    text_only = {**message, "content": [part for part in content if part.get("type") != "image_url"]}
    unknown = UNKNOWN_IMAGE_TOKENS * CHARS_PER_TOKEN
    return len(json.dumps(text_only)) + sum(images.get(id(part), unknown) for part in pictures)


def image_tokens(image: Image) -> int:
    """What an image costs in context, as OpenAI counts it: 85 tokens plus 170 per 512-pixel tile."""
    return 85 + 170 * math.ceil(image.width / 512) * math.ceil(image.height / 512)
