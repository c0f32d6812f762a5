"""The NumPy reference MLP: its gradients against finite differences, its scalings against their
definitions, and dropkit's torch layers against it on the same masks (float64, forward and
backward)."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as torch_F

import dropkit
from dropkit import ops
from dropkit.reference import mlp as ref
from tests.stats import assert_fraction_close, assert_mean_close

REFERENCE_DIR = Path(ref.__file__).parent
SIZES = [6, 7, 5, 4]
RATES = [0.25, 0.5, 0.375, 0.125]  # input, two hidden layers, output


def _net(scaling: str, rates=RATES, seed: int = 0) -> ref.ReferenceMLP:
    net = ref.ReferenceMLP(SIZES, p=rates, scaling=scaling, rng=seed)
    rng = np.random.default_rng(seed + 1)
    net.biases = [rng.normal(0, 0.5, b.shape) for b in net.biases]
    return net


def _data(n: int = 5, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, SIZES[0])), rng.integers(0, SIZES[-1], size=n)


def test_reference_never_imports_torch():
    for path in REFERENCE_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
        }
        assert "torch" not in imported, f"{path.name} imports torch"
    # Loaded on its own (not through the dropkit package, which needs torch), mlp.py runs.
    code = (
        "import importlib.util, sys, numpy as np\n"
        f"spec = importlib.util.spec_from_file_location('refmlp', {str(REFERENCE_DIR / 'mlp.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['refmlp'] = m\n"
        "spec.loader.exec_module(m)\n"
        "net = m.ReferenceMLP([3, 4, 2], p=[0.5, 0.5], rng=0)\n"
        "net.train_step(np.ones((2, 3)), np.array([0, 1]))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("scaling", ["inverted", "inference"])
@pytest.mark.parametrize("training", [True, False])
def test_gradients_match_finite_differences(scaling, training):
    net = _net(scaling)
    x, y = _data()
    masks = net.draw_masks(len(x), np.random.default_rng(3)) if training else None
    _, grads = net.loss_and_gradients(x, y, masks, training=training)

    def loss_at() -> float:
        return net.loss_and_gradients(x, y, masks, training=training)[0]

    eps = 1e-6
    for params, analytic in ((net.weights, grads.weights), (net.biases, grads.biases)):
        for param, grad in zip(params, analytic, strict=True):
            numeric = np.zeros_like(param)
            for index in np.ndindex(param.shape):
                saved = param[index]
                param[index] = saved + eps
                up = loss_at()
                param[index] = saved - eps
                down = loss_at()
                param[index] = saved
                numeric[index] = (up - down) / (2 * eps)
            np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)
    numeric_x = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        saved = x[index]
        x[index] = saved + eps
        up = loss_at()
        x[index] = saved - eps
        down = loss_at()
        x[index] = saved
        numeric_x[index] = (up - down) / (2 * eps)
    np.testing.assert_allclose(grads.input, numeric_x, rtol=1e-5, atol=1e-8)


def test_backward_follows_the_seeds_masked_formula():
    # ∂L/∂a⁽ˡ⁻¹⁾ = m⁽ˡ⁻¹⁾ ⊙ (W⁽ˡ⁾)ᵀ ∂L/∂z⁽ˡ⁾: no gradient reaches a dropped unit, and a dropped
    # input unit contributes nothing to ∂L/∂W (its column is zero for that sample).
    net = _net("inverted")
    x, y = _data(n=8)
    masks = net.draw_masks(len(x), np.random.default_rng(4))
    _, grads = net.loss_and_gradients(x, y, masks)
    assert (grads.input[~masks[0]] == 0).all()
    assert (~masks[0]).any()
    # Layer 1's weight gradient, recomputed sample by sample: only kept inputs appear.
    single = [
        net.loss_and_gradients(
            x[i : i + 1], y[i : i + 1], [m[i : i + 1] if m is not None else None for m in masks]
        )[1]
        for i in range(len(x))
    ]
    total = sum(g.weights[0] for g in single) / len(x)
    np.testing.assert_allclose(grads.weights[0], total, rtol=1e-12, atol=1e-15)
    for i, g in enumerate(single):
        assert (g.weights[0][:, ~masks[0][i]] == 0).all()


def test_drawn_masks_keep_each_unit_with_probability_one_minus_p():
    rng = np.random.default_rng(5)
    for p in (0.0, 0.1, 0.5, 0.8, 1.0):
        mask = ref.draw_mask((1 << 17,), p, rng)
        assert_fraction_close(int((~mask).sum()), mask.size, p, what=f"dropped fraction at p={p}")


def test_masks_are_fresh_each_step_and_reproducible_from_the_seed():
    x, y = _data(n=64)
    a, b = _net("inverted", seed=7), _net("inverted", seed=7)
    first, second = a.train_step(x, y), a.train_step(x, y)
    assert any(
        (m1 != m2).any() for m1, m2 in zip(first.masks, second.masks, strict=True) if m1 is not None
    )
    replay = b.train_step(x, y)
    assert all(
        (m1 is None and m2 is None) or (m1 == m2).all()
        for m1, m2 in zip(first.masks, replay.masks, strict=True)
    )


@pytest.mark.parametrize("scaling", ["inverted", "inference"])
def test_expected_training_output_equals_the_test_output(scaling):
    # One linear layer, z = W (m ⊙ x)·s + b: E[z] = W (1 − p) s x + b, which each scaling's test
    # rule reproduces exactly (inverted: s = 1/(1 − p), nothing at test; inference: s = 1, W·(1 − p)).
    p = 0.3
    net = ref.ReferenceMLP([8, 3], p=[p], scaling=scaling, rng=0)
    x = np.random.default_rng(1).normal(size=(1, 8))
    n = 20_000
    masks = [ref.draw_mask((n, 8), p, np.random.default_rng(2)), None]
    logits = net._forward(np.repeat(x, n, axis=0), masks, training=True).logits
    test_logits, _ = net.forward(x, training=False)
    s = ref.train_scale(p, scaling)
    # Var z_j = Σ_i W_ji² x_i² s² p (1 − p), from the Bernoulli masks.
    std = np.sqrt(((net.weights[0] * x) ** 2).sum(axis=1) * s**2 * p * (1 - p))
    for j in range(3):
        assert_mean_close(logits[:, j].mean(), test_logits[0, j], std[j], n, what=f"logit {j}")


def test_inference_test_step_is_the_seeds_weight_scaled_network():
    # a⁽ˡ⁾ = f(W⁽ˡ⁾·(1 − p⁽ˡ⁻¹⁾)·a⁽ˡ⁻¹⁾ + b⁽ˡ⁾): the same as a dropout-free net with scaled weights.
    net = _net("inference", rates=RATES[:3] + [0.0])
    x, _ = _data()
    scaled = ref.ReferenceMLP(
        SIZES,
        p=0.0,
        weights=[w * (1 - p) for w, p in zip(net.weights, net.p, strict=False)],
        biases=net.biases,
    )
    np.testing.assert_allclose(
        net.forward(x, training=False)[0], scaled.forward(x, training=False)[0], rtol=1e-13
    )
    inverted = _net("inverted")
    plain = ref.ReferenceMLP(SIZES, p=0.0, weights=inverted.weights, biases=inverted.biases)
    np.testing.assert_array_equal(
        inverted.forward(x, training=False)[0], plain.forward(x, training=False)[0]
    )


@pytest.mark.parametrize("scaling", ["inverted", "inference"])
def test_train_step_is_sgd_and_learns(scaling):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(200, SIZES[0]))
    y = (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0)
    net = ref.ReferenceMLP(SIZES, p=[0.1, 0.2, 0.2], scaling=scaling, rng=9)
    before = [w.copy() for w in net.weights]
    step = net.train_step(x, y, lr=0.5)
    for w0, w1, g in zip(before, net.weights, step.gradients.weights, strict=True):
        np.testing.assert_allclose(w1, w0 - 0.5 * g, rtol=1e-14)
    initial_loss, _ = net.test_step(x, y)
    for _ in range(300):
        net.train_step(x, y, lr=0.5)
    final_loss, accuracy = net.test_step(x, y)
    assert final_loss < 0.5 * initial_loss and accuracy > 0.9


# --- dropkit's torch layers against the reference, on the same masks ------------------------


def _torch_mlp(scaling: str, rates=RATES) -> dropkit.MLP:
    torch.manual_seed(0)
    net = dropkit.MLP(SIZES, p=rates, scaling=scaling).double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Linear):
                m.bias.normal_(0, 0.5)
    return net


def _reference_like(net: dropkit.MLP, scaling: str, rates=RATES) -> ref.ReferenceMLP:
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    # The reference's 1 − p is the keep probability the kernels use (p on a 2^-16 grid).
    effective = [1.0 - ops.keep_probability(p) for p in rates]
    return ref.ReferenceMLP(
        SIZES,
        p=effective,
        scaling=scaling,
        weights=[m.weight.detach().numpy() for m in linears],
        biases=[m.bias.detach().numpy() for m in linears],
    )


def _recorded_masks(records: list[tuple[torch.Tensor, torch.Tensor]]) -> list[np.ndarray]:
    assert len(records) == len(RATES)
    return [((out != 0) | (inp == 0)).detach().numpy() for inp, out in records]


def _compare(net, reference, x, y, masks, training):
    """Torch's logits, loss and gradients against the reference's; ``masks`` may be a function
    called after torch's forward (to read the masks torch drew)."""
    xt = torch.tensor(x, requires_grad=True)
    logits = net(xt)
    loss = torch_F.cross_entropy(logits, torch.tensor(y))
    loss.backward()
    if callable(masks):
        masks = masks()
    ref_loss, grads = reference.loss_and_gradients(x, y, masks, training=training)
    ref_logits = reference._forward(x, masks, training).logits
    np.testing.assert_allclose(logits.detach().numpy(), ref_logits, rtol=1e-12, atol=1e-14)
    assert math.isclose(loss.item(), ref_loss, rel_tol=1e-12)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    for layer, m in enumerate(linears):
        np.testing.assert_allclose(
            m.weight.grad.numpy(), grads.weights[layer], rtol=1e-11, atol=1e-14
        )
        np.testing.assert_allclose(m.bias.grad.numpy(), grads.biases[layer], rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(xt.grad.numpy(), grads.input, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("scaling", ["inverted", "inference"])
def test_torch_mlp_matches_reference_on_the_masks_its_kernel_drew(scaling):
    # The real kernel path: record each dropout layer's mask (output != 0; where the input is 0
    # the mask does not matter, forward or backward) and hand it to the reference.
    net = _torch_mlp(scaling)
    reference = _reference_like(net, scaling)
    x, y = _data(n=16)
    x[x == 0] = 1.0
    records: list[tuple[torch.Tensor, torch.Tensor]] = []
    dropouts = [m for m in net.children() if isinstance(m, dropkit.Dropout)]
    hooks = [m.register_forward_hook(lambda m, i, o: records.append((i[0], o))) for m in dropouts]
    torch.manual_seed(11)
    try:
        _compare(net, reference, x, y, lambda: _recorded_masks(records), True)
    finally:
        for hook in hooks:
            hook.remove()


@pytest.mark.parametrize("scaling", ["inverted", "inference"])
def test_torch_mlp_matches_reference_on_masks_given_by_the_reference(scaling, monkeypatch):
    # The fixed-mask path: masks drawn by the reference's numpy Generator are fed to dropkit's
    # functional dropout in place of the kernel's, so the scale and wiring are checked exactly.
    net = _torch_mlp(scaling)
    reference = _reference_like(net, scaling)
    x, y = _data(n=16)
    masks = reference.draw_masks(len(x), np.random.default_rng(12))
    queue = [torch.from_numpy(m) for m in masks if m is not None]
    calls = []

    def fixed_mask_dropout(t, p, scale, generator=None, inplace=False):
        mask = queue.pop(0)
        calls.append((ops.threshold(p), scale))
        return t * mask.to(t.dtype) * scale

    def fixed_mask_checked(t, threshold, scale, inplace=False):
        # functional.dropout's fast path (a rate seen before) enters ops here instead.
        mask = queue.pop(0)
        calls.append((threshold, scale))
        return t * mask.to(t.dtype) * scale

    monkeypatch.setattr(ops, "dropout_elementwise", fixed_mask_dropout)
    monkeypatch.setattr(ops, "dropout_prechecked", fixed_mask_checked)
    _compare(net, reference, x, y, masks, True)
    assert not queue and len(calls) == len(RATES)
    for (threshold, scale), rate in zip(calls, RATES, strict=True):
        assert scale == dropkit.functional.train_scale(rate, scaling)
        assert threshold == ops.threshold(rate)


@pytest.mark.parametrize("scaling", ["inverted", "inference"])
def test_torch_mlp_in_eval_matches_reference_test_rule(scaling):
    net = _torch_mlp(scaling).eval()
    reference = _reference_like(net, scaling)
    x, y = _data(n=16)
    _compare(net, reference, x, y, None, False)
