"""{name} interpolation and the kernel context summary, on a real IPython shell where it matters."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from IPython.testing.globalipapp import start_ipython

from auto_coder_nb.magics import split_options
from auto_coder_nb.notebook_context import (
    KernelHistory,
    build_context,
    error_before_load,
    fix_prompt,
    interpolate,
)
from auto_coder_nb.text import compose_message, prompt_of


class FakeFrame:
    """DataFrame-shaped without pandas: what duck typing must recognise."""

    columns = ["city", "temp"]
    dtypes = {"city": "object", "temp": "float64"}
    shape = (3, 2)

    def head(self, n: int) -> Any:
        class Head:
            def to_string(self) -> str:
                return "   city  temp\n0  Oslo   3.5\n1  Rome  18.0"

        return Head()


class FakeArray:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape, self.dtype = shape, "float32"

    def __repr__(self) -> str:
        return f"FakeArray{self.shape}"


class WithLLMRepr:
    def _repr_llm_(self) -> str:
        return "a model-friendly summary"

    def __repr__(self) -> str:
        return "<never shown>"


def test_interpolates_names_attributes_and_subscripts_once() -> None:
    namespace = {"x": 3, "frame": FakeFrame(), "In": ["", "x = 3"], "Out": {4: "result"}, "cfg": {"k": "{x}"}}
    prompt = "x={x} shape={frame.shape} cell={In[1]} out={Out[4]} cfg={cfg['k']} last={In[-1]}"
    assert interpolate(prompt, namespace) == "x=3 shape=(3, 2) cell=x = 3 out=result cfg={x} last=x = 3"


@pytest.mark.parametrize("text", [
    'def f(): return {"a": 1}',
    'print(f"{missing} and {x + 1}")',
    '{"json": [1, 2]}',
    "{x.nope} {x[0]} {}",
    "{x.__class__} {x._private}",
    "{{x}}x",
])
def test_braces_that_are_not_references_stay_as_written(text: str) -> None:
    result = interpolate(text, {"x": 3})
    if text == "{{x}}x":
        assert result == "{3}x"  # the inner {x} is a reference; the outer braces stay
    else:
        assert result == text


def test_long_values_are_cut_with_a_marker() -> None:
    result = interpolate("{big}", {"big": "a" * 50000})
    assert len(result) < 21000 and "characters omitted" in result


def test_context_describes_variables_by_duck_typing() -> None:
    namespace = {"frame": FakeFrame(), "model": WithLLMRepr(), "items": [1, 2, 3], "_hidden": 1, "name": "Ada",
                 "grid": FakeArray((2, 3)), "scalar": FakeArray(())}
    context = build_context("vars", namespace)
    assert "frame: FakeFrame shape=(3, 2)" in context
    assert "columns: city (object), temp (float64)" in context
    assert "Oslo   3.5" in context
    assert "a model-friendly summary" in context and "<never shown>" not in context
    assert "items: list len=3 = [1, 2, 3]" in context
    assert "grid: FakeArray shape=(2, 3) dtype=float32" in context
    assert "scalar: FakeArray = FakeArray()" in context  # a 0-d value is shown by its value
    assert "_hidden" not in context


def test_context_modes_and_budget() -> None:
    namespace = {f"v{i}": "x" * 300 for i in range(200)}
    auto = build_context("auto", namespace)
    assert len(auto) <= 4000 and "more variables not shown" in auto
    assert build_context("none", namespace) == ""
    with pytest.raises(ValueError):
        build_context("everything", namespace)


@pytest.fixture(scope="module")
def shell() -> Any:
    return start_ipython()


def test_history_records_cells_and_the_last_error_from_post_run_cell(shell: Any) -> None:
    history = KernelHistory()
    shell.events.register("post_run_cell", history.record)
    try:
        shell.run_cell("value = 41 + 1\nvalue", store_history=True)
        shell.run_cell("%autocoder --id")  # the assistant's own cells are not context
        shell.run_cell("def broken():\n    return undefined_name\nbroken()", store_history=True)
    finally:
        shell.events.unregister("post_run_cell", history.record)
    sources = [cell.source for cell in history.cells]
    assert sources == ["value = 41 + 1\nvalue", "def broken():\n    return undefined_name\nbroken()"]
    assert history.cells[0].output == "42"
    error = history.last_error
    assert error is not None and error.error == "NameError: name 'undefined_name' is not defined"
    assert "return undefined_name" in error.traceback
    assert "interactiveshell.py" not in error.traceback  # IPython's own frames are left out
    context = build_context("cells", {}, history)
    assert "-> 42" in context and "## Last error" in context and "NameError" in context
    assert "Last error" not in build_context("cells", {}, history, include_error=False)
    fix = fix_prompt(error)
    assert "broken()" in fix and "NameError" in fix


def test_compose_message_and_option_split() -> None:
    assert compose_message("hi", "") == "hi"
    assert compose_message("hi", "ctx") == "hi\n\n<kernel-context>\nctx\n</kernel-context>"
    assert prompt_of(compose_message("a\n\nb", "x\n\ny")) == "a\n\nb" and prompt_of("hi") == "hi"
    assert split_options("-m big --insert what's {x}? -m stays") == (["-m", "big", "--insert"], "what's {x}? -m stays")
    assert split_options("--context=none -- -1 is odd") == (["--context=none"], "-1 is odd")


def test_an_error_raised_before_loading_is_still_found(shell: Any) -> None:
    shell.run_cell("def early():\n    raise KeyError('early bird')\nearly()", store_history=True)
    error = error_before_load()
    assert error is not None and error.error == "KeyError: 'early bird'"
    assert error.source.rstrip() == "def early():\n    raise KeyError('early bird')\nearly()"
    assert "raise KeyError('early bird')" in error.traceback and "interactiveshell.py" not in error.traceback


class CountedRepr:
    described = 0

    def __repr__(self) -> str:
        CountedRepr.described += 1
        return "counted"


def test_context_describes_only_what_it_shows_whatever_the_namespace_holds() -> None:
    namespace = {f"v{i}": CountedRepr() for i in range(5000)}
    CountedRepr.described = 0
    context = build_context("vars", namespace)
    more = int(context.rsplit("... ", 1)[1].split(" more variables not shown")[0])
    assert 10 < 5000 - more < 500  # the first ones shown, the rest counted
    assert CountedRepr.described == 5000 - more + 1  # those shown and the one that no longer fitted: no other


class SlowRepr:
    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def __repr__(self) -> str:
        self.release.wait(30)  # a repr that takes seconds (released by the test once it is done)
        return "slow"


def test_a_variable_whose_repr_takes_seconds_is_skipped_not_waited_for() -> None:
    release = threading.Event()
    try:
        context = build_context("vars", {"before": 1, "slow": SlowRepr(release), "after": 2})
    finally:
        release.set()
    assert "before: int = 1" in context and "after: int = 2" in context
    assert "slow: SlowRepr (not described: its description took too long)" in context
