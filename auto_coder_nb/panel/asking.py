"""The panel's open questions: the cards whose approval buttons are live, and the buttons themselves (Approve /
Always for this session / Deny with a reason), shared by tool cards, cell reviews and the Run button."""

from __future__ import annotations

from collections.abc import Callable

import ipywidgets as widgets

from .parts import RUNNING_TOOL, THINKING, ToolCard, make_button
from .view import PanelView


class Questions:
    def __init__(self, view: PanelView) -> None:
        self.view = view
        self.open: list[ToolCard] = []  # cards whose approval buttons are live

    def asked(self, card: ToolCard) -> None:
        self.open.append(card)

    def once(self, card: ToolCard, act: Callable[[], None]) -> Callable[[], None]:
        """`act` on the loop for the card's first answer; a later click (or one after the turn ended) does nothing."""

        def on_loop() -> None:
            if card.answered:
                return
            if card in self.open:
                self.open.remove(card)
            act()

        return on_loop

    def close_open(self) -> None:
        """The turn ended: approvals still asked cannot be answered any more."""
        for card in self.open:
            card.close_approval("Not answered: the turn ended.")
            card.status("not run")
        self.open.clear()

    def buttons(
        self,
        approve: Callable[[], None],
        always: Callable[[], None],
        deny: Callable[[str], None],
        card: ToolCard,
        always_covers: str,
        reason: widgets.Text | None = None,
    ) -> list[widgets.Button]:
        """Approve / Always for this session (saying what it covers: `ApprovalRequest.always_covers`) / Deny; each
        click is answered once, on the loop. Deny passes the text of `reason` (if given) on, for the model to read."""
        view = self.view

        def allow(action: Callable[[], None], note: str) -> Callable[[], None]:
            def act() -> None:
                card.close_approval(note)
                card.status("running")
                action()
                if view.running():
                    view.set_state(RUNNING_TOOL, card.name)

            return self.once(card, act)

        def refuse() -> None:
            why = reason.value.strip() if reason is not None else ""
            card.denied = True
            card.close_approval(f"Denied: {why}" if why else "Denied.")
            card.status("denied", "autocoder-card-denied")
            deny(why)
            if view.running():
                view.set_state(THINKING)

        buttons = [
            make_button("Approve", "success", "autocoder-approve"),
            make_button(f"Always for this session ({always_covers})", "info", "autocoder-always",
                        f"Allow {always_covers} without asking for the rest of this session"),
            make_button("Deny", "danger", "autocoder-deny"),
        ]
        buttons[0].on_click(view.handover(allow(approve, "Approved.")))
        buttons[1].on_click(view.handover(allow(always, f"Approved {always_covers} for the rest of this session.")))
        buttons[2].on_click(view.handover(self.once(card, refuse)))
        return buttons
