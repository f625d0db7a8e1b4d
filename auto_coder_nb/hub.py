"""Running under JupyterHub: the hub's tokens that every kernel inherits, and whose server this is.

A hub's spawner gives each user's server, and so every kernel and every command the model runs, the hub API token
(`JUPYTERHUB_API_TOKEN`, again as `JPY_API_TOKEN`) besides other `JUPYTERHUB_*` settings. Those tokens act as the
user at the hub: a command the model runs must not see them (`tools/shell` leaves them out by name), and no text
that leaves the process may hold them (`auth.secret_values` adds their values to the secrets `text.scrub` hides).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

HUB_PREFIXES = ("JUPYTERHUB_", "JPY_")
# Words that make a hub variable a credential: JUPYTERHUB_API_TOKEN, JPY_API_TOKEN, and any later one named so.
_CREDENTIAL_WORDS = ("TOKEN", "SECRET", "KEY", "PASSWORD")


def is_hub_credential(name: str) -> bool:
    """Whether the environment variable `name` is one of the hub's credentials."""
    return name.startswith(HUB_PREFIXES) and any(word in name for word in _CREDENTIAL_WORDS)


def hub_credentials(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of the hub's credentials in `environ` (default: this process's environment)."""
    environ = os.environ if environ is None else environ
    return [value for name, value in environ.items() if value and is_hub_credential(name)]


@dataclass(frozen=True)
class HubServer:
    """This process runs in a user's server started by a JupyterHub."""

    user: str
    server_name: str  # "" for the user's default server
    hub_url: str

    def describe(self) -> str:
        server = f"server {self.server_name!r} of " if self.server_name else "the server of "
        return f"{server}user {self.user!r}, hub {self.hub_url}"


def hub_server(environ: Mapping[str, str] | None = None) -> HubServer | None:
    """The hub server this process runs in, from the variables the spawner sets; None outside a hub."""
    environ = os.environ if environ is None else environ
    user = environ.get("JUPYTERHUB_USER")
    if not user or not environ.get("JUPYTERHUB_API_URL"):
        return None
    return HubServer(user, environ.get("JUPYTERHUB_SERVER_NAME", ""),
                     environ.get("JUPYTERHUB_PUBLIC_HUB_URL") or environ["JUPYTERHUB_API_URL"])
