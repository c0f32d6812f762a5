"""dropkit.mc's package layout: one module per concern, no module reaching into another's privates."""

import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import dropkit.mc
from tests.test_layout import private_uses

MC_DIR = Path(dropkit.mc.__file__).parent
MODULES = sorted(info.name for info in pkgutil.iter_modules([str(MC_DIR)]))


def test_the_package_has_its_modules():
    assert {"switch", "sampling", "plan", "streams", "seeds", "inputs", "outputs"} <= set(MODULES)


@pytest.mark.parametrize("name", ["__init__", *MODULES])
def test_no_mc_module_uses_another_modules_underscore_names(name):
    assert private_uses(MC_DIR / f"{name}.py") == []


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
