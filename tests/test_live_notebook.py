"""Live editing against a real Jupyter server with jupyter-collaboration, a real kernel it starts, and the scripted
model server; no browser (test_live_notebook_browser.py shows the same in JupyterLab and Notebook 7).

The "user" is a second client of the notebook's collaboration room in this process (`LiveEditing` pointed at
the server with AUTO_CODER_JUPYTER_URL/_TOKEN/_ROOT, as for a remote kernel), typing while the agent's turn waits
on a held model reply."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jupyter_helpers
import nbformat
import pytest
from jupyter_helpers import Jupyter, free_port, jupyter, model_env, saved_notebook, wait_for, write_notebook

from auto_coder_nb.jupyter_server import ServerInfo, find_server
from auto_coder_nb.live_notebook import CONNECT_TIMEOUT, LiveEditing, LiveNotebook, Room, RoomError, room_loop
from auto_coder_nb.testing.server import FakeLLMServer, reply
from auto_coder_nb.tools import ToolError, ToolRegistry, Workspace
from auto_coder_nb.tools.notebook import build_notebook_tools, run_python
from auto_coder_nb.tools.notebook_document import CellChanged, CellNotFound, Notebooks, NotLive

pytest.importorskip("jupyter_server_ydoc", reason="needs jupyter-collaboration (the test extra)")
pytest.importorskip("pycrdt", reason="needs the live extra (in the test extra)")
OUTPUT = jupyter_helpers.OUTPUT / "live_notebook"


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, llm: FakeLLMServer) -> Iterator[Jupyter]:
    """A Jupyter server with real-time collaboration; its kernels reach the scripted model and approve all."""
    tmp = tmp_path_factory.mktemp("live")
    root = tmp / "work"
    root.mkdir()
    with jupyter(tmp, root, OUTPUT / "server.log", model_env(llm.base_url, "full-auto"), app="server") as started:
        yield started


def user_of(server: Jupyter, kernel_id: str) -> LiveEditing:
    """Another client of the kernel's notebook room, as a remote kernel would find it (settings, not discovery)."""
    return LiveEditing(kernel_id, {"AUTO_CODER_JUPYTER_URL": server.url, "AUTO_CODER_JUPYTER_TOKEN": server.token,
                                   "AUTO_CODER_JUPYTER_ROOT": str(server.root)})


def _execute(client: Any, code: str) -> str:
    """Run code in the kernel; returns what the cell showed (streams, results, errors) as text."""
    shown: list[str] = []

    def keep(message: dict[str, Any]) -> None:
        content = message["content"]
        if message["msg_type"] == "stream":
            shown.append(content["text"])
        elif message["msg_type"] in ("execute_result", "display_data"):
            shown.append(content["data"].get("text/plain", ""))
        elif message["msg_type"] == "error":
            shown.append("\n".join(content["traceback"]))

    reply_message = client.execute_interactive(code, output_hook=keep, timeout=180, allow_stdin=False)
    assert reply_message["content"]["status"] == "ok", shown
    return "".join(shown)


