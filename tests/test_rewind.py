"""Per-cell review and rewind without a browser: a real session and its notebook tools on .ipynb files, the
project's test server over HTTP, saved conversations on disk; the cell log (`CellChanges`) on a real
`MemoryNotebook` for what only a live document does (undo cell by cell, conflicts)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from turns import Answer, approve, collect

from auto_coder_nb.cell_changes import CellChanges
from auto_coder_nb.config import load_config
from auto_coder_nb.events import ApprovalRequest, Event, ToolResult
from auto_coder_nb.history import ConversationStore, read_records
from auto_coder_nb.rewind import RewindRefused, assigned_names
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import FakeLLMServer, reply
from auto_coder_nb.tools.notebook import build_notebook_tools, run_python
from auto_coder_nb.tools.notebook_document import MemoryNotebook
from auto_coder_nb.tools.registry import ToolError


def write_notebook(path: Path, *sources: str) -> list[str]:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    nbformat.write(notebook, path)
    return [cell.id for cell in notebook.cells]


def sources(path: Path) -> list[str]:
    return [cell.source for cell in nbformat.read(path, as_version=4).cells]


class Notebooks:
    """A session with the notebook tools on the test server, in `root`; `turn()` runs one turn, answering each
    approval with `answer`."""

    def __init__(self, server: FakeLLMServer, root: Path, mode: str) -> None:
        self.server, self.root = server, root
        self.namespace: dict[str, Any] = {}
        config = load_config({"llm.base_url": server.base_url, "agent.approval_mode": mode},
                             env={}, cwd=root, home=root)
        holder: list[Session] = []
        tools = build_notebook_tools(self.namespace, lambda code: run_python(code, self.namespace),
                                     lambda: holder[0].workspace, notebooks=lambda: holder[0].open_notebooks())
        self.session = Session.create(config, working_dir=root, extra_tools=tools)
        holder.append(self.session)
        self.loop = asyncio.new_event_loop()

    def turn(self, prompt: str, *steps: dict[str, Any], answer: Answer = approve) -> list[Event]:
        self.server.enqueue(*steps, reply.text("Done."))
        return self.loop.run_until_complete(collect(self.session.agent, prompt, answer))

    def close(self) -> None:
        self.loop.run_until_complete(self.session.aclose())
        self.loop.close()


@pytest.fixture
def make(fake_server: FakeLLMServer, root: Path) -> Iterator[Callable[[str], Notebooks]]:
    made: list[Notebooks] = []

    def build(mode: str) -> Notebooks:
        made.append(Notebooks(fake_server, root, mode))
        return made[-1]

    yield build
    for notebooks in made:
        notebooks.close()


def edit(action: str, **arguments: Any) -> dict[str, Any]:
    return reply.tool_call("edit_notebook", {"path": "a.ipynb", "action": action, **arguments})


def results(events: list[Event]) -> list[ToolResult]:
    return [event for event in events if isinstance(event, ToolResult)]


def test_ask_mode_shows_one_card_per_cell_and_the_model_hears_which_cell_was_rejected(
        make: Callable[[str], Notebooks], root: Path) -> None:
    ids = write_notebook(root / "a.ipynb", "x = 1", "y = 2")
    notebooks = make("ask")
    asked: list[ApprovalRequest] = []

    def reject(request: ApprovalRequest) -> None:
        asked.append(request)
        request.deny("keep x as it is")

    events = notebooks.turn("change x", edit("replace", cell_id=ids[0], source="x = 10"), answer=reject)
    [request] = asked
    [card] = request.cells
    assert (card.action, card.cell_id, card.index) == ("replace", ids[0], 0)
    assert "-x = 1\n+x = 10\n" in card.diff() and not request.can_run  # no kernel here to run it in
    [result] = results(events)
    assert result.output == (f"The user rejected your change to cell 0 (code, id {ids[0]}) of a.ipynb: it was not "
                             "made. Reason: keep x as it is")
    assert sources(root / "a.ipynb") == ["x = 1", "y = 2"], "nothing is applied before Accept"

    events = notebooks.turn("change x", edit("replace", cell_id=ids[0], source="x = 10"))
    assert not results(events)[0].is_error and sources(root / "a.ipynb") == ["x = 10", "y = 2"]
    assert [change.action for change in results(events)[0].cells] == ["replace"]


def test_auto_edit_changes_can_be_reverted_until_the_turn_after_next_and_the_model_hears_it(
        make: Callable[[str], Notebooks], root: Path, fake_server: FakeLLMServer) -> None:
    ids = write_notebook(root / "a.ipynb", "x = 1", "y = 2")
    notebooks = make("auto-edit")
    cells = notebooks.session.cells
    assert cells is not None
    events = notebooks.turn("edit", edit("replace", cell_id=ids[1], source="y = 20"),
                            edit("insert", index=2, source="z = 3"))
    replaced, inserted = [change for result in results(events) for change in result.cells]
    assert (replaced.action, inserted.action, inserted.index) == ("replace", "insert", 2)
    assert sources(root / "a.ipynb") == ["x = 1", "y = 20", "z = 3"]

    assert "Reverted the insert of cell 2" in cells.revert(inserted.number, "not needed")
    assert sources(root / "a.ipynb") == ["x = 1", "y = 20"]
    with pytest.raises(ToolError, match="no change"):
        cells.revert(inserted.number)
    notebooks.turn("next")
    told = fake_server.chat_requests[-1].json["messages"]
    [user] = [m for m in told if m["role"] == "user" and "<user-review>" in m["content"]]
    assert f"reverted your insert of cell 2 (code, id {inserted.cell_id})" in user["content"]
    assert "Reason: not needed" in user["content"] and user["content"].endswith("next")
    assert cells.revertible(replaced), "still the turn after the change's"
    notebooks.turn("and the next")
    with pytest.raises(ToolError, match="too old to revert"):
        cells.revert(replaced.number)


def test_rewind_two_turns_restores_the_notebook_the_files_and_the_conversation(
        make: Callable[[str], Notebooks], root: Path, data_dir: Path) -> None:
    ids = write_notebook(root / "a.ipynb", "x = 1", "y = 2")
    notebooks = make("auto-edit")
    session = notebooks.session
    notebooks.turn("first", edit("replace", cell_id=ids[0], source="x = 10"))
    after_first = (root / "a.ipynb").read_bytes()
    messages_after_first = list(session.conversation.messages)
    notebooks.turn("second", edit("insert", index=0, source="import os"),
                   reply.tool_call("write_file", {"path": "notes.txt", "content": "made in turn 2\n"}))
    notebooks.turn("third", edit("move", cell_id=ids[1], to_index=0), edit("delete", cell_id=ids[0]))
    assert sources(root / "a.ipynb") == ["y = 2", "import os"]

    with pytest.raises(RewindRefused, match="There is no turn 4: this conversation has 3 turn"):
        session.rewind(4)
    outcome = session.rewind(2)
    assert (root / "a.ipynb").read_bytes() == after_first and not (root / "notes.txt").exists()
    assert session.conversation.messages == messages_after_first
    assert outcome.prompt == "second" and "Rewound to before turn 2 (second)" in outcome.message
    assert "notes.txt" in outcome.message

    notebooks.turn("second again")  # numbered 2 again
    saved = ConversationStore().find(session.conversation.correlation_id)
    kinds = [(r["type"], r.get("turn")) for r in read_records(saved.path) if r["type"] in ("turn", "rewind")]
    assert kinds == [("turn", 1), ("turn", 2), ("turn", 3), ("rewind", 2), ("turn", 2)]

    fresh = make("auto-edit").session  # another process: resuming must not bring turns 2 and 3 back
    fresh.resume(saved)
    prompts = [m["content"] for m in fresh.conversation.messages if m["role"] == "user"]
    assert prompts == ["first", "second again"]
    assert fresh.turns is not None and [turn.prompt for turn in fresh.turns.current()] == ["first", "second again"]
    again = fresh.rewind(2)
    assert [m["content"] for m in fresh.conversation.messages if m["role"] == "user"] == ["first"]
    assert "not known" in again.message  # the kernel's variables of a turn from another process


def test_rewind_refuses_what_was_changed_since_and_force_keeps_it(
        make: Callable[[str], Notebooks], root: Path) -> None:
    ids = write_notebook(root / "a.ipynb", "x = 1")
    notebooks = make("auto-edit")
    notebooks.turn("edit", edit("replace", cell_id=ids[0], source="x = 10"))
    notebook = nbformat.read(root / "a.ipynb", as_version=4)
    notebook.cells[0].source = "x = 10  # the user's comment"
    nbformat.write(notebook, root / "a.ipynb")
    edited = (root / "a.ipynb").read_bytes()
    messages = len(notebooks.session.conversation.messages)

    with pytest.raises(RewindRefused) as refused:
        notebooks.session.rewind()
    assert "a.ipynb (changed since the agent wrote it)" in str(refused.value) and "--force" in str(refused.value)
    assert (root / "a.ipynb").read_bytes() == edited and len(notebooks.session.conversation.messages) == messages

    outcome = notebooks.session.rewind(force=True)
    assert sources(root / "a.ipynb") == ["x = 1"]
    assert (root / "a.ipynb.before-undo").read_bytes() == edited, "what the user typed is kept, and said"
    assert "a.ipynb -> a.ipynb.before-undo" in outcome.message


def test_cell_changes_undo_cell_by_cell_and_refuse_a_cell_edited_since(root: Path) -> None:
    document = MemoryNotebook({"cells": [{"id": "a", "cell_type": "code", "source": "a = 1", "metadata": {},
                                          "outputs": [], "execution_count": None},
                                         {"id": "b", "cell_type": "markdown", "source": "# B", "metadata": {}}]},
                              root / "n.ipynb")
    log = CellChanges(lambda path: document)
    agent = log.watch(document)
    log.turn = 1
    agent.replace("a", "a = 2")
    new = agent.insert(1, "c = 3")
    log.turn = 2
    agent.move("b", 0)
    agent.delete("a")
    assert [(c.turn, c.action, c.cell_id) for c in log.changes] == [
        (1, "replace", "a"), (1, "insert", new.id), (2, "move", "b"), (2, "delete", "a")]
    document.replace(new.id, "c = 3  # mine")  # the user, through the document itself: not recorded
    assert len(log.changes) == 4

    report = log.undo(log.of_turns(1))
    assert report.conflicts == [f"cell 1 (code, id {new.id}) of n.ipynb was edited after the agent changed it in "
                                "turn 1"]
    assert [cell.source for cell in document.cells()] == ["# B", "c = 3  # mine"], "nothing done"
    report = log.undo(log.of_turns(1), force=True)
    assert [(cell.id, cell.source) for cell in document.cells()] == [("a", "a = 1"), ("b", "# B")]
    assert [cell.source for cell in report.overwritten[str(root / "n.ipynb")]] == ["c = 3  # mine"]
    assert len(log.changes) == 4 and all(change.reverted for change in log.changes)


def test_assigned_names_are_what_code_binds_or_changes() -> None:
    code = "%matplotlib inline\nimport numpy as np\nfrom os import path\ndf['x'] = 1\ndef f(): pass\nfor i in []: pass"
    assert assigned_names(code) == {"np", "path", "df", "f", "i"}
    assert assigned_names("this is not python") == set()


# -- the panel, in process (real widgets clicked through their own click(); tests/test_panel.py's way) ---------

def panel_session(server: FakeLLMServer, root: Path, mode: str) -> Session:
    namespace: dict[str, Any] = {}
    holder: list[Session] = []
    tools = build_notebook_tools(namespace, lambda code: run_python(code, namespace), lambda: holder[0].workspace,
                                 notebooks=lambda: holder[0].open_notebooks())
    config = load_config({"llm.base_url": server.base_url, "llm.model": "fake-model", "agent.approval_mode": mode},
                         env={}, cwd=root, home=root)
    holder.append(Session.create(config, working_dir=root, extra_tools=tools))
    return holder[0]


def test_panel_cards_accept_reject_revert_and_rewind_to_here(fake_server: FakeLLMServer, root: Path) -> None:
    from auto_coder_nb.panel import ChatPanel
    from tests.test_panel import find, html_of, until

    ids = write_notebook(root / "a.ipynb", "x = 1", "y = 2")

    async def scenario() -> None:
        panel = ChatPanel(panel_session(fake_server, root, "ask"))
        fake_server.enqueue(edit("replace", cell_id=ids[0], source="x = 10"), reply.text("Asked."))
        panel.send("change x")
        await until(lambda: panel.state == "waiting for approval", "the cell card")
        card = find(panel.widget, "autocoder-tool")[-1]
        assert "-x = 1" in html_of(card) and "+x = 10" in html_of(card) and len(find(card, "autocoder-cell")) == 1
        labels = [b.description for css in ("autocoder-accept", "autocoder-accept-run", "autocoder-reject")
                  for b in find(card, css)]
        assert labels == ["Accept", "Accept & Run", "Reject"]
        assert find(card, "autocoder-accept-run")[0].layout.display == "none", "no kernel to run it in here"
        find(card, "autocoder-reason")[0].value = "not now"
        find(card, "autocoder-reject")[0].click()
        await panel.wait()
        assert sources(root / "a.ipynb") == ["x = 1", "y = 2"]
        assert "Reason: not now" in fake_server.chat_requests[-1].json["messages"][-1]["content"]

        panel.session.policy.mode = "auto-edit"
        fake_server.enqueue(edit("replace", cell_id=ids[1], source="y = 20"), reply.text("Changed y."))
        await panel.ask("change y")
        assert sources(root / "a.ipynb") == ["x = 1", "y = 20"], panel.transcript
        [revert] = find(panel.widget, "autocoder-revert")
        revert.click()
        await until(lambda: revert.disabled, "the revert")
        assert sources(root / "a.ipynb") == ["x = 1", "y = 2"]

        fake_server.enqueue(edit("insert", index=2, source="z = 3"), reply.text("Added z."))
        await panel.ask("add z")
        assert sources(root / "a.ipynb") == ["x = 1", "y = 2", "z = 3"]
        rewinds = find(panel.widget, "autocoder-rewind")
        assert [button.description for button in rewinds] == ["Rewind to here"] * 3
        rewinds[-1].click()  # back to before "add z"
        await until(lambda: panel._input.value == "add z", "the prompt back in the input")
        assert sources(root / "a.ipynb") == ["x = 1", "y = 2"]
        assert "add z" not in [record["text"] for record in panel.transcript if record["role"] == "user"]
        assert "Rewound to before turn 3 (add z)" in panel.transcript[-1]["text"]

        panel.session.rewind(1)  # as a magic would: the panel's buttons of turns 1 and 2 are stale now
        await panel.ask("change x again")  # turn 1 again
        rewinds[0].click()
        await until(lambda: panel.transcript[-1]["role"] == "error", "the refusal")
        assert "no longer in the conversation" in panel.transcript[-1]["text"]
        assert [m["content"] for m in panel.session.conversation.messages if m["role"] == "user"] == [
            "change x again"]

    asyncio.run(scenario())
