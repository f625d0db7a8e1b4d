"""The one approval question and its answers, as every face reads them (issue 22 item 13)."""

from __future__ import annotations

import pytest

from auto_coder_nb.approvals import Allowance, Answer, parse_answer, question


@pytest.mark.parametrize(("typed", "answer"), [
    ("y", Answer(True)), (" Yes ", Answer(True)), ("yes!", Answer(True)),
    ("a", Answer(True, always=True)), ("ALWAYS", Answer(True, always=True)),
    ("n", Answer(False)), ("no", Answer(False)), ("deny", Answer(False)),
    ("n use pytest instead", Answer(False, reason="use pytest instead")),
    ("No: the other file", Answer(False, reason="the other file")),
    ("no, not now", Answer(False, reason="not now")),
    ("", None), ("   ", None), ("yse", None), ("nope", None), ("ok", None), ("y es", None), ("a lot", None),
    ("yes but only once", None), ("1", None),
])
def test_answers(typed: str, answer: Answer | None) -> None:
    assert parse_answer(typed) == answer


def test_the_question_says_what_always_covers() -> None:
    assert question("run_command", "this exact command") == (
        "Allow run_command? [y]es / [n]o [reason] / [a]lways (this exact command, this session): ")


def test_an_allowance_is_one_tool_and_for_a_scoped_tool_one_value() -> None:
    assert Allowance.of("write_file", None, {"path": "a"}) == Allowance.of("write_file", None, {"path": "b"})
    assert Allowance.of("run_command", "command", {"command": "ls"}) != Allowance.of("run_command", "command",
                                                                                   {"command": "ls -a"})
    assert Allowance.of("run_command", "command", {"command": "ls"}).describe() == "this exact command"
    assert Allowance("notes__add_note").describe() == "every notes__add_note call"
