"""Tool cards of the panel's turns: one card per call, its approval buttons (Approve / Always for this
session / Deny with a reason) and its result."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..events import ApprovalRequest, ToolResult
from ..text import counted
from .attachments import thumbnails_html
from .parts import (
    RUNNING_TOOL,
    SUMMARY_LINES,
    THINKING,
    WAITING,
    _box,
    _button,
    _diff_html,
    _html,
    _short,
    _tool_card,
    _ToolCard,
)
from .review import CellReview

if TYPE_CHECKING:
    from .chat import ChatPanel


class ToolCards:
    def __init__(self, panel: ChatPanel) -> None:
        self.panel = panel
        self.cards: dict[str, _ToolCard] = {}
        self.open: list[_ToolCard] = []  # cards whose approval buttons are live
        self.review = CellReview(panel, self)  # notebook changes: a card per cell, Revert, Rewind to here

    def started(self, call_id: str, name: str, arguments: dict[str, Any] | None, raw: str) -> None:
        card = _tool_card(call_id, name, arguments, raw)
        self.cards[call_id] = card
        self.panel._add_to_turn(card.box)

    def close_open(self) -> None:
        """The turn ended: approvals still asked cannot be answered any more."""
        for card in self.open:
            card.close_approval("Not answered: the turn ended.")
            card.status("not run")
        self.open.clear()

    def card_for(self, call_id: str, name: str, arguments: dict[str, Any]) -> _ToolCard:
        card = self.cards.get(call_id)
        if card is None:
            card = _tool_card(call_id, name, arguments, "")
            self.cards[call_id] = card
            self.panel._add_to_turn(card.box)
        return card

    def ask(self, request: ApprovalRequest) -> None:
        self.panel._end_text()
        card = self.card_for(request.call_id, request.tool, request.arguments)
        if request.cells:
            self.panel._records.append(("tool", f"{request.tool}: waiting for approval"))
            self.review.ask(request, card)
            return
        what = "this command" if request.kind == "command" else "this change"
        self.panel._records.append(("tool", f"{request.tool}: waiting for approval"))
        card.status("waiting for approval", "autocoder-card-ask")
        card.question = _html(f"Allow {what}?", "autocoder-question")
        preview = _html(_diff_html(request.preview), "autocoder-preview")
        # Synced on blur, which comes before the Deny click, so the click sees the whole reason.
        reason = widgets.Text(placeholder="Reason for the model (optional)", continuous_update=False)
        reason.add_class("autocoder-reason")
        card.buttons = self.approval_buttons(
            lambda: request.approve(), lambda: request.approve(always=True), request.deny, card,
            request.always_covers, reason
        )
        row = _box([*card.buttons[:2], reason, card.buttons[2]], "autocoder-approval", horizontal=True)
        card.box.children = (*card.box.children, card.question, preview, row)
        self.open.append(card)
        self.panel._set_state(WAITING, request.tool)

    def approval_buttons(
        self,
        approve: Callable[[], None],
        always: Callable[[], None],
        deny: Callable[[str], None],
        card: _ToolCard,
        always_covers: str,
        reason: widgets.Text | None = None,
    ) -> list[widgets.Button]:
        """Approve / Always for this session (saying what it covers: `ApprovalRequest.always_covers`) / Deny; each
        click is answered once, on the loop. Deny passes the text of `reason` (if given) on, for the model to read."""

        def once(act: Callable[[], None]) -> Callable[[], None]:
            def on_loop() -> None:
                if card.answered:
                    return
                if card in self.open:
                    self.open.remove(card)
                act()

            return on_loop

        def allow(action: Callable[[], None], note: str) -> Callable[[], None]:
            def act() -> None:
                card.close_approval(note)
                card.status("running")
                action()
                if self.panel.running:
                    self.panel._set_state(RUNNING_TOOL, card.name)

            return once(act)

        def refuse() -> None:
            why = reason.value.strip() if reason is not None else ""
            card.denied = True
            card.close_approval(f"Denied: {why}" if why else "Denied.")
            card.status("denied", "autocoder-card-denied")
            deny(why)
            if self.panel.running:
                self.panel._set_state(THINKING)

        buttons = [
            _button("Approve", "success", "autocoder-approve"),
            _button(f"Always for this session ({always_covers})", "info", "autocoder-always",
                    f"Allow {always_covers} without asking for the rest of this session"),
            _button("Deny", "danger", "autocoder-deny"),
        ]
        buttons[0].on_click(self.panel._handover(allow(approve, "Approved.")))
        buttons[1].on_click(self.panel._handover(allow(always, f"Approved {always_covers} for the rest of this "
                                                               "session.")))
        buttons[2].on_click(self.panel._handover(once(refuse)))
        return buttons

    def result(self, result: ToolResult) -> None:
        card = self.card_for(result.call_id, result.name, {})
        if card.denied:  # the user's choice, not a failure: the card already says why
            card.status("denied", "autocoder-card-denied")
            self.panel._records.append(("tool", f"{result.name}: denied: {_short(result.output)}"))
            self.panel._set_state(THINKING)
            return
        lines = result.output.count("\n") + 1
        status = "error" if result.is_error else "done"
        card.status(status, "autocoder-card-error" if result.is_error else "autocoder-card-ok")
        head = [_short(line, 160) for line in result.output.strip().split("\n")[:SUMMARY_LINES]]
        more = f"\n… +{counted(lines - SUMMARY_LINES, 'line')}" if lines > SUMMARY_LINES else ""
        card.summary.value = html.escape("\n".join(head) + more)
        if card.summary not in card.box.children:
            card.box.children = (*card.box.children, card.summary)
        if result.images:
            card.box.children = (*card.box.children, _html(thumbnails_html(result.images), "autocoder-thumbs"))
        self.review.applied(result, card, asked=card.question is not None)
        self.panel._records.append(("tool", f"{result.name}: {status}: {_short(result.output)}"))
        self.panel._set_state(THINKING)
