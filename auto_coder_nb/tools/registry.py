"""The registry of tools the model can call."""

from __future__ import annotations

import inspect
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..providers.base import ToolDefinition


class ToolError(Exception):
    """A tool failed in a way the model can act on; the message becomes the tool result."""


class NothingToChange(Exception):  # noqa: N818 (not an error: the call succeeds without doing anything)
    """Raised by a preview when the call would change nothing (a file written with the content it has): the
    message is the call's result, and the user is not asked to approve a no-op."""


@dataclass
class ToolOutput:
    """A tool's result with images (run_code's plots): PNG or JPEG bytes as produced. The agent checks and
    fits them, says so in the text, and shows them to a vision model in a user message after the step."""

    text: str
    images: list[bytes] = field(default_factory=list)
    failed: bool = False  # the work itself failed (run_code's code raised); still a result for the model to read


class ToolRegistry:
    """The tools of one session. Tools that come from outside (MCP servers) are added and removed from another
    thread, and say what happened to them through `notify`; the agent shows those notices in the next turn."""

    def __init__(self, tools: Iterable[ToolDefinition] = ()) -> None:
        self._tools: dict[str, ToolDefinition] = {}
        self._lock = threading.Lock()
        self._notices: list[str] = []
        self._allowed: Callable[[str], bool] | None = None
        for tool in tools:
            self.register(tool)

    def register(self, tool: ToolDefinition) -> bool:
        """Add `tool` (replacing one of the same name); False when the allow-list leaves it out."""
        if self._allowed is not None and not self._allowed(tool.name):
            return False
        with self._lock:
            self._tools = {**self._tools, tool.name: tool}
        return True

    def restrict(self, allowed: Callable[[str], bool]) -> list[str]:
        """Keep only the tools `allowed` accepts, now and when registered later (the site's allow.tools).
        Returns the names removed."""
        self._allowed = allowed
        removed = [name for name in self._tools if not allowed(name)]
        for name in removed:
            self.unregister(name)
        return removed

    def unregister(self, name: str) -> None:
        with self._lock:
            self._tools = {key: tool for key, tool in self._tools.items() if key != name}

    def notify(self, text: str) -> None:
        """Something the user should hear once, in the next turn (from any thread)."""
        with self._lock:
            self._notices.append(text)

    def take_notices(self) -> list[str]:
        with self._lock:
            notices, self._notices = self._notices, []
        return notices

    def get(self, name: str) -> ToolDefinition | None:
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[ToolDefinition]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return list(self._tools)

    def definitions(self) -> list[ToolDefinition]:
        return list(self._tools.values())

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """Run a tool and return its result as text. Raises ToolError for anything the model should see."""
        return (await self.run(name, arguments)).text

    async def run(self, name: str, arguments: dict[str, Any]) -> ToolOutput:
        """Run a tool: its text and the images it produced. Raises ToolError for anything the model should see."""
        tool = self._tools.get(name)
        if tool is None:
            raise ToolError(f"Unknown tool {name!r}. Available tools: {', '.join(self._tools)}.")
        try:
            result = tool.handler(**arguments)
            if inspect.isawaitable(result):
                result = await result
        except ToolError:
            raise
        except TypeError as exc:
            if _is_signature_error(exc, tool):
                raise ToolError(f"Invalid arguments for {name}: {exc}. Expected schema: "
                                f"{json.dumps(tool.parameters)}") from exc
            raise ToolError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            raise ToolError(f"{name} failed: {type(exc).__name__}: {exc}") from exc
        if isinstance(result, ToolOutput):
            return result
        if isinstance(result, str):
            return ToolOutput(result)
        try:
            return ToolOutput(json.dumps(result, default=str))
        except (TypeError, ValueError, RecursionError) as exc:  # e.g. tuple keys, or nested thousands deep
            raise ToolError(f"{name} returned a result that cannot be shown as text: {type(exc).__name__}: "
                            f"{exc}") from exc


def _is_signature_error(exc: TypeError, tool: ToolDefinition) -> bool:
    tb = exc.__traceback__
    # A TypeError raised by the call itself (bad keyword) has no frame inside the handler.
    return tb is not None and tb.tb_next is None
