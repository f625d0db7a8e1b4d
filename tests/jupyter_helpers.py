"""Real Jupyter servers for tests: JupyterLab, Notebook 7 or a bare Jupyter server on 127.0.0.1 with a random
port, a generated token (passed through JUPYTER_TOKEN, so not in `ps`) and throw-away settings, runtime and data
folders; kernels the server starts, and clients to them. Shared by the panel and live-notebook tests."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
APPS = {"lab": "lab", "notebook": "notebook", "server": "server"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    """Start `jupyter <app>` serving `root` and stop it afterwards. `env` is added to a settings-free copy of the
    environment (HOME, Jupyter and IPython folders under tmp_path); the kernels it starts inherit it."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    settings = user_settings(tmp_path / "settings")
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
    command = [sys.executable, "-m", "jupyter", APPS[app], "--allow-root", "--no-browser", "--ip=127.0.0.1",
               f"--port={port}", f"--ServerApp.root_dir={root}",
               f"--FileCheckpoints.checkpoint_dir={tmp_path / 'checkpoints'}", *extra_args]
    if app in ("lab", "notebook"):
        command += [f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
                    "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if app == "notebook":
            command = [part.replace("--LabApp.", "--JupyterNotebookApp.") for part in command]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as log_file:
        # cwd outside the root: jupyter-collaboration keeps its store (.jupyter_ystore.db, .jupyter/) there.
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
