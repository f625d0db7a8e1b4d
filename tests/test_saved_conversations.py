"""Saved conversations in the faces, with the real parts: the `auto-coder` process (killed with SIGKILL
mid-answer), the REPL in a pseudo-terminal, real kernels restarted and running side by side, exports checked
with nbformat, and no secret in any saved or exported file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pexpect
import pytest

from auto_coder_nb.history import read_records, rebuild
from auto_coder_nb.testing.server import FakeLLMServer, reply
from tests.test_agent import assert_strictly_valid
from tests.test_cli import run as auto_coder
from tests.test_magics import Kernel, kernel_env


@pytest.fixture
def env(tmp_path: Path, fake_server: FakeLLMServer, clean_env: dict[str, str]) -> dict[str, str]:
    """As the CLI tests' environment: a fresh home, the test server; no colours or terminal queries."""
    home = tmp_path / "home"
    home.mkdir()
    return clean_env | {"HOME": str(home), "AUTO_CODER_BASE_URL": fake_server.base_url,
                        "AUTO_CODER_MODEL": "fake-model", "NO_COLOR": "1", "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "dumb"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("first line\n")
    return folder


def saved(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "sessions").glob("*.jsonl"))


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_process_loses_nothing_and_resumes_to_a_valid_history(
    fake_server: FakeLLMServer, env: dict[str, str], project: Path, data_dir: Path
) -> None:
    fake_server.enqueue(
        reply.tool_call("read_file", {"path": "notes.txt"}),
        # Two pieces of the answer arrive, then the server holds the stream until the test releases it.
        reply.text("The file has one line. It says first line.", chunks=4, wait_for="hold", wait_after=3),
    )
    process = subprocess.Popen(["auto-coder", "what is in notes.txt?"], env=env, cwd=project,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def streamed() -> str:
            files = saved(data_dir)
            if not files:
                return ""
            return "".join(r["text"] for r in read_records(files[0]) if r["type"] == "text")

        shown = wait_until(lambda: len(streamed()) >= 20 and streamed(), "the answer's first pieces on disk")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        fake_server.release("hold")
    assert shown == "The file has one line. It says first line."[:len(shown)]
    [path] = saved(data_dir)
    records = read_records(path)
    messages = [r["message"] for r in records if r["type"] == "message"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert "first line" in messages[2]["content"]
    first_id = fake_server.chat_requests[0].headers["x-correlation-id"]

    fake_server.enqueue(reply.text("Carrying on."))
    resumed = auto_coder(["where were we?", "--resume"], env, project)  # the prompt first: the newest here
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resumed conversation {first_id}" in resumed.stderr and resumed.stdout == "Carrying on.\n"
    request = fake_server.chat_requests[-1]
    assert request.headers["x-correlation-id"] == first_id
    sent = request.json["messages"]
    assert_strictly_valid(sent)
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert sent[4]["content"] == f"{shown}\n[interrupted]"
    assert sent[-1]["content"] == "where were we?"
    assert saved(data_dir) == [path]
    # The file is one history again: rebuilt, it is what was sent and answered, and resumes again.
    rebuilt = rebuild(read_records(path))
    assert rebuilt == sent[1:] + [{"role": "assistant", "content": "Carrying on."}]


def test_sessions_resume_by_prefix_unknown_ids_and_exports(
    fake_server: FakeLLMServer, env: dict[str, str], project: Path, data_dir: Path, tmp_path: Path
) -> None:
    fake_server.enqueue(reply.text("Alpha answer."), reply.text("Beta answer:\n\n```python\nx = 1\n```\n"))
    assert auto_coder(["alpha question"], env, project).returncode == 0
    assert auto_coder(["beta question"], env, project).returncode == 0
    listed = auto_coder(["--sessions"], env, project)
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and "beta question" in lines[0] and "alpha question" in lines[1]
    assert str(project) in lines[0]
    alpha_id = lines[1].split()[0]

    unknown = auto_coder(["--resume", "abcdef99", "hi"], env, project)
    assert unknown.returncode == 2
    assert "abcdef99" in unknown.stderr and alpha_id in unknown.stderr and lines[0].split()[0] in unknown.stderr

    fake_server.enqueue(reply.text("Alpha again."))
    again = auto_coder(["--resume", alpha_id, "and then?"], env, project)
    assert again.returncode == 0, again.stderr
    assert f"Resumed conversation {alpha_id}" in again.stderr and "(1 earlier prompt, " in again.stderr
    assert [m["content"] for m in fake_server.chat_requests[-1].json["messages"][1:]] == [
        "alpha question", "Alpha answer.", "and then?"]

    exported = auto_coder(["--export", str(tmp_path / "newest.ipynb")], env, project)
    assert exported.returncode == 0, exported.stderr
    notebook = nbformat.read(tmp_path / "newest.ipynb", as_version=4)
    nbformat.validate(notebook)
    assert "and then?" in "".join(c.source for c in notebook.cells)  # the newest: the resumed one

    chosen = auto_coder(["--resume", lines[0].split()[0], "--export", str(tmp_path / "beta.md")], env, project)
    assert chosen.returncode == 0, chosen.stderr
    assert f"Exported 1 prompt to {tmp_path / 'beta.md'}" in chosen.stdout + chosen.stderr
    markdown = (tmp_path / "beta.md").read_text()
    assert "beta question" in markdown and "x = 1" in markdown and "alpha" not in markdown
    bad = auto_coder(["--export", str(tmp_path / "out.txt")], env, project)
    assert bad.returncode == 2 and ".md, .ipynb, .jsonl" in bad.stderr


def _saved_by_hand(data_dir: Path, conversation_id: str, prompt: str, working_dir: Path) -> None:
    folder = data_dir / "sessions"
    folder.mkdir(parents=True, exist_ok=True)
    records = [{"v": 1, "t": "2026-11-01T10:00:00.000Z", "type": "start", "correlation_id": conversation_id,
                "working_dir": str(working_dir), "notebook": None, "model": "fake-model", "base_url": "http://x/v1"},
               {"v": 1, "t": "2026-11-01T10:00:01.000Z", "type": "message",
                "message": {"role": "user", "content": prompt}}]
    (folder / f"{conversation_id}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.parametrize("typed", ["zzzz", "", "   ", "\x1b[31mred\x07", "abc"])
def test_resume_with_an_id_that_matches_nothing_is_an_error_listing_the_closest(
    fake_server: FakeLLMServer, env: dict[str, str], project: Path, data_dir: Path, typed: str
) -> None:
    for conversation_id, prompt in [("abc11111-1111-4111-8111-111111111111", "first topic"),
                                    ("abc22222-2222-4222-8222-222222222222", "second topic"),
                                    ("abd00000-0000-4000-8000-000000000001", "third topic")]:
        _saved_by_hand(data_dir, conversation_id, prompt, project)
    result = auto_coder(["--resume", typed, "hi"], env, project)
    assert result.returncode == 2, result.stdout
    assert fake_server.chat_requests == []  # neither resumed nor sent as a prompt
    assert result.stdout == "" and "Traceback" not in result.stderr and "\x1b" not in result.stderr
    assert "\x07" not in result.stderr
    if typed == "abc":  # ambiguous: both that start so are listed, not the third
        assert "matches 2 saved conversations" in result.stderr
        assert "first topic" in result.stderr and "second topic" in result.stderr
        assert "third topic" not in result.stderr
    else:
        assert f"No saved conversation {typed.strip()!r}. The closest:" in result.stderr
        assert all(topic in result.stderr for topic in ("first topic", "second topic", "third topic"))
        assert 'put the prompt first: auto-coder "PROMPT" --resume' in result.stderr


def test_resume_lists_the_closest_ids_first(
    fake_server: FakeLLMServer, env: dict[str, str], project: Path, data_dir: Path
) -> None:
    for number in range(8):
        _saved_by_hand(data_dir, f"{number}0000000-0000-4000-8000-00000000000{number}", f"topic {number}", project)
    _saved_by_hand(data_dir, "3fa85f64-5717-4562-b3fc-2c963f66afa6", "the one I meant", project)
    result = auto_coder(["--resume", "3fa86f64"], env, project)  # one character mistyped
    assert result.returncode == 2
    listed = result.stderr.split("The closest:")[1].splitlines()
    assert "the one I meant" in listed[1] and "... and 4 more (--sessions lists them)" in listed[-1]
    fake_server.enqueue(reply.text("Resumed."))
    resumed = auto_coder(["--resume", "3fa85f64", "go on"], env, project)
    assert resumed.returncode == 0, resumed.stderr
    assert fake_server.chat_requests[-1].json["messages"][-1]["content"] == "go on"


def test_repl_sessions_resume_and_export(fake_server: FakeLLMServer, env: dict[str, str], project: Path,
                                         data_dir: Path, tmp_path: Path) -> None:
    fake_server.enqueue(reply.text("Earlier answer."))
    assert auto_coder(["earlier question"], env, project).returncode == 0
    earlier_id = fake_server.chat_requests[-1].headers["x-correlation-id"]
    child = pexpect.spawn(sys.executable, ["-m", "auto_coder_nb"], env=env, cwd=str(project), encoding="utf-8",
                          timeout=30, dimensions=(40, 200))
    child.expect("> ")
    child.sendline("/sessions")
    child.expect(f"{earlier_id[:8]} .*earlier question")
    child.expect("> ")
    child.sendline("/sessions 1 here")
    child.expect(f"{earlier_id[:8]} .*earlier question")
    child.expect("> ")
    child.sendline("/resume zzzz1234")
    child.expect("No saved conversation 'zzzz1234'")
    child.expect("> ")
    child.sendline(f"/resume {earlier_id[:6]}")
    child.expect(f"Resumed conversation {earlier_id}")
    child.expect("> ")
    fake_server.enqueue(reply.text("Later answer."))
    child.sendline("later question")
    child.expect("Later answer.")
    child.expect("> ")
    child.sendline(f"/export {tmp_path / 'both.md'}")
    child.expect("Exported 2 prompts")
    child.expect("> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    assert fake_server.chat_requests[-1].headers["x-correlation-id"] == earlier_id
    markdown = (tmp_path / "both.md").read_text()
    assert markdown.index("earlier question") < markdown.index("Later answer.")


def test_no_secret_in_any_file_with_every_kind_of_credential(
    fake_server: FakeLLMServer, env: dict[str, str], project: Path, data_dir: Path, tmp_path: Path
) -> None:
    secrets = {
        "api_key": "sk-every-kind-api-key-1",
        "sso": "sso-every-kind-token-2",
        "client_secret": "client-every-kind-secret-3",
        "header": "header-every-kind-value-4",
        "variable": "variable-every-kind-value-5",
        "url_password": "urlpass-every-kind-6",
        "proxy_password": "proxypass-every-kind-7",
    }
    (project / ".auto-coder.yaml").write_text(
        "llm:\n"
        "  auth_headers:\n"
        "    X-Gateway: ${GATEWAY_TOKEN}\n"
        f"    X-Team: {secrets['header']}\n"
        f"  proxy: http://me:{secrets['proxy_password']}@127.0.0.1:9\n"
    )
    base_url = fake_server.base_url.replace("http://", f"http://me:{secrets['url_password']}@")
    run_env = env | {
        "AUTO_CODER_BASE_URL": base_url, "AUTO_CODER_API_KEY": secrets["api_key"], "USE_SSO": "true",
        "SSO_TOKEN": secrets["sso"], "AUTO_CODER_CLIENT_SECRET": secrets["client_secret"],
        "GATEWAY_TOKEN": secrets["variable"], "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    }
    everything = " ".join(secrets.values())
    (project / "creds.txt").write_text(f"all of them: {everything}\n")
    fake_server.enqueue(reply.tool_call("read_file", {"path": "creds.txt"}),
                        reply.text(f"You have {everything}.", chunks=60))
    result = auto_coder(["--trust-project", f"remember {everything}"], run_env, project)
    assert result.returncode == 0, result.stderr
    assert fake_server.chat_requests[0].headers["authorization"] == f"Bearer {secrets['sso']}"  # SSO was used
    assert fake_server.chat_requests[0].headers["x-gateway"] == secrets["variable"]
    for suffix in ("md", "ipynb", "jsonl"):
        exported = auto_coder(["--export", str(tmp_path / f"out.{suffix}")], run_env, project)
        assert exported.returncode == 0, exported.stderr
    files = saved(data_dir) + [tmp_path / f"out.{suffix}" for suffix in ("md", "ipynb", "jsonl")]
    assert len(files) == 4
    for path in files:
        text = path.read_text()
        assert "<hidden>" in text, path
        for name, value in secrets.items():
            assert value not in text, f"{name} in {path.name}"


def start_kernel(server: FakeLLMServer, home: Path, folder: Path, notebook: Path | None = None) -> Kernel:
    env = kernel_env(server, home)
    if notebook is not None:
        env["JPY_SESSION_NAME"] = str(notebook)  # what Jupyter Server tells the kernel of a notebook
    kernel = Kernel(env, folder)
    assert kernel.execute("%load_ext auto_coder_nb").reply["content"]["status"] == "ok"
    return kernel


def test_kernel_restart_then_resume_continues_the_notebooks_conversation(
    fake_server: FakeLLMServer, tmp_path: Path, data_dir: Path
) -> None:
    folder = tmp_path / "nb"
    folder.mkdir()
    notebook = folder / "analysis.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), notebook)
    kernel = start_kernel(fake_server, tmp_path / "home", folder, notebook)
    try:
        fake_server.enqueue(reply.text("Use pandas."))
        kernel.execute("sales = [3, 4]")
        kernel.execute("%autocoder how do I load a csv?")  # the kernel context goes with it, not in listings
        assert "<kernel-context>" in fake_server.chat_requests[-1].json["messages"][-1]["content"]
        first_id = fake_server.chat_requests[-1].headers["x-correlation-id"]
        kernel.manager.restart_kernel(now=True)
        kernel.client.wait_for_ready(timeout=60)
        assert kernel.execute("%load_ext auto_coder_nb").reply["content"]["status"] == "ok"
        # %autocoder_chat's panel in the restarted kernel offers the notebook's conversation.
        offered = kernel.execute("panel = get_ipython().run_line_magic('autocoder_chat', '')\n"
                                 "print([r['role'] for r in panel.transcript], panel._resume_button.layout.display)")
        assert offered.stdout == "['notice', 'user', 'assistant'] None\n"
        resumed = kernel.execute("%autocoder --resume")
        assert f"Resumed conversation {first_id}" in resumed.stdout
        fake_server.enqueue(reply.text("pd.read_csv."))
        kernel.execute("%autocoder --context none which function?")
        request = fake_server.chat_requests[-1]
        assert request.headers["x-correlation-id"] == first_id
        assert [m["content"].split("\n\n<kernel-context>")[0] for m in request.json["messages"][1:]] == [
            "how do I load a csv?", "Use pandas.", "which function?"]
        assert "sales" in request.json["messages"][1]["content"]  # resumed as it was sent
        assert_strictly_valid(request.json["messages"])
        listed = kernel.execute("%autocoder --sessions")
        assert first_id[:8] in listed.stdout and str(notebook) in listed.stdout
        assert "how do I load a csv?" in listed.stdout and "kernel-context" not in listed.stdout
        mine = kernel.execute("%autocoder --sessions 1 --here").stdout.splitlines()
        assert len(mine) == 1 and mine[0].startswith(first_id[:8]) and str(notebook) in mine[0]
        exported = kernel.execute("%autocoder --export chat.ipynb")
        assert "Exported 2 prompts" in exported.stdout
        chat = nbformat.read(folder / "chat.ipynb", as_version=4)
        nbformat.validate(chat)
        assert "kernel-context" not in json.dumps(chat) and "how do I load a csv?" in json.dumps(chat)
        unknown = kernel.execute("%autocoder --resume 0000ffff")
        assert "No saved conversation '0000ffff'" in unknown.stdout and first_id[:8] in unknown.stdout
    finally:
        kernel.close()
    assert json.loads(saved(data_dir)[0].read_text().splitlines()[0])["notebook"] == str(notebook)


def test_two_kernels_write_their_own_conversations_at_once(
    fake_server: FakeLLMServer, tmp_path: Path, data_dir: Path
) -> None:
    kernels = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        kernels.append(start_kernel(fake_server, tmp_path / f"home-{name}", folder))
    try:
        # Both answers stream slowly, so the two kernels write at the same time.
        fake_server.enqueue(*(reply.text(" ".join(["word"] * 30), chunks=30, delay=0.02) for _ in range(4)))
        for prompt in ("from", "again"):
            threads = [threading.Thread(target=kernel.execute, args=(f"%autocoder --context none {prompt} {name}",))
                       for kernel, name in zip(kernels, ("one", "two"), strict=True)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
    finally:
        for kernel in kernels:
            kernel.close()
    files = saved(data_dir)
    assert len(files) == 2
    for path in files:
        records = read_records(path)
        assert len(records) == len(path.read_text().splitlines())  # every line whole
        prompts = [r["message"]["content"] for r in records if r["type"] == "message"
                   and r["message"]["role"] == "user"]
        name = prompts[0].split()[-1]
        assert prompts == [f"from {name}", f"again {name}"]
        assert records[0]["working_dir"] == str((tmp_path / name).resolve())
        assert sum(1 for r in records if r["type"] == "turn_done") == 2


def test_panel_offers_the_latest_saved_conversation_and_resumes_it(
    fake_server: FakeLLMServer, tmp_path: Path
) -> None:
    from tests.test_panel import ChatPanel, find, html_of, make_session, roles, run, until

    async def scenario() -> None:
        fake_server.enqueue(reply.tool_call("list_directory", {"path": "."}),
                            reply.text("Two files.\n\n```python\nprint('x')\n```\n"))
        first = ChatPanel(make_session(fake_server, tmp_path))
        assert first._resume_button.layout.display == "none"  # nothing saved yet: no offer
        await first.ask("what is here?")
        old_id = first.correlation_id
        await first.session.aclose()  # as a kernel restart ends the old session (it held the conversation)

        # A kernel restart: a new session. The panel shows the saved conversation and offers Resume.
        panel = ChatPanel(make_session(fake_server, tmp_path))
        assert panel.correlation_id != old_id
        assert roles(panel) == ["notice", "user", "tool", "assistant"]
        assert panel.transcript[1]["text"] == "what is here?"
        assert old_id[:8] in panel.transcript[0]["text"]
        [resume] = find(panel.widget, "autocoder-resume")
        assert resume is panel._resume_button and resume.layout.display is None and resume.description == "Resume"
        assert "Two files." in html_of(find(panel.widget, "autocoder-assistant")[0])
        assert "print" in html_of(find(panel.widget, "autocoder-code")[0])  # with its Run / Copy buttons
        # One rendering path: the saved card is drawn as the live one was (title, status, summary).
        for css in ("autocoder-user", "autocoder-card-head", "autocoder-summary", "autocoder-assistant"):
            assert html_of(find(panel.widget, css)[0]) == html_of(find(first.widget, css)[0]), css
        resume.click()
        await until(lambda: panel.correlation_id == old_id, "the resumed id")
        assert resume.layout.display == "none" and "Resumed conversation" in panel.transcript[-1]["text"]
        fake_server.enqueue(reply.text("Still two."))
        await panel.ask("and now?")
        request = fake_server.chat_requests[-1]
        assert request.headers["x-correlation-id"] == old_id
        assert [m["content"] for m in request.json["messages"] if m["role"] == "user"] == ["what is here?",
                                                                                          "and now?"]
        assert_strictly_valid(request.json["messages"])

        # Another restart, then Send without Resume: a new conversation, the saved one leaves the view.
        fresh = ChatPanel(make_session(fake_server, tmp_path))
        assert fresh._resume_button.layout.display is None
        await fresh.ask("something else")
        assert roles(fresh) == ["user", "assistant"] and fresh._resume_button.layout.display == "none"
        assert fresh.correlation_id != old_id
        assert [m["content"] for m in fake_server.chat_requests[-1].json["messages"] if m["role"] == "user"] == [
            "something else"]

        # And Reset withdraws the offer too.
        again = ChatPanel(make_session(fake_server, tmp_path))
        assert again._resume_button.layout.display is None
        again._reset_button.click()
        await until(lambda: again._resume_button.layout.display == "none" and roles(again) == ["notice"],
                    "the offer withdrawn")

    run(scenario)



def test_a_conversation_resumed_while_another_session_writes_it_continues_as_a_copy(
    fake_server: FakeLLMServer, env: dict[str, str], project: Path, data_dir: Path
) -> None:
    """One writer per conversation (issue 22 item 8): the second resume must not close the first one's pending
    tool call in the shared file, or the real result lands after it as an orphan strict servers reject."""
    fake_server.enqueue(reply.text("First answer."))
    assert auto_coder(["first question"], env, project).returncode == 0
    [path] = saved(data_dir)
    first_id = path.stem
    # The first session resumes it and runs a command that waits until the test lets it end.
    fake_server.enqueue(reply.tool_call("run_command", {"command": "while [ ! -e go ]; do sleep 0.05; done; echo ran"}),
                        reply.text("It ran."))
    writer = subprocess.Popen(["auto-coder", "--approval-mode", "full-auto", "--resume", first_id, "run it"],
                              env=env, cwd=project, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: any(r["type"] == "tool_call" for r in read_records(path)), "the command to start")
        fake_server.enqueue(reply.text("Second answer."))
        second = auto_coder(["--resume", first_id, "meanwhile"], env, project)
        (project / "go").touch()
        out, err = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err
    assert second.returncode == 0, second.stderr
    assert f"Conversation {first_id} is open in another session" in second.stderr
    [request] = [r for r in fake_server.chat_requests if r.json["messages"][-1]["content"] == "meanwhile"]
    copy_id = request.headers["x-correlation-id"]
    assert copy_id != first_id and f"new conversation {copy_id}" in second.stderr
    sent = request.json["messages"]
    assert_strictly_valid(sent)  # the copy closed the pending call for itself
    # The first conversation's file is one valid history written by one session only.
    history = rebuild(read_records(path))
    assert_strictly_valid(history)
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant", "tool", "assistant"]
    assert "ran" in history[4]["content"] and "meanwhile" not in json.dumps(history)
    [copy] = [p for p in saved(data_dir) if p != path]
    records = read_records(copy)
    assert copy.stem == copy_id and records[0]["forked_from"] == first_id
    assert "meanwhile" in json.dumps(rebuild(records))


# -- many saved conversations (issue 22 item 11) ----------------------------------------------------------------

EPOCH = time.time() - 8 * 86400  # 10,000 minutes later is still within the 30 days conversations are kept


def write_saved(folder: Path, number: int, working_dir: Path, notebook: Path | None = None) -> Path:
    """A saved conversation as the recorder writes one (its start record and first prompt), active `number`
    minutes after EPOCH: higher numbers are newer."""
    conversation_id = f"{number:08x}-0000-4000-8000-000000000000"
    path = folder / f"{conversation_id}.jsonl"
    start = {"v": 1, "t": "2026-01-01T00:00:00.000Z", "type": "start", "correlation_id": conversation_id,
             "working_dir": str(working_dir), "notebook": str(notebook) if notebook else None, "model": "fake-model"}
    prompt = {"v": 1, "t": "2026-01-01T00:00:00.000Z", "type": "message",
              "message": {"role": "user", "content": f"question {number}"}}
    path.write_text(json.dumps(start) + "\n" + json.dumps(prompt) + "\n")
    os.utime(path, (EPOCH + 60 * number, EPOCH + 60 * number))
    return path


def test_ten_thousand_saved_conversations_list_the_newest_and_resume_without_reading_them_all(
    fake_server: FakeLLMServer, env: dict[str, str], project: Path, data_dir: Path, tmp_path: Path
) -> None:
    folder = data_dir / "sessions"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    for number in range(10_000):
        if number < 9_000:  # the oldest: damaged, so that reading any of them shows as a warning
            path = folder / f"{number:08x}-0000-4000-8000-000000000000.jsonl"
            path.write_text("damaged\n")
            os.utime(path, (EPOCH + 60 * number, EPOCH + 60 * number))
        else:
            write_saved(folder, number, project if number % 2 else elsewhere)

    listed = auto_coder(["--sessions"], env, project)
    assert listed.returncode == 0 and listed.stderr == ""  # no older file was read
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines[:20]] == [f"{n:08x}" for n in range(9_999, 9_979, -1)]
    assert lines[20:] == ["(9,980 older not shown: --sessions N shows N, --all every one)"]
    assert len(auto_coder(["--sessions", "50"], env, project).stdout.splitlines()) == 51
    here = auto_coder(["--sessions", "3", "--here"], env, project).stdout.splitlines()
    assert [line.split()[0] for line in here[:3]] == [f"{n:08x}" for n in (9_999, 9_997, 9_995)]
    assert here[3] == f"(older ones for {project.resolve()} not shown: --sessions N shows N, --all every one)"
    everything = auto_coder(["--sessions", "--all"], env, project)
    assert len(everything.stdout.splitlines()) == 1_000 and everything.stderr.count("Skipped") == 9_000
    bad = auto_coder(["--sessions", "0"], env, project)
    assert bad.returncode == 2 and "not a number of conversations: '0'" in bad.stderr

    fake_server.enqueue(reply.text("Carrying on."))
    resumed = auto_coder(["go on", "--resume"], env, project)  # the prompt first: the newest here
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.startswith("Resumed conversation 0000270f-")  # 9,999: the newest here
    assert "Skipped" not in resumed.stderr
    by_prefix = auto_coder(["--resume", "00002328", "--export", str(tmp_path / "one.md")], env, project)  # 9,000
    assert by_prefix.returncode == 0 and "Skipped" not in by_prefix.stderr, by_prefix.stderr
    assert "question 9000" in (tmp_path / "one.md").read_text()


def test_the_panel_pages_through_the_saved_conversations_of_its_notebook(
    fake_server: FakeLLMServer, tmp_path: Path, data_dir: Path
) -> None:
    from tests.test_panel import ChatPanel, find, make_session, roles, run, until

    folder = data_dir / "sessions"
    folder.mkdir()
    notebook = tmp_path / "analysis.ipynb"
    for number in range(25):
        write_saved(folder, number, tmp_path, notebook if number % 5 else None)  # 20 of this notebook

    async def scenario() -> None:
        session = make_session(fake_server, tmp_path)
        session.notebook = notebook
        panel = ChatPanel(session)
        [saved] = find(panel.widget, "autocoder-saved")
        saved.click()
        await until(lambda: find(panel.widget, "autocoder-saved-entry"), "the first page")
        entries = find(panel.widget, "autocoder-saved-entry")
        assert [e.description.split()[0] for e in entries] == [
            f"{n:08x}" for n in (24, 23, 22, 21, 19, 18, 17, 16, 14, 13)]
        [newer], [older] = find(panel.widget, "autocoder-saved-newer"), find(panel.widget, "autocoder-saved-older")
        assert newer.disabled and not older.disabled
        older.click()
        await until(lambda: find(panel.widget, "autocoder-saved-entry")[0].description.startswith("0000000c"),
                    "the second page")
        entries = find(panel.widget, "autocoder-saved-entry")
        assert len(entries) == 10 and find(panel.widget, "autocoder-saved-older")[0].disabled
        entries[-1].click()  # the oldest of this notebook: 1 (the click is handed over to the loop, like every click)
        await until(lambda: len(panel.transcript) > 1 and panel.transcript[1]["text"] == "question 1",
                    "the chosen conversation")
        assert roles(panel)[:2] == ["notice", "user"] and panel._resume_button.layout.display is None
        panel._resume_button.click()
        await until(lambda: panel.correlation_id.startswith("00000001-"), "the resumed conversation")

    run(scenario)


def test_saved_tool_cards_keep_their_outcome_when_the_server_reuses_call_ids(
    fake_server: FakeLLMServer, tmp_path: Path
) -> None:
    from tests.test_panel import ChatPanel, approval_card, find, make_session, run, until, write_call

    async def scenario() -> None:
        # The scripted server numbers calls per answer, so both calls are call00000: outcomes pair up in order.
        fake_server.enqueue(write_call("no.txt"), write_call("yes.txt"), reply.text("One written."))
        first = ChatPanel(make_session(fake_server, tmp_path))
        first.send("write two files")
        find(await approval_card(first), "autocoder-deny")[0].click()
        await until(lambda: len(find(first.widget, "autocoder-tool")) == 2, "the second call")
        find(await approval_card(first), "autocoder-approve")[0].click()
        await first.wait()
        ids = [m["tool_call_id"] for m in fake_server.chat_requests[-1].json["messages"] if m["role"] == "tool"]
        assert len(ids) == 2 and ids[0] == ids[1]
        await first.session.aclose()  # a kernel restart

        panel = ChatPanel(make_session(fake_server, tmp_path))  # shows the saved conversation
        cards = find(panel.widget, "autocoder-tool")
        assert [c._dom_classes for c in cards] == [c._dom_classes for c in find(first.widget, "autocoder-tool")]
        assert "autocoder-card-denied" in cards[0]._dom_classes and "autocoder-card-ok" in cards[1]._dom_classes
        outcomes = [[w.value for w in find(card, "autocoder-outcome")] for card in cards]
        assert outcomes == [[w.value for w in find(card, "autocoder-outcome")]
                            for card in find(first.widget, "autocoder-tool")] == [["Denied."], ["Approved."]]

    run(scenario)


def test_send_after_choosing_a_saved_conversation_starts_a_new_one(
    fake_server: FakeLLMServer, tmp_path: Path, data_dir: Path
) -> None:
    from tests.test_panel import ChatPanel, find, make_session, run, until

    folder = data_dir / "sessions"
    folder.mkdir()
    write_saved(folder, 7, tmp_path)

    async def scenario() -> None:
        panel = ChatPanel(make_session(fake_server, tmp_path))
        fake_server.enqueue(reply.text("First answer."), reply.text("Fresh answer."))
        await panel.ask("first question")
        talked_in = panel.correlation_id
        find(panel.widget, "autocoder-saved")[0].click()
        await until(lambda: find(panel.widget, "autocoder-saved-entry"), "the saved list")
        [chosen] = [e for e in find(panel.widget, "autocoder-saved-entry") if e.description.startswith("00000007")]
        chosen.click()
        await until(lambda: len(panel.transcript) > 1 and panel.transcript[1]["text"] == "question 7",
                    "the chosen conversation")
        # "Send or Reset start a new one": neither the chosen conversation nor the one it hid goes on.
        await panel.ask("something new")
        request = fake_server.chat_requests[-1]
        assert [m["content"] for m in request.json["messages"] if m["role"] == "user"] == ["something new"]
        assert request.headers["x-correlation-id"] not in (talked_in, "00000007-0000-4000-8000-000000000000")
        assert panel._resume_button.layout.display == "none"

    run(scenario)