def test_the_agent_edits_and_runs_cells_of_the_open_notebook_while_the_user_types(
        server: Jupyter, llm: FakeLLMServer) -> None:
    path = server.root / "analysis.ipynb"
    write_notebook(path, ["x = 21", "# the user's cell", "y = 0", "print('last')"])
    session_id, kernel_id = server.start_kernel_session(path.name)
    user = user_of(server, kernel_id)
    try:
        with server.kernel_client(kernel_id) as kernel:
            _execute(kernel, "%load_ext auto_coder_nb\nx = 21")  # as if the user had run the first cell
            llm.clear()
            llm.enqueue(
                reply.tool_call("read_notebook", {"path": "analysis.ipynb"}),
                reply.tool_call("edit_notebook", {"path": "analysis.ipynb", "action": "replace", "index": 2,
                                                  "source": "y = x * 2"}),
                # Held until the user has typed: the turn is still running then.
                reply.tool_call("edit_notebook", {"path": "analysis.ipynb", "action": "insert", "index": 3,
                                                  "source": "print('y is', y)"}, wait_for="typed", wait_after=0),
                reply.tool_call("run_cell", {"path": "analysis.ipynb", "index": 2}),
                reply.tool_call("run_cell", {"path": "analysis.ipynb", "index": 3}),
                reply.tool_call("edit_notebook", {"path": "analysis.ipynb", "action": "delete", "cell_id": "nope"}),
                reply.text("Done."),
            )
            turn_output: list[str] = []
            turn = threading.Thread(target=lambda: turn_output.append(
                _execute(kernel, "%%autocoder\nDouble x into y and print it")))
            turn.start()
            try:
                wait_for(lambda: len(llm.chat_requests) >= 3, "the held request")
                document = user(path)
                assert document is not None and document.live
                # The replace is already in the room while the magic's turn still runs (it reaches this client
                # through the server a few milliseconds after the kernel sent it).
                wait_for(lambda: [c.source for c in document.cells()] == [
                    "x = 21", "# the user's cell", "y = x * 2", "print('last')"], "the replaced cell")
                document.change(lambda cells: cells.set_source(1, "# the user's cell, typed during the turn"))
            finally:
                llm.release("typed")
                turn.join(180)
            assert not turn.is_alive()
            wait_for(lambda: len(document.cells()) == 5 and document.cells()[3].outputs, "the run's outputs")
            cells = document.cells()
            assert [c.source for c in cells] == ["x = 21", "# the user's cell, typed during the turn", "y = x * 2",
                                                 "print('y is', y)", "print('last')"]
            assert cells[3].outputs == [{"output_type": "stream", "name": "stdout", "text": "y is 42\n"}]
            assert cells[3].execution_count is not None and cells[2].execution_count is not None
            assert "y is 42" not in turn_output[0]  # the run's output went to its cell, not the magic's
            results = [m["content"] for m in llm.chat_requests[-1].json["messages"] if m["role"] == "tool"]
            assert "the live document, unsaved edits included" in results[0]
            assert f"id={cells[2].id}" in results[0]
            assert "y is 42" in results[4]
            assert "no cell with id 'nope'" in results[5]
            assert _execute(kernel, "print(y)").strip() == "42"  # the run happened in the kernel
            doctor = _execute(kernel, "%autocoder --doctor")
            assert "collaboration room" in doctor and "round trip" in doctor and "analysis.ipynb" in doctor
            saved = saved_notebook(path, lambda nb: len(nb.cells) == 5 and nb.cells[3].outputs)
            assert saved.cells[1].source == "# the user's cell, typed during the turn"
            assert saved.cells[3].outputs[0]["text"] == "y is 42\n"
            everything = json.dumps([r.json for r in llm.requests if r.json]) + turn_output[0] + doctor
            assert server.token not in everything + path.read_text()  # the server's token never shows
    finally:
        user.close()
        server.api("DELETE", f"api/sessions/{session_id}")


def test_the_chat_panel_edits_and_runs_a_cell_of_the_open_notebook(server: Jupyter, llm: FakeLLMServer) -> None:
    """The panel's turn runs on the kernel's own loop, outside any cell: the same tools work from there."""
    path = server.root / "panel.ipynb"
    write_notebook(path, ["n = 6"])
    session_id, kernel_id = server.start_kernel_session(path.name)
    user = user_of(server, kernel_id)
    try:
        with server.kernel_client(kernel_id) as kernel:
            _execute(kernel, "n = 6")
            llm.clear()
            llm.enqueue(
                reply.tool_call("read_notebook", {"path": "panel.ipynb"}),
                reply.tool_call("edit_notebook", {"path": "panel.ipynb", "action": "insert",
                                                  "source": "print('from the panel', n * 7)"}),
                reply.tool_call("run_cell", {"path": "panel.ipynb", "index": 1}),
                reply.text("Ran it."),
            )
            _execute(kernel, "from auto_coder_nb import ChatPanel\npanel = ChatPanel()\n"
                             "panel.send('Add and run a cell')")
            wait_for(lambda: len(llm.chat_requests) >= 4 and _execute(kernel, "print(panel.running)").strip()
                      == "False", "the panel's turn to end")
            transcript = _execute(kernel, "print([r['text'] for r in panel.transcript if r['role'] == 'assistant'])")
            assert "Ran it." in transcript
            document = user(path)
            assert document is not None
            wait_for(lambda: len(document.cells()) == 2 and document.cells()[1].outputs, "the run's outputs")
            cell = document.cells()[1]
            assert cell.outputs == [{"output_type": "stream", "name": "stdout", "text": "from the panel 42\n"}]
            assert cell.execution_count is not None
            results = [m["content"] for m in llm.chat_requests[-1].json["messages"] if m["role"] == "tool"]
            assert "from the panel 42" in results[2]
    finally:
        user.close()
        server.api("DELETE", f"api/sessions/{session_id}")


