"""One eager path for a mask (issue 13): the kernels' entry points pick their implementation
themselves (the small-tensor lane among them) with the checked path's bits and errors, and the
modules of the mask path use each other's public names only."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import dropkit
from dropkit import kernels, ops
from dropkit.kernels import cpu, small
from dropkit.reference import philox as ref
from tests.test_layout import private_uses

SRC = Path(dropkit.__file__).parent
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


# ----------------------------------------------------------------------------------------------
# No module of the mask path reaches into another's underscore names (the rule and its own test:
# tests/test_layout.py, which checks every module; listed here for the mask path's own record)
# ----------------------------------------------------------------------------------------------
MASK_PATH = sorted(
    [
        *(p.relative_to(SRC).as_posix() for p in (SRC / "kernels").glob("*.py")),
        "ops.py",
        "rng.py",
        "_masking.py",
        "bench.py",
    ]
)


@pytest.mark.parametrize("name", MASK_PATH)
def test_no_mask_path_module_uses_another_modules_underscore_names(name):
    assert private_uses(SRC / name) == []


def test_ops_calls_no_backend_module():
    # Backend choice lives in dropkit.kernels: ops imports the package and the C++ node only.
    tree = ast.parse((SRC / "ops.py").read_text())
    imported = {
        f"{node.module}.{alias.name}" if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
        if (getattr(node, "module", None) or alias.name).startswith("dropkit.kernels")
    }
    assert imported == {"dropkit.kernels.native", "dropkit.kernels.philox.THRESHOLD_RANGE",
                        "dropkit.kernels.philox.threshold_from_p"}  # fmt: skip


# ----------------------------------------------------------------------------------------------
# The small-tensor lane: the checked path's bits and errors
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def lane_only(monkeypatch):
    """The lane warm for every dtype and the mask, and the checked CPU path made to fail."""
    for dtype in DTYPES:
        small.enter(dtype)
    small.enter(small.MASK)
    monkeypatch.setattr(cpu, "_run_sized", lambda *a: pytest.fail("the checked path ran"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "seed, offset, n",
    [(0, 0, 1), (2**64 - 1, 5, 13), (123456789, 2**32 - 3, 1000), (7, 2**63 - 4097, 4097)],
)
def test_the_lane_gives_the_kernels_bits(lane_only, dtype, seed, offset, n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(dtype)
    thresh = kernels.threshold_from_p(0.3)
    scale = ops.dropout_scale(0.3)
    y = kernels.dropout_forward(x, seed, offset, thresh, scale)
    keep = torch.from_numpy(ref.keep_mask_from_threshold(n, seed, offset, thresh))
    assert torch.equal(y, torch.where(keep, x * scale, torch.zeros((), dtype=dtype)))
    inplace = x.clone()
    assert kernels.dropout_forward_out(inplace, inplace, seed, offset, thresh, scale) is inplace
    assert torch.equal(inplace, y)
    mask = kernels.keep_mask(n, seed, offset, thresh, "cpu")
    assert torch.equal(mask, keep)
    assert torch.equal(kernels.keep_mask(n, seed, offset, thresh, torch.device("cpu")), keep)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((2**64, 0, 100, 1.0), ValueError, "seed must be an integer in \\[0, 2\\*\\*64\\)"),
        ((-1, 0, 100, 1.0), ValueError, "seed must be an integer"),
        ((1.0, 0, 100, 1.0), ValueError, "seed must be an integer"),
        ((np.int64(1), 0, 100, 1.0), ValueError, "seed must be an integer"),
        ((1, -1, 100, 1.0), ValueError, "offset must be an integer >= 0"),
        ((1, 2**63 - 9, 100, 1.0), ValueError, "offset \\+ numel <= 2\\*\\*63"),
        ((1, 0.0, 100, 1.0), ValueError, "offset must be an integer"),
        ((1, 0, 65537, 1.0), ValueError, "threshold must be an integer in \\[0, 65536\\]"),
        ((1, 0, 3.5, 1.0), ValueError, "threshold must be an integer"),
    ],
)
def test_the_lane_keeps_the_checked_paths_errors(args, error, match):
    x = torch.ones(10)
    kernels.dropout_forward(x, 1, 0, 100, 1.0)  # the lane is warm for float32
    assert torch.float32 in small.ENTRIES
    with pytest.raises(error, match=match):
        kernels.dropout_forward(x, *args)
    with pytest.raises(error, match=match):
        kernels.dropout_forward_out(x, x, *args)
    seed, offset, threshold, _ = args
    kernels.keep_mask(10, 1, 0, 100)
    with pytest.raises(error, match=match):
        kernels.keep_mask(10, seed, offset, threshold)


def test_arguments_the_checked_path_accepts_give_the_same_bits_off_the_lane():
    # A bool seed, an int scale: not the lane's plain types, so the checked path serves them.
    x = torch.randn(50)
    assert torch.equal(
        kernels.dropout_forward(x, True, 0, 9000, 2), cpu.dropout_forward(x, 1, 0, 9000, 2.0)
    )


def test_non_tensors_are_refused_with_a_type_error():
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        kernels.dropout_forward([1.0, 2.0], 0, 0, 0, 1.0)
    with pytest.raises(TypeError, match="grad must be a torch.Tensor, got list"):
        kernels.dropout_backward([1.0, 2.0], 0, 0, 0, 1.0)


@pytest.mark.parametrize("n", [12, 70_001])
def test_any_layout_gets_the_mask_of_its_contiguous_copy(n):
    x = torch.randn(2, 3, n // 6 + 1, 2).to(memory_format=torch.channels_last)
    assert not x.is_contiguous()
    thresh, scale = kernels.threshold_from_p(0.4), ops.dropout_scale(0.4)
    y = kernels.dropout_forward(x, 3, 11, thresh, scale)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, kernels.dropout_forward(x.contiguous(), 3, 11, thresh, scale))
    assert torch.equal(kernels.dropout_backward(x, 3, 11, thresh, scale), y)
    out = torch.empty_like(x)
    kernels.dropout_forward_out(x, out, 3, 11, thresh, scale)
    assert torch.equal(out, y)
    with pytest.raises(ValueError, match="out must have x's shape"):
        kernels.dropout_forward_out(x, torch.empty(3), 3, 11, thresh, scale)
    with pytest.raises(TypeError, match="out must have dtype torch.float32"):
        kernels.dropout_forward_out(x, out.double(), 3, 11, thresh, scale)


# ----------------------------------------------------------------------------------------------
# rng's unsalted draw and the C++ node's reach, as dropkit.ops uses them
# ----------------------------------------------------------------------------------------------
def test_unsalted_is_false_wherever_draw_seed_would_salt_or_refuse():
    from dropkit import rng

    assert rng.unsalted()
    with rng.model_parallel_region():
        assert not rng.unsalted()
    tracker = rng.RNGStatesTracker()
    tracker.add("a", 1)
    with tracker.fork("a"):
        assert not rng.unsalted()
    seen = []

    def probe(t):
        seen.append(rng.unsalted())
        return t * 2

    torch.func.grad(lambda t: probe(t).sum())(torch.ones(2))
    torch.jit.trace(probe, torch.ones(2), check_trace=False)
    assert seen == [False, False]  # under a torch.func transform, and while tracing
    torch.manual_seed(5)
    drawn = rng.draw_unsalted()
    torch.manual_seed(5)
    assert drawn == rng.draw_seed()


def test_the_prechecked_fast_path_salts_as_dropout_elementwise_does():
    from dropkit import rng

    x = torch.ones(64)
    t, scale = ops.threshold(0.5), ops.dropout_scale(0.5)
    with rng.model_parallel_region():
        torch.manual_seed(3)
        fast = ops.dropout_prechecked(x, t, scale, False)
        torch.manual_seed(3)
        checked = ops.dropout_elementwise(x, 0.5, scale)
    torch.manual_seed(3)
    unsalted = ops.dropout_prechecked(x, t, scale, False)
    assert torch.equal(fast, checked) and not torch.equal(fast, unsalted)


@pytest.mark.parametrize(
    "x",
    [
        torch.randn(small.LIMIT, requires_grad=True),  # above the lane
        torch.randn(20, 30).t().requires_grad_(True),  # not contiguous
        torch.randn(10, device="meta", requires_grad=True),  # not on the CPU
        torch.randn(0, requires_grad=True),  # empty
    ],
    ids=["large", "strided", "meta", "empty"],
)
def test_the_native_node_declines_tensors_outside_the_lane(x):
    from dropkit.kernels import native

    assert native.apply(x, 1, 0, 100, 1.0) is None
    assert native.apply_seeded(x, 100, 1.0) is None
