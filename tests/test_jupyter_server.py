"""Finding the kernel's Jupyter server (jupyter_server.find_server): settings first, then JupyterHub's variables,
then the runtime file of the kernel's parent process; and its token kept secret. The REST calls and the room are
tested against a real server in test_live_notebook.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auto_coder_nb.jupyter_server import find_server
from auto_coder_nb.live_notebook import LiveEditing
from auto_coder_nb.tools import Workspace
from auto_coder_nb.tools.notebook_document import Notebooks


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "runtime"
    folder.mkdir()
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(folder))
    (folder / "jpserver-4242.json").write_text(json.dumps({
        "url": "http://127.0.0.1:8888/lab-prefix/", "token": "runtime-token", "root_dir": str(tmp_path), "pid": 4242}))
    (folder / "jpserver-77.json").write_text("{not json")
    return folder


def test_the_runtime_file_of_the_parent_process(runtime: Path, tmp_path: Path) -> None:
    info = find_server({"JPY_PARENT_PID": "4242"})
    assert info is not None
    assert (info.url, info.token, info.root_dir) == ("http://127.0.0.1:8888/lab-prefix/", "runtime-token", tmp_path)
    assert info.found_by == "runtime file jpserver-4242.json"
    assert "runtime-token" not in repr(info)
    assert info.websocket_url("api/x") == "ws://127.0.0.1:8888/lab-prefix/api/x"
    assert find_server({"JPY_PARENT_PID": "77"}) is None  # a broken file is no server
    assert find_server({"JPY_PARENT_PID": "1"}) is None  # no file for that process (and no kernel id to look for)


def test_jupyterhub_and_settings_come_first(runtime: Path) -> None:
    hub = {"JPY_PARENT_PID": "4242", "JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:8081/user/ada",
           "JUPYTERHUB_API_TOKEN": "hub-token"}
    info = find_server(hub)
    assert info is not None and (info.url, info.token, info.root_dir) == (
        "http://127.0.0.1:8081/user/ada/", "hub-token", None)
    settings = {**hub, "AUTO_CODER_JUPYTER_URL": "https://gateway.example/jupyter",
                "AUTO_CODER_JUPYTER_TOKEN": "remote-token", "AUTO_CODER_JUPYTER_ROOT": "/home/ada"}
    info = find_server(settings)
    assert info is not None and (info.url, info.token, str(info.root_dir)) == (
        "https://gateway.example/jupyter/", "remote-token", "/home/ada")
    assert info.websocket_url("room") == "wss://gateway.example/jupyter/room"


def test_the_servers_token_is_one_of_the_sessions_secrets(runtime: Path, tmp_path: Path) -> None:
    """Found before any live edit, so a hub token in the kernel's environment is hidden from run_code at once."""
    live = LiveEditing("kernel-id", {"JUPYTERHUB_SERVICE_URL": "http://127.0.0.1:8081/user/ada/",
                                     "JUPYTERHUB_API_TOKEN": "hub-token"})
    workspace = Workspace(tmp_path)
    notebooks = Notebooks(lambda: workspace, live=live, secrets=live.secret_values)
    assert notebooks.secret_values() == ["hub-token"]
    assert LiveEditing(None, {}).secret_values() == []
