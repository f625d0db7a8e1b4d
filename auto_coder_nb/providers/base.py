"""The provider contract: what the agent needs from a chat-completions backend.

Extend `LLMProvider` to support an API that is not OpenAI-compatible; the agent only sees
the types defined here.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ..cell_changes import CellChange
    from .capabilities import ModelCapabilities

ToolKind = Literal["read", "write", "command"]
# Tool arguments (native or a prompted step) nested deeper than this are refused: a deeper document would crash
# JSON handling later (a small model's runaway `{"a":{"a":...`).
MAX_ARGUMENT_DEPTH = 64
TOO_DEEP = (f"The tool arguments are nested more than {MAX_ARGUMENT_DEPTH} levels deep. Send the call again with "
            "flat arguments.")


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and objects in `value` nest deeper than `limit`, checked without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


@dataclass
class ToolDefinition:
    """A tool the model may call.

    `kind` decides approvals: "read" never asks, "write" and "command" follow the approval mode.
    `preview(arguments)` returns what an approval shows (a diff, a command line); it must not
    change anything. `handler` may be a plain function or a coroutine function. An "always for this
    session" answer covers this tool only; with `always_scope` (an argument's name: run_command's
    "command") only later calls with exactly the same value of that argument.
    A notebook tool gives `review(arguments) -> list[CellChange]`: the cells the call would change, shown one card
    per cell (like `preview`, it changes nothing); and `run_after(arguments)`, which runs the code cell the call
    just changed (the user chose Accept & Run) and returns its output like a handler.
    `rarely_needed` names optional arguments a model seldom needs (`replace_all`, a command's `timeout`):
    prompted tool calling leaves them out of the prompt and the step schema, since a shorter grammar is a
    faster one for small local models.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    handler: Callable[..., Any]
    kind: ToolKind = "read"
    preview: Callable[..., str] | None = None
    always_scope: str | None = None
    review: Callable[..., list[CellChange]] | None = None
    run_after: Callable[..., Any] | None = None
    rarely_needed: tuple[str, ...] = ()

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


@dataclass
class ToolCall:
    """One call the model asked for. `arguments` is the raw JSON text, exactly as assembled."""

    id: str
    name: str
    arguments: str = ""

    def to_message(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.total_tokens + other.total_tokens,
        )


@dataclass
class TextChunk:
    """A piece of the answer as it streams."""

    text: str


@dataclass
class ReasoningChunk:
    """A piece of the model's reasoning (`reasoning_content` / `reasoning`), kept apart from the answer."""

    text: str


@dataclass
class Retrying:
    """The request failed in a way worth retrying; the provider waits, then tries again."""

    message: str


@dataclass
class ProviderNotice:
    """Something the user should know about how the model is used (a switch of tool-calling mode)."""

    message: str


@dataclass
class Completion:
    """The whole response, always the last item a provider yields."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None


ProviderEvent = TextChunk | ReasoningChunk | Retrying | ProviderNotice | Completion


class LLMProvider(abc.ABC):
    """A chat-completions backend.

    `chat` yields `TextChunk` / `ReasoningChunk` as they arrive and ends with one `Completion`;
    before it retries a failed request it may yield `Retrying` so the user knows why nothing comes, and
    `ProviderNotice` when it changes how it talks to the model.
    Errors are raised as `auto_coder_nb.errors.ProviderError` subclasses.
    """

    model: str
    tool_calling: str = "auto"  # llm.tool_calling: how the model is asked to use tools, unless a request says

    @abc.abstractmethod
    def chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[ToolDefinition] | None = None,
        *,
        headers: dict[str, str] | None = None,
        model: str | None = None,  # this request's model, when it is not `self.model`
        tool_calling: str | None = None,  # this request's llm.tool_calling, when it is not the configured one
        answer_only: bool = False,  # the model must answer now, not call a tool (it repeated its last step)
    ) -> AsyncIterator[ProviderEvent]: ...

    @abc.abstractmethod
    async def list_models(self, *, headers: dict[str, str] | None = None) -> list[str]: ...

    async def capabilities(self, model: str | None = None, *,
                           headers: dict[str, str] | None = None) -> ModelCapabilities:
        """What the server says the model can do; unknown (None) unless a provider can ask."""
        from .capabilities import ModelCapabilities

        return ModelCapabilities()

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
