"""dropkit's dropout under torch.func transforms: grad, vjp, jacrev, vmap (per randomness flag),
and per-sample gradients with vmap(grad), against eager autograd with the same seeds."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, jacrev, vjp, vmap

import dropkit
import dropkit.functional as F
from tests.inputs import randn_without_zeros


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), dropkit.Dropout(0.5), torch.nn.Linear(16, 1)
    )


def test_func_grad_equals_eager_autograd_for_the_same_seed():
    model = _model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(32, 6)

    def loss(p, inputs):
        return functional_call(model, p, (inputs,)).square().mean()

    torch.manual_seed(5)
    grads = grad(loss)(params, x)
    torch.manual_seed(5)
    model.zero_grad()
    model(x).square().mean().backward()
    for name, parameter in model.named_parameters():
        assert torch.equal(grads[name], parameter.grad), name


def test_vjp_and_jacrev_give_the_mask():
    x = randn_without_zeros(40, dtype=torch.float64)  # y != 0 is then the kept set
    torch.manual_seed(1)
    y, pullback = vjp(lambda t: F.dropout(t, 0.3), x)
    (g,) = pullback(torch.ones_like(y))
    kept = y != 0
    assert torch.equal(g != 0, kept) and torch.allclose(g[kept], torch.tensor(1 / 0.7).double())
    torch.manual_seed(1)
    jac = jacrev(lambda t: F.dropout(t, 0.3))(x)
    assert torch.equal(jac, torch.diag(g))


def test_vmap_different_masks_the_batch_as_one_tensor():
    x = randn_without_zeros(8, 50)  # row != 0 is then the row's mask
    torch.manual_seed(2)
    batched = vmap(lambda t: F.dropout(t, 0.5), randomness="different")(x)
    torch.manual_seed(2)
    assert torch.equal(batched, F.dropout(x, 0.5))
    patterns = {tuple((row != 0).tolist()) for row in batched}
    assert len(patterns) == 8  # each sample its own mask


def test_vmap_same_shares_one_mask_over_the_batch():
    x = torch.randn(8, 50) + 10.0  # no zeros of its own
    torch.manual_seed(3)
    batched = vmap(lambda t: F.dropout(t, 0.5), randomness="same")(x)
    torch.manual_seed(3)
    first = F.dropout(x[0], 0.5)
    kept = first != 0
    assert torch.equal(batched != 0, kept.expand(8, 50))
    assert torch.equal(batched[0], first)
    assert torch.equal(batched[:, kept], x[:, kept] * 2.0)


def test_vmap_default_randomness_raises_like_torch():
    with pytest.raises(RuntimeError, match="randomness error mode"):
        vmap(lambda t: F.dropout(t, 0.5))(torch.randn(4, 5))
    with pytest.raises(RuntimeError, match="randomness error mode"):
        vmap(lambda t: torch.nn.functional.dropout(t, 0.5))(torch.randn(4, 5))


def test_per_sample_gradients_with_vmap_of_grad():
    model = _model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, target = torch.randn(10, 6), torch.randn(10, 1)

    def sample_loss(p, xi, yi):
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return (out - yi).square().sum()

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0), randomness="different")
    torch.manual_seed(4)
    grads = per_sample(params, x, target)
    assert grads["3.weight"].shape == (10, 1, 16)
    # The sum of per-sample gradients is the batch gradient with the same (whole-batch) mask.
    torch.manual_seed(4)
    model.zero_grad()
    (model(x) - target).square().sum().backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(grads[name].sum(0), parameter.grad, rtol=1e-5, atol=1e-5)


def test_inplace_under_grad_transform_is_out_of_place_then_copied():
    x = torch.randn(30)

    def f(t):
        u = t * 1.0
        F.dropout(u, 0.5, inplace=True)
        return u.sum()

    torch.manual_seed(6)
    g = grad(f)(x)
    torch.manual_seed(6)
    expected = F.dropout(torch.ones(30), 0.5)
    assert torch.equal(g, expected)
