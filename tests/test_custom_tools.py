"""The seed's "Adding Custom Tools" example works verbatim (with the package name auto_coder_nb)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from turns import run_turn

from auto_coder_nb.config import Config
from auto_coder_nb.events import ToolResult
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import FakeLLMServer, reply

SEED_EXAMPLE = '''
from auto_coder_nb.providers.base import ToolDefinition
from auto_coder_nb.tools.registry import ToolRegistry

def my_tool(arg1: str) -> dict:
    return {"result": f"Processed {arg1}"}

tool = ToolDefinition(
    name="my_tool",
    description="Does something useful",
    parameters={
        "type": "object",
        "properties": {
            "arg1": {"type": "string", "description": "Input argument"}
        },
        "required": ["arg1"]
    },
    handler=my_tool
)

registry = ToolRegistry()
registry.register(tool)
'''


def test_seed_example_registers_a_tool_the_agent_can_call(tmp_path: Path) -> None:
    namespace: dict[str, object] = {}
    exec(compile(SEED_EXAMPLE, "seed_example", "exec"), namespace)
    registry = namespace["registry"]
    assert registry.names() == ["my_tool"]  # type: ignore[attr-defined]

    with FakeLLMServer() as server:
        server.enqueue(reply.tool_call("my_tool", {"arg1": "data"}), reply.text("done"))
        config = Config()
        config.llm.base_url = server.base_url
        session = Session.create(config, working_dir=tmp_path, extra_tools=[namespace["tool"]])  # type: ignore[list-item]
        results = [e for e in run_turn(session, "use my tool") if isinstance(e, ToolResult)]
    assert results[0].output == '{"result": "Processed data"}'
    sent = {t["function"]["name"]: t["function"] for t in server.chat_requests[0].json["tools"]}
    assert sent["my_tool"]["description"] == "Does something useful"
    assert sent["my_tool"]["parameters"]["required"] == ["arg1"]


def test_tools_named_in_the_config_reach_the_cli(tmp_path: Path, fake_server: FakeLLMServer,
                                                 clean_env: dict[str, str]) -> None:
    (tmp_path / "team_tools.py").write_text(SEED_EXAMPLE)
    (tmp_path / ".auto-coder.yaml").write_text("agent:\n  tools: ['team_tools:tool']\n")
    fake_server.enqueue(reply.tool_call("my_tool", {"arg1": "from the CLI"}), reply.text("done"))
    env = clean_env | {"HOME": str(tmp_path), "PYTHONPATH": str(tmp_path), "AUTO_CODER_BASE_URL": fake_server.base_url}
    result = subprocess.run(["auto-coder", "use my tool"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert fake_server.chat_requests[1].json["messages"][-1]["content"] == '{"result": "Processed from the CLI"}'

    (tmp_path / ".auto-coder.yaml").write_text("agent:\n  tools: ['team_tools:my_tool']\n")
    result = subprocess.run(["auto-coder", "use my tool"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "agent.tools: team_tools:my_tool is not a ToolDefinition" in result.stderr
