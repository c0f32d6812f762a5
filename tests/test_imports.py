"""The package imports from anywhere: no module of dropkit shadows the standard library."""

import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import dropkit
from tests.test_layout import private_uses

PACKAGE_DIR = Path(dropkit.__file__).resolve().parent


def _child_env():
    # The child must import this tree's dropkit, not an installed copy.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PACKAGE_DIR.parent), env.get("PYTHONPATH")])
    )
    return env


# Every folder of the package: `python -c ...` run from one puts that folder first on sys.path, so
# a module file there named like a standard-library module (dropkit/inspect.py, report/html.py
# were) is what `import inspect` / `import html` finds, for torch's imports and everyone else's.
PACKAGE_FOLDERS = sorted(
    {path.parent for path in PACKAGE_DIR.rglob("__init__.py") if "__pycache__" not in path.parts}
)


def _folder_id(folder: Path) -> str:
    return str(folder.relative_to(PACKAGE_DIR.parent))


def test_the_folder_walk_sees_the_subpackages():
    names = {_folder_id(folder) for folder in PACKAGE_FOLDERS}
    assert {"dropkit", "dropkit/report", "dropkit/kernels", "dropkit/layers"} <= names
    assert "functional" in {info.name for info in pkgutil.iter_modules([str(PACKAGE_DIR)])}


@pytest.mark.parametrize("folder", PACKAGE_FOLDERS, ids=_folder_id)
def test_import_dropkit_from_inside_every_package_folder(folder):
    # `python -c` from the folder: sys.path[0] is "" (that folder). The dropkit/inspect.py of old
    # crashed `import dropkit` inside `import torch`; report/html.py was silently imported as the
    # standard library's html. Neither may happen: every standard-library module loaded comes
    # from outside the package.
    code = """
import sys
assert sys.path[0] == "", sys.path[0]
import dropkit, inspect
shadowed = sorted(
    name for name, module in list(sys.modules.items())
    if name.split(".")[0] in sys.stdlib_module_names
    and (getattr(module, "__file__", None) or "").startswith(sys.argv[1])
)
print(shadowed)
"""
    done = subprocess.run(
        [sys.executable, "-c", code, str(PACKAGE_DIR) + os.sep],
        cwd=folder,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("folder", PACKAGE_FOLDERS, ids=_folder_id)
def test_no_module_is_named_after_a_standard_library_module(folder):
    names = [info.name for info in pkgutil.iter_modules([str(folder)])]
    assert names  # the walk sees the folder's modules
    assert [name for name in names if name in sys.stdlib_module_names] == []


def test_old_inspect_name_is_an_alias_of_diagnostics():
    import dropkit.inspect
    from dropkit.inspect import audit

    assert dropkit.inspect is dropkit.diagnostics
    assert audit is dropkit.diagnostics.audit
    assert not (PACKAGE_DIR / "inspect.py").exists()


def test_the_reference_modules_run_without_torch_numba_or_dropkit():
    # reference/__init__.py's claim: its modules import only NumPy and the standard library.
    # Loaded file by file with torch and numba made unimportable, they run.
    code = f"""
import importlib.util, sys
sys.modules["torch"] = None
sys.modules["numba"] = None
loaded = {{}}
for name in ("philox", "mlp"):
    spec = importlib.util.spec_from_file_location("ref_" + name, {str(PACKAGE_DIR / "reference")!r} + "/" + name + ".py")
    loaded[name] = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded[name])
mask = loaded["philox"].keep_mask_reference(1000, 7, 0, 0.25)
# Kept ~ Binomial(1000, 0.75): 750 ± 6 sd (sd = 13.7).
assert mask.shape == (1000,) and abs(int(mask.sum()) - 750) <= 6 * (1000 * 0.75 * 0.25) ** 0.5
assert callable(loaded["mlp"].ReferenceMLP)
leaked = sorted(m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in ("torch", "numba", "dropkit"))
print(leaked)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd="/"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


# The functional package: dropkit/functional/__init__.py re-exports its modules' public names; the
# modules (one per kind, as dropkit/layers/) build on dropkit._masking and import neither the package
# nor each other.
FUNCTIONAL_DIR = PACKAGE_DIR / "functional"
FUNCTIONAL_MODULES = sorted(p.stem for p in FUNCTIONAL_DIR.glob("*.py") if p.stem != "__init__")


def _dropkit_imports(path: Path) -> set[str]:
    """Every dropkit module a file imports, at any depth of its code (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] == "dropkit"}


