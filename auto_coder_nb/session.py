"""A Session wires configuration, provider, tools, workspace, conversation and agent together.

Every face builds one; in a kernel the magics and the chat panel share one.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .agent import Agent
from .approvals import ApprovalPolicy
from .config import Config, load_object
from .errors import ConfigError
from .providers.base import LLMProvider, ToolDefinition, Usage
from .state.conversation import Conversation
from .tools import Workspace, build_workspace_tools
from .tools.registry import ToolRegistry

if TYPE_CHECKING:  # the MCP client (and its SDK) is imported only when servers are configured
    from .tools.mcp_client import McpServers

DEFAULT_SYSTEM_PROMPT = """\
You are auto-coder, a coding assistant working in the user's project at {root} ({os}).
Use the tools to look before you change anything: list_directory and read_file to explore,
edit_file for targeted changes (read the file first), write_file for new files, run_command to
run tests or scripts. Paths are relative to the project root; you cannot leave it. Keep answers
short and concrete; use Markdown with fenced code blocks. When a tool fails, read the error and
correct the call instead of repeating it."""


@dataclass
class Session:
    config: Config
    provider: LLMProvider
    tools: ToolRegistry
    workspace: Workspace
    conversation: Conversation
    policy: ApprovalPolicy
    agent: Agent
    mcp: McpServers | None = None

    @classmethod
    def create(
        cls,
        config: Config,
        working_dir: str | os.PathLike[str] | None = None,
        extra_tools: Iterable[ToolDefinition] = (),
        provider: LLMProvider | None = None,
    ) -> Session:
        root = Path(working_dir or config.agent.working_dir or os.getcwd()).expanduser()
        workspace = Workspace(root)
        tools = ToolRegistry(build_workspace_tools(workspace, command_timeout=config.agent.command_timeout))
        for tool in [*extra_tools, *configured_tools(config)]:
            tools.register(tool)
        if provider is None:
            from .providers.openai_compatible import OpenAICompatibleProvider

            provider = OpenAICompatibleProvider(config)
        template = config.agent.system_prompt or DEFAULT_SYSTEM_PROMPT
        conversation = Conversation(template.replace("{root}", str(workspace.root)).replace("{os}", platform.system()))
        policy = ApprovalPolicy(config.agent.approval_mode)
        agent = Agent(provider, tools, conversation, policy, config.agent, workspace)
        return cls(config, provider, tools, workspace, conversation, policy, agent,
                   start_mcp_servers(config, tools, workspace.root))

    def apply_config(self, config: Config) -> bool:
        """Take settings changed since the session was made, keeping the conversation: a new provider when
        the endpoint, model or authentication changed; the MCP servers restarted when theirs did; the approval
        mode and the agent's limits. True if any did.
        (The workspace root and command timeout stay: the tools are bound to them.)"""
        changed = False
        if (config.llm, config.auth) != (self.config.llm, self.config.auth):
            from .providers.openai_compatible import OpenAICompatibleProvider

            self.provider = self.agent.provider = OpenAICompatibleProvider(config)
            self.config.llm, self.config.auth = config.llm, config.auth
            changed = True
        if config.mcp != self.config.mcp:
            self.close_mcp_servers()
            self.mcp = start_mcp_servers(config, self.tools, self.workspace.root)
            self.config.mcp = config.mcp
            changed = True
        for name in ("approval_mode", "max_iterations", "context_window"):
            if getattr(config.agent, name) != getattr(self.agent.config, name):
                setattr(self.agent.config, name, getattr(config.agent, name))
                changed = True
                if name == "approval_mode":  # only a changed setting overrides a mode chosen at run time
                    self.policy.mode = config.agent.approval_mode
        self.config.sources, self.config.files = config.sources, config.files
        return changed

    def clear(self) -> str:
        """Forget the history; a new correlation id. Returns the id."""
        self.conversation.clear()
        return self.conversation.correlation_id

    def reset(self) -> str:
        """clear() plus session state: approvals given "for this session", what the model has read and the
        token count. Returns the new id. Undo checkpoints stay: a reset should not lose the way back."""
        self.policy.reset()
        self.workspace.forget_reads()
        self.conversation.usage = Usage()
        return self.clear()

    def undo(self) -> str:
        return self.workspace.undo()

    async def aclose(self) -> None:
        await self.provider.aclose()
        if self.mcp is not None:
            await self.mcp.aclose()

    def close_mcp_servers(self) -> None:
        """Stop the session's MCP servers (their tools leave the registry); from synchronous code."""
        if self.mcp is not None:
            self.mcp.close()
            self.mcp = None


def start_mcp_servers(config: Config, tools: ToolRegistry, root: Path) -> McpServers | None:
    """Start the servers of `mcp.servers` with their tools in `tools`; None when there are none."""
    if not config.mcp.servers:
        return None
    from .tools.mcp_client import McpServers

    servers = McpServers(config.mcp.servers, tools, cwd=root)
    servers.start()
    return servers


def configured_tools(config: Config) -> list[ToolDefinition]:
    """The tools named in `agent.tools`: each "module:name" is a ToolDefinition or a list of them."""
    found: list[ToolDefinition] = []
    for spec in config.agent.tools:
        value = load_object(spec, "agent.tools")
        for tool in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(tool, ToolDefinition):
                raise ConfigError(f"agent.tools: {spec} is not a ToolDefinition (or a list of them)")
            found.append(tool)
    return found
