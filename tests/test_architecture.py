"""The layout ARCHITECTURE.md promises: its module map matches the tree, modules stay
small, no modules import each other in a circle, redis-py and eventlet stay behind their
seams, and the public names are one table. Read from the source; nothing runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import nbtasks

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nbtasks"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _run_time_imports(path: Path) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a file, at its top or inside functions, but not those for
    type checkers only (under ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    checking_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    return [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom) and id(n) not in checking_only]


def _imports(name: str, path: Path) -> set[str]:
    """The nbtasks modules `name` imports at run time, with the packages that importing
    them runs."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _run_time_imports(path):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
        else:
            targets |= {alias.name for alias in node.names}
    out = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            module = ".".join(parts[:i])
            # (a module's own packages are initialised before it: importing them is no edge)
            if module.startswith("nbtasks.") and module != name and not name.startswith(module + "."):
                out.add(module)
    return out & set(_modules())


def _libraries(path: Path) -> set[str]:
    """The top-level names of the libraries `path` imports at run time."""
    names = set()
    for node in _run_time_imports(path):
        if isinstance(node, ast.Import):
            names |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.partition(".")[0])
    return names


def test_the_module_map_names_every_module_and_nothing_else() -> None:
    text = (ROOT / "ARCHITECTURE.md").read_text()
    mapped = re.findall(r"^\| `(nbtasks/[\w/]+\.py)` \|", text, flags=re.M)
    assert len(mapped) == len(set(mapped)), "a module is mapped twice"
    in_tree = {str(path.relative_to(ROOT)) for path in _modules().values()}
    assert set(mapped) == in_tree, (
        f"not in the map: {sorted(in_tree - set(mapped))}; not in the tree: {sorted(set(mapped) - in_tree)}"
    )


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_is_over_400_lines(name: str) -> None:
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: split it by what it holds"


def test_no_modules_import_each_other_in_a_circle() -> None:
    modules = _modules()
    graph = {name: _imports(name, path) for name, path in modules.items()}
    circles = []
    state: dict[str, str] = {}  # "open" while on the path being walked, then "done"

    def walk(name: str, path: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                circles.append([*path[path.index(other) :], other])
            elif other not in state:
                walk(other, [*path, other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_redis_py_and_eventlet_stay_behind_their_seams() -> None:
    for name, path in _modules().items():
        used = _libraries(path)
        if "redis" in used:
            assert name.startswith("nbtasks.store") or name == "nbtasks.server", f"{name} imports redis-py"
        if used & {"eventlet", "greenlet"}:
            assert name.startswith(("nbtasks.worker", "nbtasks.backends")), f"{name} imports eventlet"


def test_the_public_names_are_one_table_and_each_has_a_docstring() -> None:
    exports = nbtasks._EXPORTS
    assert nbtasks.__all__ == [*exports, "__version__"]
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    for_checkers = {
        alias.asname or alias.name
        for block in tree.body
        if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert for_checkers == set(exports), "the imports for type checkers and _EXPORTS disagree"
    for name in exports:
        value = getattr(nbtasks, name)  # each resolves
        if isinstance(value, type) or callable(value):
            assert (value.__doc__ or "").strip(), f"nbtasks.{name} has no docstring"
