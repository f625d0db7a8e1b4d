"""The saved conversation a new panel offers: after a kernel restart the session starts empty, so the panel
shows the latest conversation saved for this notebook (its transcript, read-only) with a Resume button.
Resume continues it (same history, same correlation id); Send or Reset without it start a new one."""

from __future__ import annotations

import html
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..history import ConversationStore, HistoryError, SavedConversation, read_records
from ..transcript import ToolExchange, exchanges
from .parts import SUMMARY_LINES, _box, _button, _html, _short, _TextPart, _ToolCard

if TYPE_CHECKING:
    from .chat import ChatPanel


class SavedOffer:
    """One saved conversation shown read-only in the panel, with Resume to continue it."""

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


class SavedList:
    """The panel's Saved list: this notebook's saved conversations (else this folder's), PAGE at a time, newest
    first; only the files of the pages shown are read. Choosing one calls `choose` (the panel shows it with
    Resume)."""

    PAGE = 10

    def __init__(self, panel: ChatPanel, choose: Callable[[SavedConversation], None]) -> None:
        self.panel = panel
        self.choose = choose
        self.page = 0
        self.box = _box([], "autocoder-saved-list")
        self.box.layout.display = "none"

    def toggle(self) -> None:
        if self.box.layout.display == "none":
            self.show(0)
        else:
            self.hide()

    def hide(self) -> None:
        self.box.layout.display = "none"
        self.box.children = ()

    def show(self, page: int) -> None:
        self.page = page
        found = self.panel.session.saved_here_all(ConversationStore())
        entries = list(itertools.islice(found, page * self.PAGE, (page + 1) * self.PAGE + 1))
        rows: list[Any] = []
        for saved in entries[:self.PAGE]:
            entry = _button(saved.line(), "", "autocoder-saved-entry", f"Show conversation {saved.id}")
            entry.on_click(lambda _, chosen=saved: self._chosen(chosen))
            rows.append(entry)
        if not rows:
            rows.append(_html("No saved conversations for this notebook yet.", "autocoder-saved-none"))
        newer = _button("Newer", "", "autocoder-saved-newer", "The newer saved conversations")
        older = _button("Older", "", "autocoder-saved-older", "The older saved conversations")
        newer.disabled, older.disabled = page == 0, len(entries) <= self.PAGE
        newer.on_click(lambda _: self.show(self.page - 1))
        older.on_click(lambda _: self.show(self.page + 1))
        first = page * self.PAGE + 1
        shown = _html(f"{first}–{first + len(entries[:self.PAGE]) - 1}" if entries else "", "autocoder-saved-page")
        self.box.children = (*rows, _box([newer, shown, older], "autocoder-saved-nav", horizontal=True))
        self.box.layout.display = None

    def _chosen(self, saved: SavedConversation) -> None:
        self.hide()
        self.choose(saved)

    @staticmethod
    def read(saved: SavedConversation) -> list[dict[str, Any]]:
        """The records of a chosen conversation; HistoryError if it cannot be read."""
        return read_records(saved.path)
