"""A team on a real JupyterHub (issue 20): one hub for the module (`auto_coder_nb.testing.jupyterhub.TestHub`:
jupyterhub from PyPI, configurable-http-proxy from npm, on 127.0.0.1), DummyAuthenticator, two users, Ana and Ben.
As root (CI) each is a throwaway Unix user and LocalProcessSpawner runs their servers as them; otherwise
SimpleLocalProcessSpawner runs both as the current user, with a home each, and the checks that need the operating
system to keep them apart are skipped, saying so.

The admin's setup is the hub way: `c.Spawner.environment` hands every server AUTO_CODER_SITE_CONFIG (a read-only
site file beside the hub) and the gateway key; the site file locks the base URL, the model and who is asking.
The tests talk to the users' kernels through the hub's proxy (REST and the kernel websocket, with a user's token),
and to the panel in headless Chromium after logging in. The model is the project's test server."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
from jupyter_helpers import needs_chromium
from team_site import team_site

from auto_coder_nb.testing.server import FakeLLMServer, reply

pytest.importorskip("jupyterhub", reason="needs jupyterhub (the test extra)")
pytest.importorskip("websocket", reason="needs websocket-client (the test extra)")

from auto_coder_nb.testing.jupyterhub import (  # noqa: E402  (after the skips)
    HubKernel,
    HubUnavailable,
    TestHub,
    UserServer,
    is_root,
    processes_showing,
)

GATEWAY_KEY = "team-gateway-key-0c9e41d7b2"
SEPARATE_USERS = pytest.mark.skipif(not is_root(), reason="the hub runs every user as the current user when the "
                                                          "tests are not root: the OS cannot keep them apart")
WAIT_MS = 90_000  # generous: waits end as soon as the page shows what they wait for
OUTPUT = Path(__file__).parent.parent / "test-output" / "hub"


@dataclass
class Team:
    hub: TestHub
    servers: dict[str, UserServer]
    llm: FakeLLMServer
    site: Path

    def name(self, label: str) -> str:
        return self.hub.users[label].name

    def home(self, label: str) -> Path:
        return self.hub.users[label].home


@pytest.fixture(scope="module")
def team() -> Iterator[Team]:
    """The hub with Ana's and Ben's servers running. Ben's data folder exists beforehand, 0755, as an older version
    (or a careless umask) left it."""
    with FakeLLMServer() as llm:
        try:
            hub = TestHub(["ana", "ben"])
        except HubUnavailable as exc:
            unavailable(exc)
        try:
            site = hub.public / "auto-coder-site.yaml"
            site.write_text(team_site(llm.base_url))
            site.chmod(0o644)  # read-only for the users
            hub.environment.update({"AUTO_CODER_SITE_CONFIG": str(site), "TEAM_GATEWAY_KEY": GATEWAY_KEY})
            try:
                hub.start()
            except HubUnavailable as exc:
                unavailable(exc)
            old = hub.write("ben", ".local/share/auto-coder/README", "made by an older version\n").parent
            old.chmod(0o755)
            yield Team(hub, hub.start_servers(), llm, site)
        finally:
            OUTPUT.mkdir(parents=True, exist_ok=True)
            (OUTPUT / "hub.log").write_text(hub.log_tail(400))
            hub.stop()


def unavailable(exc: HubUnavailable) -> NoReturn:
    """CI (CI=true) installs what the hub needs and must run these tests; elsewhere they are skipped, saying why."""
    if os.environ.get("CI") == "true":
        raise exc
    pytest.skip(f"no JupyterHub here: {exc}")


def turn(kernel: HubKernel, line: str, answers: tuple[str, ...] = ()) -> str:
    output = kernel.execute(line, answers)
    assert output.status == "ok", output.text
    return output.text


def loaded(server: UserServer) -> HubKernel:
    kernel = server.kernel()
    turn(kernel, "%load_ext auto_coder_nb")
    return kernel


def mode(path: Path) -> str:
    return f"{stat.S_IMODE(path.stat().st_mode):04o}"


def test_each_users_magic_gets_the_site_settings_and_cannot_override_the_locked_ones(team: Team) -> None:
    llm = team.llm
    team.hub.write("ana", ".auto-coder.yaml", "llm:\n  model: my-own-model\n  base_url: http://127.0.0.1:9/v1\n")
    with loaded(team.servers["ana"]) as ana, loaded(team.servers["ben"]) as ben:
        turn(ana, "import os; os.environ['AUTO_CODER_MODEL'] = 'env-model'")
        before = len(llm.chat_requests)
        llm.enqueue(reply.text("Hello Ana."))
        shown = turn(ana, "%autocoder hello")
        assert "Hello Ana." in shown
        assert "llm.model is locked by the administrator" in shown  # the user's file and variable: said once
        [request] = llm.chat_requests[before:]
        assert request.json["model"] == "team-model"
        assert request.headers["authorization"] == f"Bearer {GATEWAY_KEY}"
        # Who is asking, for the gateway to attribute and limit (e): the header and the OpenAI field.
        assert request.headers["x-user"] == team.name("ana") and request.json["user"] == team.name("ana")

        refused = turn(ana, "%autocoder -m other-model hello again")
        assert f"model 'other-model': llm.model is locked by the administrator ({team.site}) to 'team-model'" in refused
        assert len(llm.chat_requests) == before + 1  # nothing sent (it used to be, with other-model)

        llm.enqueue(reply.text("Hello Ben."))
        assert "Hello Ben." in turn(ben, "%autocoder hello")
        assert llm.chat_requests[-1].headers["x-user"] == team.name("ben")
        assert llm.chat_requests[-1].json["model"] == "team-model"


def test_the_hub_tokens_and_the_gateway_key_reach_no_command_line_no_command_and_no_text(team: Team) -> None:
    llm, home = team.llm, team.home("ben")
    with loaded(team.servers["ben"]) as ben, team.servers["ana"].kernel() as ana:
        tokens = [kernel.execute("import os; print(os.environ['JUPYTERHUB_API_TOKEN'])").stdout.strip()
                  for kernel in (ben, ana)]
        assert all(len(token) >= 16 for token in tokens)
        secrets = [GATEWAY_KEY, *tokens]
        # The model runs a command that writes its environment, then waits until the test has looked at every
        # process of the machine (as the hub's users could: /proc/*/cmdline is readable by all).
        command = "env > ~/env.tmp && mv ~/env.tmp ~/env.txt; while [ ! -e ~/go ]; do sleep 0.05; done; echo ok"
        llm.enqueue(reply.tool_call("run_command", {"command": command}), reply.text("The command is done."))
        before = len(llm.chat_requests)
        # The user printed the token into a variable and asks about it.
        turn(ben, "tok = os.environ['JUPYTERHUB_API_TOKEN']")
        running = ben.send("%autocoder why is {tok} refused?", answers=("y",))
        deadline = time.monotonic() + 120
        while not (home / "env.txt").exists():
            assert time.monotonic() < deadline, "the command did not start"
            time.sleep(0.05)
        showing = processes_showing(secrets)
        team.hub.write("ben", "go", "")
        output = ben.wait(running)
    assert showing == []
    environment = (home / "env.txt").read_text()
    assert f"JUPYTERHUB_USER={team.name('ben')}" in environment  # the hub's other settings stay
    for hidden in ("JUPYTERHUB_API_TOKEN", "JPY_API_TOKEN", "TEAM_GATEWAY_KEY", *secrets):
        assert hidden not in environment
    assert "The command is done." in output.text
    sent = json.dumps([request.json for request in llm.chat_requests[before:]])
    assert "why is <hidden> refused?" in sent and not any(secret in sent for secret in secrets)
    assert not any(secret in json.dumps(output.messages) for secret in secrets)  # what the notebook keeps
    saved = "".join(path.read_text() for path in (home / ".local/share/auto-coder/sessions").iterdir())
    assert "why is <hidden> refused?" in saved and not any(secret in saved for secret in secrets)


def test_saved_conversations_and_trust_records_are_private_to_each_user(team: Team) -> None:
    team.hub.write("ana", "project/.auto-coder.yaml", "llm:\n  auth_headers: {X-Team: blue}\n")
    with team.servers["ana"].kernel() as ana, loaded(team.servers["ben"]) as ben:
        turn(ana, "import os; os.chdir('project')\n%load_ext auto_coder_nb")
        assert "Trusted" in turn(ana, "%autocoder --trust-project")
        team.llm.enqueue(reply.text("Saved for Ana."), reply.text("Saved for Ben."))
        turn(ana, "%autocoder remember this")
        turn(ben, "%autocoder remember that")
        ana_id = turn(ana, "%autocoder --id").split(":")[-1].strip()
    for label in ("ana", "ben"):
        home = team.home(label)
        data = home / ".local/share/auto-coder"
        saved = [mode(path) for path in (data / "sessions").iterdir()]
        # Ben's folder was 0755 before: tightened.
        assert [mode(home), mode(data), mode(data / "sessions")] == ["0755", "0700", "0700"]
        assert saved and set(saved) == {"0600"}
    trust = team.home("ana") / ".config/auto-coder"
    assert [mode(trust), mode(trust / "trusted.json")] == ["0700", "0600"]
    assert (team.home("ana") / ".local/share/auto-coder/sessions" / f"{ana_id}.jsonl").exists()


@SEPARATE_USERS
def test_a_user_cannot_list_or_resume_another_users_conversations(team: Team) -> None:
    ana_data = team.home("ana") / ".local/share/auto-coder"
    with team.servers["ana"].kernel() as ana:
        turn(ana, "%load_ext auto_coder_nb")
        team.llm.enqueue(reply.text("Only for Ana."))
        turn(ana, "%autocoder a private question")
        ana_id = turn(ana, "%autocoder --id").split(":")[-1].strip()
    with loaded(team.servers["ben"]) as ben:
        assert f"No saved conversation {ana_id!r}" in turn(ben, f"%autocoder --resume {ana_id}")
        shown = turn(ben, f"import os; os.environ['AUTO_CODER_DATA_DIR'] = {str(ana_data)!r}\n%autocoder --sessions")
        assert f"Cannot read the saved conversations in {ana_data / 'sessions'}: Permission denied" in shown
        assert ana_id not in shown
        listed = turn(ben, f"try:\n    os.listdir({str(ana_data)!r})\nexcept PermissionError:\n    print('refused')")
        assert "refused" in listed


def test_the_doctor_under_the_hub_and_a_site_file_missing_on_this_node(team: Team) -> None:
    with loaded(team.servers["ana"]) as ana:
        shown = turn(ana, "%autocoder --doctor")
        assert "JupyterHub" in shown and f"the server of user {team.name('ana')!r}" in shown
        assert f"site files: {team.site}" in shown
        assert f"saved conversations in {team.home('ana')}/.local/share/auto-coder: " in shown
        assert "belongs to another user" not in shown and "readable by other users" not in shown
        assert GATEWAY_KEY not in shown
        before = len(team.llm.chat_requests)
        turn(ana, "import os; os.environ['AUTO_CODER_SITE_CONFIG'] = '/srv/not-on-this-node/site.yaml'")
        for line in ("%autocoder --doctor", "%autocoder hello"):  # named, and never silently unlocked
            assert ("AUTO_CODER_SITE_CONFIG: site configuration file /srv/not-on-this-node/site.yaml does not exist"
                    in turn(ana, line))
        assert len(team.llm.chat_requests) == before


PANEL_NOTEBOOK = {
    "cells": [
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": "%load_ext auto_coder_nb\nfrom auto_coder_nb import ChatPanel\n\nChatPanel()"},
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": "import os\ntok = os.environ['JUPYTERHUB_API_TOKEN']\n"
                   "%autocoder --show-context --context none is {tok} the right token?"},
    ],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5,
}


@needs_chromium
def test_the_panel_through_the_hubs_proxy_in_a_browser(team: Team) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")
    from jupyter_helpers import CHROMIUM, CHROMIUM_ARGS, wait_for_connected_kernel

    hub, llm, name = team.hub, team.llm, team.name("ana")
    settings = ".jupyter/lab/user-settings/@jupyterlab"
    hub.write("ana", f"{settings}/notebook-extension/tracker.jupyterlab-settings",
              json.dumps({"windowingMode": "none", "autoStartDefaultKernel": True}))
    hub.write("ana", f"{settings}/apputils-extension/notification.jupyterlab-settings",
              json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    hub.write("ana", ".auto-coder.yaml", "llm:\n  model: my-own-model\n")  # locked: the panel keeps the site's
    notebook = hub.write("ana", "team/panel.ipynb", json.dumps(PANEL_NOTEBOOK))
    with team.servers["ana"].kernel() as kernel:
        token = kernel.execute("import os; print(os.environ['JUPYTERHUB_API_TOKEN'])").stdout.strip()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 1200}).new_page()
        page.set_default_timeout(WAIT_MS)
        try:
            # Log in at the hub (any password: DummyAuthenticator), landing on the notebook in Ana's server.
            page.goto(f"{hub.url}/hub/login?next=/user/{name}/lab/tree/team/panel.ipynb")
            page.fill("input[name=username]", name)
            page.fill("input[name=password]", "any password")
            page.click("[type=submit]")
            page.wait_for_selector(".jp-StatusBar-TextItem:has-text('| Idle')")
            # The status bar can say Idle before the page's kernel websocket is up, and Run All then runs nothing.
            wait_for_connected_kernel(lambda: team.servers["ana"].client.get("api/sessions").json(),
                                      "team/panel.ipynb")
            page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
            page.wait_for_selector(".autocoder-panel .autocoder-input")
            page.wait_for_selector(".jp-OutputArea-output:has-text('is <hidden> the right token?')")
            assert "team-model" in page.inner_text(".autocoder-status")  # the site's model
            before = len(llm.chat_requests)
            llm.enqueue(reply.tool_call("write_file", {"path": "hello.txt", "content": "Hello from the hub\n"}),
                        reply.text("Wrote **hello.txt** for you."))
            page.locator(".autocoder-input textarea").fill("Create hello.txt")
            page.locator("button.autocoder-send:not([disabled])").click()
            page.locator("button.autocoder-approve").click()
            page.wait_for_selector(".autocoder-assistant strong:has-text('hello.txt')")
            # The user's own file asked for another model: refused, and said in the panel.
            assert f"llm.model is locked by the administrator ({team.site})" in page.inner_text(".autocoder-panel")
            page.locator(".autocoder-panel").screenshot(path=str(OUTPUT / "panel.png"))
            page.click(".lm-MenuBar-itemLabel:text-is('File')")
            page.click(".lm-Menu-itemLabel:text-is('Save Notebook')")
            deadline = time.monotonic() + 60
            while "is <hidden> the right token?" not in notebook.read_text():  # the second cell's output, saved
                assert time.monotonic() < deadline, "the notebook was not saved"
                time.sleep(0.1)
        except BaseException:
            page.screenshot(path=str(OUTPUT / "failure.png"))
            raise
        finally:
            browser.close()
    assert (team.home("ana") / "team/hello.txt").read_text() == "Hello from the hub\n"
    requests = llm.chat_requests[before:]
    assert len(requests) == 2 and all(request.headers["x-user"] == name for request in requests)
    assert all(request.json["model"] == "team-model" for request in requests)
    saved = notebook.read_text()
    assert len(token) >= 16 and token not in saved and GATEWAY_KEY not in saved