@pytest.fixture
def open_notebook(server: Jupyter) -> Iterator[tuple[Path, str]]:
    """A notebook with a kernel session (the kernel itself is not used): (path, kernel id)."""
    path = server.root / f"nb-{free_port()}.ipynb"
    write_notebook(path, ["a = 1", "b = 2", "c = 3"])
    session_id, kernel_id = server.start_kernel_session(path.name)
    yield path, kernel_id
    server.api("DELETE", f"api/sessions/{session_id}")


def _tools(root: Path, live: LiveEditing, open_path: Path) -> ToolRegistry:
    namespace: dict[str, Any] = {}
    workspace = Workspace(root)
    notebooks = Notebooks(lambda: workspace, live=live, open_notebook=lambda: open_path)
    return ToolRegistry(build_notebook_tools(namespace, lambda code: run_python(code, namespace), lambda: workspace,
                                             notebooks=lambda: notebooks))


def _call(tools: ToolRegistry, name: str, **arguments: Any) -> str:
    return asyncio.run(tools.call(name, arguments))


def test_a_change_lands_on_the_right_cell_or_fails_cleanly(server: Jupyter, open_notebook: tuple[Path, str]) -> None:
    path, kernel_id = open_notebook
    agent, user = user_of(server, kernel_id), user_of(server, kernel_id)
    try:
        tools = _tools(server.root, agent, path)
        _call(tools, "read_notebook", path=path.name)
        document, seen_by_agent = user(path), agent(path)
        assert isinstance(document, LiveNotebook) and isinstance(seen_by_agent, LiveNotebook)

        def in_both(sources: list[str]) -> None:
            """Each client has the other's last change (a few milliseconds through the server)."""
            for doc in (document, seen_by_agent):
                wait_for(lambda d=doc: [cell.source for cell in d.cells()] == sources, f"{sources} in both rooms")

        a, b, c = document.ids()
        # The user inserts a cell above: index 1 still means the cell the agent saw there.
        document.insert(0, "import os")
        in_both(["import os", "a = 1", "b = 2", "c = 3"])
        _call(tools, "edit_notebook", path=path.name, action="replace", index=1, source="b = 20")
        in_both(["import os", "a = 1", "b = 20", "c = 3"])
        # The user edits the cell the agent changes next: the agent's change is refused, the user's text stays.
        document.change(lambda cells: cells.set_source(3, "c = 'the user typed'"))
        in_both(["import os", "a = 1", "b = 20", "c = 'the user typed'"])
        with pytest.raises(CellChanged, match="changed since you read it"):
            _call(tools, "edit_notebook", path=path.name, action="replace", cell_id=c, source="c = 30")
        # The user deletes the cell the agent changes next.
        document.delete(a)
        in_both(["import os", "b = 20", "c = 'the user typed'"])
        with pytest.raises(CellNotFound):
            _call(tools, "edit_notebook", path=path.name, action="delete", index=0)
        with pytest.raises(ToolError, match="added, removed or moved cells"):
            _call(tools, "edit_notebook", path=path.name, action="insert", index=1, source="x")
        with pytest.raises(ToolError, match="index 7 is out of range"):
            _call(tools, "edit_notebook", path=path.name, action="replace", index=7, source="x")
        in_both(["import os", "b = 20", "c = 'the user typed'"])  # none of the refused changes landed
        # After reading again, a move by index works on the new layout.
        _call(tools, "read_notebook", path=path.name)
        _call(tools, "edit_notebook", path=path.name, action="move", index=0, to_index=2)
        in_both(["b = 20", "c = 'the user typed'", "import os"])
        assert document.ids()[:2] == [b, c]
        # Snapshot and restore through the room.
        before = document.snapshot()
        document.delete(b)
        document.replace(c, "# changed", cell_type="markdown")
        document.restore(before)
        assert document.snapshot()["cells"] == before["cells"]
        in_both(["b = 20", "c = 'the user typed'", "import os"])
    finally:
        agent.close()
        user.close()


