"""Real Jupyter servers for tests: JupyterLab, Notebook 7 or a bare Jupyter server on 127.0.0.1 with a random port,
a generated token (passed through JUPYTER_TOKEN, so not in `ps`) and throw-away home, settings, runtime and data
folders; kernels the server starts, and clients to them; headless Chromium for the browser tests (Playwright with
Debian's chromium). Shared by the panel, hostile-output, live-notebook and review tests and benchmarks/bench_live.py.
See /work/shared/notes/jupyterlab-browser-testing.md for the facts behind the flags."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest

from auto_coder_nb.testing.ports import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000  # generous: the browser tests' waits end as soon as the page shows what they wait for
OUTPUT = Path(__file__).parent.parent / "test-output"  # logs and screenshots, one folder per test module
APPS = ("lab", "notebook", "server")

# CI (CI=true) installs chromium and must run these tests; a developer machine without it skips, saying why.
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists() and os.environ.get("CI") != "true",
                                    reason="needs Debian's chromium: apt-get install chromium (.ci/run does)")


def model_env(llm_base_url: str, approval_mode: str = "ask") -> dict[str, str]:
    """What the server's kernels need to reach the scripted model server (FakeLLMServer)."""
    return {"AUTO_CODER_BASE_URL": llm_base_url, "AUTO_CODER_MODEL": "fake-model",
            "AUTO_CODER_APPROVAL_MODE": approval_mode}


@dataclass
class Jupyter:
    url: str  # without a trailing slash
    token: str
    root: Path
    log: Path
    runtime_dir: Path
    process: subprocess.Popen[bytes]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, f"{self.url}/{path}", headers=self.headers, timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def start_kernel_session(self, notebook: str) -> tuple[str, str]:
        """A notebook session with a new kernel, as a frontend opening `notebook` makes: (session id, kernel id)."""
        session = self.api("POST", "api/sessions", json={"path": notebook, "type": "notebook", "name": notebook,
                                                          "kernel": {"name": "python3"}}).json()
        return session["id"], session["kernel"]["id"]

    @contextmanager
    def kernel_client(self, kernel_id: str) -> Iterator[Any]:
        """A blocking client on a kernel the server started (its connection file is in our runtime folder)."""
        from jupyter_client import BlockingKernelClient

        client = BlockingKernelClient(connection_file=str(self.runtime_dir / f"kernel-{kernel_id}.json"))
        client.load_connection_file()
        client.start_channels()
        try:
            client.wait_for_ready(timeout=120)
            yield client
        finally:
            client.stop_channels()

    def wait_for_connected_kernel(self, notebook: str) -> None:
        wait_for_connected_kernel(lambda: self.api("GET", "api/sessions").json(), notebook)


def wait_for_connected_kernel(sessions: Callable[[], list[dict[str, Any]]], notebook: str) -> None:
    """Until a server's `sessions` (its api/sessions) say the notebook's kernel is idle with a client connected (the
    page's websocket): before that, Run All in the page does nothing, and the page's own indicators may already say
    idle."""
    for _ in range(1200):
        kernels = [s["kernel"] for s in sessions() if s.get("path") == notebook and s.get("kernel")]
        if any(k.get("execution_state") == "idle" and k.get("connections", 0) >= 1 for k in kernels):
            return
        time.sleep(0.1)
    raise AssertionError(f"the kernel of {notebook} did not become ready within two minutes")


def user_settings(folder: Path) -> Path:
    """JupyterLab settings for tests: every cell rendered (no windowing), the kernel started without a dialog,
    no news or update checks."""
    tracker = folder / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True, exist_ok=True)
    tracker.write_text(json.dumps({"windowingMode": "none", "autoStartDefaultKernel": True}))
    notifications = folder / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notifications.parent.mkdir(parents=True, exist_ok=True)
    notifications.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return folder


@contextmanager
def jupyter(tmp_path: Path, root: Path, log: Path, env: Mapping[str, str], app: str = "lab",
            extra_args: tuple[str, ...] = ()) -> Iterator[Jupyter]:
    """Start `jupyter <app>` (lab, notebook for Notebook 7, or a bare server) serving `root`, and stop it afterwards.
    `env` is added to a settings-free copy of the environment (HOME, Jupyter and IPython folders under tmp_path,
    no API keys); the kernels it starts inherit it. JupyterLab's server also serves Notebook 7's pages
    (/notebooks/...). jupyter-collaboration's files go to tmp_path, so `root` holds only what the test put there."""
    assert app in APPS, app
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    runtime = tmp_path / "jupyter-runtime"
    token, port = secrets.token_hex(16), free_port()
    full_env = {
        **os.environ,
        "HOME": str(home),  # no ~/.auto-coder.yaml, no user Jupyter settings
        "JUPYTER_TOKEN": token,
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(runtime),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        **env,
    }
    for key in ("AUTO_CODER_API_KEY", "OPENAI_API_KEY"):
        full_env.pop(key, None)
    command = [sys.executable, "-m", "jupyter", app, "--allow-root", "--no-browser", "--ip=127.0.0.1",
               f"--port={port}", f"--ServerApp.root_dir={root}",
               f"--FileCheckpoints.checkpoint_dir={tmp_path / 'checkpoints'}",
               # jupyter-collaboration's store and session records, which it would keep in the server's working
               # folder and in <root>/.jupyter/ (where the agent's list_directory would see them).
               f"--SQLiteYStore.db_path={tmp_path / 'jupyter_ystore.db'}",
               f"--YDocExtension.session_store_path={tmp_path / 'collaboration_sessions.json'}", *extra_args]
    if app != "server":
        options = "LabApp" if app == "lab" else "JupyterNotebookApp"
        command += [f"--{options}.user_settings_dir={user_settings(tmp_path / 'settings')}",
                    f"--{options}.workspaces_dir={tmp_path / 'workspaces'}"]
    if app == "lab":
        command += ["--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as log_file:
        # cwd outside the root, so nothing the server writes in its working folder shows in the listing.
        process = subprocess.Popen(command, env=full_env, cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, token, process, log)
        yield Jupyter(url, token, root, log, runtime, process)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_serving(url: str, token: str, process: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(600):
        if process.poll() is not None:
            raise AssertionError(f"Jupyter exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/api/status", headers={"Authorization": f"token {token}"}).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("Jupyter did not answer within a minute")


def write_notebook(path: Path, sources: list[str]) -> None:
    """A notebook of code cells with the python3 kernel, as a user would have saved it."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in sources])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)


def saved_notebook(path: Path, condition: Callable[[Any], Any]) -> Any:
    """The notebook file once the server has saved a state meeting `condition` (with real-time collaboration it
    saves about a second after a change, by itself)."""
    for _ in range(300):
        try:
            notebook = nbformat.read(path, as_version=4)
            if condition(notebook):
                return notebook
        except (ValueError, OSError):
            pass  # caught while being written
        time.sleep(0.1)
    raise AssertionError(f"{path.name} was never saved with the expected state: {path.read_text()[:2000]}")


def wait_for(condition: Callable[[], Any], what: str) -> None:
    """Until `condition()` holds (a change reaching another client of a room, say), three minutes at most."""
    for _ in range(1800):
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"waited three minutes for {what}")