def test_the_functional_package_mirrors_the_layers():
    layers = {p.stem for p in (PACKAGE_DIR / "layers").glob("*.py")} - {"__init__", "base"}
    assert set(FUNCTIONAL_MODULES) == layers
    # The old files are gone (their names are aliases, see below), and so is functional.py.
    for old in ("functional.py", "functional_variants.py", "functional_learned.py"):
        assert not (PACKAGE_DIR / old).exists(), old


@pytest.mark.parametrize("name", [*FUNCTIONAL_MODULES, "_masking"])
def test_the_functional_modules_import_neither_the_package_nor_each_other(name):
    path = FUNCTIONAL_DIR / f"{name}.py" if name != "_masking" else PACKAGE_DIR / "_masking.py"
    imports = _dropkit_imports(path)
    assert "dropkit._validate" in imports  # the walk sees imports
    below = sorted(
        i for i in imports if i == "dropkit.functional" or i.startswith("dropkit.functional.")
    )
    assert below == [], f"{name}.py imports {below}: the functional modules are siblings"


def test_the_functional_package_re_exports_without_star_imports():
    tree = ast.parse((FUNCTIONAL_DIR / "__init__.py").read_text(encoding="utf-8"))
    stars = [
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.names[0].name == "*"
    ]
    assert stars == []
    import dropkit.functional as F

    seen = []
    for name in FUNCTIONAL_MODULES:
        module = sys.modules[f"dropkit.functional.{name}"]
        for public in module.__all__:
            assert getattr(F, public) is getattr(module, public), (name, public)
        seen += module.__all__
    assert sorted(F.__all__) == sorted(seen) and len(set(seen)) == len(seen)


def test_the_functional_modules_share_one_mask_helper():
    import dropkit._masking

    for name in FUNCTIONAL_MODULES:
        module = sys.modules[f"dropkit.functional.{name}"]
        assert not hasattr(module, "_apply_kept") and not hasattr(module, "_masked"), name
        if hasattr(module, "apply_kept"):
            assert module.apply_kept is dropkit._masking.apply_kept, name


def test_the_old_functional_names_are_aliases():
    import dropkit.functional_learned
    import dropkit.functional_variants
    from dropkit.functional_learned import concrete_dropout
    from dropkit.functional_variants import drop_block_gamma, locked_dropout

    assert dropkit.functional_learned is dropkit.functional.learned
    assert dropkit.functional_variants is dropkit.functional
    assert concrete_dropout is dropkit.functional.concrete_dropout
    assert drop_block_gamma is dropkit.functional.drop_block_gamma
    assert locked_dropout is dropkit.functional.locked_dropout


@pytest.mark.parametrize(
    "statement",
    [
        *(f"import dropkit.functional.{name}" for name in FUNCTIONAL_MODULES),
        "import dropkit.functional",
        "import dropkit.functional_learned as m; m.standout",
        "from dropkit.functional_variants import drop_path",
        "from dropkit.functional_learned import LOG_ALPHA_CLAMP",
    ],
)
def test_each_functional_module_imports_alone_in_a_fresh_interpreter(statement):
    done = subprocess.run(
        [sys.executable, "-c", statement],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("first", FUNCTIONAL_MODULES)
def test_the_functional_modules_import_first_without_dropkit_init(first):
    # A bare `dropkit` package (its __init__, which imports everything, not run): importing one
    # functional module first loads the functional package and every sibling without a cycle.
    code = f"""
import importlib, sys, types
package = types.ModuleType("dropkit")
package.__path__ = [{str(PACKAGE_DIR)!r}]
sys.modules["dropkit"] = package
first = importlib.import_module("dropkit.functional.{first}")
functional = sys.modules["dropkit.functional"]
for name in {FUNCTIONAL_MODULES!r}:
    module = importlib.import_module("dropkit.functional." + name)
    for public in module.__all__:
        assert getattr(functional, public) is getattr(module, public), (name, public)
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


# The functional and layer modules, and the other modules whose argument checks moved to
# dropkit._validate: none reaches into another dropkit module's underscore names.
CHECKED_SOURCES = sorted(
    [
        *FUNCTIONAL_DIR.glob("*.py"),
        *(PACKAGE_DIR / "layers").glob("*.py"),
        *(PACKAGE_DIR / f"{name}.py" for name in ("noise", "schedules", "uncertainty")),
        *(PACKAGE_DIR / f"{name}.py" for name in ("regression", "data", "cli", "_validate")),
    ]
)


@pytest.mark.parametrize("path", CHECKED_SOURCES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_module_reaches_into_another_modules_underscore_names(path):
    assert private_uses(path) == []
