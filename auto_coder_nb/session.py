"""A Session wires configuration, provider, tools, workspace, conversation and agent together.

Every face builds one; in a kernel the magics and the chat panel share one.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import transcript
from .agent import Agent
from .approvals import APPROVAL_MODES, ApprovalPolicy
from .cell_changes import CellChange, CellChanges
from .config import Config, McpServerConfig, load_object, redact_url
from .errors import ConfigError
from .history import (
    ConversationStore,
    HistoryError,
    Recorder,
    SavedConversation,
    read_records,
    records_of,
    replay,
)
from .images import Image, ImageError, decode_output, fit_image, image_from_object, read_image_file
from .instructions import ProjectInstructions, load_instructions
from .providers.base import LLMProvider, ToolDefinition, Usage
from .providers.prompted import ENVIRONMENT_HEADING
from .rewind import RewindRefused, Rewound, Turns
from .state.conversation import Conversation
from .text import counted, show_controls
from .tools import Workspace, build_workspace_tools
from .tools.notebook_document import NotebookDocument, Notebooks
from .tools.registry import ToolRegistry
from .transport import proxy_for, tls_trust

if TYPE_CHECKING:  # the MCP client (and its SDK) is imported only when servers are configured
    from .tools.mcp_client import McpServers

# What never changes comes first and what does (the folder, the date, the project's instructions) last, in the
# environment part: a server with a prompt cache (llama.cpp) then reuses the prefix in any folder, any day.
DEFAULT_SYSTEM_PROMPT = """\
You are auto-coder, a coding assistant working in the user's project (see Environment below).
Use the tools to look before you change anything: list_directory and read_file to explore,
edit_file for targeted changes (read the file first), write_file for new files, run_command to
run tests or scripts. Paths are relative to the project root; you cannot leave it. Keep answers
short and concrete; use Markdown with fenced code blocks. When a tool fails, read the error and
correct the call instead of repeating it."""


def environment_section(root: Path) -> str:
    """The part of the system prompt that changes with the folder and the day; it goes last (prompted tool
    calling puts its tool section before this heading)."""
    return (f"{ENVIRONMENT_HEADING}\nProject root: {root}\nOperating system: {platform.system()}\n"
            f"Date: {datetime.date.today().isoformat()}")


@dataclass
class Session:
    config: Config
    provider: LLMProvider
    tools: ToolRegistry
    workspace: Workspace
    conversation: Conversation
    policy: ApprovalPolicy
    agent: Agent
    instructions: ProjectInstructions
    notebook: Path | None = None  # the notebook the kernel belongs to, where there is one
    recorder: Recorder | None = None  # saves the conversation as it happens (None: history.enabled is false)
    mcp: McpServers | None = None  # the MCP servers of mcp.servers, whose tools are in `tools`
    custom_tools: list[str] = field(default_factory=list)  # names of the tools agent.tools registered
    notebooks: Notebooks | None = None  # opens notebooks by path: live when open in a collaboration room, else files
    cells: CellChanges | None = None  # the agent's changes to notebook cells (per-cell review, Revert, rewind)
    turns: Turns | None = None  # each turn's checkpoint, for a rewind

    @classmethod
    def create(
        cls,
        config: Config,
        working_dir: str | os.PathLike[str] | None = None,
        extra_tools: Iterable[ToolDefinition] = (),
        provider: LLMProvider | None = None,
        instructions_from: str | os.PathLike[str] | None = None,
        notebook: str | os.PathLike[str] | None = None,
        notebooks: Notebooks | None = None,
    ) -> Session:
        """`instructions_from` is the folder the user works in (a notebook's folder), where the search for
        project instructions ends; default the workspace root. `notebooks` opens notebook documents (the kernel
        gives one that reaches the live document of the open notebook); default: files in the workspace."""
        config.require(session_keys(config))
        root = Path(working_dir or config.agent.working_dir or os.getcwd()).expanduser()
        workspace = Workspace(root)
        def secrets() -> list[str]:
            return session.secret_values()  # the session's config at the time: apply_config may replace it

        tools = ToolRegistry(build_workspace_tools(workspace, command_timeout=config.agent.command_timeout,
                                                   secrets=secrets))
        custom = configured_tools(config)
        for tool in [*extra_tools, *custom]:
            tools.register(tool)
        removed = restrict_tools(config, tools)
        if provider is None:
            from .providers.openai_compatible import OpenAICompatibleProvider

            provider = OpenAICompatibleProvider(config)
        template = config.agent.system_prompt or DEFAULT_SYSTEM_PROMPT
        instructions = load_instructions(Path(instructions_from or workspace.root).expanduser(), workspace.root,
                                         config.agent.instructions_files)
        prompt = template.replace("{root}", str(workspace.root)).replace("{os}", platform.system())
        prompt += "\n\n" + environment_section(workspace.root)
        if removed:  # the prompt above may name them: say they are gone, or small models call them anyway
            prompt += f"\n\nNot available here (the site configuration removed them): {', '.join(removed)}."
        if instructions.text:
            prompt += "\n\n" + instructions.text
        conversation = Conversation(prompt, max_images=config.agent.max_images)
        policy = ApprovalPolicy(config.agent.approval_mode, ceiling=config.site.max_approval_mode)
        agent = Agent(provider, tools, conversation, policy, config.agent, workspace, vision=config.llm.vision)
        agent.site = config.site
        session = cls(config, provider, tools, workspace, conversation, policy, agent, instructions,
                      Path(notebook).expanduser().resolve() if notebook else None)
        agent.secrets = secrets
        session.custom_tools = [tool.name for tool in custom]
        session.notebooks = notebooks or Notebooks(lambda: session.workspace)
        session.cells = CellChanges(session.open_for_undo)
        session.notebooks.watch = session.cells.watch  # every change the tools make to a notebook is recorded
        session.turns = agent.turns = Turns(conversation, workspace, session.cells)
        session._keep_history(config.history.enabled)
        if config.history.enabled:
            _remove_old_conversations(ConversationStore(), config.history.retention_days)
        session.mcp = start_mcp_servers(config, tools, workspace.root)
        return session

    def secret_values(self) -> list[str]:
        """Every secret this session holds (configuration, basic credentials, fetched tokens): what `text.scrub`
        hides in tool results, errors, summaries and outputs."""
        from .auth import secret_values  # auth imports httpx; importing session stays light

        return [*secret_values(self.config), *(self.notebooks.secret_values() if self.notebooks else [])]

    def describe(self) -> dict[str, str | None]:
        """Where and with what this session talks, as saved with its conversations (no credentials)."""
        return {"working_dir": str(self.workspace.root), "notebook": str(self.notebook) if self.notebook else None,
                "model": self.provider.model, "base_url": redact_url(self.config.llm.base_url),
                "approval_mode": self.policy.mode}

    def set_approval_mode(self, mode: str) -> None:
        """The approval mode for the rest of the session, saved with its conversation (an ACP client's
        session/set_mode). ValueError for an unknown mode or one above the site's maximum."""
        if mode not in APPROVAL_MODES:
            raise ValueError(f"unknown approval mode {mode!r}; expected one of {', '.join(APPROVAL_MODES)}")
        refusal = self.config.site.mode_refusal(mode)
        if refusal is not None:
            raise ValueError(refusal)
        self.policy.mode = mode
        if self.recorder is not None:
            self.recorder.approval_mode_changed(mode)

    def listing(self, store: ConversationStore, count: int | None, here: bool, more: str) -> str:
        """The saved conversations (see `ConversationStore.listing`); `here`: only this notebook's, or else this
        working folder's."""
        return store.listing(count, more=more, **(self._here() if here else {}))

    def saved_here_all(self, store: ConversationStore) -> Iterator[SavedConversation]:
        """This notebook's (or else this working folder's) saved conversations, newest first, read as iterated."""
        return store.saved(**self._here())

    def _here(self) -> dict[str, Any]:
        return {"notebook": self.notebook} if self.notebook is not None else {"working_dir": self.workspace.root}

    def saved_here(self, conversation_id: str | None, store: ConversationStore) -> SavedConversation:
        """The saved conversation `conversation_id` names, else the newest of this notebook (in a kernel) or
        of this working folder. Raises HistoryError."""
        if self.notebook is not None:
            return store.choose(conversation_id, notebook=self.notebook)
        return store.choose(conversation_id, working_dir=self.workspace.root)

    def export(self, target: str | os.PathLike[str], conversation_id: str | None, store: ConversationStore, *,
               overwrite: bool = False) -> str:
        """Write a conversation to `target` (.md, .ipynb or .jsonl): the one `conversation_id` names, else this
        session's if it has begun, else the newest saved here. Never onto the open notebook; onto an existing file
        only with `overwrite` (else transcript.ExportExists). Returns the sentence to show."""
        records: list[dict[str, Any]]
        if conversation_id or not self.has_talked():
            records = read_records(self.saved_here(conversation_id, store).path)
        elif self.recorder is not None and self.recorder.path is not None:
            records = read_records(self.recorder.path)
        else:  # not saved (history.enabled is false): the history in memory
            records = records_of(self.conversation, self.describe(), self.secret_values())
        open_notebooks = [path for path in (self.notebook, self.workspace.open_notebook()) if path is not None]
        return transcript.export(records, Path(target), overwrite=overwrite, protected=open_notebooks)

    def resume(self, saved: SavedConversation) -> str:
        """Continue a saved conversation: its history and correlation id; what follows is saved with it.
        Returns the sentence to show. Raises HistoryError if its file cannot be read."""
        if self.agent.busy:
            raise HistoryError("A request is still running in this session: stop it or wait, then resume.")
        if self.recorder is not None:
            replayed = self.recorder.resume(saved)
        else:
            records = read_records(saved.path)
            replayed = replay(records)
            replayed.damaged = records.damaged
            self.conversation.restore(replayed.messages, saved.id)
        if self.turns is not None:
            changes = [CellChange.from_record(record) for record in replayed.cell_changes]
            self.turns.load(replayed.turn_starts, [change for change in changes if change is not None])
        count = sum(1 for m in self.conversation.messages if m["role"] == "user")
        where = show_controls(saved.notebook or saved.working_dir)
        left_out = f"; {counted(replayed.damaged, 'damaged line')} left out" if replayed.damaged else ""
        if replayed.forked_from:
            return (f"Conversation {saved.id} is open in another session, so it continues here as a copy: new "
                    f"conversation {self.conversation.correlation_id} ({counted(count, 'earlier prompt')}, "
                    f"{where}{left_out}).")
        return f"Resumed conversation {saved.id} ({counted(count, 'earlier prompt')}, {where}{left_out})."

    def rewind(self, number: int | None = None, force: bool = False) -> Rewound:
        """Back to before turn `number` (default the last): conversation, files and notebook cells (`rewind.py`).
        Raises RewindRefused, changing nothing, when it cannot or must not."""
        if self.agent.busy:
            raise RewindRefused("A request is still running in this session: stop it or wait, then rewind.")
        assert self.turns is not None
        return self.turns.rewind(number, force)

    def open_notebooks(self) -> Notebooks:
        assert self.notebooks is not None  # set by create()
        return self.notebooks

    def open_for_undo(self, path: str) -> NotebookDocument:
        """A notebook to undo the agent's cell changes in (the live document when it is open)."""
        return self.open_notebooks().open(path, write=True)

    def apply_config(self, config: Config) -> bool:
        """Take settings changed since the session was made, keeping the conversation: a new provider when
        the endpoint, model or authentication changed; the MCP servers restarted when theirs did; the approval
        mode and the agent's limits. True if any did.
        (The workspace root and command timeout stay: the tools are bound to them.) Raises ConfigError, before
        changing anything, when a tool named in agent.tools cannot be loaded."""
        config.require(session_keys(config))
        changed = False
        module_folder = config.folders.get("agent.tools")
        if (config.agent.tools, module_folder) != (self.config.agent.tools, self.config.folders.get("agent.tools")):
            found = configured_tools(config)  # e.g. the project file's tools, once the user trusts it
            for name in self.custom_tools:
                self.tools.unregister(name)
            for tool in found:
                self.tools.register(tool)
            self.custom_tools = [tool.name for tool in found]
            self.config.agent.tools = config.agent.tools
            changed = True
        if (config.llm, config.auth) != (self.config.llm, self.config.auth):
            from .providers.openai_compatible import OpenAICompatibleProvider

            self.provider = self.agent.provider = OpenAICompatibleProvider(config)
            self.config.llm, self.config.auth = config.llm, config.auth
            self.agent.vision = config.llm.vision
            changed = True
        if config.site != self.config.site:  # an administrator changed a site file
            self.config.site = self.agent.site = config.site
            self.policy.ceiling = config.site.max_approval_mode
            restrict_tools(config, self.tools)
            changed = True
        if config.mcp != self.config.mcp:
            self.close_mcp_servers()
            self.mcp = start_mcp_servers(config, self.tools, self.workspace.root)
            self.config.mcp = config.mcp
            changed = True
        if config.agent.max_images != self.conversation.max_images:
            self.conversation.max_images = config.agent.max_images
            changed = True
        for name in ("approval_mode", "max_iterations", "max_tool_calls_per_answer", "context_window",
                     "image_max_side", "turn_timeout"):
            if getattr(config.agent, name) != getattr(self.agent.config, name):
                setattr(self.agent.config, name, getattr(config.agent, name))
                changed = True
                if name == "approval_mode":  # only a changed setting overrides a mode chosen at run time
                    self.policy.mode = config.agent.approval_mode
        if config.history.enabled != self.config.history.enabled:
            self._keep_history(config.history.enabled)
            changed = True
        self.config.history = config.history
        self.config.sources, self.config.files = config.sources, config.files
        self.config.project, self.config.folders = config.project, config.folders
        self.config.unset = config.unset
        self.config.from_variables |= config.from_variables  # an old value may still be in the history
        return changed

    def _keep_history(self, enabled: bool) -> None:
        """Start or stop saving this session's conversation (history.enabled)."""
        if self.recorder is not None:
            self.recorder.close()
        self.recorder = None
        if enabled:  # turned on mid-conversation: saving starts with the next conversation (a part would not resume)
            begun = self.has_talked()
            self.recorder = Recorder(ConversationStore(), self.conversation, self.describe, self.secret_values,
                                     paused=begun)
        self.agent.observer = self.recorder
        self.conversation.observer = self.recorder
        if self.turns is not None:
            self.turns.observer = self.recorder

    def clear(self) -> str:
        """Forget the history; a new correlation id. Returns the id."""
        self.conversation.clear()
        return self.conversation.correlation_id

    def has_talked(self) -> bool:
        """Whether this conversation has a prompt in it yet."""
        return any(message["role"] == "user" for message in self.conversation.messages)

    def reset(self) -> str:
        """clear() plus session state: approvals given "for this session", what the model has read and the
        token count. Returns the new id. Undo checkpoints stay: a reset should not lose the way back."""
        self.policy.reset()
        self.workspace.forget_reads()
        self.conversation.usage = Usage()
        return self.clear()

    def undo(self) -> str:
        return self.workspace.undo()

    def attach(self, name: str, namespace: Mapping[str, Any] | None = None,
               last_output: str | bytes | None = None) -> Image:
        """An image for `--attach NAME` and the panel's attach control: `last` (`last_output`, the notebook's last
        image output), a variable of `namespace` (a matplotlib Figure, a PIL image, an IPython Image), else a
        PNG/JPEG file (see `attach_file`). Raises ImageError saying why one is refused."""
        max_side = self.agent.config.image_max_side
        if name == "last":
            if last_output is None:
                raise ImageError("last: there is no image output in this notebook yet (since auto-coder was loaded)")
            return fit_image(decode_output(last_output), "last image output", max_side)
        if namespace is not None and name.isidentifier() and name in namespace:
            return image_from_object(namespace[name], name, max_side)
        return self.attach_file(name)

    def attach_file(self, path: str) -> Image:
        """An image file to send with the next message (relative to the workspace root; the user chose it, so
        it may be anywhere), fitted to agent.image_max_side. ImageError says why one is refused."""
        target = Path(path).expanduser()
        return read_image_file(target if target.is_absolute() else self.workspace.root / target,
                               self.agent.config.image_max_side, source=path)

    async def aclose(self) -> None:
        """Close the connections, the MCP servers and the conversation's file (another session may then resume it)."""
        if self.recorder is not None:
            self.recorder.close()
        await self.provider.aclose()
        if self.mcp is not None:
            await self.mcp.aclose()

    def close_mcp_servers(self) -> None:
        """Stop the session's MCP servers (their tools leave the registry); from synchronous code."""
        if self.mcp is not None:
            self.mcp.close()
            self.mcp = None


def restrict_tools(config: Config, tools: ToolRegistry) -> list[str]:
    """Apply the site's allow.tools (MCP tools registered later too) and say once what the configuration
    could not do because of the site. Returns the names removed."""
    site = config.site
    removed: list[str] = []
    if "tools" in site.allow:
        removed = tools.restrict(site.tool_allowed)
        if removed:
            tools.notify(f"Tools left out by the site configuration (allow.tools in {site.allow_files['tools']}): "
                         f"{', '.join(removed)}.")
    for warning in config.warnings:
        tools.notify(warning)
    return removed


def session_keys(config: Config) -> list[str]:
    """The settings a session uses from its start (agent.*, history.*): one with an unset ${VAR} is an error then.
    (llm.* and auth.* are checked by each request, `auth.request_keys`; MCP servers by McpServers.)"""
    return [f"{section}.{f.name}" for section in ("agent", "history") for f in fields(getattr(config, section))]


def start_mcp_servers(config: Config, tools: ToolRegistry, root: Path) -> McpServers | None:
    """Start the servers of `mcp.servers` with their tools in `tools`; None when there are none."""
    if not config.mcp.servers:
        return None
    from .tools.mcp_client import McpServers

    def refusal(name: str, server: McpServerConfig) -> str | None:
        if server.command is not None:
            return config.site.mcp_command_refusal(server.command)
        return config.site.mcp_url_refusal(server.url or "")

    def http_options(url: str) -> dict[str, Any]:
        # An HTTP server sits where the model does (behind the same corporate CA and proxy).
        return {"verify": tls_trust(config).verify, "proxy": proxy_for(url, config), "trust_env": False}

    servers = McpServers(config.mcp.servers, tools, cwd=root, refuse=refusal, http_options=http_options)
    servers.start()
    return servers


_cleaned: set[Path] = set()


def _remove_old_conversations(store: ConversationStore, days: int) -> None:
    """Retention, once per process and folder (kernels and the REPL make sessions more than once)."""
    if store.folder not in _cleaned:
        _cleaned.add(store.folder)
        store.remove_older_than(days)


def configured_tools(config: Config) -> list[ToolDefinition]:
    """The tools named in `agent.tools`: each "module:name" is a ToolDefinition or a list of them."""
    found: list[ToolDefinition] = []
    for spec in config.agent.tools:
        value = load_object(spec, "agent.tools", config.folders.get("agent.tools"))
        for tool in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(tool, ToolDefinition):
                raise ConfigError(f"agent.tools: {spec} is not a ToolDefinition (or a list of them)")
            found.append(tool)
    return found
