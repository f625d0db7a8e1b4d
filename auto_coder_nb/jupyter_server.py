"""The Jupyter server a kernel runs under: finding it from inside the kernel, and asking it about notebooks.

Where the URL and token come from, first match wins:
1. `AUTO_CODER_JUPYTER_URL` (and `AUTO_CODER_JUPYTER_TOKEN`, `AUTO_CODER_JUPYTER_ROOT`): for kernels that run
   elsewhere than their server (Enterprise Gateway and the like), which have neither runtime folder nor parent.
2. JupyterHub: `JUPYTERHUB_SERVICE_URL` (the single-user server with its prefix) and `JUPYTERHUB_API_TOKEN`,
   which every kernel of a hub's server inherits.
3. The server's runtime file `jpserver-<pid>.json` in Jupyter's runtime folder, `pid` being the kernel's
   parent (`JPY_PARENT_PID`, else `os.getppid()`); failing that, the running server whose sessions list the
   kernel. It holds `url`, `token` and `root_dir`.
Which notebook: `GET api/sessions`, the session whose kernel id is the kernel's (a path relative to the server
root, right after a rename). The token is a secret: it goes in an `Authorization` header, never in a URL, and
every message here is scrubbed of it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from .text import scrub

HTTP_TIMEOUT = 5.0  # seconds for each request to the kernel's own server
URL_VARIABLE, TOKEN_VARIABLE = "AUTO_CODER_JUPYTER_URL", "AUTO_CODER_JUPYTER_TOKEN"
ROOT_VARIABLE = "AUTO_CODER_JUPYTER_ROOT"


class ServerError(Exception):
    """The server could not be asked (gone, token refused, unexpected answer): the message is one line, no token."""


class NoCollaboration(ServerError):
    """The server has no real-time collaboration (jupyter-collaboration is not installed where it runs)."""


@dataclass(frozen=True)
class ServerInfo:
    url: str  # with its base URL, ending in "/"
    token: str = field(repr=False)
    root_dir: Path | None  # None when only the server knows it (JupyterHub, remote kernels)
    found_by: str  # where the URL came from, for the doctor

    def websocket_url(self, path: str) -> str:
        return "ws" + self.url[len("http"):] + path if self.url.startswith("http") else self.url + path


def find_server(environ: Mapping[str, str] | None = None, kernel_id: str | None = None) -> ServerInfo | None:
    """The server this kernel runs under, or None (VS Code, nbclient, terminal IPython, a remote kernel without
    settings)."""
    env = os.environ if environ is None else environ
    if env.get(URL_VARIABLE):
        root = env.get(ROOT_VARIABLE)
        return ServerInfo(_with_slash(env[URL_VARIABLE]), env.get(TOKEN_VARIABLE, ""),
                          Path(root) if root else None, URL_VARIABLE)
    if env.get("JUPYTERHUB_SERVICE_URL") and env.get("JUPYTERHUB_API_TOKEN"):
        return ServerInfo(_with_slash(env["JUPYTERHUB_SERVICE_URL"]), env["JUPYTERHUB_API_TOKEN"], None,
                          "JUPYTERHUB_SERVICE_URL")
    runtime = _runtime_dir()
    if runtime is None:
        return None
    parent = env.get("JPY_PARENT_PID") or str(os.getppid())
    own = runtime / f"jpserver-{parent}.json"
    if own.is_file():
        return _read_runtime_file(own)
    if kernel_id:  # a wrapper between the server and the kernel: the server that knows this kernel is ours
        for candidate in sorted(runtime.glob("jpserver-*.json")):
            info = _read_runtime_file(candidate)
            if info is not None and _knows_kernel(info, kernel_id):
                return info
    return None


def _runtime_dir() -> Path | None:
    try:
        from jupyter_core.paths import jupyter_runtime_dir
    except ImportError:  # jupyter_core comes with every kernel; the CLI may lack it
        return None
    return Path(jupyter_runtime_dir())


def _read_runtime_file(path: Path) -> ServerInfo | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        url = str(data["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    root = data.get("root_dir")
    return ServerInfo(_with_slash(url), str(data.get("token") or ""), Path(root) if root else None,
                      f"runtime file {path.name}")


def _knows_kernel(info: ServerInfo, kernel_id: str) -> bool:
    try:
        return JupyterServer(info).notebook_of_kernel(kernel_id) is not None
    except ServerError:
        return False


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


class JupyterServer:
    """REST calls to one server, each bounded by HTTP_TIMEOUT. Never through a proxy: it is the kernel's own."""

    def __init__(self, info: ServerInfo, timeout: float = HTTP_TIMEOUT) -> None:
        self.info = info
        self.timeout = timeout

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.info.token}"} if self.info.token else {}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request; ServerError with one clear line for a server gone, a refused token or an error status
        (except 404, which the caller reads)."""
        try:
            with httpx.Client(timeout=self.timeout, trust_env=False) as client:
                response = client.request(method, self.info.url + path, headers=self.headers, **kwargs)
        except httpx.TimeoutException:
            raise ServerError(f"the Jupyter server at {self.info.url} did not answer within "
                              f"{self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise ServerError(self.hide(f"the Jupyter server at {self.info.url} does not answer "
                                        f"({type(exc).__name__}: {exc})")) from None
        if response.status_code in (401, 403):
            raise ServerError(f"the Jupyter server at {self.info.url} refused the kernel's token "
                              f"(HTTP {response.status_code})")
        if response.status_code >= 400 and response.status_code != 404:
            raise ServerError(f"the Jupyter server at {self.info.url} answered HTTP {response.status_code} "
                              f"to {method} {path}")
        return response

    def hide(self, text: str) -> str:
        return scrub(text, [self.info.token])

    def sessions(self) -> list[dict[str, Any]]:
        response = self.request("GET", "api/sessions")
        try:
            sessions = response.json()
        except ValueError:
            raise ServerError(f"the Jupyter server at {self.info.url} sent sessions that are not JSON") from None
        return [s for s in sessions if isinstance(s, dict)] if isinstance(sessions, list) else []

    def notebook_of_kernel(self, kernel_id: str) -> str | None:
        """The path (relative to the server root) of the notebook whose session runs this kernel, or None."""
        for session in self.sessions():
            kernel = session.get("kernel") or {}
            if kernel.get("id") == kernel_id and session.get("type", "notebook") == "notebook":
                path = session.get("path") or (session.get("notebook") or {}).get("path")
                if isinstance(path, str) and path.endswith(".ipynb"):
                    return path
        return None

    def collaboration_room(self, path: str) -> tuple[str, str]:
        """Ask for the notebook's collaboration room: (room id, session id). NoCollaboration when the server has
        no real-time collaboration."""
        response = self.request("PUT", f"api/collaboration/session/{quote(path)}",
                                json={"format": "json", "type": "notebook"})
        if response.status_code == 404:
            raise NoCollaboration(f"the Jupyter server at {self.info.url} has no real-time collaboration "
                                  "(jupyter-collaboration is not installed where it runs)")
        try:
            data = response.json()
            return f"{data['format']}:{data['type']}:{data['fileId']}", str(data["sessionId"])
        except (ValueError, KeyError, TypeError):
            raise ServerError(f"the Jupyter server at {self.info.url} answered the collaboration request with "
                              "something unexpected") from None

    def room_url(self, room_id: str, session_id: str) -> str:
        room = quote(room_id, safe=":")  # json:notebook:<file id>, colons as they are
        return self.info.websocket_url(f"api/collaboration/room/{room}?sessionId={quote(session_id)}")

    def local_path(self, relative: str, environ: Mapping[str, str] | None = None) -> Path:
        """Where a server path is on this machine: under the root folder, or found from the kernel's own notebook
        path (JPY_SESSION_NAME) or working folder when the server does not say its root (JupyterHub)."""
        if self.info.root_dir is not None:
            return self.info.root_dir / relative
        env = os.environ if environ is None else environ
        session_name = Path(env.get("JPY_SESSION_NAME", ""))
        parts = Path(relative).parts
        if session_name.is_absolute() and session_name.parts[-len(parts):] == parts:
            return session_name
        cwd = Path.cwd()
        for folder in (cwd, *cwd.parents):
            if (folder / relative).exists():
                return folder / relative
        return cwd / relative
