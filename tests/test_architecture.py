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


# -- panel/: parts with a view of their own -------------------------------------------------------------

PANEL = f"{PACKAGE}.panel"


def panel_modules() -> list[str]:
    return [module for module in MODULES if module == PANEL or module.startswith(PANEL + ".")]


def all_package_edges(module: str) -> set[str]:
    """Like `package_edges`, counting `if TYPE_CHECKING:` imports too: a type-only circle still ties two modules
    into one concern."""
    path = MODULES[module]
    package = module if is_package(path) else module.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            target = (".".join(base[:len(base) - (node.level - 1)] + ([node.module] if node.module else []))
                      if node.level else node.module or "")
            names = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith(PACKAGE):
                edges.add(name)
    return edges


def private_uses(source: str) -> tuple[set[str], list[tuple[int, str]]]:
    """The private names a module defines (functions, classes, attributes it assigns on `self`, module
    globals) and the private names it reaches for on other objects or imports (`other._x`, `from m import _x`).
    Names like `_repr_mimebundle_` (protocols, ending in `_`) are not private."""

    def private(name: str) -> bool:
        return name.startswith("_") and not name.endswith("_")

    tree = ast.parse(source)
    defined: set[str] = set()
    reached: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and private(node.name):
            defined.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and private(node.id):
            defined.add(node.id)
        elif isinstance(node, ast.Attribute) and private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                if isinstance(node.ctx, ast.Store):
                    defined.add(node.attr)
            else:
                reached.append((node.lineno, node.attr))
        elif isinstance(node, ast.ImportFrom):
            reached += [(node.lineno, alias.name) for alias in node.names if private(alias.name)]
    return defined, reached


def test_panel_has_no_import_circle_even_through_type_only_imports() -> None:
    graph = {module: {edge for edge in all_package_edges(module) if edge in panel_modules()}
             for module in panel_modules()}
    assert find_cycles(graph) == [], find_cycles(graph)
    assert f"{PANEL}.view" in graph and f"{PANEL}.chat" not in graph[f"{PANEL}.view"]  # the view knows no controller


def test_panel_modules_use_no_private_member_of_another_module() -> None:
    """A part of the panel gets a small interface (the view, the questions), never another class's insides.
    Within one module, `other._x` of a sibling instance of the same class is fine (`panel._show_busy()`)."""
    offences = []
    for module in panel_modules():
        defined, reached = private_uses(MODULES[module].read_text(encoding="utf-8"))
        offences += [f"{module}:{line} uses {name}" for line, name in reached if name not in defined]
    assert not offences, "\n".join(offences)


def test_the_private_member_check_sees_attributes_and_imports() -> None:
    defined, reached = private_uses(
        "from .parts import _html, make_box\n"
        "class A:\n"
        "    def __init__(self, panel):\n"
        "        self._mine = 1\n"
        "        panel._records.append(panel._mine)\n"
        "        self.widget._repr_mimebundle_()\n")
    assert "_mine" in defined
    assert sorted(name for _, name in reached if name not in defined) == ["_html", "_records"]
