"""The chat panel: an ipywidgets face of the agent that works wherever ipywidgets work.

`chat` holds ChatPanel (threading and streaming are explained there), `parts` the transcript's pieces and
tool cards, `assets` the CSS and the page script; Markdown becomes HTML in `auto_coder_nb.markdown` (shared with
the cell output).
"""

from ..markdown import block_html, inline_html, markdown_html, split_blocks, take_blocks
from .chat import ChatPanel
from .code_blocks import code_html

__all__ = ["ChatPanel", "block_html", "code_html", "inline_html", "markdown_html", "split_blocks", "take_blocks"]
