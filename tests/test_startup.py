"""What each entry point imports: start-up time is what the job needs, not what the package has.

Each entry point runs in a fresh process, as a user starts it: `auto-coder --version` and a single prompt (the
console script's `main`, a real answer from the test server over HTTP), and `%load_ext auto_coder_nb` in an IPython
shell. The child prints `sys.modules` at the end; the modules a bare interpreter (or a bare IPython shell) already
has are taken away. A module of this package that an entry point newly imports fails the test on purpose: if the
job needs it, add it to the list here; if not, import it where it is used (benchmarks/bench_startup.py,
bench_cli.py and bench_load_ext.py measure the time).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from auto_coder_nb.testing.server import FakeLLMServer, reply

PACKAGE = "auto_coder_nb"
# Never at start-up of these entry points: the UI libraries of other faces, and the optional extras.
UI_AND_EXTRAS = {"prompt_toolkit", "IPython", "ipywidgets", "nbformat", "nbclient", "mcp", "PIL", "pycrdt",
                 "jupyter_server", "acp"}

CLI_CHILD = """
import json, sys
from auto_coder_nb.cli import main  # what the console script runs
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --version ends in argparse
    code = exc.code
sys.stderr.write("\\nMODULES " + json.dumps(sorted(sys.modules)) + "\\n")
sys.exit(code)
"""
LOAD_EXT_CHILD = """
import json, sys
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
before = set(sys.modules)
shell.run_line_magic("load_ext", "auto_coder_nb")
assert "auto_coder_nb" in shell.extension_manager.loaded
print("MODULES " + json.dumps(sorted(set(sys.modules) - before)))
"""
BARE = "import json, sys; print('MODULES ' + json.dumps(sorted(sys.modules)))"

# The modules of this package each entry point loads, exactly.
CONFIG_MODULES = {
    "config", "config.schema", "config.coercion", "config.files", "config.site", "config.project", "config.loading",
    "plugins", "approvals", "errors", "private", "site_policy", "text", "trust",
}
VERSION_MODULES = {"", "cli"} | CONFIG_MODULES
LOAD_EXT_MODULES = {"", "magics", "kernel", "notebook_context"} | CONFIG_MODULES
SINGLE_PROMPT_MODULES = VERSION_MODULES | {
    "agent", "auth", "authentication_provider", "cell_changes", "events", "history", "hub", "images",
    "instructions", "markdown", "rewind", "session", "terminal", "transcript", "transport",
    "providers", "providers.base", "providers.capabilities", "providers.known_servers",
    "providers.openai_compatible", "providers.openai_errors", "providers.prompted", "providers.repetition",
    "providers.sse", "providers.answers", "providers.quirks", "providers.retry", "state", "state.conversation",
    "tools", "tools.filesystem", "tools.notebook_document", "tools.registry", "tools.shell", "tools.workspace",
    "deadline", "tools.arguments", "bounded_http", "interrupts",
}


def modules_of(output: str) -> set[str]:
    [line] = [line for line in output.splitlines() if line.startswith("MODULES ")][-1:]
    return set(json.loads(line.removeprefix("MODULES ")))


def run_child(code: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120, check=False)


def ours(modules: set[str]) -> set[str]:
    """This package's modules, named relative to it ("" is the package itself)."""
    return {name.removeprefix(PACKAGE).removeprefix(".") for name in modules
            if name == PACKAGE or name.startswith(PACKAGE + ".")}


def roots(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def cli_env(clean_env: dict[str, str], home: Path, base_url: str) -> dict[str, str]:
    return {**clean_env, "HOME": str(home), "AUTO_CODER_BASE_URL": base_url, "AUTO_CODER_MODEL": "fake-model",
            "AUTO_CODER_APPROVAL_MODE": "ask"}


def test_version_loads_only_the_parser_and_its_choices(clean_env: dict[str, str], tmp_path: Path) -> None:
    env = cli_env(clean_env, tmp_path, "http://127.0.0.1:9/v1")
    bare = modules_of(run_child(BARE, env=env, cwd=tmp_path).stdout)
    done = run_child(CLI_CHILD, "--version", env=env, cwd=tmp_path)
    assert done.stdout.startswith("auto-coder "), done.stderr[-2000:]
    loaded = modules_of(done.stderr) - bare
    assert ours(loaded) == VERSION_MODULES
    heavy = roots(loaded) & (UI_AND_EXTRAS | {"httpx", "asyncio", "yaml"})
    assert not heavy, f"--version imports {sorted(heavy)}"


def test_a_single_prompt_loads_no_other_face(fake_server: FakeLLMServer, clean_env: dict[str, str],
                                             tmp_path: Path) -> None:
    env = cli_env(clean_env, tmp_path, fake_server.base_url)
    bare = modules_of(run_child(BARE, env=env, cwd=tmp_path).stdout)
    fake_server.enqueue(reply.text("The answer.", chunks=3))
    done = run_child(CLI_CHILD, "what is it?", env=env, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout == "The answer.\n", done.stderr[-2000:]
    loaded = modules_of(done.stderr) - bare
    assert ours(loaded) == SINGLE_PROMPT_MODULES, (f"new: {sorted(ours(loaded) - SINGLE_PROMPT_MODULES)}, "
                                                   f"gone: {sorted(SINGLE_PROMPT_MODULES - ours(loaded))}")
    assert "httpx" in roots(loaded)  # it did talk to the server
    heavy = roots(loaded) & (UI_AND_EXTRAS | {"yaml"})  # no config file here: PyYAML is not needed
    assert not heavy, f"a single prompt imports {sorted(heavy)}"


def test_load_ext_loads_no_http_notebook_or_widget_library(clean_env: dict[str, str], tmp_path: Path) -> None:
    env = {**clean_env, "HOME": str(tmp_path), "IPYTHONDIR": str(tmp_path / "ipython")}
    done = run_child(LOAD_EXT_CHILD, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = modules_of(done.stdout)
    assert ours(loaded) == LOAD_EXT_MODULES, (f"new: {sorted(ours(loaded) - LOAD_EXT_MODULES)}, "
                                              f"gone: {sorted(LOAD_EXT_MODULES - ours(loaded))}")
    heavy = roots(loaded) & {"httpx", "nbformat", "ipywidgets", "yaml", "prompt_toolkit", "PIL", "mcp"}
    assert not heavy, f"%load_ext imports {sorted(heavy)}"


def test_the_sessions_help_says_the_listings_default() -> None:
    """--sessions' default lives in history (not imported to parse the arguments): the help must say the same."""
    from auto_coder_nb.cli import build_parser
    from auto_coder_nb.history import LISTED

    assert f"(default {LISTED})" in " ".join(build_parser().format_help().split())
