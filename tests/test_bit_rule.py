"""The bit rule lives in the kernels (dropkit.kernels.philox); the NumPy reference restates it.

The two are independent statements of one contract, held against each other here and against
Random123's known-answer vectors; no production module may import the reference (the tests' oracle),
and the reference imports no production module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import dropkit
from dropkit import ops
from dropkit.kernels import cpu, fallback
from dropkit.kernels import philox as kp
from dropkit.reference import philox as ref
from tests.test_kernels import KAT_PHILOX4X32_10

PACKAGE_DIR = Path(dropkit.__file__).resolve().parent
CONSTANTS = (
    "PHILOX_M0",
    "PHILOX_M1",
    "PHILOX_W0",
    "PHILOX_W1",
    "PHILOX_ROUNDS",
    "LANES_PER_BLOCK",
    "THRESHOLD_RANGE",
)


@pytest.mark.parametrize("name", CONSTANTS)
def test_kernels_constants_equal_the_reference_restatement(name):
    assert getattr(kp, name) == getattr(ref, name)


def test_every_production_user_reads_the_kernels_constants():
    assert cpu.LANES_PER_BLOCK == fallback.WORDS_PER_COUNTER == kp.LANES_PER_BLOCK
    assert ops.THRESHOLD_RANGE == dropkit.kernels.THRESHOLD_RANGE == kp.THRESHOLD_RANGE == 1 << 16
    assert (fallback.PHILOX_M0, fallback.PHILOX_M1) == (kp.PHILOX_M0, kp.PHILOX_M1)
    assert (fallback.PHILOX_W0, fallback.PHILOX_W1) == (kp.PHILOX_W0, kp.PHILOX_W1)
    assert dropkit.kernels.threshold_from_p is kp.threshold_from_p


def _philox_from_kernel_constants(counter, key):
    """Philox4x32-10 written from dropkit.kernels.philox's constants alone (not the reference)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(kp.PHILOX_ROUNDS):
        prod0, prod1 = kp.PHILOX_M0 * c0, kp.PHILOX_M1 * c2
        c0, c1, c2, c3 = (prod1 >> 32) ^ c1 ^ k0, prod1 & 0xFFFFFFFF, (prod0 >> 32) ^ c3 ^ k1, prod0
        c3 &= 0xFFFFFFFF
        k0, k1 = (k0 + kp.PHILOX_W0) & 0xFFFFFFFF, (k1 + kp.PHILOX_W1) & 0xFFFFFFFF
    return c0, c1, c2, c3


@pytest.mark.parametrize(("counter", "key", "expected"), KAT_PHILOX4X32_10)
def test_kernels_constants_give_random123_known_answers(counter, key, expected):
    assert _philox_from_kernel_constants(counter, key) == expected


def test_production_streams_start_with_random123_known_answer():
    # Block 0 under seed 0 is Philox of counter (0, 0, 0, 0), key (0, 0): Random123's first vector.
    counter, key, expected = KAT_PHILOX4X32_10[0]
    assert (counter, key) == ((0, 0, 0, 0), (0, 0))
    lanes = [half for word in expected for half in (word & 0xFFFF, word >> 16)]
    assert cpu.random_uint16(8, 0, 0).tolist() == lanes
    assert fallback.philox_blocks(0, 1, 0, "cpu").tolist() == [list(expected)]
    assert fallback.philox_uint16(8, 0, 0, "cpu").tolist() == lanes


def _threshold_cases():
    # Every 2^-16 grid point's tie (k + 1/2) / 65536 rounds up; both ends; a spread of floats.
    rng = np.random.default_rng(13)
    ties = [(k + 0.5) / 65536 for k in range(0, 65536, 97)]
    grid = [k / 65536 for k in range(0, 65537, 89)]
    return [0.0, 1.0, 0.1, 0.5, 1 - 2**-53, 2**-17, *ties, *grid, *rng.random(500).tolist()]


def test_threshold_rule_is_the_same_in_kernels_ops_and_reference():
    cases = _threshold_cases()
    kernels_t = [kp.threshold_from_p(p) for p in cases]
    assert kernels_t == [ref.threshold_from_p(p) for p in cases]
    assert kernels_t == [ops.threshold(p) for p in cases]
    assert kp.threshold_from_p(0.5 / 65536) == 1 and kp.threshold_from_p(1.0) == 65536


def test_keep_probability_and_scale_are_the_same_for_every_threshold():
    for t in range(kp.THRESHOLD_RANGE + 1):
        keep = kp.keep_probability_from_threshold(t)
        assert keep == ref.keep_probability_from_threshold(t)
        assert kp.scale_from_threshold(t) == ref.scale_from_threshold(t)
    assert kp.scale_from_threshold(65536) == 0.0


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", None, True])
def test_kernels_and_reference_refuse_the_same_rates(bad):
    errors = []
    for rule in (kp.threshold_from_p, ref.threshold_from_p):
        with pytest.raises((TypeError, ValueError)) as info:
            rule(bad)
        errors.append((info.type, str(info.value)))
    assert errors[0] == errors[1]


@pytest.mark.parametrize("bad", [-1, 65537, 0.5, True])
def test_kernels_and_reference_refuse_the_same_thresholds(bad):
    errors = []
    for rule in (kp.keep_probability_from_threshold, ref.keep_probability_from_threshold):
        with pytest.raises(ValueError) as info:
            rule(bad)
        errors.append(str(info.value))
    assert errors[0] == errors[1] == f"threshold must be an integer in [0, 65536], got {bad!r}"


def _imports(path: Path, root: Path = PACKAGE_DIR.parent) -> set[str]:
    """Absolute names a file imports, anywhere in it (lazy imports included)."""
    names: set[str] = set()
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the file's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _production_files():
    return [
        path
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        if "reference" not in path.relative_to(PACKAGE_DIR).parts
    ]


def test_no_production_module_imports_the_reference():
    files = _production_files()
    assert len(files) > 30
    assert "dropkit.kernels.philox" in _imports(PACKAGE_DIR / "kernels" / "cpu.py")  # walk works
    offenders = {
        str(path.relative_to(PACKAGE_DIR)): sorted(
            name for name in _imports(path) if name.startswith("dropkit.reference")
        )
        for path in files
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_reference_imports_no_production_module():
    files = sorted((PACKAGE_DIR / "reference").glob("*.py"))
    assert len(files) >= 3
    for path in files:
        imported = _imports(path)
        dropkit_names = {name for name in imported if name.split(".")[0] == "dropkit"}
        assert all(name.startswith("dropkit.reference") for name in dropkit_names), (path, imported)
        assert not {name.split(".")[0] for name in imported} & {"torch", "numba", "triton"}, path


def test_the_import_walk_sees_absolute_relative_and_lazy_imports(tmp_path):
    fake = tmp_path / "dropkit" / "kernels" / "fake.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(
        "from ..reference import philox\n"
        "from .philox import LANES_PER_BLOCK\n"
        "def f():\n"
        "    import dropkit.reference.noise\n"
    )
    names = _imports(fake, root=tmp_path)
    assert {"dropkit.reference.philox", "dropkit.reference.noise"} <= names
    assert "dropkit.kernels.philox.LANES_PER_BLOCK" in names
