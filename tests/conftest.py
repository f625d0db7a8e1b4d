"""Shared fixtures. Keep each one small and documented; tests talk real HTTP, never mocked transports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from auto_coder_nb.testing.server import FakeLLMServer


@pytest.fixture
def fake_server() -> Iterator[FakeLLMServer]:
    """A started FakeLLMServer on 127.0.0.1 (random port), stopped after the test."""
    with FakeLLMServer() as server:
        yield server
