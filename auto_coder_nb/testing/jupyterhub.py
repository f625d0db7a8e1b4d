"""A real JupyterHub for tests and benchmarks: `jupyterhub` from PyPI and its proxy, `configurable-http-proxy` from
npm, on 127.0.0.1 with throwaway users, DummyAuthenticator (any password) and an admin service for the tests.

As root, each user is a throwaway Unix user (removed afterwards, also after a failure; users a killed run left
behind are removed by the next one) and LocalProcessSpawner runs their server as them, so the operating system
keeps users apart as on a real hub. Their Python is a venv built with the system Python (a Python in root's home
cannot be run by other users), holding the Jupyter packages at the versions the tests run, cached under
/var/cache/auto-coder-nb; this project's package is copied next to the hub for each run and put on the users'
PYTHONPATH (`c.Spawner.environment`), so their kernels run the code under test. Otherwise
SimpleLocalProcessSpawner runs every server as the current user, with its own home, from the current Python.
The proxy is installed once under `~/.cache/auto-coder-nb` (`npm install`).

    with TestHub(["ana", "ben"], environment={"AUTO_CODER_SITE_CONFIG": path}) as hub:
        ana = hub.start_servers()["ana"]          # ready servers, through the hub's proxy
        with ana.kernel() as kernel:              # a kernel in Ana's server, over its websocket
            kernel.execute("%load_ext auto_coder_nb").stdout

`python -m auto_coder_nb.testing.jupyterhub --prepare` installs the proxy and builds the users' Python (CI does it
before the tests). Every process the hub starts carries AUTO_CODER_TEST_HUB=<run> in its environment, so whatever
is left when the hub stops is found and stopped by its pid.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from .ports import free_port

PACKAGE = Path(__file__).resolve().parent.parent  # auto_coder_nb: the code under test, copied for the users
PROXY_VERSION = "5.3.0"  # configurable-http-proxy, from npm
SYSTEM_PYTHON = Path("/usr/bin/python3")
USERS_PYTHON_CACHE = Path("/var/cache/auto-coder-nb")  # readable by every user, unlike root's home
# What the users' servers need, at the versions installed here (the project's own dependencies included).
USER_PACKAGES = ("jupyterhub", "jupyterlab", "ipykernel", "ipywidgets", "ipython", "httpx", "pyyaml", "certifi",
                 "nbformat", "prompt_toolkit")
MARKER = "AUTO_CODER_TEST_HUB"  # in the environment of every process a test hub starts
USER_COMMENT = "auto-coder-nb test hub, pid "  # the GECOS field of its throwaway Unix users
START_TIMEOUT = 180.0  # seconds for the hub, or a user's server, to come up on a busy machine


class HubUnavailable(RuntimeError):
    """A hub cannot be run here; the message says what is missing and how to install it."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "auto-coder-nb"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder at a time, across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def proxy_command(log: Callable[[str], None] = print) -> Path:
    """configurable-http-proxy, installed from npm under the cache folder the first time."""
    folder = cache_dir() / f"configurable-http-proxy-{PROXY_VERSION}"
    binary = folder / "node_modules" / ".bin" / "configurable-http-proxy"
    with _locked(cache_dir() / ".proxy.lock"):
        if not binary.exists():
            npm = shutil.which("npm")
            if npm is None or shutil.which("node") is None:
                raise HubUnavailable("configurable-http-proxy needs node and npm: apt-get install nodejs npm")
            log(f"installing configurable-http-proxy {PROXY_VERSION} from npm into {folder}")
            folder.mkdir(parents=True, exist_ok=True)
            subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", str(folder),
                            f"configurable-http-proxy@{PROXY_VERSION}"], check=True, stdout=subprocess.DEVNULL,
                           timeout=600)
    return binary


def user_requirements() -> list[str]:
    """The users' packages pinned to the versions of this environment."""
    pinned = []
    for name in USER_PACKAGES:
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise HubUnavailable(f"{name} is not installed here: pip install -e '.[test]'") from None
    return pinned


