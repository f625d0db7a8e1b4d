"""Workspace: containment on real paths, atomic writes, checkpoints and undo, against real temporary folders."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from auto_coder_nb.errors import ConfigError
from auto_coder_nb.tools import ToolError, Workspace


def test_relative_and_absolute_paths_inside_the_root_resolve(workspace: Workspace, root: Path) -> None:
    (root / "src").mkdir()
    assert workspace.resolve("src/a.py") == root.resolve() / "src" / "a.py"
    assert workspace.resolve(str(root / "src" / "a.py")) == root.resolve() / "src" / "a.py"
    assert workspace.resolve("src/../b.txt") == root.resolve() / "b.txt"
    assert workspace.resolve(".") == root.resolve()


def test_root_that_is_a_symlink_is_resolved(tmp_path: Path, root: Path) -> None:
    link = tmp_path / "link-to-project"
    link.symlink_to(root)
    workspace = Workspace(link)
    assert workspace.root == root.resolve()
    assert workspace.resolve(str(link / "a.txt")) == root.resolve() / "a.txt"


@pytest.mark.parametrize("path", ["../outside.txt", "src/../../outside.txt", "/etc/passwd", "~/secrets"])
def test_paths_leaving_the_root_are_refused_with_the_root_named(workspace: Workspace, path: str) -> None:
    with pytest.raises(ToolError) as error:
        workspace.resolve(path)
    assert "outside the workspace" in str(error.value)
    assert str(workspace.root) in str(error.value)


def test_sibling_folder_sharing_the_roots_name_as_prefix_is_outside(tmp_path: Path, workspace: Workspace) -> None:
    sibling = tmp_path / "project-secrets"
    sibling.mkdir()
    (sibling / "key.txt").write_text("secret")
    for path in (str(sibling / "key.txt"), "../project-secrets/key.txt"):
        with pytest.raises(ToolError, match="outside the workspace"):
            workspace.resolve(path)


def test_symlinked_folder_pointing_outside_is_refused_for_read_and_write(
        tmp_path: Path, root: Path, workspace: Workspace) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.txt").write_text("x")
    (root / "escape").symlink_to(outside)
    for write in (False, True):
        with pytest.raises(ToolError, match="outside the workspace .through a symbolic link"):
            workspace.resolve("escape/data.txt", write=write)
        with pytest.raises(ToolError, match="outside the workspace"):
            workspace.resolve("escape/new.txt", write=write)


def test_leaf_symlink_and_dangling_symlink_pointing_outside_are_refused(
        tmp_path: Path, root: Path, workspace: Workspace) -> None:
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    (root / "leaf").symlink_to(target)
    (root / "dangling").symlink_to(tmp_path / "does-not-exist-yet.txt")
    for name in ("leaf", "dangling"):
        for write in (False, True):
            with pytest.raises(ToolError, match="outside the workspace"):
                workspace.resolve(name, write=write)
        with pytest.raises(ToolError, match="outside the workspace"):
            workspace.atomic_write(name, b"overwritten")
    assert target.read_text() == "keep me"
    assert not (tmp_path / "does-not-exist-yet.txt").exists()


def test_symlink_inside_the_root_is_followed_to_its_target(root: Path, workspace: Workspace) -> None:
    (root / "real.txt").write_text("old")
    (root / "alias.txt").symlink_to(root / "real.txt")
    workspace.atomic_write("alias.txt", b"new")
    assert (root / "alias.txt").is_symlink(), "the link itself is kept, its target is written"
    assert (root / "real.txt").read_text() == "new"


def test_git_folder_and_own_config_are_protected_from_writes(root: Path, workspace: Workspace) -> None:
    (root / ".git").mkdir()
    assert workspace.resolve(".git/config") == root.resolve() / ".git" / "config"  # reading is fine
    with pytest.raises(ToolError, match="protected"):
        workspace.resolve(".git/config", write=True)
    with pytest.raises(ToolError, match="protected"):
        workspace.resolve("sub/.auto-coder.yaml", write=True)


def test_empty_path_is_an_error(workspace: Workspace) -> None:
    with pytest.raises(ToolError, match="empty"):
        workspace.resolve("  ")


def test_atomic_write_keeps_mode_and_leaves_no_temporary_file(root: Path, workspace: Workspace) -> None:
    script = root / "run.sh"
    script.write_text("echo old\n")
    script.chmod(0o751)
    workspace.atomic_write("run.sh", b"echo new\n")
    assert script.read_text() == "echo new\n"
    assert stat.S_IMODE(script.stat().st_mode) == 0o751
    assert sorted(os.listdir(root)) == ["run.sh"]


def test_failed_atomic_write_leaves_the_old_file_intact(root: Path, workspace: Workspace) -> None:
    original = root / "keep.txt"
    original.write_text("original")
    with pytest.raises(TypeError):
        workspace.atomic_write("keep.txt", "not bytes")  # type: ignore[arg-type]  # fails while writing
    assert original.read_text() == "original"
    assert sorted(os.listdir(root)) == ["keep.txt"]


def test_undo_restores_the_last_turn_then_the_one_before(root: Path, workspace: Workspace) -> None:
    (root / "a.txt").write_text("a0")
    workspace.begin_turn()
    workspace.atomic_write("a.txt", b"a1")
    workspace.begin_turn()
    workspace.atomic_write("a.txt", b"a2")
    workspace.atomic_write("a.txt", b"a3")  # second change in one turn: undo goes back past both
    workspace.atomic_write("new/deep/b.txt", b"b")
    workspace.begin_turn()  # a turn that changed nothing is not an undo step

    message = workspace.undo()
    assert (root / "a.txt").read_text() == "a1"
    assert not (root / "new").exists(), "folders the turn created are removed too"
    assert "a.txt" in message and "new/deep/b.txt" in message

    workspace.undo()
    assert (root / "a.txt").read_text() == "a0"
    assert "Nothing to undo" in workspace.undo()


def test_undo_says_commands_are_not_undone(root: Path, workspace: Workspace) -> None:
    workspace.begin_turn()
    workspace.atomic_write("a.txt", b"x")
    workspace.note_command()
    message = workspace.undo()
    assert not (root / "a.txt").exists()
    assert "1 command(s)" in message and "not undone" in message


def test_undo_restores_the_mode_of_a_file(root: Path, workspace: Workspace) -> None:
    script = root / "tool.sh"
    script.write_text("v1")
    script.chmod(0o700)
    workspace.begin_turn()
    workspace.atomic_write("tool.sh", b"v2")
    script.chmod(0o644)
    workspace.undo()
    assert script.read_text() == "v1"
    assert stat.S_IMODE(script.stat().st_mode) == 0o700


def test_check_fresh_refuses_a_file_changed_since_it_was_read(root: Path, workspace: Workspace) -> None:
    path = workspace.resolve("f.txt")
    path.write_bytes(b"one")
    workspace.check_fresh(path, b"one")  # never read: no check
    workspace.note_read(path, b"one")
    workspace.check_fresh(path, b"one")
    with pytest.raises(ToolError, match="modified since you last read it"):
        workspace.check_fresh(path, b"two")


def test_a_loop_of_symlinks_is_refused_clearly(root: Path, workspace: Workspace) -> None:
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    with pytest.raises(ToolError, match="loop"):
        workspace.resolve("a", write=True)


def test_a_missing_root_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Workspace(tmp_path / "missing")


def test_a_name_starting_with_a_tilde_is_an_ordinary_file(root: Path, workspace: Workspace) -> None:
    assert workspace.resolve("~draft.txt") == root.resolve() / "~draft.txt"


def test_undo_keeps_a_copy_of_changes_made_after_the_turn(root: Path, workspace: Workspace) -> None:
    (root / "old.txt").write_text("before the turn")
    workspace.begin_turn()
    workspace.atomic_write("a.txt", b"by the tool")
    workspace.atomic_write("b.txt", b"by the tool")
    workspace.atomic_write("old.txt", b"by the tool")
    (root / "a.txt").write_text("edited by the user afterwards")
    (root / "old.txt").write_text("also edited afterwards")
    message = workspace.undo()
    assert not (root / "a.txt").exists() and not (root / "b.txt").exists()
    assert (root / "a.txt.before-undo").read_text() == "edited by the user afterwards"
    assert (root / "old.txt").read_text() == "before the turn"
    assert (root / "old.txt.before-undo").read_text() == "also edited afterwards"
    assert not (root / "b.txt.before-undo").exists(), "unchanged since the turn: no copy"
    assert "a.txt -> a.txt.before-undo" in message and "old.txt -> old.txt.before-undo" in message


def test_undoing_an_older_turn_through_a_newer_one_keeps_the_users_edits_in_between(
        root: Path, workspace: Workspace) -> None:
    (root / "a.txt").write_text("v0")
    workspace.begin_turn()
    workspace.atomic_write("a.txt", b"v1 by the tool")
    (root / "a.txt").write_text("v1 edited by the user")
    workspace.begin_turn()
    workspace.atomic_write("a.txt", b"v2 by the tool")
    assert "a.txt" in workspace.undo()
    assert (root / "a.txt").read_text() == "v1 edited by the user"
    message = workspace.undo()
    assert (root / "a.txt").read_text() == "v0"
    assert (root / "a.txt.before-undo").read_text() == "v1 edited by the user"
    assert "a.txt -> a.txt.before-undo" in message


def test_a_second_kept_copy_never_replaces_the_first(root: Path, workspace: Workspace) -> None:
    (root / "a.txt.before-undo").write_text("an earlier copy")
    workspace.begin_turn()
    workspace.atomic_write("a.txt", b"by the tool")
    (root / "a.txt").write_text("the user's version")
    assert "a.txt -> a.txt.before-undo-2" in workspace.undo()
    assert (root / "a.txt.before-undo").read_text() == "an earlier copy"
    assert (root / "a.txt.before-undo-2").read_text() == "the user's version"


def test_undo_refuses_a_file_whose_folder_became_a_symlink_leading_outside(tmp_path: Path, root: Path,
                                                                            workspace: Workspace) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.txt").write_text("outside, must survive")
    (root / "src").mkdir()
    (root / "src" / "b.txt").write_text("b0")
    workspace.begin_turn()
    workspace.atomic_write("src/a.txt", b"created by the tool")
    workspace.atomic_write("src/b.txt", b"changed by the tool")
    workspace.atomic_write("top.txt", b"created by the tool")
    (root / "src").rename(root / "src-moved")
    (root / "src").symlink_to(outside)

    message = workspace.undo()
    assert (outside / "a.txt").read_text() == "outside, must survive", "undo deleted through the symlink"
    assert not (outside / "b.txt").exists(), "undo wrote through the symlink"
    assert sorted(os.listdir(outside)) == ["a.txt"]
    assert "Not restored: " in message and "src/a.txt (it now leads outside the workspace" in message
    assert "src/b.txt" in message.split("Not restored: ")[1]
    assert not (root / "top.txt").exists(), "the other files of the turn are still undone"


def test_undo_leaves_alone_a_path_that_now_leads_elsewhere_inside_the_root(root: Path,
                                                                           workspace: Workspace) -> None:
    (root / "src").mkdir()
    (root / "other").mkdir()
    (root / "other" / "a.txt").write_text("another file, same name")
    workspace.begin_turn()
    workspace.atomic_write("src/a.txt", b"created by the tool")
    (root / "src" / "a.txt").unlink()
    (root / "src").rmdir()
    (root / "src").symlink_to(root / "other")
    message = workspace.undo()
    assert (root / "other" / "a.txt").read_text() == "another file, same name"
    assert "src/a.txt (it now leads to other/a.txt through a symbolic link; not touched)" in message


class _SwapFolderAfterCheck(Workspace):
    """Replaces `src` by a link to `outside` once the write's path was checked and checkpointed: the race of a
    folder swapped between the check and the write, made deterministic."""

    def __init__(self, root: Path, outside: Path) -> None:
        super().__init__(root)
        self.outside = outside

    def checkpoint(self, path: Path) -> None:
        super().checkpoint(path)
        (self.root / "src").rename(self.root / "src-moved")
        (self.root / "src").symlink_to(self.outside)


def test_a_folder_swapped_for_a_symlink_after_the_check_is_never_written_through(tmp_path: Path,
                                                                                root: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.txt").write_text("outside, must survive")
    (root / "src").mkdir()
    (root / "src" / "a.txt").write_text("inside")
    workspace = _SwapFolderAfterCheck(root, outside)
    with pytest.raises(ToolError, match="replaced by a symbolic link after the path was checked"):
        workspace.atomic_write("src/a.txt", b"overwritten")
    assert (outside / "a.txt").read_text() == "outside, must survive"
    assert sorted(os.listdir(outside)) == ["a.txt"], "no temporary file left outside"
    assert (root / "src-moved" / "a.txt").read_text() == "inside"
    assert sorted(os.listdir(root / "src-moved")) == ["a.txt"], "no temporary file left inside"


def test_a_new_folder_swapped_for_a_symlink_after_the_check_is_never_written_through(tmp_path: Path,
                                                                                    root: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "src").mkdir()
    workspace = _SwapFolderAfterCheck(root, outside)
    with pytest.raises(ToolError, match="replaced by a symbolic link"):
        workspace.atomic_write("src/deeper/new.txt", b"x")
    assert os.listdir(outside) == []


def test_the_open_notebook_is_never_rewritten_by_atomic_write(root: Path, workspace: Workspace) -> None:
    notebook = root / "analysis.ipynb"
    notebook.write_text("{}")
    workspace.open_notebook = lambda: notebook
    with pytest.raises(ToolError, match="open in the user's editor"):
        workspace.atomic_write("analysis.ipynb", b"rewritten")
    assert notebook.read_text() == "{}"
    workspace.atomic_write("other.ipynb", b"{}")  # any other notebook is an ordinary file


def test_a_new_file_gets_the_usual_mode_and_leaves_no_temporary_file(workspace: Workspace, root: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    workspace.atomic_write(root / "new.txt", b"hello\n")
    assert (root / "new.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in root.iterdir()) == ["new.txt"]


def test_undo_since_goes_back_before_a_turn_and_every_later_one(root: Path, workspace: Workspace) -> None:
    (root / "a.txt").write_text("a0")
    first = workspace.begin_turn()
    workspace.atomic_write("a.txt", b"a1")
    second = workspace.begin_turn()
    workspace.atomic_write("a.txt", b"a2")
    workspace.atomic_write("made.txt", b"new")
    third = workspace.begin_turn()
    workspace.atomic_write("made.txt", b"newer")
    assert first < second < third

    message = workspace.undo_since(second)
    assert (root / "a.txt").read_text() == "a1" and not (root / "made.txt").exists()
    assert "Restored 1 file(s): a.txt." in message and "Removed 1 file(s) the turn created: made.txt." in message
    assert workspace.undo_since(second) == "", "those turns are gone"
    workspace.undo_since(first)
    assert (root / "a.txt").read_text() == "a0"


def test_changed_outside_names_files_edited_after_or_between_the_turns(root: Path, workspace: Workspace) -> None:
    first = workspace.begin_turn()
    workspace.atomic_write("a.txt", b"agent 1")
    workspace.atomic_write("b.txt", b"agent 1")
    assert workspace.changed_outside(first) == []
    (root / "a.txt").write_text("the user's edit")  # between the two turns
    workspace.begin_turn()
    workspace.atomic_write("a.txt", b"agent 2")
    (root / "b.txt").write_text("the user's edit")  # after the last turn
    assert workspace.changed_outside(first) == ["a.txt (changed between two turns)",
                                                "b.txt (changed since the agent wrote it)"]

    workspace.undo_since(first)  # forced anyway: what the user wrote is kept beside the file
    assert not (root / "a.txt").exists() and not (root / "b.txt").exists()
    assert (root / "a.txt.before-undo").read_text() == "the user's edit"
    assert (root / "b.txt.before-undo").read_text() == "the user's edit"
