"""The Agent Client Protocol face: `auto-coder --acp` serves ACP sessions on stdin/stdout (Zed, JetBrains IDEs,
Neovim, jupyter-ai v3). `wire` speaks JSON-RPC, `server` the protocol's methods, `session` runs one session on its
own thread, `updates` renders the agent's events, `content` reads a prompt, `files` reaches the client's files,
`persona` registers the agent with jupyter-ai."""

from .server import run_agent

__all__ = ["run_agent"]
