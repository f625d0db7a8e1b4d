"""The saved conversation a new panel offers: after a kernel restart the session starts empty, so the panel
shows the latest conversation saved for this notebook (its transcript, read-only) with a Resume button.
Resume continues it (same history, same correlation id); Send or Reset without it start a new one."""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..events import ToolResult
from ..history import ConversationStore, HistoryError, SavedConversation, read_records
from ..transcript import ToolExchange, exchanges
from .parts import make_box, make_button, make_html
from .tools import ToolCards
from .view import PanelView

if TYPE_CHECKING:
    from ..session import Session


class SavedOffer:
    """One saved conversation shown read-only in the panel, with Resume to continue it."""

    def __init__(self, session: Session, saved: SavedConversation, records: list[dict[str, Any]]) -> None:
        self.session = session
        self.saved = saved
        self.records = records

    @classmethod
    def look(cls, session: Session) -> SavedOffer | None:
        """The offer for a session that has not talked yet and keeps conversations; else None."""
        if session.recorder is None or session.has_talked():
            return None
        try:
            saved = session.saved_here(None, ConversationStore())
            return cls(session, saved, read_records(saved.path))
        except HistoryError:
            return None  # nothing saved here (or unreadable): a plain new panel

    def show(self, view: PanelView, cards: ToolCards) -> None:
        """The saved transcript, drawn as the panel draws a live turn (prompts, answers, tool cards)."""
        view.notice(f"Saved conversation {self.saved.short_id} from {self.saved.when}: Resume continues it; "
                    "Send or Reset start a new one.")
        calls = 0
        for exchange in exchanges(self.records):
            view.open_turn(exchange.prompt)
            for part in exchange.parts:
                if isinstance(part, ToolExchange):
                    calls += 1
                    call_id = f"saved-{calls}"  # the saved history keeps no call ids of its own
                    cards.started(call_id, part.name, _arguments(part.arguments), part.arguments)
                    if part.approval is not None:  # drawn as the live card was once answered
                        card = cards.card_for(call_id, part.name, {})
                        card.denied = part.denied
                        card.close_approval(_answer(part.approval))
                    cards.result(ToolResult(call_id, part.name, part.result, part.is_error))
                else:
                    view.answer(part)
                    view.end_text()
            view.close_turn()

    def resume(self) -> str:
        """Continue the saved conversation in the session; the sentence to show. Raises HistoryError."""
        return self.session.resume(self.saved)


def _arguments(raw: str) -> dict[str, Any] | None:
    """A call's arguments as the model sent them: an object, else None (shown as the raw text)."""
    try:
        arguments = json.loads(raw)
    except ValueError:
        return None
    return arguments if isinstance(arguments, dict) else None


class SavedList:
    """The panel's Saved list: this notebook's saved conversations (else this folder's), PAGE at a time, newest
    first; only the files of the pages shown are read. Choosing one calls `choose` (the panel shows it with
    Resume)."""

    PAGE = 10

    def __init__(self, view: PanelView, choose: Callable[[SavedConversation], None]) -> None:
        self.view = view
        self.choose = choose
        self.page = 0
        self.box = make_box([], "autocoder-saved-list")
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
        found = self.view.session.saved_here_all(ConversationStore())
        entries = list(itertools.islice(found, page * self.PAGE, (page + 1) * self.PAGE + 1))
        rows: list[Any] = []
        for saved in entries[:self.PAGE]:
            entry = make_button(saved.line(), "", "autocoder-saved-entry", f"Show conversation {saved.id}")
            entry.on_click(self.view.handover(functools.partial(self._chosen, saved)))
            rows.append(entry)
        if not rows:
            rows.append(make_html("No saved conversations for this notebook yet.", "autocoder-saved-none"))
        newer = make_button("Newer", "", "autocoder-saved-newer", "The newer saved conversations")
        older = make_button("Older", "", "autocoder-saved-older", "The older saved conversations")
        newer.disabled, older.disabled = page == 0, len(entries) <= self.PAGE
        newer.on_click(self.view.handover(lambda: self.show(self.page - 1)))
        older.on_click(self.view.handover(lambda: self.show(self.page + 1)))
        first = page * self.PAGE + 1
        shown = make_html(f"{first}–{first + len(entries[:self.PAGE]) - 1}" if entries else "", "autocoder-saved-page")
        self.box.children = (*rows, make_box([newer, shown, older], "autocoder-saved-nav", horizontal=True))
        self.box.layout.display = None

    def _chosen(self, saved: SavedConversation) -> None:
        self.hide()
        self.choose(saved)

    @staticmethod
    def read(saved: SavedConversation) -> list[dict[str, Any]]:
        """The records of a chosen conversation; HistoryError if it cannot be read."""
        return read_records(saved.path)


def _answer(approval: dict[str, Any]) -> str:
    """The line a live card showed once its question was answered (panel/asking.py)."""
    reason = approval.get("reason") or ""
    if not approval.get("allowed"):
        return f"Denied: {reason}" if reason else "Denied."
    return "Approved for the rest of this session." if approval.get("always") else "Approved."