def users_python(log: Callable[[str], None] = print) -> Path:
    """The bin folder of a venv every user can run (built with the system Python, about 40 s, then cached)."""
    if not SYSTEM_PYTHON.exists():
        raise HubUnavailable(f"the users' Python is built with {SYSTEM_PYTHON}: apt-get install python3 python3-venv")
    requirements = user_requirements()
    version = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version)"], capture_output=True,
                             text=True, check=True).stdout
    key = hashlib.sha256("\n".join([version, *requirements]).encode()).hexdigest()[:12]
    venv = USERS_PYTHON_CACHE / f"hub-users-{key}"
    done = venv / ".complete"
    with _locked(USERS_PYTHON_CACHE / ".hub-users.lock"):
        if not done.exists():
            log(f"building the hub users' Python in {venv} (once)")
            shutil.rmtree(venv, ignore_errors=True)  # a build cut short
            try:
                subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], check=True, capture_output=True)
            except subprocess.CalledProcessError as exc:
                raise HubUnavailable(f"cannot make a venv with {SYSTEM_PYTHON} ({exc.stderr.decode().strip()}): "
                                     "apt-get install python3-venv") from None
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                            *requirements], check=True, timeout=1800)
            done.write_text("\n".join(requirements) + "\n")
        USERS_PYTHON_CACHE.chmod(0o755)
    return venv / "bin"


def marked_pids(run: str | None = None) -> dict[int, str]:
    """The processes whose environment holds MARKER (=run, if given), with the run each belongs to (those of other
    users too, when this is root)."""
    prefix = f"{MARKER}=".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                for variable in (entry / "environ").read_bytes().split(b"\0"):
                    if variable.startswith(prefix) and run in (None, variable[len(prefix):].decode()):
                        found[int(entry.name)] = variable[len(prefix):].decode()
    return found


def _stop_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def is_root() -> bool:
    return os.geteuid() == 0


def _alive(pid: str) -> bool:
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


def remove_stale() -> None:
    """Stop the processes and remove the throwaway users of test hubs whose test process is gone (a run killed
    before it cleaned up). A run is `<pid of its test process>-<random>`."""
    _stop_pids([pid for pid, run in marked_pids().items() if not _alive(run.partition("-")[0])])
    if not is_root():
        return
    for entry in pwd.getpwall():
        if not entry.pw_gecos.startswith(USER_COMMENT):
            continue
        if _alive(entry.pw_gecos.removeprefix(USER_COMMENT)):
            continue  # a hub still running
        _remove_user(entry.pw_name, entry.pw_uid)


def _remove_user(name: str, uid: int) -> None:
    _stop_pids([int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()
                and _owner(entry) == uid])
    subprocess.run(["userdel", "--force", "--remove", name], capture_output=True)  # a zombie is no reason to stay


def _owner(entry: Path) -> int | None:
    try:
        return entry.stat().st_uid
    except OSError:
        return None


@dataclass
class Output:
    """What one execution in a kernel produced, as the notebook would keep it."""

    status: str = ""
    stdout: str = ""
    stderr: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)  # every iopub message of the execution

    @property
    def text(self) -> str:
        """Everything shown: streams, and the plain text of displays and results."""
        shown = [self.stdout, self.stderr]
        for message in self.messages:
            if message["header"]["msg_type"] == "error":
                shown.append(f"{message['content']['ename']}: {message['content']['evalue']}")
            data = message["content"].get("data") or {}
            shown.append(str(data.get("text/plain", "")))
            shown.append(str(data.get("text/markdown", "")))
        return "\n".join(part for part in shown if part)


