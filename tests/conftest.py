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


@pytest.fixture
def clean_env() -> dict[str, str]:
    """This process's environment without the auto-coder, OpenAI and SSO settings of the machine running
    the tests, for subprocesses that must see only what a test gives them."""
    drop = ("AUTO_CODER_", "OPENAI_", "USE_SSO", "SSO_TOKEN", "SERVER_SIDE_TOKEN_REFRESH")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


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
