"""Tool cards of the panel's turns: one card per call, its approval question (Approve / Always for this session /
Deny with a reason) and its result. Live and saved turns show their calls through the same `started` and `result`."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets

from ..events import ApprovalRequest, ToolResult
from ..text import counted
from .asking import Questions
from .attachments import thumbnails_html
from .parts import SUMMARY_LINES, WAITING, ToolCard, diff_html, make_box, make_html, short, tool_card
from .review import CellReview
from .view import PanelView


class ToolCards:
    def __init__(self, view: PanelView, questions: Questions, review: CellReview) -> None:
        self.view = view
        self.questions = questions
        self.review = review  # notebook changes: a card per cell, Revert
        self.cards: dict[str, ToolCard] = {}

    def started(self, call_id: str, name: str, arguments: dict[str, Any] | None, raw: str) -> None:
        self.view.end_text()
        card = tool_card(call_id, name, arguments, raw)
        self.cards[call_id] = card
        self.view.add_to_turn(card.box)

    def clear(self) -> None:
        self.cards.clear()

    def card_for(self, call_id: str, name: str, arguments: dict[str, Any]) -> ToolCard:
        card = self.cards.get(call_id)
        if card is None:
            card = tool_card(call_id, name, arguments, "")
            self.cards[call_id] = card
            self.view.add_to_turn(card.box)
        return card

    def ask(self, request: ApprovalRequest) -> None:
        self.view.end_text()
        card = self.card_for(request.call_id, request.tool, request.arguments)
        self.view.record("tool", f"{request.tool}: waiting for approval")
        if request.cells:
            self.review.ask(request, card)
            return
        what = "this command" if request.kind == "command" else "this change"
        card.status("waiting for approval", "autocoder-card-ask")
        card.question = make_html(f"Allow {what}?", "autocoder-question")
        preview = make_html(diff_html(request.preview), "autocoder-preview")
        # Synced on blur, which comes before the Deny click, so the click sees the whole reason.
        reason = widgets.Text(placeholder="Reason for the model (optional)", continuous_update=False)
        reason.add_class("autocoder-reason")
        card.buttons = self.questions.buttons(
            lambda: request.approve(), lambda: request.approve(always=True), request.deny, card,
            request.always_covers, reason
        )
        row = make_box([*card.buttons[:2], reason, card.buttons[2]], "autocoder-approval", horizontal=True)
        card.box.children = (*card.box.children, card.question, preview, row)
        self.questions.asked(card)
        self.view.set_state(WAITING, request.tool)

    def result(self, result: ToolResult) -> None:
        card = self.card_for(result.call_id, result.name, {})
        if card.denied:  # the user's choice, not a failure: the card already says why
            card.status("denied", "autocoder-card-denied")
            self.view.record("tool", f"{result.name}: denied: {short(result.output)}")
            return
        lines = result.output.count("\n") + 1
        status = "error" if result.is_error else "done"
        card.status(status, "autocoder-card-error" if result.is_error else "autocoder-card-ok")
        # Only blank lines go: a first line's indent (read_file's right-aligned line numbers) stays.
        head = [short(line, 160) for line in result.output.strip("\n").split("\n")[:SUMMARY_LINES]]
        more = f"\n… +{counted(lines - SUMMARY_LINES, 'line')}" if lines > SUMMARY_LINES else ""
        card.summary.value = html.escape("\n".join(head) + more)
        if card.summary not in card.box.children:
            card.box.children = (*card.box.children, card.summary)
        if result.images:
            card.box.children = (*card.box.children, make_html(thumbnails_html(result.images), "autocoder-thumbs"))
        self.review.applied(result, card, asked=card.question is not None)
        self.view.record("tool", f"{result.name}: {status}: {short(result.output)}")
