"""Exports are safe to open and never overwrite work (issue 24 items 1 and 11): the model's HTML and script stay
text in .md and .ipynb exports (checked through `jupyter nbconvert --to html` and nbconvert's Markdown renderer),
an export never replaces the open notebook, and an existing file only with --force or the user's yes."""

from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import hostile
import nbformat
import pexpect
import pytest
from turns import run_turn

from auto_coder_nb.config import load_config
from auto_coder_nb.history import ConversationStore, HistoryError
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import FakeLLMServer, reply
from auto_coder_nb.transcript import ExportExists
from tests.test_cli import run as auto_coder
from tests.test_saved_conversations import start_kernel


def session_with_hostile_answer(server: FakeLLMServer, root: Path) -> Session:
    flags = {"llm.base_url": server.base_url, "llm.model": "fake-model"}
    session = Session.create(load_config(flags, env={}, cwd=root, home=root), working_dir=root)
    server.enqueue(reply.text(hostile.ANSWER + "\n```python\nprint('<b>kept</b>')\n```\n"))
    run_turn(session, "show me <script>window.__pwned='prompt'</script>")
    return session


class Live(HTMLParser):
    """What a browser would run or follow in an HTML page: handlers, scripts, styles, links, frames."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.inside: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.inside.append(tag)
        if tag in ("iframe", "img", "svg", "animate", "object", "embed"):
            self.found.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on") or "pwned" in (value or "") or (value or "").lower().startswith("javascript"):
                self.found.append(f"<{tag} {name}={value!r}>")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.inside:
            del self.inside[len(self.inside) - 1 - self.inside[::-1].index(tag):]

    def handle_data(self, data: str) -> None:
        if self.inside and self.inside[-1] in ("script", "style") and ("pwned" in data or "rgb(255, 0, 0)" in data):
            self.found.append(f"<{self.inside[-1]}> {data.strip()[:60]}")


def live_parts(page: str) -> list[str]:
    parser = Live()
    parser.feed(page)
    return parser.found


def test_exports_carry_no_live_html_from_the_model(fake_server: FakeLLMServer, tmp_path: Path) -> None:
    session = session_with_hostile_answer(fake_server, tmp_path)
    store = ConversationStore()
    session.export(tmp_path / "out.ipynb", None, store)
    session.export(tmp_path / "out.md", None, store)

    converted = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--log-level", "ERROR",
                                str(tmp_path / "out.ipynb")], capture_output=True, text=True, timeout=120)
    assert converted.returncode == 0, converted.stderr
    page = (tmp_path / "out.html").read_text()
    assert live_parts(page) == []
    assert "&lt;img src=x onerror=" in page and "&lt;script&gt;window.__pwned = " in page  # shown as text
    notebook = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert [cell.source for cell in notebook.cells if cell.cell_type == "code"] == ["print('<b>kept</b>')"]

    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    markdown = (tmp_path / "out.md").read_text()
    rendered = markdown2html_mistune(markdown)
    assert live_parts(rendered) == [] and "&lt;img src=x onerror=" in rendered
    assert "print('<b>kept</b>')" in markdown  # code stays exactly as written
    assert "`<b>inline code</b>`" in markdown


def test_an_export_never_replaces_a_file_without_being_told(fake_server: FakeLLMServer, tmp_path: Path) -> None:
    session = session_with_hostile_answer(fake_server, tmp_path)
    store = ConversationStore()
    work = tmp_path / "analysis.md"
    work.write_text("my own notes\n")
    with pytest.raises(ExportExists, match="the file exists. Name another file, or add --force"):
        session.export(work, None, store)
    assert work.read_text() == "my own notes\n"
    assert "Exported 1 prompt" in session.export(work, None, store, overwrite=True)
    assert "## You" in work.read_text()
    assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(".")) == []  # no temporary left


def test_the_cli_refuses_an_existing_file_without_force(fake_server: FakeLLMServer, tmp_path: Path,
                                                        clean_env: dict[str, str]) -> None:
    env = clean_env | {"HOME": str(tmp_path), "AUTO_CODER_BASE_URL": fake_server.base_url,
                       "AUTO_CODER_MODEL": "fake-model", "NO_COLOR": "1", "TERM": "dumb"}
    assert auto_coder(["hello"], env, tmp_path).returncode == 0
    target = tmp_path / "report.md"
    target.write_text("keep me\n")
    refused = auto_coder(["--export", str(target)], env, tmp_path)
    assert refused.returncode == 2 and "the file exists" in refused.stderr and "--force" in refused.stderr
    assert target.read_text() == "keep me\n"
    forced = auto_coder(["--export", str(target), "--force"], env, tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert "hello" in target.read_text()

    # At a terminal the user is asked; no keeps the file.
    child = pexpect.spawn(sys.executable, ["-m", "auto_coder_nb", "--export", str(target)], env=env | {
        "PROMPT_TOOLKIT_NO_CPR": "1"}, cwd=str(tmp_path), encoding="utf-8", timeout=30)
    child.expect_exact("Replace it with the export? [y/N]:")
    target.write_text("edited meanwhile\n")
    child.sendline("n")
    child.expect_exact("Not exported:")
    child.expect(pexpect.EOF)
    assert target.read_text() == "edited meanwhile\n"


def test_the_magic_never_exports_onto_the_open_notebook(fake_server: FakeLLMServer, tmp_path: Path) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    notebook = folder / "analysis.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), notebook)
    before = notebook.read_bytes()
    kernel = start_kernel(fake_server, tmp_path, folder, notebook)
    try:
        kernel.execute("%autocoder --context none hello")
        refused = kernel.execute("%autocoder --export analysis.ipynb --force")
        assert "it is the notebook open in this kernel" in refused.stdout
        assert notebook.read_bytes() == before
        (folder / "other.md").write_text("mine\n")
        kept = kernel.execute("%autocoder --export other.md")
        assert "the file exists" in kept.stdout and (folder / "other.md").read_text() == "mine\n"
        assert "Exported 1 prompt" in kernel.execute("%autocoder --export other.md --force").stdout
    finally:
        kernel.close()


def test_an_export_to_a_folder_or_a_missing_folder_is_a_clear_error(fake_server: FakeLLMServer,
                                                                    tmp_path: Path) -> None:
    session = session_with_hostile_answer(fake_server, tmp_path)
    (tmp_path / "x.md").mkdir()
    with pytest.raises(HistoryError, match="it is a folder"):
        session.export(tmp_path / "x.md", None, ConversationStore())
    with pytest.raises(HistoryError, match="does not exist"):
        session.export(tmp_path / "nowhere" / "x.md", None, ConversationStore())
