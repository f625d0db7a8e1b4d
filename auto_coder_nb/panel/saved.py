"""The saved conversation a new panel offers: after a kernel restart the session starts empty, so the panel
shows the latest conversation saved for this notebook (its transcript, read-only) with a Resume button.
Resume continues it (same history, same correlation id); Send or Reset without it start a new one."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..history import ConversationStore, HistoryError, SavedConversation, read_records
from ..transcript import ToolExchange, exchanges
from .parts import SUMMARY_LINES, _box, _html, _short, _TextPart, _ToolCard

if TYPE_CHECKING:
    from .chat import ChatPanel


class SavedOffer:
    def __init__(self, panel: ChatPanel, saved: SavedConversation, records: list[dict[str, Any]]) -> None:
        self.panel = panel
        self.saved = saved
        self.records = records

    @classmethod
    def look(cls, panel: ChatPanel) -> SavedOffer | None:
        """The offer for a panel whose session has not talked yet and keeps conversations; else None."""
        session = panel.session
        if session.recorder is None or any(m["role"] == "user" for m in session.conversation.messages):
            return None
        try:
            saved = session.saved_here(None, ConversationStore())
            return cls(panel, saved, read_records(saved.path))
        except HistoryError:
            return None  # nothing saved here (or unreadable): a plain new panel

    def show(self) -> None:
        """The saved transcript, as the panel showed it live (prompts, answers, tool cards)."""
        panel = self.panel
        panel._notice(f"Saved conversation {self.saved.short_id} from {self.saved.when}: Resume continues it; "
                      "Send or Reset start a new one.")
        for exchange in exchanges(self.records):
            panel._records.append(("user", exchange.prompt))
            panel._transcript.append(_html(html.escape(exchange.prompt), "autocoder-msg", "autocoder-user"))
            turn = _box([], "autocoder-turn")
            for part in exchange.parts:
                turn.children = (*turn.children, self._tool(part) if isinstance(part, ToolExchange)
                                 else self._answer(part))
            panel._transcript.append(turn)

    def _answer(self, text: str) -> widgets.Widget:
        part = _TextPart(self.panel._code_blocks.widget)
        part.feed(text)
        part.flush(final=True)
        self.panel._records.append(("assistant", text))
        return part.box

    def _tool(self, tool: ToolExchange) -> widgets.Widget:
        card = _ToolCard("", tool.name, _short(tool.arguments, 80))
        status = "error" if tool.is_error else "done"
        card.status(status, "autocoder-card-error" if tool.is_error else "autocoder-card-ok")
        card.summary.value = html.escape("\n".join(_short(line, 160) for line in
                                                   tool.result.strip().split("\n")[:SUMMARY_LINES]))
        card.box.children = (*card.box.children, card.summary)
        self.panel._records.append(("tool", f"{tool.name}: {status}: {_short(tool.result)}"))
        return card.box

    def resume(self) -> str:
        """Continue the saved conversation in the panel's session; the sentence to show. Raises HistoryError."""
        return self.panel.session.resume(self.saved)
