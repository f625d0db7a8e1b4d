"""Saved conversations (history.py, transcript.py) through a real Session against the project's test server:
what is written and when, resuming to a history a strict server accepts, damaged files, retention, secrets,
exports."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from turns import approve, run_turn

from auto_coder_nb.config import Config, load_config
from auto_coder_nb.events import Notice, TextDelta
from auto_coder_nb.history import IMAGE_NOT_SAVED, ConversationStore, HistoryError, read_records, rebuild
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import FakeLLMServer, reply
from auto_coder_nb.transcript import export
from tests.test_agent import assert_strictly_valid

KEY = "sk-history-key-0123456789"


def make_session(server: FakeLLMServer, root: Path, **history: Any) -> Session:
    config = Config()
    config.llm.base_url = server.base_url.replace("http://", "http://alice:proxy-pass-77@")
    config.llm.model = "fake-model"
    config.llm.api_key = KEY
    config.agent.approval_mode = "auto-edit"
    for name, value in history.items():
        setattr(config.history, name, value)
    return Session.create(config, working_dir=root)


def saved_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "sessions").glob("*.jsonl"))


def test_every_step_is_written_as_it_happens(fake_server: FakeLLMServer, root: Path, data_dir: Path) -> None:
    fake_server.enqueue(reply.tool_call("write_file", {"path": "a.txt", "content": "hi"}),
                        reply.text("Wrote a.txt.", chunks=3))
    (data_dir / "sessions").mkdir()
    (data_dir / "sessions").chmod(0o755)  # made by someone else: tightened on first use
    session = make_session(fake_server, root)
    assert saved_files(data_dir) == []  # nothing before the first prompt
    run_turn(session, "write a.txt", approve)
    [path] = saved_files(data_dir)
    assert path.stem == session.conversation.correlation_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    records = read_records(path)
    start = records[0]
    assert start["type"] == "start" and start["v"] == 1 and start["t"].endswith("Z")
    assert start["working_dir"] == str(root.resolve()) and start["model"] == "fake-model"
    assert start["base_url"] == fake_server.base_url.replace("http://", "http://alice:<hidden>@")
    assert start["correlation_id"] == session.conversation.correlation_id
    kinds = [r["type"] if r["type"] != "message" else r["message"]["role"] for r in records[1:]]
    assert kinds == ["user", "turn", "usage", "assistant", "tool_call", "tool", "tool_result",
                     "text", "text", "text", "usage", "assistant", "turn_done"]
    assert records[1]["model"] == "fake-model" and records[2]["turn"] == 1


def test_a_resumed_conversation_continues_with_the_same_history_and_id(
    fake_server: FakeLLMServer, root: Path, data_dir: Path
) -> None:
    fake_server.enqueue(reply.tool_call("list_directory", {"path": "."}), reply.text("Empty."))
    first = make_session(fake_server, root)
    run_turn(first, "what is here?", approve)
    sent_before = fake_server.chat_requests[-1].json["messages"]

    second = make_session(fake_server, root)
    saved = ConversationStore().latest(working_dir=root.resolve())
    assert saved is not None and saved.id == first.conversation.correlation_id
    assert "(1 earlier prompt," in second.resume(saved)
    fake_server.enqueue(reply.text("Still empty."))
    run_turn(second, "and now?", approve)
    request = fake_server.chat_requests[-1]
    assert request.headers["x-correlation-id"] == first.conversation.correlation_id
    messages = request.json["messages"]
    assert messages[1:len(sent_before) + 1] == sent_before[1:] + [{"role": "assistant", "content": "Empty."}]
    assert messages[-1] == {"role": "user", "content": "and now?"}
    assert_strictly_valid(messages)
    assert len(saved_files(data_dir)) == 1  # the same file goes on
    assert [r["type"] for r in read_records(saved.path)].count("resumed") == 1


def test_a_file_cut_off_mid_answer_rebuilds_to_a_valid_history(root: Path, data_dir: Path,
                                                                fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.tool_calls([{"name": "list_directory", "arguments": {"path": "."}, "id": "c1"},
                                          {"name": "read_file", "arguments": {"path": "x"}, "id": "c2"}]),
                        reply.text("Done."))
    session = make_session(fake_server, root)
    run_turn(session, "look", approve)
    [path] = saved_files(data_dir)
    lines = path.read_bytes().splitlines(keepends=True)
    # The process died after the first tool result, in the middle of writing the next record.
    cut = next(i for i, line in enumerate(lines) if b'"role": "tool"' in line) + 1
    path.write_bytes(b"".join(lines[:cut]) + lines[cut][:25])
    messages = rebuild(read_records(path))
    assert_strictly_valid(messages)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
    # An answer cut off while it streamed is kept, marked.
    path.write_bytes(b"".join(lines[:3]) + b'{"v": 1, "t": "x", "type": "text", "text": "Half an ans')
    with open(path, "ab") as stream:
        stream.write(b'\n{"v": 1, "t": "x", "type": "text", "text": "Half"}\n')
    messages = rebuild(read_records(path))
    assert messages[-1] == {"role": "assistant", "content": "Half\n[interrupted]"}

    # Resuming writes after the torn line, not onto it.
    path.write_bytes(path.read_bytes() + b'{"v": 1, "type": "te')
    fake_server.enqueue(reply.text("Again."))
    again = make_session(fake_server, root)
    again.resume(ConversationStore().find(path.stem[:8]))
    run_turn(again, "go on", approve)
    assert_strictly_valid(fake_server.chat_requests[-1].json["messages"])
    assert read_records(path)[-1]["type"] == "turn_done"
    assert rebuild(read_records(path)) == fake_server.chat_requests[-1].json["messages"][1:] + [
        {"role": "assistant", "content": "Again."}]


def test_damaged_foreign_and_newer_files_are_skipped_with_a_warning(
    fake_server: FakeLLMServer, root: Path, data_dir: Path
) -> None:
    run_turn(make_session(fake_server, root), "hello", approve)
    folder = data_dir / "sessions"
    (folder / "notes.txt").write_text("mine")
    (folder / "garbage.jsonl").write_bytes(b"\x00\xff not json\n")
    (folder / "future.jsonl").write_text(json.dumps({"v": 99, "type": "start", "correlation_id": "f"}) + "\n")
    warnings: list[str] = []
    listed = ConversationStore(warn=warnings.append).list()
    assert len(listed) == 1 and listed[0].first_prompt == "hello"
    assert len(warnings) == 3
    assert any("garbage.jsonl" in w and "not a saved conversation" in w for w in warnings)
    assert any("future.jsonl" in w and "newer auto-coder" in w for w in warnings)


def test_ids_prefixes_and_unknown_ids(fake_server: FakeLLMServer, root: Path) -> None:
    session = make_session(fake_server, root)
    run_turn(session, "one", approve)
    first = session.conversation.correlation_id
    session.reset()
    run_turn(session, "two", approve)
    store = ConversationStore()
    listed = store.list()
    assert [s.first_prompt for s in listed] == ["two", "one"]  # newest first
    assert store.find(first[:6]).id == first
    assert store.find(first).id == first
    with pytest.raises(HistoryError) as unknown:
        store.find("zzzz")
    assert first[:8] in str(unknown.value) and session.conversation.correlation_id[:8] in str(unknown.value)


def test_an_unwritable_folder_warns_once_and_the_conversation_goes_on(
    fake_server: FakeLLMServer, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("AUTO_CODER_DATA_DIR", str(blocker))  # a file where the folder should be
    fake_server.enqueue(reply.text("First answer."), reply.text("Second answer."))
    session = make_session(fake_server, root)
    first = run_turn(session, "one", approve)
    notices = [e.text for e in first if isinstance(e, Notice)]
    assert len(notices) == 1 and "not being saved" in notices[0] and str(blocker) in notices[0]
    assert "".join(e.text for e in first if isinstance(e, TextDelta)) == "First answer."
    second = run_turn(session, "two", approve)
    assert not [e for e in second if isinstance(e, Notice)]
    assert "".join(e.text for e in second if isinstance(e, TextDelta)) == "Second answer."


def test_history_disabled_keeps_nothing(fake_server: FakeLLMServer, root: Path, data_dir: Path) -> None:
    session = make_session(fake_server, root, enabled=False)
    run_turn(session, "hello", approve)
    assert not (data_dir / "sessions").exists()


def test_old_conversations_are_removed_at_start_up(fake_server: FakeLLMServer, root: Path, data_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run_turn(make_session(fake_server, root), "old", approve)
    run_turn(make_session(fake_server, root), "recent", approve)
    old, recent = sorted(saved_files(data_dir), key=lambda p: read_records(p)[1]["message"]["content"] != "old")
    long_ago = time.time() - 8 * 86400
    os.utime(old, (long_ago, long_ago))
    monkeypatch.setattr("auto_coder_nb.session._cleaned", set())  # a new process
    make_session(fake_server, root, retention_days=7)
    assert saved_files(data_dir) == [recent]


def test_show_config_lists_the_history_settings(tmp_path: Path) -> None:
    (tmp_path / ".auto-coder.yaml").write_text("history:\n  enabled: false\n  retention_days: 3\n")
    shown = load_config(cwd=tmp_path, home=tmp_path / "nowhere", env={}, trust_project=True).show()
    assert "history.enabled = False  (file" in shown and "history.retention_days = 3  (file" in shown


def test_no_secret_is_written_even_split_across_pieces(fake_server: FakeLLMServer, root: Path, data_dir: Path,
                                                        tmp_path: Path) -> None:
    variable_value = "from-a-variable-5150"
    home = tmp_path / "home"
    home.mkdir()
    (home / ".auto-coder.yaml").write_text("llm:\n  auth_headers:\n    X-Team: ${TEAM_TOKEN}\n")
    config = load_config({"llm.base_url": fake_server.base_url, "llm.api_key": KEY, "agent.approval_mode": "auto-edit"},
                         env={"TEAM_TOKEN": variable_value}, home=home, cwd=root)
    session = Session.create(config, working_dir=root)
    (root / "env.txt").write_text(f"key={KEY} team={variable_value}\n")
    fake_server.enqueue(reply.tool_call("read_file", {"path": "env.txt"}),
                        reply.text(f"The key is {KEY} and the team token {variable_value}.", chunks=40))
    run_turn(session, f"my key is {KEY}, show env.txt", approve)
    [path] = saved_files(data_dir)
    text = path.read_text()
    assert KEY not in text and variable_value not in text
    assert "<hidden>" in text
    # Pieces of the answer's text records do not hold a part of a secret that joins up with the next.
    pieces = "".join(r["text"] for r in read_records(path) if r["type"] == "text")
    assert pieces == "The key is <hidden> and the team token <hidden>."


def test_exports_by_suffix(fake_server: FakeLLMServer, root: Path, data_dir: Path, tmp_path: Path) -> None:
    answer = "Here:\n\n```python\nprint('hi')\n```\n\nand a shell line:\n\n```bash\nls\n```\n"
    fake_server.enqueue(reply.tool_call("list_directory", {"path": "."}), reply.text(answer))
    run_turn(make_session(fake_server, root), "show me", approve)
    [path] = saved_files(data_dir)
    records = read_records(path)

    export(records, tmp_path / "t.md")
    markdown = (tmp_path / "t.md").read_text()
    assert "## You\n\nshow me" in markdown and "<details><summary>Tool call: list_directory" in markdown
    assert "print('hi')" in markdown

    export(records, tmp_path / "t.ipynb")
    notebook = nbformat.read(tmp_path / "t.ipynb", as_version=4)
    nbformat.validate(notebook)
    code = [c.source for c in notebook.cells if c.cell_type == "code"]
    assert code == ["print('hi')"]
    markdown_cells = [c.source for c in notebook.cells if c.cell_type == "markdown"]
    assert any("show me" in c for c in markdown_cells) and any("```bash\nls\n```" in c for c in markdown_cells)
    assert any("<details>" in c and "list_directory" in c for c in markdown_cells)

    export(records, tmp_path / "t.jsonl")
    assert [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()] == records

    with pytest.raises(HistoryError, match=r"\.md, \.ipynb, \.jsonl"):
        export(records, tmp_path / "t.txt")
    with pytest.raises(HistoryError, match="does not exist"):
        export(records, tmp_path / "missing" / "t.md")


def test_images_are_saved_as_a_note_not_as_data(fake_server: FakeLLMServer, root: Path, data_dir: Path) -> None:
    from auto_coder_nb.images import fit_image
    from tests.test_images import png

    session = make_session(fake_server, root)
    session.agent.vision = True
    image = fit_image(png(32, 32), "plot.png", 1024)
    run_turn(session, "what is in this plot?", images=[image])
    assert fake_server.chat_requests[-1].json["messages"][1]["content"][1]["type"] == "image_url"  # it was sent
    [path] = saved_files(data_dir)
    assert "base64" not in path.read_text()
    [saved] = ConversationStore().list()
    assert saved.first_prompt.startswith("what is in this plot?")
    rebuilt = rebuild(read_records(path))
    assert rebuilt[0]["content"][1] == {"type": "text", "text": IMAGE_NOT_SAVED}


def test_a_resumed_conversation_too_long_for_the_window_is_shortened_as_usual(
    fake_server: FakeLLMServer, root: Path
) -> None:
    first = make_session(fake_server, root)
    for number in range(6):
        fake_server.enqueue(reply.text(f"answer {number} " + "x" * 2000))
        run_turn(first, f"question {number}", approve)
    later = make_session(fake_server, root)
    later.agent.config.context_window = 2000  # a smaller model now
    later.resume(ConversationStore().choose(None, working_dir=root.resolve()))
    fake_server.enqueue(reply.text("short"))
    events = run_turn(later, "and now?", approve)
    assert any(isinstance(e, Notice) and "shortened" in e.text for e in events)
    sent = fake_server.chat_requests[-1].json["messages"]
    assert sent[-1]["content"] == "and now?" and len(sent) < 14
    assert_strictly_valid(sent)
    # The file keeps everything: a later resume starts from the whole conversation again.
    records = read_records(ConversationStore().find(later.conversation.correlation_id).path)
    assert sum(1 for r in records if r["type"] == "message" and r["message"]["role"] == "user") == 7
    assert any(r["type"] == "shortened" for r in records)


def test_where_conversations_are_kept() -> None:
    from auto_coder_nb.history import sessions_dir

    assert sessions_dir({"AUTO_CODER_DATA_DIR": "/data/ac", "XDG_DATA_HOME": "/xdg"}) == Path("/data/ac/sessions")
    assert sessions_dir({"XDG_DATA_HOME": "/xdg"}) == Path("/xdg/auto-coder/sessions")
    assert sessions_dir({}) == Path.home() / ".local" / "share" / "auto-coder" / "sessions"


def test_history_turned_off_and_on_while_a_session_runs(fake_server: FakeLLMServer, root: Path,
                                                         data_dir: Path) -> None:
    session = make_session(fake_server, root)
    run_turn(session, "saved", approve)
    [path] = saved_files(data_dir)
    before = path.read_text()

    off = make_session(fake_server, root, enabled=False).config
    assert session.apply_config(off)
    run_turn(session, "not saved", approve)
    assert path.read_text() == before and saved_files(data_dir) == [path]

    on = make_session(fake_server, root).config
    assert session.apply_config(on)
    run_turn(session, "still not saved: this conversation was not kept whole", approve)
    assert path.read_text() == before and saved_files(data_dir) == [path]
    session.reset()
    run_turn(session, "a new conversation is saved", approve)
    assert len(saved_files(data_dir)) == 2


def test_approval_decisions_are_recorded(fake_server: FakeLLMServer, root: Path, data_dir: Path) -> None:
    fake_server.enqueue(reply.tool_call("write_file", {"path": "b.txt", "content": "x"}), reply.text("Done."))
    session = make_session(fake_server, root)
    session.policy.mode = "ask"
    run_turn(session, "write b.txt", approve)
    [path] = saved_files(data_dir)
    [approval] = [r for r in read_records(path) if r["type"] == "approval"]
    assert approval["tool"] == "write_file" and approval["allowed"] is True and approval["always"] is False
