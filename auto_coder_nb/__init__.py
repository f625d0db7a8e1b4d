"""auto-coder-nb: a coding assistant for Jupyter and the terminal.

`%load_ext auto_coder_nb` registers the magics; `auto_coder_nb.ChatPanel()` is the chat panel.
Everything heavy (httpx, ipywidgets, nbformat) is imported on first use, so loading stays fast.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["ChatPanel", "load_ipython_extension", "unload_ipython_extension", "__version__"]


def load_ipython_extension(ipython: Any) -> None:
    from . import magics

    magics.load_ipython_extension(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from . import magics

    magics.unload_ipython_extension(ipython)


def __getattr__(name: str) -> Any:
    if name == "ChatPanel":
        from .panel import ChatPanel

        return ChatPanel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
