"""dropkit.mc's package layout: one module per concern, no module reaching into another's privates."""

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import dropkit.mc

MC_DIR = Path(dropkit.mc.__file__).parent
MODULES = sorted(info.name for info in pkgutil.iter_modules([str(MC_DIR)]))


def _private_uses(path: Path) -> list[str]:
    """``from dropkit.X import _y`` and ``X._y`` where X is a module imported from dropkit."""
    tree = ast.parse(path.read_text())
    modules = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dropkit"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                else:
                    # `from dropkit import ops`: a module bound to a name.
                    if _is_module(f"{node.module}.{alias.name}"):
                        modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dropkit"):
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


def _is_module(dotted: str) -> bool:
    try:
        return importlib.util.find_spec(dotted) is not None
    except ModuleNotFoundError:
        return False


def test_the_package_has_its_modules():
    assert {"switch", "sampling", "plan", "streams", "seeds", "inputs", "outputs"} <= set(MODULES)


@pytest.mark.parametrize("name", ["__init__", *MODULES])
def test_no_mc_module_uses_another_modules_underscore_names(name):
    assert _private_uses(MC_DIR / f"{name}.py") == []


def test_the_underscore_check_sees_both_forms(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from dropkit import ops\nfrom dropkit.rng import _CONTEXT\nops._FAST\n")
    assert _private_uses(bad) == ["line 2: from dropkit.rng import _CONTEXT", "line 3: ops._FAST"]


def test_every_public_name_is_exported_from_its_home_module():
    for public in dropkit.mc.__all__:
        value = getattr(dropkit.mc, public)
        home = getattr(value, "__module__", None)
        if isinstance(value, type) or callable(value):
            assert home.startswith(("dropkit.mc.", "dropkit.dropout_sites")), (public, home)
            assert getattr(importlib.import_module(home), public) is value
    assert dropkit.mc.DEFAULT_PASS_BYTES == 1 << 20
    assert dropkit.mc_dropout is dropkit.mc.mc_dropout
    assert dropkit.is_stochastic_module is dropkit.mc.is_stochastic_module
