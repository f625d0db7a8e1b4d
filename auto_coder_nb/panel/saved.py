"""The saved conversation a new panel offers: after a kernel restart the session starts empty, so the panel
shows the latest conversation saved for this notebook (its transcript, read-only) with a Resume button.
Resume continues it (same history, same correlation id); Send or Reset without it start a new one."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..events import ToolResult
from ..history import ConversationStore, HistoryError, SavedConversation, read_records
from ..transcript import ToolExchange, exchanges
from .tools import ToolCards
from .view import PanelView

if TYPE_CHECKING:
    from ..session import Session


class SavedOffer:
    def __init__(self, session: Session, saved: SavedConversation, records: list[dict[str, Any]]) -> None:
        self.session = session
        self.saved = saved
        self.records = records

    @classmethod
    def look(cls, session: Session) -> SavedOffer | None:
        """The offer for a session that has not talked yet and keeps conversations; else None."""
        if session.recorder is None or any(m["role"] == "user" for m in session.conversation.messages):
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
