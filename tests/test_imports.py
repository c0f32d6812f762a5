"""The package imports from anywhere: no module of dropkit shadows the standard library."""

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import dropkit

PACKAGE_DIR = Path(dropkit.__file__).resolve().parent


def _child_env():
    # The child must import this tree's dropkit, not an installed copy.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_DIR.parent), env.get("PYTHONPATH")]))
    return env


def test_import_dropkit_from_inside_the_package_directory():
    # Python puts the current directory first on sys.path; a dropkit/inspect.py used to be found
    # by torch's own `import inspect`, and `import dropkit` crashed inside `import torch`.
    done = subprocess.run(
        [sys.executable, "-c", "import dropkit, inspect; print(inspect.__file__)"],
        cwd=PACKAGE_DIR, env=_child_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()).parent != PACKAGE_DIR


def test_no_top_level_module_is_named_after_a_standard_library_module():
    names = [info.name for info in pkgutil.iter_modules([str(PACKAGE_DIR)])]
    assert "functional" in names  # the walk sees the package's modules
    assert [name for name in names if name in sys.stdlib_module_names] == []


def test_old_inspect_name_is_an_alias_of_diagnostics():
    import dropkit.inspect
    from dropkit.inspect import audit

    assert dropkit.inspect is dropkit.diagnostics
    assert audit is dropkit.diagnostics.audit
    assert not (PACKAGE_DIR / "inspect.py").exists()
