"""The workspace tools the model acts through: read_file, write_file, edit_file, list_directory, run_command."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..providers.base import ToolDefinition
from .filesystem import filesystem_tools
from .registry import ToolError, ToolOutput, ToolRegistry
from .shell import shell_tools
from .workspace import Workspace

__all__ = ["ToolError", "ToolOutput", "ToolRegistry", "Workspace", "build_workspace_tools"]


def build_workspace_tools(workspace: Workspace, command_timeout: float = 120.0,
                          secrets: Callable[[], Iterable[str | None]] = tuple) -> list[ToolDefinition]:
    """The five workspace tools, bound to `workspace`; `command_timeout` is run_command's default in seconds;
    `secrets()` the values whose variables are removed from run_command's environment."""
    return [*filesystem_tools(workspace), *shell_tools(workspace, command_timeout, secrets)]
