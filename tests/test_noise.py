"""Every stochastic layer on counter-based noise: eager = torch.compile = checkpoint recompute,
the noise follows dropkit's RNG salts, backward regenerates it (only the seed is saved for it),
and the layers keep their statistical semantics (6-sigma bounds, fixed seeds)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import dropkit
from dropkit import functional_learned as FL
from dropkit import noise, rng
from dropkit.functional import drop_connect_moment_matching
from tests.stats import assert_fraction_close, assert_mean_close, assert_variance_close

_DATA_DEPENDENT_CHECKS = ("ConcreteDropout", "Standout")


def _layers() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    return {
        "GaussianDropout": (dropkit.GaussianDropout(0.3), (6, 10)),
        "VariationalDropout": (dropkit.VariationalDropout(0.3, num_features=10), (6, 10)),
        "VariationalLinear": (
            dropkit.VariationalLinear(10, 4, p=0.3, alpha_shape="weight"),
            (6, 10),
        ),
        "LinearSVDO": (dropkit.LinearSVDO(10, 4, init_log_sigma2=-2.0), (6, 10)),
        "Conv2dSVDO": (dropkit.Conv2dSVDO(2, 3, 3, init_log_sigma2=-2.0), (2, 2, 6, 6)),
        "ConcreteDropout": (dropkit.ConcreteDropout(nn.Linear(10, 4), p=0.3), (6, 10)),
        "Standout": (dropkit.Standout(nn.Linear(10, 4), nn.ReLU(), tied=False), (6, 10)),
    }


def _run(layer: nn.Module, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(seed)
    x = x.clone().requires_grad_()
    y = layer(x)
    (y * torch.arange(y.numel()).view_as(y).sin()).sum().backward()
    grads = [x.grad] + [p.grad.clone() for p in layer.parameters() if p.grad is not None]
    layer.zero_grad(set_to_none=True)
    return y.detach(), grads


@pytest.mark.parametrize("name", list(_layers()))
def test_eager_and_compiled_layers_draw_the_same_noise_bit_for_bit(name):
    layer, shape = _layers()[name]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    y_eager, g_eager = _run(layer, x, 5)
    torch._dynamo.reset()
    # ConcreteDropout's and Standout's argument checks still break the graph on a data-dependent
    # branch (issue 15 item 1, another change); the noise must match either way.
    fullgraph = name not in _DATA_DEPENDENT_CHECKS
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=fullgraph)
    y_comp, g_comp = _run(compiled, x, 5)
    assert torch.equal(y_eager, y_comp)
    for a, b in zip(g_eager, g_comp, strict=True):
        assert torch.equal(a, b)
    # a second call draws new noise, in both
    assert not torch.equal(_run(layer, x, 6)[0], y_eager)


@pytest.mark.parametrize("name", ["GaussianDropout", "LinearSVDO", "Standout"])
def test_inductor_equals_eager_bit_for_bit(name):
    layer, shape = _layers()[name]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    y_eager, g_eager = _run(layer, x, 5)
    torch._dynamo.reset()
    fullgraph = name not in _DATA_DEPENDENT_CHECKS
    y_comp, g_comp = _run(torch.compile(layer, backend="inductor", fullgraph=fullgraph), x, 5)
    assert torch.equal(y_eager, y_comp)
    # the noise terms are bit-identical; inductor may fuse the surrounding arithmetic differently
    for a, b in zip(g_eager, g_comp, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", list(_layers()))
def test_checkpoint_recompute_regenerates_the_same_noise(name):
    layer, shape = _layers()[name]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2))
    y_plain, g_plain = _run(layer, x, 9)

    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = layer

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return checkpoint(self.inner, t, use_reentrant=False)

    y_ckpt, g_ckpt = _run(Checkpointed(), x, 9)
    assert torch.equal(y_plain, y_ckpt)
    for a, b in zip(g_plain, g_ckpt, strict=True):
        assert torch.equal(a, b)


def test_noise_follows_rng_salts_distinct_per_rank_state_and_shared_in_a_region():
    x = torch.ones(4096)
    tracker = rng.RNGStatesTracker()
    tracker.add("rank0", 1000)
    tracker.add("rank1", 1001)

    def draw(state: str | None) -> torch.Tensor:
        g = torch.Generator().manual_seed(3)
        if state is None:
            with rng.model_parallel_region():
                return noise.gaussian_dropout(x, 0.5, g)
        with tracker.fork(state):
            return noise.gaussian_dropout(x, 0.5, g)

    assert torch.equal(draw("rank0"), draw("rank0"))
    assert not torch.equal(draw("rank0"), draw("rank1"))
    # inside a model-parallel region every rank of the group shares the salt: the same noise
    assert torch.equal(draw(None), draw(None))
    plain = noise.gaussian_dropout(x, 0.5, torch.Generator().manual_seed(3))
    assert not torch.equal(plain, draw(None))


def _saved_bytes(fn) -> int:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_backward_saves_the_seed_not_the_noise():
    x = torch.randn(256, 64, requires_grad=True)
    # eager: the seed lives on the autograd node as a Python int; the op (compiled) saves 8 bytes
    assert _saved_bytes(lambda: dropkit.functional.gaussian_dropout(x, 0.3)) == 0
    seed = noise.draw_seed_tensor()
    assert _saved_bytes(lambda: torch.ops.dropkit.gaussian_dropout(x, seed, 0.3)) == 8
    mean, var = x * 2, (x * x).detach().requires_grad_()
    # x * 2 saves nothing; the op saves var (what d/dvar needs) and the seed
    saved = _saved_bytes(lambda: noise.gaussian_reparam(mean, var, 1e-8))
    assert saved == var.numel() * 4 + 8
    std = torch.full((64,), 0.5, requires_grad=True)
    saved = _saved_bytes(lambda: noise.gaussian_noise_mul(x, std))
    assert saved == x.numel() * 4 + std.numel() * 4 + 8


def test_gaussian_dropout_gradient_is_the_regenerated_multiplier():
    x = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    y = noise.gaussian_dropout(x, 0.4, torch.Generator().manual_seed(4))
    y.backward(torch.ones_like(y))
    seed = rng.draw_seed(torch.Generator().manual_seed(4))
    z = dropkit.kernels.noise.normal(1000, seed, 0, "cpu", torch.float64)
    assert torch.equal(y.detach(), x.detach() * (1.0 + 0.4 * z))
    assert torch.equal(x.grad, 1.0 + 0.4 * z)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gaussian_dropout_half_types_use_float32_noise_rounded_once(dtype):
    x = torch.randn(500, generator=torch.Generator().manual_seed(5)).to(dtype)
    y = noise.gaussian_dropout(x, 0.5, torch.Generator().manual_seed(6))
    seed = rng.draw_seed(torch.Generator().manual_seed(6))
    z = dropkit.kernels.noise.normal(500, seed, 0)
    assert y.dtype == dtype and torch.equal(y, (x.float() * (1.0 + 0.5 * z)).to(dtype))


@pytest.mark.parametrize("name,fn", [
    ("reparam", lambda m, v, s: noise._reparam_op(m, v, s, 1e-8)),
    ("noise_mul", lambda m, v, s: noise._noise_mul_op(m, v, s)),
    ("standout", lambda m, v, s: noise._standout_op(m, v.sigmoid(), s)),
    ("concrete", lambda m, v, s: noise._concrete_op(m, v.sigmoid(), s, 0.1, 1e-7)),
])  # fmt: skip
def test_custom_op_gradients_match_torch_autograd_of_the_same_noise(name, fn):
    torch.manual_seed(7)
    m = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    v = torch.rand(5, 6, dtype=torch.float64).add(0.1).requires_grad_()
    seed = noise.draw_seed_tensor()
    if name == "standout":  # not differentiable in its mask; compare with the rule's gradient
        y = fn(m, v, seed)
        y.backward(torch.ones_like(y))
        # The mask, read where no input is zero: the same seed on an all-ones input draws it.
        mask = (fn(torch.ones_like(m), v, seed).detach() != 0).to(m.dtype)
        assert torch.equal(y.detach(), m.detach() * mask)
        assert torch.equal(m.grad, mask)
        torch.testing.assert_close(
            v.grad, m.detach() * v.sigmoid().detach() * (1 - v.sigmoid().detach())
        )
        return
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, seed), (m, v))


def test_custom_ops_pass_torch_library_opcheck():
    x = torch.randn(3, 4, requires_grad=True)
    var = torch.rand(3, 4).add(0.1).requires_grad_()
    seed = noise.draw_seed_tensor(torch.Generator().manual_seed(0))
    p = torch.tensor(0.3, requires_grad=True)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    for op, args in (
        (torch.ops.dropkit.gaussian_dropout.default, (x, seed, 0.5)),
        (torch.ops.dropkit.gaussian_reparam.default, (x, var, seed, 1e-8)),
        (torch.ops.dropkit.gaussian_noise_mul.default, (x, var, seed)),
        (torch.ops.dropkit.concrete_dropout.default, (x, p, seed, 0.1, 1e-7)),
        (torch.ops.dropkit.standout.default, (x, var.sigmoid(), seed)),
        (torch.ops.dropkit.noise.default, ([3, 4], seed, True, torch.float32, torch.device("cpu"))),
    ):
        torch.library.opcheck(op, args, test_utils=utils)


# --- statistical semantics kept ------------------------------------------------------------
def test_variational_dropout_noise_has_mean_one_and_variance_alpha():
    n = 1 << 20
    log_alpha = torch.tensor(math.log(0.25))
    y = FL.variational_dropout(torch.ones(n, dtype=torch.float64), log_alpha,
                               generator=torch.Generator().manual_seed(8))  # fmt: skip
    assert_mean_close(y.mean().item(), 1.0, 0.5, n)
    assert_variance_close(y.var().item(), 0.25, n, kurtosis=3.0)


def test_local_reparameterisation_has_the_layers_mean_and_variance():
    n = 1 << 20
    mean = torch.full((n,), 2.0, dtype=torch.float64)
    var = torch.full((n,), 9.0, dtype=torch.float64)
    y = noise.gaussian_reparam(mean, var, 0.0, torch.Generator().manual_seed(9))
    assert_mean_close(y.mean().item(), 2.0, 3.0, n)
    assert_variance_close(y.var().item(), 9.0, n, kurtosis=3.0)


def test_concrete_dropout_keeps_its_rate_and_is_unbiased():
    n, p = 1 << 19, 0.35
    x = torch.ones(n, dtype=torch.float64)
    y = FL.concrete_dropout(x, p, generator=torch.Generator().manual_seed(10))
    # z̃ > 1/2 ⟺ u > 1 − p: the rounded relaxed mask is exactly Bernoulli(p)
    assert_fraction_close(int((y * (1 - p) < 0.5).sum()), n, p)
    assert_mean_close(y.mean().item(), 1.0, 1 / (1 - p), n)


def test_standout_and_uniform_noise_keep_each_unit_with_its_probability():
    n = 1 << 18
    pi = torch.tensor([0.05, 0.5, 0.95]).expand(n, 3)
    y = FL.standout(torch.ones(n, 3), pi, generator=torch.Generator().manual_seed(11))
    for j, p in enumerate([0.05, 0.5, 0.95]):
        assert_fraction_close(int(y[:, j].sum()), n, p)


def test_moment_matching_samples_are_the_gaussian_of_the_moments():
    x, w = torch.randn(2, 16, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)
    identity = drop_connect_moment_matching(
        x, w, p=0.5, activation=lambda u: u, num_samples=1 << 16,
        generator=torch.Generator().manual_seed(12),
    )  # fmt: skip
    mean, var = dropkit.functional_variants.drop_connect_linear_moments(x, w, None, 0.5)
    for got, mu, v in zip(identity.flatten(), mean.flatten(), var.flatten(), strict=True):
        assert_mean_close(got.item(), mu.item(), math.sqrt(v.item()), 1 << 16)


def test_noise_functions_reject_bad_arguments():
    with pytest.raises(TypeError, match="shape must be a sequence of ints >= 0"):
        noise.normal((2, -1))
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype"):
        noise.uniform((2,), dtype=torch.int64)


@pytest.mark.parametrize("name", list(_layers()))
def test_torch_func_grad_sees_the_same_noise_as_eager_autograd(name):
    layer, shape = _layers()[name]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    params = {k: v.detach() for k, v in layer.named_parameters()}
    weights = torch.arange(math.prod(_run(layer, x, 0)[0].shape)).float().sin()

    def loss(p: dict, t: torch.Tensor) -> torch.Tensor:
        y = torch.func.functional_call(layer, p, (t,))
        return (y * weights.view_as(y)).sum()

    torch.manual_seed(4)
    value = loss(params, x)
    torch.manual_seed(4)
    grad_x = torch.func.grad(loss, argnums=1)(params, x)
    x_eager = x.clone().requires_grad_()
    torch.manual_seed(4)
    value_eager = loss(params, x_eager)
    value_eager.backward()
    assert torch.equal(value, value_eager.detach())
    torch.testing.assert_close(grad_x, x_eager.grad, rtol=1e-5, atol=1e-6)


def test_vmap_honours_the_randomness_flag():
    x = torch.ones(4, 64)
    f = lambda t: dropkit.functional.gaussian_dropout(t, 0.3)  # noqa: E731
    torch.manual_seed(0)
    different = torch.func.vmap(f, randomness="different")(x)
    torch.manual_seed(0)
    assert torch.equal(different, dropkit.functional.gaussian_dropout(x, 0.3))
    same = torch.func.vmap(f, randomness="same")(x)
    assert (same == same[0]).all() and (same[0] != 1).any()
    with pytest.raises(RuntimeError, match="randomness error mode"):
        torch.func.vmap(f)(x)


def test_eager_fast_path_equals_the_custom_op_and_supports_double_backward():
    x = torch.randn(3000, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    y = noise.gaussian_dropout(x, 0.4)
    torch.manual_seed(5)
    y_op = torch.ops.dropkit.gaussian_dropout(x, noise.draw_seed_tensor(), 0.4)
    assert y.grad_fn is not None and torch.equal(y, y_op)
    v = torch.randn(3000, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(y, x, grad_outputs=v, create_graph=True)  # g = f ⊙ v
    multiplier = (y / x).detach()
    torch.testing.assert_close(g, multiplier * v.detach(), rtol=1e-12, atol=0)
    (gg,) = torch.autograd.grad(g.sum(), v)  # ∂g/∂v = f, the regenerated multiplier again
    torch.testing.assert_close(gg, multiplier, rtol=1e-12, atol=0)
