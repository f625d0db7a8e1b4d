"""The Run button under each Python block of an answer: runs the block in the kernel namespace like the
run_code tool, asking first where the approval mode says so (no model waits on it)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import ipywidgets as widgets

from ..text import PYTHON_FENCE_LANGUAGES
from .markdown import code_html
from .parts import _append, _box, _button, _clip, _html, _short, _ToolCard

if TYPE_CHECKING:
    from .chat import ChatPanel


class CodeBlocks:
    def __init__(self, panel: ChatPanel) -> None:
        self.panel = panel

    def widget(self, code: str, language: str) -> widgets.Widget:
        """The block with its Copy / Insert below buttons and, for Python, Run."""
        run = _button("Run", "", "autocoder-run", "Run this code in the kernel (asks first in ask mode)")
        result = _html("", "autocoder-summary")
        box = _box([_html(code_html(code, language)), _box([run], "autocoder-code-actions", horizontal=True)],
                   "autocoder-code")
        if language in PYTHON_FENCE_LANGUAGES:
            run.on_click(self.panel._handover(lambda: self._run(code, box, result)))
        else:
            run.disabled, run.tooltip = True, f"Only Python runs in the kernel (this block is {language})"
        return box

    def _run(self, code: str, box: widgets.Box, result: widgets.HTML) -> None:
        policy = self.panel.session.policy
        decision = policy.decide("command")
        if decision == "deny":
            result.value = html.escape(f"Not run: the approval mode is {policy.mode!r}.")
            if result not in box.children:
                _append(box, result)
            return
        if decision == "allow":
            self._execute(code, box, result)
            return
        card = _ToolCard("", "run_code", _clip(code.strip().split("\n", 1)[0], 80))
        card.status("waiting for approval", "autocoder-card-ask")

        def always() -> None:
            policy.allow_always("command")
            self._execute(code, box, result, card)

        # No model waits on this run, so a denial has no one to tell.
        card.buttons = self.panel._tools.approval_buttons(lambda: self._execute(code, box, result, card), always,
                                                    lambda _reason: None, card, "command")
        card.box.children = (*card.box.children, _box(card.buttons, "autocoder-approval", horizontal=True))
        _append(box, card.box)

    def _execute(self, code: str, box: widgets.Box, result: widgets.HTML, card: _ToolCard | None = None) -> None:
        """Run like the run_code tool: in the user namespace, IPython syntax (magics, !cmd) transformed first."""
        from IPython import get_ipython

        from ..tools.notebook import run_python

        shell = get_ipython()
        panel = self.panel
        if panel._namespace is None:
            panel._namespace = shell.user_ns if shell is not None else {}
        source = shell.transform_cell(code) if shell is not None else code
        outcome = run_python(source, panel._namespace, filename="<chat panel>")
        text = outcome.to_text() or "(no output)"
        result.value = "<b>Output</b>\n" + html.escape(_short(text, 4000))
        if result not in box.children:
            _append(box, result)
        if card is not None:
            card.status("error" if outcome.error else "done",
                        "autocoder-card-error" if outcome.error else "autocoder-card-ok")