def test_a_renamed_notebook_is_named_to_the_agent(server: Jupyter, open_notebook: tuple[Path, str]) -> None:
    path, kernel_id = open_notebook
    agent = user_of(server, kernel_id)
    try:
        tools = _tools(server.root, agent, path)
        _call(tools, "read_notebook", path=path.name)
        renamed = path.with_name("renamed-" + path.name)
        server.api("PATCH", f"api/contents/{path.name}", json={"path": renamed.name})
        session = next(s for s in server.api("GET", "api/sessions").json() if s["kernel"]["id"] == kernel_id)
        server.api("PATCH", f"api/sessions/{session['id']}", json={"path": renamed.name, "name": renamed.name})
        with pytest.raises(ToolError, match=f"renamed to {renamed.name}: use that path"):
            _call(tools, "edit_notebook", path=path.name, action="insert", source="x = 1")
        result = _call(tools, "edit_notebook", path=renamed.name, action="insert", source="x = 1")
        assert "inserted code cell [3]" in result
        saved_notebook(renamed, lambda nb: len(nb.cells) == 4)
    finally:
        agent.close()


def test_two_agents_in_one_room_each_change_lands_once(server: Jupyter, open_notebook: tuple[Path, str]) -> None:
    path, kernel_id = open_notebook
    agents = [user_of(server, kernel_id) for _ in range(2)]
    try:
        documents = [agent(path) for agent in agents]
        errors: list[BaseException] = []

        def insert_many(document: Any, name: str) -> None:
            try:
                for i in range(10):
                    document.insert(len(document.ids()), f"{name} = {i}")
            except BaseException as exc:  # noqa: B036 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=insert_many, args=(document, name))
                   for document, name in zip(documents, "pq", strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors
        wanted = sorted(f"{name} = {i}" for name in "pq" for i in range(10))
        reader = user_of(server, kernel_id)
        try:
            wait_for(lambda: len(reader(path).ids()) == 23, "both agents' cells in a third client")  # type: ignore[union-attr]
            sources = [cell.source for cell in reader(path).cells()]  # type: ignore[union-attr]
        finally:
            reader.close()
        assert sorted(sources[3:]) == wanted and len(set(reader_ids := [s for s in sources])) == len(reader_ids)
        saved = saved_notebook(path, lambda nb: len(nb.cells) == 23)
        assert sorted(cell.source for cell in saved.cells[3:]) == wanted
    finally:
        for agent in agents:
            agent.close()


def test_a_big_live_notebook_is_read_in_pages(server: Jupyter) -> None:
    path = server.root / "big.ipynb"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"v{i} = {i}") for i in range(2000)])
    notebook.cells[5].source = "s = 'x'\n" * 650_000  # a 5 MB cell
    path.write_text(json.dumps(notebook))
    session_id, kernel_id = server.start_kernel_session(path.name)
    agent = user_of(server, kernel_id)
    try:
        tools = _tools(server.root, agent, path)
        first = _call(tools, "read_notebook", path=path.name)
        assert first.startswith("big.ipynb: 2000 cells") and "live document" in first
        assert len(first) < 31000 and "characters omitted" in first
        last = _call(tools, "read_notebook", path=path.name, start=1995)
        assert "[1999] code" in last
    finally:
        agent.close()
        server.api("DELETE", f"api/sessions/{session_id}")


def test_no_usable_room_gives_one_clear_line(tmp_path: Path, server: Jupyter, open_notebook: tuple[Path, str]) -> None:
    path, kernel_id = open_notebook
    settings = {"AUTO_CODER_JUPYTER_URL": f"http://127.0.0.1:{free_port()}", "AUTO_CODER_JUPYTER_TOKEN": "t0ken-value",
                "AUTO_CODER_JUPYTER_ROOT": str(server.root)}
    gone = LiveEditing(kernel_id, settings, open_notebook=lambda: path)
    with pytest.raises(NotLive, match="does not answer") as refused:
        gone(path)
    assert "\n" not in str(refused.value) and "t0ken-value" not in str(refused.value)
    assert gone(server.root / "other.ipynb") is None  # another notebook is just a file
    wrong_token = LiveEditing(kernel_id, {"AUTO_CODER_JUPYTER_URL": server.url, "AUTO_CODER_JUPYTER_TOKEN": "wrong",
                                          "AUTO_CODER_JUPYTER_ROOT": str(server.root)}, open_notebook=lambda: path)
    with pytest.raises(NotLive, match="refused the kernel's token"):
        wrong_token(path)
    # The first refused edit says how to turn live editing on; the next ones only why.
    tools = _tools(server.root, wrong_token, path)
    with pytest.raises(NotLive, match="refused the kernel's token"):
        _call(tools, "edit_notebook", path=path.name, action="replace", index=0, source="a = 2")
    assert nbformat.read(path, as_version=4).cells[0].source == "a = 1"  # the file was not written