class HubKernel:
    """A kernel in a user's server, reached through the hub's proxy: REST to start and stop it, its websocket to run
    code. A reader thread takes every message as it comes and answers input() requests (approvals) from the
    answers given with the code, so a test may do other things while the code runs (`send`, then `wait`)."""

    def __init__(self, server: UserServer) -> None:
        import websocket  # websocket-client, which jupyter_server needs too

        self.server = server
        response = server.client.post("/api/kernels", json={"name": "python3"})
        response.raise_for_status()
        self.id = response.json()["id"]
        self.session = uuid.uuid4().hex
        url = server.url.replace("http://", "ws://") + f"/api/kernels/{self.id}/channels"
        self.socket = websocket.create_connection(url, header=[f"Authorization: token {server.token}"])
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._reader = threading.Thread(target=self._read, name=f"kernel-{self.id[:8]}", daemon=True)
        self._reader.start()

    def send(self, code: str, answers: Sequence[str] = ()) -> str:
        """Start running `code`; the id to `wait` for."""
        message_id = uuid.uuid4().hex
        with self._lock:
            self._runs[message_id] = _Run(list(answers))
        self._send("shell", "execute_request", {"code": code, "silent": False, "store_history": True,
                                                 "user_expressions": {}, "allow_stdin": True, "stop_on_error": True},
                   message_id)
        return message_id

    def wait(self, message_id: str, timeout: float = START_TIMEOUT) -> Output:
        """The execution's output, once its reply came and the kernel went idle after it."""
        run = self._runs[message_id]
        if not run.finished.wait(timeout):
            raise TimeoutError(f"the kernel did not finish within {timeout:.0f} s; so far: {run.output.text}")
        with self._lock:
            del self._runs[message_id]
        return run.output

    def execute(self, code: str, answers: Sequence[str] = ()) -> Output:
        return self.wait(self.send(code, answers))

    def _read(self) -> None:
        import websocket

        while True:
            try:
                message = json.loads(self.socket.recv())
            except (websocket.WebSocketException, OSError, ValueError):
                return  # closed
            parent = message.get("parent_header", {}).get("msg_id")
            with self._lock:
                run = self._runs.get(parent)
            if run is not None:
                self._take(run, message)

    def _take(self, run: _Run, message: dict[str, Any]) -> None:
        kind, channel, output = message["header"]["msg_type"], message.get("channel"), run.output
        if channel == "stdin" and kind == "input_request":
            answer = run.answers.pop(0) if run.answers else "n"
            self._send("stdin", "input_reply", {"value": answer}, uuid.uuid4().hex, parent=message["header"])
        elif channel == "shell" and kind == "execute_reply":
            output.status = message["content"]["status"]
            run.replied = True
        elif channel == "iopub" and kind == "status":
            run.idle = message["content"]["execution_state"] == "idle"
        elif channel == "iopub" and kind == "stream":
            name = message["content"]["name"]
            setattr(output, name, getattr(output, name) + message["content"]["text"])
            output.messages.append(message)
        elif channel == "iopub" and kind in ("display_data", "update_display_data", "execute_result", "error"):
            output.messages.append(message)
        if run.replied and run.idle:
            run.finished.set()

    def _send(self, channel: str, kind: str, content: dict[str, Any], message_id: str,
              parent: dict[str, Any] | None = None) -> None:
        header = {"msg_id": message_id, "msg_type": kind, "session": self.session, "username": self.server.name,
                  "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "version": "5.3"}
        self.socket.send(json.dumps({"header": header, "parent_header": parent or {}, "metadata": {},
                                     "content": content, "channel": channel, "buffers": []}))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.socket.close()
        self._reader.join(10)
        with contextlib.suppress(httpx.HTTPError):
            self.server.client.delete(f"/api/kernels/{self.id}")

    def __enter__(self) -> HubKernel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class _Run:
    """One execution as the reader thread follows it."""

    answers: list[str]
    output: Output = field(default_factory=Output)
    replied: bool = False
    idle: bool = False
    finished: threading.Event = field(default_factory=threading.Event)


@dataclass
class UserServer:
    """A user's single-user server behind the hub's proxy: `url` (…/user/NAME), a token of that user."""

    name: str
    url: str
    token: str
    home: Path
    client: httpx.Client

    def kernel(self) -> HubKernel:
        return HubKernel(self)


@dataclass
class HubUser:
    label: str  # what the test calls the user ("ana")
    name: str  # the hub's and the system's name, unique to this run
    home: Path
    uid: int | None = None  # the Unix user's, when the hub runs as root


class TestHub:
    """A JupyterHub with `labels` as users (each given a unique name for this run, `hub.users[label].name`);
    `environment` is `c.Spawner.environment` (the admin's settings for every user's server)."""

    __test__ = False  # not a pytest class

    def __init__(self, labels: Sequence[str], environment: Mapping[str, str] | None = None,
                 log: Callable[[str], None] = print, separate_users: bool | None = None) -> None:
        self.tag = secrets.token_hex(3)
        self.run = f"{os.getpid()}-{self.tag}"  # in MARKER: whose it is, so a later run can clean up after a crash
        self.environment = dict(environment or {})
        self.log = log
        # Unix users of their own (root only), else everyone as the current user.
        self.separate_users = is_root() if separate_users is None else separate_users
        if self.separate_users and not is_root():
            raise HubUnavailable("separate Unix users need root")
        self.proxy = proxy_command(log)
        # Readable by the users: the project's package, and whatever the test puts there (a site file).
        self.public = Path(tempfile.mkdtemp(prefix=f"acnb-hub-{self.tag}-"))
        self.public.chmod(0o755)
        self.folder = self.public / "hub"  # the hub's own: config with tokens, database, logs; root only
        self.folder.mkdir(mode=0o700)
        self.admin_token = secrets.token_hex(24)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = httpx.Client(base_url=f"{self.url}/hub/api", timeout=60,
                                headers={"Authorization": f"token {self.admin_token}"})
        self.users: dict[str, HubUser] = {}
        self.labels = list(labels)
        self.process: subprocess.Popen[bytes] | None = None
        self._clients: list[httpx.Client] = []

    # -- start and stop ----------------------------------------------------------------------------------

    def start(self) -> TestHub:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        remove_stale()
        if self.separate_users:
            python_bin = users_python(self.log)
            site = self.public / "site-packages"
            shutil.copytree(PACKAGE, site / "auto_coder_nb",
                            ignore=shutil.ignore_patterns("__pycache__"))
            for path in [site, *site.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            self.environment.setdefault("PYTHONPATH", str(site))
            self.environment.setdefault("PATH", f"{python_bin}:/usr/local/bin:/usr/bin:/bin")
        else:
            python_bin = Path(sys.executable).parent
        for label in self.labels:
            self.users[label] = self._make_user(label)
        self.environment[MARKER] = self.run
        config = self.folder / "jupyterhub_config.py"
        config.write_text(self._config(python_bin))
        config.chmod(0o600)
        with open(self.folder / "hub.log", "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(config)], cwd=self.folder, stdout=log,
                stderr=subprocess.STDOUT, env={**os.environ, MARKER: self.run}, start_new_session=True)
        self._wait(lambda: self.api.get("/").status_code == 200, "the hub")

    def _make_user(self, label: str) -> HubUser:
        name = f"acnb-{self.tag}-{label}"
        if not self.separate_users:
            home = self.public / "homes" / name
            home.mkdir(parents=True)
            home.chmod(0o755)
            return HubUser(label, name, home)
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", "--comment",
                        f"{USER_COMMENT}{os.getpid()}", name], check=True, capture_output=True)
        entry = pwd.getpwnam(name)
        home = Path(entry.pw_dir)
        home.chmod(0o755)  # as Debian makes homes: every user can list every other's
        return HubUser(label, name, home, entry.pw_uid)

    def _config(self, python_bin: Path) -> str:
        arguments = ["--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if not self.separate_users and is_root():
            arguments.append("--allow-root")  # Jupyter refuses to run as root unless told
        settings: dict[str, object] = {
            "JupyterHub.ip": "127.0.0.1", "JupyterHub.port": self.port,
            "JupyterHub.hub_ip": "127.0.0.1", "JupyterHub.hub_port": free_port(),
            "ConfigurableHTTPProxy.api_url": f"http://127.0.0.1:{free_port()}",
            "ConfigurableHTTPProxy.command": [str(self.proxy)],
            "JupyterHub.authenticator_class": "dummy",
            "Authenticator.allowed_users": {user.name for user in self.users.values()},
            "JupyterHub.db_url": f"sqlite:///{self.folder / 'jupyterhub.sqlite'}",
            "JupyterHub.cookie_secret_file": str(self.folder / "cookie_secret"),
            "JupyterHub.pid_file": str(self.folder / "jupyterhub.pid"),
            "JupyterHub.services": [{"name": "tests", "api_token": self.admin_token}],
            "JupyterHub.load_roles": [{"name": "tests", "services": ["tests"], "scopes": [
                "admin:users", "admin:servers", "tokens", "access:servers"]}],
            "JupyterHub.spawner_class": "localprocess" if self.separate_users else "simple",
            "Spawner.cmd": [str(python_bin / "jupyterhub-singleuser")],
            "Spawner.environment": self.environment,
            "Spawner.default_url": "/lab",
            "Spawner.start_timeout": int(START_TIMEOUT),
            "Spawner.http_timeout": int(START_TIMEOUT),
            "Spawner.args": arguments,
        }
        if not self.separate_users:
            settings["SimpleLocalProcessSpawner.home_dir_template"] = str(self.public / "homes" / "{username}")
        return "c = get_config()  # noqa\n" + "".join(f"c.{key} = {value!r}\n" for key, value in settings.items())

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the hub exited with {self.process.returncode}: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if ready():
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{what} did not come up within {START_TIMEOUT:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.folder / "hub.log").read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """Stop the hub (which stops the servers), then whatever it started that is left, then remove the users."""
        for client in self._clients:
            client.close()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _stop_pids(list(marked_pids(self.run)))
        for user in self.users.values():
            if user.uid is not None:
                _remove_user(user.name, user.uid)
        self.api.close()
        shutil.rmtree(self.public, ignore_errors=True)

    def __enter__(self) -> TestHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- users and servers --------------------------------------------------------------------------------

    def start_servers(self, labels: Sequence[str] | None = None) -> dict[str, UserServer]:
        """Start these users' servers at once and wait until each is ready."""
        labels = list(labels or self.users)
        for label in labels:
            response = self.api.post(f"/users/{self.users[label].name}/server")
            if response.status_code not in (201, 202, 400):  # 400: already running
                raise RuntimeError(f"cannot start {label}'s server: {response.status_code} {response.text}")
        servers = {}
        for label in labels:
            name = self.users[label].name
            self._wait(functools.partial(self._ready, name), f"{label}'s server")
            token = self.api.post(f"/users/{name}/tokens", json={"note": "tests", "expires_in": 3600})
            token.raise_for_status()
            value = token.json()["token"]
            client = httpx.Client(base_url=f"{self.url}/user/{name}", timeout=60,
                                  headers={"Authorization": f"token {value}"})
            self._clients.append(client)
            servers[label] = UserServer(name, f"{self.url}/user/{name}", value, self.users[label].home, client)
        return servers

    def _ready(self, name: str) -> bool:
        return bool(self.api.get(f"/users/{name}").json()["servers"].get("", {}).get("ready"))

    def write(self, label: str, relative: str, text: str, mode: int = 0o644) -> Path:
        """A file in the user's home, theirs (folders on the way too), as if they had written it."""
        user = self.users[label]
        path = user.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        if user.uid is not None:
            for part in [*path.relative_to(user.home).parents, Path(relative)]:
                os.chown(user.home / part, user.uid, user.uid)
        return path


def processes_showing(values: Sequence[str]) -> list[str]:
    """Every process on the machine whose command line holds one of `values` (each line: pid and command)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if any(value in command for value in values):
                found.append(f"{entry.name}: {command}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m auto_coder_nb.testing.jupyterhub",
                                     description="Install the proxy and build the users' Python for the hub tests.")
    parser.add_argument("--prepare", action="store_true", help="install and build what the hub tests need, then exit")
    args = parser.parse_args(argv)
    if not args.prepare:
        parser.print_help()
        return 2
    try:
        print(f"proxy: {proxy_command()}")
        if is_root():
            print(f"users' Python: {users_python()}")
    except HubUnavailable as exc:
        print(f"cannot prepare the hub tests: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


