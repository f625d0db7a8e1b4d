"""The chat panel: an ipywidgets face of the agent that works wherever ipywidgets work.

`chat` holds ChatPanel (threading and streaming are explained there), `parts` the transcript's pieces and
tool cards, `markdown` the Markdown-to-HTML renderer, `assets` the CSS and the page script.
"""

from .chat import ChatPanel
from .markdown import block_html, code_html, inline_html, markdown_html, split_blocks, take_blocks

__all__ = ["ChatPanel", "block_html", "code_html", "inline_html", "markdown_html", "split_blocks", "take_blocks"]