def test_a_server_without_collaboration(tmp_path: Path, llm: FakeLLMServer) -> None:
    root = tmp_path / "work"
    root.mkdir()
    path = root / "plain.ipynb"
    write_notebook(path, ["a = 1"])
    with jupyter(tmp_path, root, OUTPUT / "plain-server.log", {}, app="server",
                 extra_args=('--ServerApp.jpserver_extensions={"jupyter_server_ydoc": False}',)) as plain:
        session_id, kernel_id = plain.start_kernel_session(path.name)
        live = user_of(plain, kernel_id)
        tools = _tools(root, live, path)
        with pytest.raises(NotLive) as first:
            _call(tools, "edit_notebook", path=path.name, action="insert", source="x = 1")
        assert "no real-time collaboration" in str(first.value) and "install jupyter-collaboration" in str(first.value)
        with pytest.raises(NotLive) as second:
            _call(tools, "edit_notebook", path=path.name, action="insert", source="x = 1")
        assert "install jupyter-collaboration" not in str(second.value)
        assert "as saved on disk" in _call(tools, "read_notebook", path=path.name)  # reading the file still works
        rows = {row[0]: row for row in live.check().rows}
        assert rows["jupyter server"][1] == "PASS" and rows["notebook"][1] == "PASS"
        assert rows["live editing"][1] == "WARN" and "jupyter-collaboration" in rows["live editing"][3]
        plain.api("DELETE", f"api/sessions/{session_id}")


def test_the_server_is_found_by_settings_then_jupyterhub_then_the_runtime_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order the README gives: the AUTO_CODER_JUPYTER_* settings, JupyterHub's variables, the runtime file of
    the kernel's parent server."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    (runtime / "jpserver-4242.json").write_text(json.dumps(
        {"url": "http://127.0.0.1:1/base/", "token": "from-file", "root_dir": str(tmp_path), "pid": 4242}))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    parent = {"JPY_PARENT_PID": "4242"}
    hub = {"JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:2/user/ann", "JUPYTERHUB_API_TOKEN": "from-hub"}
    settings = {"AUTO_CODER_JUPYTER_URL": "http://127.0.0.1:3", "AUTO_CODER_JUPYTER_TOKEN": "from-settings",
                "AUTO_CODER_JUPYTER_ROOT": str(tmp_path / "remote")}
    found = [find_server(env) for env in ({**parent, **hub, **settings}, {**parent, **hub}, parent)]
    assert [(info.url, info.token, info.root_dir, info.found_by) for info in found if info is not None] == [
        ("http://127.0.0.1:3/", "from-settings", tmp_path / "remote", "AUTO_CODER_JUPYTER_URL"),
        ("http://127.0.0.1:2/user/ann/", "from-hub", None, "JUPYTERHUB_SERVICE_URL"),
        ("http://127.0.0.1:1/base/", "from-file", tmp_path, "runtime file jpserver-4242.json"),
    ]
    assert find_server({"JPY_PARENT_PID": "1"}) is None  # no server started this kernel: VS Code, nbclient...


def test_a_room_that_never_syncs_times_out() -> None:
    """A websocket that accepts and never answers: joining fails within the timeout instead of hanging."""
    from websockets.asyncio.server import serve

    started, stop = threading.Event(), threading.Event()
    port = free_port()

    async def silent(connection: Any) -> None:
        await asyncio.get_running_loop().run_in_executor(None, stop.wait, 30)

    async def main() -> None:
        async with serve(silent, "127.0.0.1", port):
            started.set()
            await asyncio.get_running_loop().run_in_executor(None, stop.wait, 30)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    started.wait(10)
    info = ServerInfo(f"http://127.0.0.1:{port}/", "t", None, "test")
    room = Room(info.websocket_url("room"), {}, "x.ipynb", "json:notebook:x")
    try:
        with pytest.raises((RoomError, TimeoutError)):
            room_loop().run(room.open(1.0), CONNECT_TIMEOUT, "Joining the room")
    finally:
        room_loop().run(room.close(), 5, "Leaving")
        stop.set()
        thread.join(10)
