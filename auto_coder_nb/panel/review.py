"""The panel's per-cell review and rewind. A notebook change shows one card per cell with the cell's diff: while it
asks, Accept / Accept & Run / Reject (with a reason for the model); applied at once (auto-edit, full-auto), each
cell offers Revert until the turn after next. Each finished turn offers Rewind to here."""

from __future__ import annotations

import functools
import html
from collections.abc import Callable
from typing import TYPE_CHECKING

import ipywidgets as widgets

from ..events import ApprovalRequest, ToolResult
from ..rewind import RewindRefused
from ..tools.registry import ToolError
from .asking import Questions
from .parts import RUNNING_TOOL, THINKING, WAITING, ToolCard, diff_html, make_box, make_button, make_html
from .view import PanelView

if TYPE_CHECKING:
    from ..cell_changes import CellChange
    from ..rewind import Turn


def cell_card(change: CellChange) -> widgets.VBox:
    """One cell's change: what happens to which cell, and its diff."""
    head = make_html(f"<b>{html.escape(change.action)}</b> {html.escape(change.describe())}", "autocoder-cell-head")
    return make_box([head, make_html(diff_html(change.diff()), "autocoder-preview")], "autocoder-cell")


class CellReview:
    """The cell cards of one panel: approvals of notebook changes, Revert buttons, Rewind to here."""

    def __init__(self, view: PanelView, questions: Questions, ask_again: Callable[[str], None],
                 in_kernel: bool) -> None:
        self.view = view
        self.questions = questions
        self.ask_again = ask_again  # a rewound turn's prompt goes back into the input
        self.in_kernel = in_kernel  # the kernel's own session: its cells can be re-run
        self.reverts: list[tuple[CellChange, widgets.Button]] = []  # offered until the turn after next

    # -- asking: Accept / Accept & Run / Reject -------------------------------------------------------

    def ask(self, request: ApprovalRequest, card: ToolCard) -> None:
        card.status("waiting for approval", "autocoder-card-ask")
        card.question = make_html(f"Apply this change to {len(request.cells)} cell(s)?", "autocoder-question")
        reason = widgets.Text(placeholder="Reason for the model (optional)", continuous_update=False)
        reason.add_class("autocoder-reason")
        accept = make_button("Accept", "success", "autocoder-accept", "Apply the change")
        run = make_button("Accept & Run", "success", "autocoder-accept-run", "Apply the change, then run the cell")
        reject = make_button("Reject", "danger", "autocoder-reject", "Leave the cell as it is; the model hears why")
        run.layout.display = None if request.can_run else "none"
        card.buttons = [accept, run, reject]

        def answer(act: Callable[[], None], note: str, denied: bool = False) -> Callable[[], None]:
            def on_loop() -> None:
                why = reason.value.strip()
                card.denied = denied
                card.close_approval(f"Rejected: {why}" if denied and why else note)
                card.status("rejected" if denied else "running", "autocoder-card-denied" if denied else None)
                act()
                if self.view.running():
                    self.view.set_state(THINKING if denied else RUNNING_TOOL, card.name)

            return self.questions.once(card, on_loop)

        accept.on_click(self.view.handover(answer(request.approve, "Accepted.")))
        run.on_click(self.view.handover(answer(request.accept_and_run, "Accepted; the cell runs next.")))
        reject.on_click(self.view.handover(answer(lambda: request.deny(reason.value.strip()), "Rejected.",
                                                    denied=True)))
        row = make_box([accept, run, reason, reject], "autocoder-approval", horizontal=True)
        cells = [cell_card(change) for change in request.cells]
        card.box.children = (*card.box.children, card.question, *cells, row)
        self.questions.asked(card)
        self.view.set_state(WAITING, request.tool)

    # -- applied at once: Revert ---------------------------------------------------------------------

    def applied(self, result: ToolResult, card: ToolCard, asked: bool) -> None:
        """The cells a call changed; without an approval (asked=False) each gets its card and a Revert button."""
        if asked:
            return
        for change in result.cells:
            box = cell_card(change)
            revert = make_button("Revert", "warning", "autocoder-revert",
                                 "Put the cell back as it was (offered until the turn after next)")
            revert.on_click(self.view.handover(functools.partial(self._revert, change, box, revert)))
            box.children = (*box.children, revert)
            self.reverts.append((change, revert))
            card.box.children = (*card.box.children, box)

    def _revert(self, change: CellChange, box: widgets.VBox, button: widgets.Button) -> None:
        cells = self.view.session.cells
        assert cells is not None
        try:
            note = cells.revert(change.number)
        except ToolError as exc:
            note = str(exc)
        else:
            button.disabled = True
        outcome = make_html(html.escape(note), "autocoder-outcome")
        box.children = (*[child for child in box.children if child is not button], outcome)

    def expire(self) -> None:
        """A turn began: Revert leaves the changes of the turn before last."""
        cells = self.view.session.cells
        for change, button in list(self.reverts):
            if cells is None or not cells.revertible(change):
                button.disabled = True
                button.layout.display = "none"
                self.reverts.remove((change, button))

    # -- Rewind to here ------------------------------------------------------------------------------

    def offer_rewind(self, turn_box: widgets.Box, turn: Turn, start: widgets.Widget) -> None:
        """A finished turn gets Rewind to here (back to before it); `start` is its first widget in the transcript."""
        button = make_button("Rewind to here", "", "autocoder-rewind",
                             "Go back to before this turn: the conversation, the files and the notebook cells the "
                             "agent changed since")
        button.on_click(self.view.handover(lambda: self.rewind(turn, start, False)))
        turn_box.children = (*turn_box.children, button)

    def rewind(self, turn: Turn, start: widgets.Widget, force: bool) -> None:
        view = self.view
        if view.running():
            view.notice("A turn is running: rewind when it has ended.")
            return
        turns = view.session.turns
        if turns is None or not any(kept is turn for kept in turns.current()):  # rewound already (a magic?)
            view.error("That turn is no longer in the conversation: it was rewound, or the conversation changed.")
            return
        try:
            outcome = view.session.rewind(turn.number, force)
        except RewindRefused as exc:
            view.error(str(exc))
            if "--force" in str(exc):
                anyway = make_button("Rewind anyway", "danger", "autocoder-rewind-force",
                                     "Rewind even what was changed since (it is kept beside its file)")
                anyway.on_click(view.handover(lambda: self.rewind(turn, start, True)))
                view.show_line(anyway)
            return
        view.cut(start)
        self.ask_again(outcome.prompt)  # to ask again, changed or not
        view.notice(outcome.message)
        if outcome.rerun and outcome.notebook and self.in_kernel:
            rerun = make_button(f"Re-run {len(outcome.rerun)} cell(s)", "info", "autocoder-rerun",
                                "Run the cells that define the stale variables again")
            rerun.on_click(view.handover(functools.partial(self._rerun, outcome.notebook,
                                                           [cell_id for _, cell_id in outcome.rerun], rerun)))
            view.show_line(rerun)
        view.status.show()

    def _rerun(self, notebook: str, cell_ids: list[str], button: widgets.Button) -> None:
        from ..kernel import rerun_cells

        if self.view.running():
            self.view.notice("A turn is running: re-run the cells when it has ended.")
            return
        button.disabled = True
        try:
            self.view.notice(rerun_cells(notebook, cell_ids))
        except ToolError as exc:
            self.view.error(str(exc))
