"""Per-cell review and rewind on the live document of an open notebook: a real Jupyter server with
jupyter-collaboration, a kernel it started on the notebook, magics answering through the kernel's input box, the
scripted model server; the "user" is another client of the notebook's room (tests/test_live_notebook.py's way)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import jupyter_helpers
import nbformat
import pytest
from jupyter_helpers import Jupyter, jupyter, model_env, saved_notebook, wait_for, write_notebook
from test_live_notebook import user_of

from auto_coder_nb.cell_changes import MARK_TAG
from auto_coder_nb.testing.server import FakeLLMServer, reply

pytest.importorskip("jupyter_server_ydoc", reason="needs jupyter-collaboration (the test extra)")
pytest.importorskip("pycrdt", reason="needs the live extra (in the test extra)")
OUTPUT = jupyter_helpers.OUTPUT / "review_live"


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, llm: FakeLLMServer) -> Iterator[Jupyter]:
    tmp = tmp_path_factory.mktemp("review")
    root = tmp / "work"
    root.mkdir()
    with jupyter(tmp, root, OUTPUT / "server.log", model_env(llm.base_url), app="server") as started:
        yield started


def run(kernel: Any, code: str, answers: tuple[str, ...] = ()) -> str:
    """Run code in the kernel, answering its input() requests in order; returns what the cell showed as text."""
    shown: list[str] = []
    pending = list(answers)

    def keep(message: dict[str, Any]) -> None:
        content = message["content"]
        if message["msg_type"] == "stream":
            shown.append(content["text"])
        elif message["msg_type"] in ("execute_result", "display_data", "update_display_data"):
            shown.append(content["data"].get("text/plain", ""))

    def answer(message: dict[str, Any]) -> None:
        shown.append(message["content"]["prompt"])
        kernel.input(pending.pop(0))

    kernel.execute_interactive(code, output_hook=keep, stdin_hook=answer, allow_stdin=bool(answers), timeout=180)
    assert not pending, f"input() was asked fewer times than expected: {pending} left"
    return "".join(shown)


def edit(**arguments: Any) -> dict[str, Any]:
    return reply.tool_call("edit_notebook", {"path": "review.ipynb", **arguments})


def test_reject_accept_and_run_marks_and_rewind_through_the_live_document(server: Jupyter, llm: FakeLLMServer) -> None:
    path = server.root / "review.ipynb"
    write_notebook(path, ["a = 1", "# the user's notes", "b = a + 1"])
    session_id, kernel_id = server.start_kernel_session(path.name)
    user = user_of(server, kernel_id)
    try:
        with server.kernel_client(kernel_id) as kernel:
            run(kernel, "%load_ext auto_coder_nb\na = 1")
            document = user(path)
            assert document is not None and document.live
            ids = document.ids()

            # Ask mode: the first change is rejected with a reason, the second accepted and run (the magics' box).
            llm.clear()
            llm.enqueue(edit(action="replace", cell_id=ids[2], source="b = a + 100"),
                        edit(action="replace", cell_id=ids[2], source="b = a + 10"), reply.text("Done."))
            shown = run(kernel, "%%autocoder --context none\nchange b", answers=("n too big", "r"))
            assert "[r]un it after" in shown and f"replace cell 2 (code, id {ids[2]}) of review.ipynb" in shown
            tools = [m["content"] for m in llm.chat_requests[-1].json["messages"] if m["role"] == "tool"]
            assert tools[0].startswith("The user rejected your change to cell 2") and "Reason: too big" in tools[0]
            assert "The user chose Accept & Run; the cell ran" in tools[1]
            wait_for(lambda: document.cell(ids[2]).source == "b = a + 10"
                      and document.cell(ids[2]).execution_count is not None, "the cell accepted, then run")
            assert run(kernel, "print(b)").strip() == "11"
            # The server saves on its own, so the file may hold the mark for a moment: wait for the final state.
            saved_notebook(path, lambda nb: nb.cells[2].source == "b = a + 10"
                   and MARK_TAG not in nb.cells[2].metadata.get("tags", []))
            wait_for(lambda: MARK_TAG not in document.cell(ids[2]).metadata.get("tags", []), "the marks end")

            # Auto-edit: turn 2 inserts a cell (marked while the turn runs), turn 3 deletes the user's notes.
            llm.enqueue(edit(action="insert", index=3, source="c = b * 2"),
                        reply.text("Inserted.", wait_for="looked", wait_after=0))
            turn = threading.Thread(target=run, args=(kernel, "%autocoder --approval-mode auto-edit --context none "
                                                              "add c"))
            turn.start()
            try:
                wait_for(lambda: len(document.cells()) == 4, "the inserted cell")
                wait_for(lambda: MARK_TAG in document.cells()[3].metadata.get("tags", []), "its mark")
            finally:
                llm.release("looked")
                turn.join(180)
            # The unmark reaches this other client of the room a few milliseconds after the turn ends.
            wait_for(lambda: MARK_TAG not in document.cells()[3].metadata.get("tags", []), "the mark removed")
            run(kernel, "c = 22")  # the user runs the new cell
            llm.enqueue(edit(action="delete", cell_id=ids[1]), reply.text("Deleted."))
            run(kernel, "%autocoder --approval-mode auto-edit --context none drop the notes")
            wait_for(lambda: [c.source for c in document.cells()] == ["a = 1", "b = a + 10", "c = b * 2"],
                      "the deletion in the user's copy of the room")

            # The user edits the inserted cell: rewinding two turns would lose it, so it is refused, then forced.
            inserted = document.ids()[2]
            document.change(lambda cells: cells.set_source(2, "c = b * 3  # mine"))
            run(kernel, "from auto_coder_nb.kernel import get_session\nimport time\n"  # until the kernel's copy has it
                        f"for _ in range(3000):\n    if 'mine' in get_session().open_notebooks().open('review.ipynb')"
                        f".cell({inserted!r}).source: break\n    time.sleep(0.01)")
            refused = run(kernel, "%autocoder --rewind 2")
            assert f"cell 3 (code, id {inserted}) of review.ipynb was edited after the agent changed it in turn 2" \
                in refused and "--force" in refused
            assert len(document.cells()) == 3
            rewound = run(kernel, "%autocoder --rewind 2 --force")
            restored = [(ids[0], "a = 1"), (ids[1], "# the user's notes"), (ids[2], "b = a + 10")]
            wait_for(lambda: [(c.id, c.source) for c in document.cells()] == restored, "the rewound cells")
            assert "review.ipynb.before-rewind.ipynb" in rewound and "keep their current values: c." in rewound
            kept = nbformat.read(server.root / "review.ipynb.before-rewind.ipynb", as_version=4)
            assert [c.source for c in kept.cells] == ["c = b * 3  # mine"]
            saved = saved_notebook(path, lambda nb: len(nb.cells) == 3 and nb.cells[1].source == "# the user's notes")
            assert saved.cells[2].source == "b = a + 10"
    finally:
        user.close()
        server.api("DELETE", f"api/sessions/{session_id}")
