"""Real JupyterLab (and Notebook 7, served by the same server) for browser tests driven by headless Chromium through
Playwright: a server on 127.0.0.1 with throw-away home, settings and runtime folders, its kernels pointed at the
test LLM server. See /work/shared/notes/jupyterlab-browser-testing.md for the facts behind the flags."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
OUTPUT = Path(__file__).parent.parent / "test-output"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000  # generous: waits end as soon as the page shows what they wait for

# CI (CI=true) installs chromium and must run these tests; a developer machine without it skips, saying why.
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists() and os.environ.get("CI") != "true",
                                    reason="needs Debian's chromium: apt-get install chromium (.ci/run does)")


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def jupyter_server(tmp_path: Path, llm_base_url: str, log: Path, env: dict[str, str] | None = None,
                   app: str = "lab") -> Iterator[Lab]:
    """`jupyter lab` (or `jupyter notebook`: `app`) on a free port, serving `tmp_path/work`; every cell rendered (no
    windowing), no news or update checks, no kernel dialog. JupyterLab's server also serves Notebook 7's pages
    (/notebooks/...) when it is installed."""
    root, home, settings = tmp_path / "work", tmp_path / "home", tmp_path / "settings"
    root.mkdir(exist_ok=True)
    home.mkdir(exist_ok=True)
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none", "autoStartDefaultKernel": True}))
    notifications = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notifications.parent.mkdir(parents=True)
    notifications.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    token, port = secrets.token_hex(16), free_port()
    server_env = {
        **os.environ,
        "HOME": str(home),  # no ~/.auto-coder.yaml, no user Jupyter settings
        "JUPYTER_TOKEN": token,  # not on the command line, so not in `ps`
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
        "AUTO_CODER_BASE_URL": llm_base_url,
        "AUTO_CODER_MODEL": "fake-model",
        "AUTO_CODER_APPROVAL_MODE": "ask",
        **(env or {}),
    }
    server_env.pop("AUTO_CODER_API_KEY", None)
    server_env.pop("OPENAI_API_KEY", None)
    log.parent.mkdir(parents=True, exist_ok=True)
    options = "LabApp" if app == "lab" else "JupyterNotebookApp"
    command = [
        sys.executable, "-m", "jupyter", app, "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--ServerApp.root_dir={root}", f"--{options}.user_settings_dir={settings}",
        f"--{options}.workspaces_dir={tmp_path / 'workspaces'}", f"--FileCheckpoints.checkpoint_dir={tmp_path / 'cp'}",
        # jupyter-collaboration (the test extra has it) keeps its session ids out of the listing the model reads.
        f"--YDocExtension.session_store_path={tmp_path / 'collaboration_sessions.json'}",
    ]
    if app == "lab":
        command += ["--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with log.open("w") as log_file:
        # cwd outside the root: jupyter-collaboration keeps its store (.jupyter_ystore.db, .jupyter/) there.
        process = subprocess.Popen(command, env=server_env, cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(url, token, process, log)
        yield Lab(url, token, root, log)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_serving(url: str, token: str, process: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(600):
        if process.poll() is not None:
            raise AssertionError(f"JupyterLab exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/api/status", headers={"Authorization": f"token {token}"}).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("JupyterLab did not answer within a minute")


def wait_for_connected_kernel(lab: Lab, notebook: str) -> None:
    """Until the server says the notebook's kernel is idle with a client connected (the page's websocket): before
    that, Run All in the page does nothing, and the page's own indicators may already say idle."""
    for _ in range(1200):
        sessions = httpx.get(f"{lab.url}/api/sessions", headers={"Authorization": f"token {lab.token}"}).json()
        kernels = [s["kernel"] for s in sessions if s.get("path") == notebook and s.get("kernel")]
        if any(k.get("execution_state") == "idle" and k.get("connections", 0) >= 1 for k in kernels):
            return
        time.sleep(0.1)
    raise AssertionError(f"the kernel of {notebook} did not become ready within two minutes")
