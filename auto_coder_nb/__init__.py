"""auto-coder-nb: a coding assistant for Jupyter and the terminal.

`%load_ext auto_coder_nb` registers the magics; `auto_coder_nb.ChatPanel()` is the chat panel.
The public API is importable from here (`from auto_coder_nb import Session, load_config, ToolDefinition`);
each name is imported on first use, so `%load_ext` stays fast (httpx, ipywidgets and nbformat load only
when something needs them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config, load_config
    from .kernel import get_session
    from .panel import ChatPanel
    from .providers.base import ToolDefinition
    from .session import Session
    from .tools.registry import ToolError

__version__ = "0.1.0"

# Public name -> the module that defines it, imported when the name is first used.
_LAZY = {
    "ChatPanel": ".panel",
    "Config": ".config",
    "Session": ".session",
    "ToolDefinition": ".providers.base",
    "ToolError": ".tools.registry",
    "get_session": ".kernel",
    "load_config": ".config",
}

__all__ = [
    "ChatPanel", "Config", "Session", "ToolDefinition", "ToolError", "get_session", "load_config",
    "load_ipython_extension", "unload_ipython_extension", "__version__",
]


def load_ipython_extension(ipython: Any) -> None:
    from . import magics

    magics.load_ipython_extension(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from . import magics

    magics.unload_ipython_extension(ipython)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
