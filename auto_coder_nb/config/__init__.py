"""Configuration: defaults < config files < environment < flags, with the source of every value.

One concern per module: `schema` (the sections, their fields and defaults, secrets and masking, `Config`),
`coercion` (a value checked and turned into its field's type), `files` (a file read safely, flattened, ${VAR}s
expanded), `site` (the administrator's files, locks and allow-lists), `project` (the project's file before it is
trusted), `loading` (`load_config` and `_set`, where every value goes through). Import from here: `from
auto_coder_nb.config import Config, load_config`.
"""

from ..plugins import load_object
from .coercion import DAY, MAX_USER_CHARS, NUMBER_LIMITS, RESERVED_HEADERS
from .files import MAX_CONFIG_BYTES, MAX_YAML_ALIASES, MAX_YAML_DEPTH, MAX_YAML_NODES, load_yaml, parse_yaml
from .loading import ENV_VARS, load_config
from .project import (
    PRODUCT_PARAMS,
    PROJECT_SAFE_APPROVAL_MODES,
    PROJECT_SAFE_INSTRUCTIONS,
    PROJECT_SAFE_KEYS,
    PROJECT_SAFE_PARAMS,
)
from .schema import (
    CONFIG_FILENAME,
    DEFAULT_BASE_URL,
    DEFAULT_CONTEXT_WINDOW,
    DEFAULT_MODEL,
    DEFAULT_NOTES,
    IDENTITY_KEYS,
    MCP_SERVER_FIELDS,
    MCP_SERVERS,
    MCP_TRANSPORT_TYPES,
    MODULE_KEYS,
    PROMPTED_TEMPERATURE,
    SECRET_KEYS,
    SECTIONS,
    TOOL_CALLING_MODES,
    AgentConfig,
    AuthConfig,
    Config,
    HistoryConfig,
    LLMConfig,
    McpConfig,
    McpServerConfig,
    UnsetVariable,
    mask,
    redact_url,
    url_secrets,
)
from .site import site_files

__all__ = [
    "CONFIG_FILENAME", "DAY", "DEFAULT_BASE_URL", "DEFAULT_CONTEXT_WINDOW", "DEFAULT_MODEL", "DEFAULT_NOTES",
    "ENV_VARS", "IDENTITY_KEYS", "MAX_CONFIG_BYTES", "MAX_USER_CHARS", "MAX_YAML_ALIASES", "MAX_YAML_DEPTH",
    "MAX_YAML_NODES", "MCP_SERVERS", "MCP_SERVER_FIELDS", "MCP_TRANSPORT_TYPES", "MODULE_KEYS", "NUMBER_LIMITS",
    "PRODUCT_PARAMS", "PROJECT_SAFE_APPROVAL_MODES", "PROJECT_SAFE_INSTRUCTIONS", "PROJECT_SAFE_KEYS",
    "PROJECT_SAFE_PARAMS", "PROMPTED_TEMPERATURE", "RESERVED_HEADERS", "SECRET_KEYS", "SECTIONS",
    "TOOL_CALLING_MODES", "AgentConfig", "AuthConfig", "Config", "HistoryConfig", "LLMConfig", "McpConfig",
    "McpServerConfig", "UnsetVariable",
    "load_config", "load_object", "load_yaml", "mask", "parse_yaml", "redact_url", "site_files", "url_secrets",
]
