"""Shared fixtures. Keep each one small and documented; tests talk real HTTP, never mocked transports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from auto_coder_nb.testing.server import FakeLLMServer
from auto_coder_nb.tools import ToolRegistry, Workspace, build_workspace_tools


@pytest.fixture
def fake_server() -> Iterator[FakeLLMServer]:
    """A started FakeLLMServer on 127.0.0.1 (random port), stopped after the test."""
    with FakeLLMServer() as server:
        yield server


# The machine's own settings that would change what the code under test does.
USER_SETTINGS = ("AUTO_CODER_", "OPENAI_", "USE_SSO", "SSO_TOKEN", "SERVER_SIDE_TOKEN_REFRESH", "JPY_", "JUPYTERHUB_")
# The machine's network settings (a CI runner behind a proxy would send the tests' requests to 127.0.0.1 through it)
# and its REPL-history folder (the REPL tests would write into the user's own). Matched in any case.
MACHINE_SETTINGS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
                    "XDG_STATE_HOME")


@pytest.fixture(autouse=True, scope="session")
def _without_the_users_settings() -> Iterator[None]:
    """Tests, and the processes and kernels they start, see none of the machine's auto-coder, OpenAI, SSO,
    Jupyter-session, JupyterHub, proxy or CA-bundle settings: each test sets what it needs."""
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith(USER_SETTINGS) or key.upper() in MACHINE_SETTINGS:
                patch.delenv(key)
        yield


@pytest.fixture(autouse=True)
def data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Saved conversations go to a fresh folder per test (AUTO_CODER_DATA_DIR, also seen by the processes and
    kernels a test starts), never into the real home."""
    folder = tmp_path_factory.mktemp("auto-coder-data")
    monkeypatch.setenv("AUTO_CODER_DATA_DIR", str(folder))
    return folder


@pytest.fixture(autouse=True)
def config_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's config folder (XDG_CONFIG_HOME, where trusted project files are recorded) is a fresh folder per
    test, also for the processes and kernels a test starts: never the real one."""
    folder = tmp_path_factory.mktemp("config-home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(folder))
    return folder


@pytest.fixture
def clean_env() -> dict[str, str]:
    """A copy of the (settings-free) environment, for a subprocess to get exactly what a test adds."""
    return dict(os.environ)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty project folder to use as a workspace root."""
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


@pytest.fixture
def workspace(root: Path) -> Workspace:
    return Workspace(root)


@pytest.fixture
def registry(workspace: Workspace) -> ToolRegistry:
    """The five workspace tools bound to `workspace`."""
    return ToolRegistry(build_workspace_tools(workspace))
