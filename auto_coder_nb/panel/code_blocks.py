"""The Run button under each Python block of an answer: runs the block through the session's run_code tool, the
same kernel executor the model uses (secrets out of the environment the code sees, its output scrubbed), asking
first where the approval mode says so, as run_code does (no model waits on it)."""

from __future__ import annotations

import asyncio
import html

import ipywidgets as widgets

from ..approvals import Allowance
from ..text import PYTHON_FENCE_LANGUAGES, scrub
from ..tools.registry import ToolError
from .asking import Questions
from .parts import ToolCard, append_child, clip, code_html, make_box, make_button, make_html, short
from .view import PanelView

RUN_TOOL = "run_code"
NO_RUN_TOOL = ("This session has no run_code tool (the panel runs outside a kernel, or the site configuration "
               "does not allow run_code)")


class CodeBlocks:
    def __init__(self, view: PanelView, questions: Questions) -> None:
        self.view = view
        self.questions = questions

    def widget(self, code: str, language: str) -> widgets.Widget:
        """The block with its Copy / Insert below buttons and, for Python, Run."""
        run = make_button("Run", "", "autocoder-run", "Run this code in the kernel (asks first in ask mode)")
        result = make_html("", "autocoder-summary")
        box = make_box([make_html(code_html(code, language)),
                        make_box([run], "autocoder-code-actions", horizontal=True)], "autocoder-code")
        if language not in PYTHON_FENCE_LANGUAGES:
            run.disabled, run.tooltip = True, f"Only Python runs in the kernel (this block is {language})"
        elif RUN_TOOL not in self.view.session.tools:
            run.disabled, run.tooltip = True, NO_RUN_TOOL
        else:
            run.on_click(self.view.handover(lambda: self._run(code, box, result)))
        return box

    def _run(self, code: str, box: widgets.Box, result: widgets.HTML) -> None:
        session = self.view.session
        tool = session.tools.get(RUN_TOOL)
        if tool is None:  # the configuration changed since the answer
            self._show(box, result, NO_RUN_TOOL + ".")
            return
        allowance = Allowance.of(tool.name, tool.always_scope, {"code": code})
        decision = session.policy.decide(tool.kind, allowance=allowance)
        if decision == "deny":
            self._show(box, result, f"Not run: the approval mode is {session.policy.mode!r}.")
            return
        if decision == "allow":
            self._execute(code, box, result)
            return
        card = ToolCard("", RUN_TOOL, clip(code.strip().split("\n", 1)[0], 80))
        card.status("waiting for approval", "autocoder-card-ask")

        def always() -> None:
            session.policy.allow_always(allowance)
            self._execute(code, box, result, card)

        # No model waits on this run, so a denial has no one to tell.
        card.buttons = self.questions.buttons(lambda: self._execute(code, box, result, card), always,
                                              lambda _reason: None, card, allowance.describe())
        card.box.children = (*card.box.children, make_box(card.buttons, "autocoder-approval", horizontal=True))
        append_child(box, card.box)

    def _execute(self, code: str, box: widgets.Box, result: widgets.HTML, card: ToolCard | None = None) -> None:
        asyncio.ensure_future(self._run_tool(code, box, result, card))

    async def _run_tool(self, code: str, box: widgets.Box, result: widgets.HTML, card: ToolCard | None) -> None:
        """Through the run_code tool, exactly as when the model calls it."""
        session = self.view.session
        try:
            output = await session.tools.run(RUN_TOOL, {"code": code})
            text, failed = output.text, output.failed
        except ToolError as exc:
            text, failed = str(exc), True
        text = scrub(text, session.secret_values())  # as the agent does with every tool result
        self._show(box, result, short(text, 4000) or "(no output)", "<b>Output</b>\n")
        if card is not None:
            card.status("error" if failed else "done", "autocoder-card-error" if failed else "autocoder-card-ok")

    def _show(self, box: widgets.Box, result: widgets.HTML, text: str, head: str = "") -> None:
        result.value = head + html.escape(text)
        if result not in box.children:
            append_child(box, result)
