"""The C++ autograd node (dropkit.kernels.native): same bits as the Python path, O(1) saved state,
double backward, checkpointing, and the fallback when it cannot be built."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import dropkit
from dropkit import kernels, ops
from dropkit.kernels import native


def _can_build() -> bool:
    if os.environ.get("DROPKIT_NATIVE", "1") == "0":
        return False
    has_ninja = shutil.which("ninja") is not None
    try:
        import ninja  # noqa: F401

        has_ninja = True
    except ImportError:
        pass
    return has_ninja and shutil.which(os.environ.get("CXX", "c++")) is not None


@pytest.fixture(scope="module")
def op():
    loaded = native.load()
    if loaded is None:
        if _can_build():
            pytest.fail(f"a compiler and ninja are here but the native node is {native.status()}")
        pytest.skip(f"native node {native.status()}")
    return loaded


def _signed(seed: int) -> int:
    return seed - (1 << 64) if seed >> 63 else seed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("seed", "offset", "shape"),
    [(0, 0, (1,)), (5, 3, (100, 100)), (2**63 + 7, 2**40 + 1, (7, 13)), (2**64 - 1, 2**62, (999,))],
)
def test_native_forward_and_backward_are_the_kernels_bits(op, dtype, seed, offset, shape):
    g = torch.Generator().manual_seed(seed % 1000)
    x = torch.randn(shape, dtype=dtype, generator=g).requires_grad_(True)
    grad = torch.randn(shape, dtype=dtype, generator=g)
    thresh = kernels.threshold_from_p(0.3)
    scale = kernels.scale_from_threshold(thresh)
    y = op(x, _signed(seed), offset, thresh, scale)
    assert torch.equal(y, kernels.dropout_forward(x.detach(), seed, offset, thresh, scale))
    y.backward(grad)
    assert torch.equal(x.grad, kernels.dropout_backward(grad, seed, offset, thresh, scale))


def test_dropout_uses_the_native_node_and_matches_the_python_function(op):
    x = torch.randn(100, 100, requires_grad=True)
    grad = torch.randn(100, 100)
    torch.manual_seed(3)
    y = dropkit.functional.dropout(x, 0.4)
    assert type(y.grad_fn).__name__ == "CppFunction"
    y.backward(grad)
    native_grad = x.grad.clone()
    x.grad = None
    # The Python autograd.Function with the same stream, the seed drawn the same way.
    torch.manual_seed(3)
    seed = dropkit.rng.draw_seed()
    stream = (seed, 0, ops.threshold(0.4), ops.dropout_scale(0.4))
    y_python = ops._DropoutFunction.apply(x, stream, False)
    assert type(y_python.grad_fn).__name__ != "CppFunction"
    assert torch.equal(y, y_python)
    y_python.backward(grad)
    assert torch.equal(native_grad, x.grad)


def test_native_node_saves_no_tensor(op):
    saved = []
    x = torch.randn(64, 32, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = dropkit.functional.dropout(x, 0.5)
        y = dropkit.functional.dropout(x, 0.5)  # second call: the cached fast path
    assert type(y.grad_fn).__name__ == "CppFunction"
    assert saved == []


def test_native_double_backward_is_the_mask_again(op):
    # grad_x = m * s * v is differentiable in the incoming gradient v (create_graph=True), and
    # its derivative is the mask again.
    x = torch.randn(20, 30, dtype=torch.float64, requires_grad=True)
    v = torch.randn(20, 30, dtype=torch.float64, requires_grad=True)
    thresh = kernels.threshold_from_p(0.5)
    y = op(x, 11, 0, thresh, 2.0)
    (grad_x,) = torch.autograd.grad(y, x, v, create_graph=True)
    assert type(grad_x.grad_fn).__name__ == "CppFunction"
    mask_scale = kernels.dropout_forward(torch.ones_like(x), 11, 0, thresh, 2.0)
    assert torch.equal(grad_x.detach(), mask_scale * v.detach())
    (grad_v,) = torch.autograd.grad(grad_x.sum(), v)
    assert torch.equal(grad_v, mask_scale)


def test_gradcheck_through_the_native_node(op):
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    thresh = kernels.threshold_from_p(0.25)
    scale = kernels.scale_from_threshold(thresh)
    assert torch.autograd.gradcheck(lambda t: op(t, 4, 9, thresh, scale), (x,))
    assert torch.autograd.gradgradcheck(lambda t: op(t, 4, 9, thresh, scale) ** 2, (x,))


@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpoint_recomputes_the_same_mask_through_the_native_node(op, reentrant):
    layer = dropkit.Dropout(0.5)
    lin = torch.nn.Linear(16, 16)
    x = torch.randn(8, 16, requires_grad=True)

    def block(t):
        return lin(layer(torch.relu(lin(t))))

    torch.manual_seed(0)
    block(x).sum().backward()
    expected = x.grad.clone()
    x.grad = None
    torch.manual_seed(0)
    checkpoint(block, x, use_reentrant=reentrant).sum().backward()
    assert torch.equal(x.grad, expected)


def test_native_op_errors_name_the_argument(op):
    with pytest.raises(
        RuntimeError, match="dtype must be float32, float64, float16 or bfloat16, got Int"
    ):
        op(torch.ones(3, dtype=torch.int32), 0, 0, 0, 1.0)
    with pytest.raises(RuntimeError, match="offset must be >= 0, got -1"):
        op(torch.ones(3), 0, -1, 0, 1.0)
    with pytest.raises(RuntimeError, match=r"thresh must be in \[0, 65536\], got 70000"):
        op(torch.ones(3), 0, 0, 70000, 1.0)


def test_a_failed_build_falls_back_to_the_python_function(monkeypatch):
    def broken() -> None:
        raise OSError("no C++ compiler\nsecond line")

    monkeypatch.setattr(native, "_STATE", {"op": None, "status": "not loaded yet", "tried": False})
    monkeypatch.setattr(native, "_build", broken)
    monkeypatch.setattr(native, "_NODES", [native._UNLOADED, None])
    assert native.load() is None
    assert native.status() == "unavailable: OSError: no C++ compiler"
    x = torch.randn(10, 10, requires_grad=True)
    torch.manual_seed(1)
    y = dropkit.functional.dropout(x, 0.5)
    assert type(y.grad_fn).__name__ != "CppFunction"
    torch.manual_seed(1)
    assert torch.equal(y, dropkit.functional.dropout(x.detach(), 0.5))


def test_dropkit_native_0_turns_it_off():
    code = (
        "import torch, dropkit\n"
        "from dropkit.kernels import native\n"
        "x = torch.randn(10, 10, requires_grad=True)\n"
        "for _ in range(2): y = dropkit.functional.dropout(x, 0.5)\n"
        "print(native.status(), type(y.grad_fn).__name__)\n"
    )
    env = {**os.environ, "DROPKIT_NATIVE": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "disabled by DROPKIT_NATIVE=0 _DropoutFunctionBackward"


def test_seeded_op_draws_the_seed_the_python_path_draws(op):
    seeded = torch.ops.dropkit_native.dropout_seeded.default
    x = torch.randn(3, 300, requires_grad=True)
    for s in range(4):
        torch.manual_seed(s)
        y = seeded(x, ops.threshold(0.3), 1 / 0.7)
        after = torch.rand(4)
        torch.manual_seed(s)
        seed = dropkit.rng.draw_seed()
        expected = kernels.dropout_forward(x.detach(), seed, 0, ops.threshold(0.3), 1 / 0.7)
        assert torch.equal(y, expected)
        assert torch.equal(after, torch.rand(4))  # the generator advanced by the same draw


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_goes_through_the_node_with_the_python_paths_bits(op, dtype):
    x = torch.randn(64, 50).to(dtype).requires_grad_(True)
    torch.manual_seed(8)
    y = dropkit.functional.dropout(x, 0.2)
    y = dropkit.functional.dropout(x, 0.2)  # the cached fast path
    assert type(y.grad_fn).__name__ == "CppFunction"
    torch.manual_seed(8)
    dropkit.rng.draw_seed()
    seed = dropkit.rng.draw_seed()
    stream = (seed, 0, ops.threshold(0.2), ops.dropout_scale(0.2))
    assert torch.equal(y, ops._DropoutFunction.apply(x, stream, False))


def test_build_directory_falls_back_to_temp_without_a_writable_home(monkeypatch, tmp_path):
    monkeypatch.delenv("DROPKIT_NATIVE_DIR", raising=False)
    home = tmp_path / "home"
    home.write_text("a file, not a folder: mkdir below it fails")
    monkeypatch.setattr(native.Path, "home", classmethod(lambda cls: home))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    directory = native._build_directory()
    assert directory.is_dir() and directory.parent.parent == tmp_path / "tmp"
    monkeypatch.setenv("DROPKIT_NATIVE_DIR", str(tmp_path / "explicit"))
    assert native._build_directory().parent == tmp_path / "explicit"
