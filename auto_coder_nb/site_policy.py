"""What an administrator's site configuration allows: locked settings and allow-lists.

Site files (`/etc/auto-coder/config.yaml`, then each file in `$AUTO_CODER_SITE_CONFIG`) are read by
`config.load_config` before the user's; besides ordinary settings they may hold `locked:` (dotted keys that user
and project files, the environment and flags cannot change) and `allow:` lists. This module holds the result and
answers the questions the config, the session and the agent ask of it. An absent list allows everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

from .approvals import ApprovalPolicy

SITE_CONFIG = Path("/etc/auto-coder/config.yaml")
SITE_CONFIG_ENV = "AUTO_CODER_SITE_CONFIG"
# allow: name -> what it restricts (for the docs and errors)
ALLOW_LISTS = {
    "models": "model names (glob patterns)",
    "tools": "tool names (glob patterns; an MCP tool is server__tool)",
    "base_urls": "endpoint base URLs (glob patterns)",
    "mcp_commands": "the commands MCP stdio servers may run (glob patterns, matched with and without the folder)",
    "mcp_urls": "the URLs of streamable-HTTP MCP servers (glob patterns)",
}
ALLOW_KEYS = (*ALLOW_LISTS, "max_approval_mode")


@dataclass
class SitePolicy:
    files: list[Path] = field(default_factory=list)
    locked: dict[str, Path] = field(default_factory=dict)  # dotted key (or prefix) -> the file that locked it
    allow: dict[str, list[str]] = field(default_factory=dict)  # "models" -> patterns
    max_approval_mode: str | None = None
    allow_files: dict[str, Path] = field(default_factory=dict)  # "models" -> the file that set the list

    def locked_by(self, key: str) -> Path | None:
        """The site file that locks `key` (itself, or a section or prefix of it), else None."""
        for locked, path in self.locked.items():
            if key == locked or key.startswith(locked + "."):
                return path
        return None

    def _refusal(self, name: str, value: str, what: str, *alternatives: str) -> str | None:
        patterns = self.allow.get(name)
        if patterns is None or any(fnmatchcase(candidate, pattern) for pattern in patterns
                                   for candidate in (value, *alternatives)):
            return None
        allowed = ", ".join(patterns) or "none"
        return f"{what} {value!r} is not allowed by the site configuration (allow.{name} in " \
               f"{self.allow_files[name]}: {allowed})"

    def model_refusal(self, model: str) -> str | None:
        return self._refusal("models", model, "model")

    def request_model_refusal(self, model: str, configured: str) -> str | None:
        """Why a request may not go to `model` (a turn's own, or the configured one): the allow-list, or a lock on
        llm.model, which leaves only `configured` (the locked value)."""
        locked = self.locked_by("llm.model")
        if locked is not None and model != configured:
            return f"model {model!r}: llm.model is locked by the administrator ({locked}) to {configured!r}"
        return self.model_refusal(model)

    def base_url_refusal(self, url: str) -> str | None:
        return self._refusal("base_urls", url.rstrip("/"), "base URL", url)

    def tool_allowed(self, name: str) -> bool:
        return self._refusal("tools", name, "tool") is None

    def mcp_command_refusal(self, command: str) -> str | None:
        return self._refusal("mcp_commands", command, "command", Path(command).name)

    def mcp_url_refusal(self, url: str) -> str | None:
        return self._refusal("mcp_urls", url, "URL")

    def capped_mode(self, mode: str) -> str:
        """`mode`, or the site's maximum when `mode` allows more."""
        return ApprovalPolicy(mode, self.max_approval_mode).effective()

    def mode_refusal(self, mode: str) -> str | None:
        if self.capped_mode(mode) == mode:
            return None
        return (f"approval mode {mode!r} is above the site's maximum, {self.max_approval_mode!r} "
                f"(allow.max_approval_mode in {self.allow_files['max_approval_mode']})")

    def describe(self) -> list[str]:
        """The locks and allow-lists, one line each, for --show-config and the doctor."""
        lines = [f"site locked {key}  ({path})" for key, path in self.locked.items()]
        for name, patterns in self.allow.items():
            lines.append(f"site allow.{name} = {patterns!r}  ({self.allow_files[name]})")
        if self.max_approval_mode is not None:
            lines.append(f"site allow.max_approval_mode = {self.max_approval_mode!r}  "
                         f"({self.allow_files['max_approval_mode']})")
        return lines
