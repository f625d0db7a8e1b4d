"""A setting's value from a file, a variable or a flag, checked and turned into its field's type: one ConfigError line
naming where and which key when it does not fit; numbers within NUMBER_LIMITS, identities well formed."""

from __future__ import annotations

import math
import re
from typing import Any

from ..approvals import APPROVAL_MODES
from ..errors import ConfigError
from .schema import IDENTITY_KEYS, MCP_SERVERS, SECRET_KEYS, TOOL_CALLING_MODES, field_type

MAX_USER_CHARS = 256
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110 token)
# Headers the client sets itself: a user header may not replace them.
RESERVED_HEADERS = {"authorization", "content-type", "content-length", "host", "x-correlation-id",
                    "proxy-authorization", "transfer-encoding", "connection", "accept"}


def parse_env(key: str, raw: str) -> Any:
    """An environment variable's text for `key`: true/false words for a switch (null too where it may be unset);
    anything else as given, for coerce to read or refuse like a flag's text (numbers only when plain)."""
    kind = field_type(key)
    if kind.startswith("bool"):
        word = raw.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        if "None" in kind and word in ("null", "none"):
            return None
    return raw


def check_identity(key: str, value: str) -> str | None:
    """What is wrong with llm.user or llm.user_header, as `expected ...`, else None."""
    if key == "llm.user":
        if not value.strip() or len(value) > MAX_USER_CHARS or not value.isprintable():
            return f"a user name of 1 to {MAX_USER_CHARS} printable characters"
    elif not _HEADER_NAME.fullmatch(value) or value.lower() in RESERVED_HEADERS:
        return "an HTTP header name (letters, digits, -) other than " + ", ".join(sorted(RESERVED_HEADERS))
    return None


# Numbers given as text (always, from the environment and flags; quoted in a file) are read only when they are
# written plainly: digits, and for seconds a decimal point. "1e3", "inf", "nan", "0x10", "1_000", "30s" are refused.
_WHOLE_NUMBER = re.compile(r"[0-9]+")
_DECIMAL_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")
DAY = 86400.0
# The largest value of each number setting (each must be above 0): beyond is surely a mistake, and some would
# overflow where they are used (a timer, a date).
NUMBER_LIMITS: dict[str, float] = {
    "llm.timeout": DAY,
    "llm.max_tokens": 10_000_000,
    "llm.step_max_tokens": 10_000_000,
    "agent.max_iterations": 100_000,
    "agent.max_tool_calls_per_answer": 100_000,
    "agent.command_timeout": DAY,
    "agent.turn_timeout": DAY,
    "agent.context_window": 100_000_000,
    "agent.image_max_side": 16_384,
    "agent.max_images": 1_000,
    "auth.token_lifetime": 365 * DAY,
    "auth.token_command_timeout": 3600.0,
    "history.retention_days": 36_500,
    f"{MCP_SERVERS}.*.timeout": DAY,
    f"{MCP_SERVERS}.*.startup_timeout": DAY,
}


def number_range(key: str) -> float:
    if key.startswith(f"{MCP_SERVERS}."):
        key = f"{MCP_SERVERS}.*.{key.rsplit('.', 1)[-1]}"
    return NUMBER_LIMITS.get(key, 1e9)  # a new number setting belongs in the table (tests/test_config.py checks)


def check_json(value: Any, key: str, where: str) -> None:
    """`value` must travel as JSON (it goes into every request body): strings, finite numbers, true/false, null,
    lists and mappings with string keys; not NaN or infinity, not a date."""
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                raise ConfigError(f"{where}: {key}: keys must be strings, got {name!r}")
            check_json(item, f"{key}.{name}", where)
    elif isinstance(value, list):
        for item in value:
            check_json(item, key, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {key}: expected a finite number (JSON has no {value!r}), got {value!r}")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise ConfigError(f"{where}: {key}: expected a JSON value (text, number, true/false, null, list, mapping), "
                          f"got {type(value).__name__} {str(value)!r}")


def coerce(value: Any, kind: str, key: str, where: str) -> Any:
    def wrong(expected: str) -> ConfigError:
        shown = "<hidden>" if key in SECRET_KEYS or key.endswith((".env", ".headers")) else repr(value)
        return ConfigError(f"{where}: {key}: expected {expected}, got {shown}")

    optional = "None" in kind
    if value is None:
        if optional:
            return None
        raise wrong("a value")
    if kind.startswith("str"):
        if not isinstance(value, str):
            raise wrong("a string")
        if key == "agent.approval_mode" and value not in APPROVAL_MODES:
            raise wrong("one of " + ", ".join(APPROVAL_MODES))
        if key == "llm.tool_calling" and value not in TOOL_CALLING_MODES:
            raise wrong("one of " + ", ".join(TOOL_CALLING_MODES))
        if key == "llm.model" and not value.strip():
            raise wrong("a model name")
        if key == "llm.base_url" and not value.startswith(("http://", "https://")):
            raise wrong("a URL starting with http:// or https://, like http://localhost:11434/v1")
        problem = check_identity(key, value) if key in IDENTITY_KEYS else None
        if problem is not None:
            raise wrong(problem)
        return value
    if kind.startswith("bool"):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind.startswith("int"):
        if optional and isinstance(value, str) and value.strip().lower() in ("null", "none"):
            return None  # from a flag or the environment, where there is no YAML null
        if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value.strip()):
            value = int(value)
        highest = number_range(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= highest:
            raise wrong("a positive whole number" + (" or null" if optional else "") + f" (at most {highest:,})")
        return value
    if kind == "float":
        number: float | None = None
        if isinstance(value, str) and _DECIMAL_NUMBER.fullmatch(value.strip()):
            number = float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        highest = number_range(key)
        if number is None or not math.isfinite(number) or not 0 < number <= highest:
            raise wrong(f"a positive number of seconds (at most {highest:,g})")
        return number
    if kind.startswith("dict[str, str]"):
        if not isinstance(value, dict) or not all(isinstance(v, (str, int, float)) for v in value.values()):
            raise wrong("a mapping of header names to string values")
        return {str(k): str(v) for k, v in value.items()}
    if kind.startswith("dict"):
        if not isinstance(value, dict):
            raise wrong("a mapping")
        if key == "llm.extra_params":
            check_json(value, key, where)
        return dict(value)
    if kind.startswith("list"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong("a list of strings")
        return list(value)
    raise AssertionError(f"unhandled type {kind} for {key}")
