"""The package's layering, read from the source with `ast` (nothing is imported):

- the core never imports IPython, ipywidgets or prompt_toolkit, nor a face (which would bring them in);
- faces never talk HTTP themselves (no httpx: they go through the core's provider);
- no import cycle among the package's modules;
- the public names in `auto_coder_nb.__all__` import, without loading anything heavy on `import auto_coder_nb`.

What counts as an import edge: every `import x` and `from x import y` in a module, at module level or inside a
function, except under `if TYPE_CHECKING:` (never executed). A function-level import counts because it only
delays a dependency, it does not remove it: two modules that import each other, even lazily, are one concern
split in two (the cycles this test was written against were hidden that way: auth <-> authentication_provider
through a lazy import inside a function). `from . import name` points at the submodule `name` when there is
one, else at the package. Parent packages are not added as implicit edges: a package's `__init__` importing
its own children is how packages work, not a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = "auto_coder_nb"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# Faces: the parts a user sees (terminal, IPython magics, the widget panel). Everything else is core; a new
# module is core unless added here.
FACES = ("__init__", "__main__", "cli", "repl", "terminal", "magics", "kernel", "cell_output", "acp",
         "notebook_context", "panel", "cell_runs")
UI_LIBRARIES = ("IPython", "ipywidgets", "prompt_toolkit")
HEAVY = ("httpx", "IPython", "ipywidgets", "nbformat", "prompt_toolkit")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


MODULES: dict[str, Path] = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def is_face(module: str) -> bool:
    local = module.split(".")[1:] or ["__init__"]
    return local[0] in FACES


def _type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except those under `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_block(node):
            stack.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def imported_names(module: str) -> list[str]:
    """The absolute names `module` imports: other packages' modules, and modules of this package."""
    path = MODULES[module]
    package = module if is_package(path) else module.rpartition(".")[0]
    names: list[str] = []
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
            continue
        if node.level:
            base = package.split(".")
            base = base[:len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        for alias in node.names:
            submodule = f"{target}.{alias.name}"
            names.append(submodule if submodule in MODULES else target)
    return names


def package_edges(module: str) -> set[str]:
    """The modules of this package that `module` imports (the nearest known module of each name)."""
    edges = set()
    for name in imported_names(module):
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name != module and name.startswith(PACKAGE):
            edges.add(name)
    return edges


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_source_tree_is_found() -> None:
    assert f"{PACKAGE}.agent" in MODULES and f"{PACKAGE}.magics" in MODULES
    assert is_face(f"{PACKAGE}.magics") and is_face(PACKAGE) and not is_face(f"{PACKAGE}.tools.shell")


def test_core_modules_import_no_ui_library_and_no_face() -> None:
    offences = []
    for module in MODULES:
        if is_face(module):
            continue
        for name in imported_names(module):
            if name.split(".")[0] in UI_LIBRARIES:
                offences.append(f"{module} imports {name}")
        for target in package_edges(module):
            if is_face(target):
                offences.append(f"{module} imports the face {target}")
    assert not offences, "the core must not depend on a UI library or a face:\n" + "\n".join(offences)


def test_faces_do_not_talk_http() -> None:
    offences = [f"{module} imports {name}" for module in MODULES if is_face(module)
                for name in imported_names(module) if name.split(".")[0] == "httpx"]
    assert not offences, "faces go through the core's provider, never HTTP themselves:\n" + "\n".join(offences)


def test_no_import_cycles() -> None:
    graph = {module: package_edges(module) for module in MODULES}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles among the package's modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_see_lazy_imports_but_not_type_checking_ones() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("import os\nif TYPE_CHECKING:\n    import ipywidgets\ndef f():\n    from IPython import display\n")
    found = sorted(getattr(node, "module", None) or node.names[0].name for node in _import_nodes(tree))
    assert found == ["IPython", "os"]


def test_the_public_api_imports_lazily() -> None:
    """`import auto_coder_nb` loads nothing heavy; each public name then imports from the package root."""
    script = (
        "import sys, auto_coder_nb\n"
        f"heavy = [name for name in {HEAVY!r} if name in sys.modules]\n"
        "assert not heavy, heavy\n"
        "for name in auto_coder_nb.__all__:\n"
        "    assert getattr(auto_coder_nb, name) is not None, name\n"
        "from auto_coder_nb import ChatPanel, Session, ToolDefinition, ToolError, get_session, load_config\n"
        "assert Session.__name__ == 'Session' and callable(load_config) and callable(get_session)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=ROOT.parent, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
