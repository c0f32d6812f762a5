"""dropkit.tune's package layout: one module per concern, no module reaching into another's privates
(dropkit's or a third party's, such as Optuna's ``study._storage``), every public name kept."""

import ast
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import dropkit.tune
import dropkit.worker

TUNE_DIR = Path(dropkit.tune.__file__).parent
MODULES = sorted(info.name for info in pkgutil.iter_modules([str(TUNE_DIR)]))
SOURCES = [TUNE_DIR / "__init__.py", *(TUNE_DIR / f"{m}.py" for m in MODULES)]
SOURCES.append(Path(dropkit.worker.__file__))


#: The one private third-party module read on purpose: Optuna publishes no description of its RDB
#: schema, which storage._optuna_schema needs to refuse a damaged database (see its docstring).
ALLOWED = {"storage.py": ["from optuna.storages._rdb.models import BaseModel"]}


def _private_uses(path: Path) -> list[str]:
    """``from X._m import y``, ``from X import _y``, and ``obj._y`` for any object but ``self``
    and ``cls``."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            # dropkit._validate is the one validator; its check_* names are public by design.
            private_module = node.module != "dropkit._validate" and any(
                part.startswith("_") for part in node.module.split(".")
            )
            found += [
                f"line {node.lineno}: from {node.module} import {alias.name}"
                for alias in node.names
                if (private_module or alias.name.startswith("_"))
                and node.module != "__future__"
                and f"from {node.module} import {alias.name}" not in ALLOWED.get(path.name, [])
            ]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_package_has_one_module_per_concern():
    assert set(MODULES) == {
        "overfit",
        "p_tau",
        "plots",
        "rates",
        "search",
        "storage",
        "sweeps",
        "trainer",
        "trials",
    }


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_no_tune_module_uses_another_modules_underscore_names(path):
    assert _private_uses(path) == []


def test_the_underscore_check_sees_every_form(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from dropkit.tune import storage\nfrom dropkit.rng import _CONTEXT\n"
        "storage._importable\nstudy._storage\nself._ok\nfrom optuna._x import y\n"
    )
    assert _private_uses(bad) == [
        "line 2: from dropkit.rng import _CONTEXT",
        "line 6: from optuna._x import y",
        "line 3: storage._importable",
        "line 4: study._storage",
    ]


def test_every_public_name_is_its_home_modules_object():
    assert len(dropkit.tune.__all__) == 24
    for public in dropkit.tune.__all__:
        value = getattr(dropkit.tune, public)
        if isinstance(value, type) or callable(value):
            home = value.__module__
            assert home.startswith("dropkit.tune."), (public, home)
            assert getattr(importlib.import_module(home), public) is value
    from dropkit.tune import DEFAULT_GRID, DEFAULT_STORAGE

    assert DEFAULT_GRID == (0.1, 0.2, 0.3, 0.4, 0.5)
    assert DEFAULT_STORAGE == "sqlite:///dropkit-tune.db"


def test_modules_stay_small():
    for path in SOURCES:
        assert len(path.read_text().splitlines()) < 1000, path.name
