"""The shared text helpers (auto_coder_nb.text): one home for each, used by the core and the faces."""

from __future__ import annotations

from auto_coder_nb.text import (
    PYTHON_FENCE_LANGUAGES,
    caused_by,
    counted,
    exception_chain,
    hide_credential_shapes,
    hide_secrets,
    strip_ansi,
    truncate,
)


def test_truncate_keeps_head_and_tail_and_says_how_much_was_cut() -> None:
    text = "BEGIN" + "x" * 1000 + "END"
    cut = truncate(text, 100)
    assert cut.startswith("BEGIN") and cut.endswith("END")
    assert "[908 characters omitted]" in cut
    assert truncate("short", 100) == "short"


def test_hide_secrets_hides_a_secret_that_contains_another_whole() -> None:
    text = "key=abcd1234 token=abcd"
    assert hide_secrets(text, ["abcd", "abcd1234", None, "ab"]) == "key=<hidden> token=<hidden>"


def test_credential_shapes_are_hidden_but_words_stay() -> None:
    said = 'invalid header "Authorization: Bearer eyJ.abc" for key sk-proj_123456789'
    assert hide_credential_shapes(said) == 'invalid header "Authorization: Bearer <hidden>" for key <hidden>'


def test_strip_ansi_removes_colours_and_private_modes() -> None:
    assert strip_ansi("\x1b[?25l\x1b[1;31mred\x1b[0m done") == "red done"


def test_exception_chain_follows_causes_and_stops_at_a_cycle() -> None:
    inner = ConnectionRefusedError("refused")
    outer = OSError("connect failed")
    outer.__cause__ = inner
    inner.__context__ = outer  # a cycle: each exception is visited once
    assert list(exception_chain(outer)) == [outer, inner]
    assert caused_by(outer, ConnectionRefusedError)
    assert not caused_by(outer, TimeoutError)


def test_python_fences_include_unlabelled_and_ipython() -> None:
    assert {"", "python", "py", "ipython3"} <= PYTHON_FENCE_LANGUAGES
    assert "bash" not in PYTHON_FENCE_LANGUAGES


def test_counted_says_one_thing_and_two_things() -> None:
    assert [counted(n, "line") for n in (0, 1, 2)] == ["0 lines", "1 line", "2 lines"]
