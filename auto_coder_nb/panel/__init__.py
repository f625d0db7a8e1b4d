"""The chat panel: an ipywidgets face of the agent that works wherever ipywidgets work.

`chat` holds ChatPanel, the controller; `view` the PanelView every part draws on (threading and streaming are
explained there); `parts` the widgets of the transcript's pieces; `assets` the CSS and the page script. Markdown
becomes HTML in `auto_coder_nb.markdown` (shared with the cell output).
"""

from ..markdown import block_html, inline_html, markdown_html, split_blocks, take_blocks
from .chat import ChatPanel
from .parts import code_html

__all__ = ["ChatPanel", "block_html", "code_html", "inline_html", "markdown_html", "split_blocks", "take_blocks"]
