"""The package's layout rules (issue 13), checked on every module of src/dropkit by reading its source:

* no module reaches into another dropkit module's underscore names (``from dropkit.x import _y``,
  ``x._y`` for an imported dropkit module ``x``); a name two modules share is public in its owner;
* no import cycle between dropkit modules at import time (imports inside functions are deferred and
  do not count);
* functions fit on a screen or two (at most 150 lines) and modules stay under about 1,000 lines.

The per-package layout tests (test_mc_layout, test_tune_layout) add each package's own rules.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

import dropkit

ROOT = Path(dropkit.__file__).resolve().parent
SOURCES = sorted(ROOT.rglob("*.py"))

MAX_FUNCTION_LINES = 150
MAX_MODULE_LINES = 1000


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def absolute(node: ast.ImportFrom, here: str, is_package: bool) -> str:
    """The module an ``ImportFrom`` names, relative imports resolved against ``here``."""
    if node.level == 0:
        return node.module or ""
    base = here.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def is_module(dotted: str) -> bool:
    try:
        return importlib.util.find_spec(dotted) is not None
    except (ModuleNotFoundError, ValueError):
        return False


def private_part(dotted: str) -> str | None:
    """The package an underscore module of ``dotted`` is private to (``dropkit.kernels`` for
    ``dropkit.kernels._checks.x``), or None when no part of the path is private."""
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def private_uses(path: Path, here: str | None = None) -> list[str]:
    """Uses of another dropkit module's underscore names in the file at ``path``.

    An underscore *name* is private to its file: ``from dropkit.x import _y`` and ``x._y`` (``x``
    an imported dropkit module) are refused anywhere else. An underscore *module*
    (``kernels/_checks.py``, ``dropkit/_validate.py``) is private to its package: the package's
    own modules may import it and use its public names, modules outside that package may not.
    """
    here = here or module_name(path)
    tree = ast.parse(path.read_text())
    bound = set()  # local names bound to dropkit modules
    found = []

    def outside(private_to: str | None) -> bool:
        return private_to is not None and not (here + ".").startswith(private_to + ".")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = absolute(node, here, path.name == "__init__.py")
            if not source.startswith("dropkit"):
                continue
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if is_module(target):
                    bound.add(alias.asname or alias.name)
                    if outside(private_part(target)):
                        found.append(f"line {node.lineno}: from {source} import {alias.name}")
                elif (alias.name.startswith("_") and not alias.name.startswith("__")) or outside(
                    private_part(source)
                ):
                    found.append(f"line {node.lineno}: from {source} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dropkit"):
                    bound.add(alias.asname or alias.name.split(".")[0])
                    if outside(private_part(alias.name)):
                        found.append(f"line {node.lineno}: import {alias.name}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


def import_time_edges(path: Path, here: str | None = None) -> set[str]:
    """The dropkit modules ``path`` imports when it is imported (module level, ``if`` and ``try``
    blocks included; function and class bodies excluded, as they run later)."""
    here = here or module_name(path)
    edges = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.startswith("dropkit"))
            elif isinstance(node, ast.ImportFrom):
                source = absolute(node, here, path.name == "__init__.py")
                if not source.startswith("dropkit"):
                    continue
                for alias in node.names:
                    target = f"{source}.{alias.name}"
                    edges.add(target if is_module(target) else source)
            elif isinstance(node, (ast.If, ast.Try)):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(node, block, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(ast.parse(path.read_text()).body)
    # A package's own __init__ runs before its submodules: an edge to a parent package is the
    # normal import order, not a cycle.
    return {e for e in edges if e != here and not here.startswith(e + ".")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_uses_another_modules_underscore_names(path):
    assert private_uses(path) == []


def test_the_underscore_check_sees_every_form(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from dropkit import ops\nfrom dropkit.rng import _CONTEXT\nops._FAST\n"
        "import dropkit.kernels.cpu as cpu\ncpu._run\nfrom .ops import _apply\n"
        "self._fine\nops.__name__\nfrom dropkit import __version__\n"
        "from dropkit._validate import check_real\nfrom dropkit._masking import apply_kept\n"
        "from dropkit.kernels._checks import check_stream\nfrom dropkit.kernels import _checks\n"
        "from dropkit.diagnostics import _model\nimport dropkit.kernels._checks\n"
        "from dropkit.functional import structured as FV\nFV._check_bool\nFV.drop_path\n"
        "import dropkit\ndropkit._sys\nother._fine\n"
    )
    assert private_uses(bad, here="dropkit.layers.bad") == [
        "line 2: from dropkit.rng import _CONTEXT",
        "line 6: from dropkit.layers.ops import _apply",
        "line 12: from dropkit.kernels._checks import check_stream",
        "line 13: from dropkit.kernels import _checks",
        "line 14: from dropkit.diagnostics import _model",
        "line 15: import dropkit.kernels._checks",
        "line 3: ops._FAST",
        "line 5: cpu._run",
        "line 17: FV._check_bool",
        "line 20: dropkit._sys",
    ]
    # Inside the package an underscore module is private to, its modules may import it.
    assert private_uses(bad, here="dropkit.kernels.bad")[2:5] == [
        "line 14: from dropkit.diagnostics import _model",
        "line 3: ops._FAST",
        "line 5: cpu._run",
    ]


def test_no_import_cycle_between_dropkit_modules():
    graph = {module_name(path): import_time_edges(path) for path in SOURCES}
    assert find_cycle(graph) is None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_time_edges_skip_deferred_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "import dropkit.ops\ntry:\n    from dropkit import noise\nexcept ImportError:\n    pass\n"
        "def f():\n    import dropkit.rng\nclass C:\n    from dropkit import cli\n"
    )
    assert import_time_edges(path, here="dropkit.m") == {"dropkit.ops", "dropkit.noise"}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_functions_fit_on_a_screen_or_two(path):
    tree = ast.parse(path.read_text())
    long = [
        f"{node.name} (line {node.lineno}): {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_under_a_thousand_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES
