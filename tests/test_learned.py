"""Learned-rate dropout: Concrete, variational (Kingma), sparse variational (Molchanov), Standout."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from inputs import randn_without_zeros
from stats import assert_fraction_close, assert_mean_close, assert_variance_close
from torch import nn

import dropkit
import dropkit.kernels.noise
from dropkit import functional_learned as FL

# --------------------------------------------------------------------------------------------------
# Concrete dropout


def test_relaxed_mask_is_the_papers_formula() -> None:
    p, t = 0.3, 0.1
    m = FL.relaxed_bernoulli_mask(p, (1000,), t, generator=torch.Generator().manual_seed(5))
    # u is the counter-based uniform noise of the seed the call drew from the generator
    seed = dropkit.rng.draw_seed(torch.Generator().manual_seed(5))
    u = dropkit.kernels.noise.uniform(1000, seed, 0)
    eps = 1e-7
    z = torch.sigmoid(
        (math.log(p + eps) - math.log(1 - p + eps) + torch.log(u + eps) - torch.log(1 - u + eps))
        / t
    )
    torch.testing.assert_close(m, 1 - z)


def test_relaxed_mask_rounds_to_bernoulli_drops_with_rate_p() -> None:
    # z̃ > 1/2 ⟺ logit(p) + logit(u) > 0 ⟺ u > 1 − p: the rounded mask is exactly Bernoulli(p).
    n, p = 200_000, 0.27
    m = FL.relaxed_bernoulli_mask(p, (n,), generator=torch.Generator().manual_seed(0))
    assert_fraction_close(int((m < 0.5).sum()), n, p)
    # At t = 0.1 the relaxation is nearly binary: m̃ is within 0.01 of 0 or 1 unless
    # |logit(p) + logit(u)| < t·logit(0.99), an event of probability σ(b − c) − σ(−b − c) with
    # b = t·logit(0.99), c = logit(p) (logit(u) is standard logistic).
    b, c = 0.1 * math.log(99), math.log(p / (1 - p))
    soft = 1 / (1 + math.exp(c - b)) - 1 / (1 + math.exp(c + b))
    assert_fraction_close(int(((m > 0.01) & (m < 0.99)).sum()), n, soft)


def test_concrete_dropout_gradient_in_p_matches_finite_differences() -> None:
    x = torch.randn(6, 4, dtype=torch.float64)

    def f(p: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        return FL.concrete_dropout(x, p, temperature=0.5, generator=g)

    p = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (p,))


def test_concrete_dropout_training_is_unbiased_and_eval_is_identity() -> None:
    torch.manual_seed(0)
    n, p = 200_000, 0.4
    y = FL.concrete_dropout(torch.ones(n), p)
    # keep/(1 − p) takes values in [0, 1/(1 − p)]: its sd is at most 1/(2(1 − p)) · 2.
    assert_mean_close(y.mean().item(), 1.0, 1 / (1 - p), n)
    x = torch.randn(3, 5)
    assert FL.concrete_dropout(x, p, training=False) is x


def test_concrete_regularizer_is_the_papers_formula() -> None:
    p, w2, k, wr, dr = 0.2, 3.5, 7, 1e-2, 1e-3
    got = FL.concrete_dropout_regularizer(torch.tensor(p), torch.tensor(w2), k, wr, dr)
    want = wr * w2 / (1 - p) + dr * k * (p * math.log(p) + (1 - p) * math.log(1 - p))
    assert got.item() == pytest.approx(want, rel=1e-6)
    wr2, dr2 = FL.concrete_regularizer_weights(50, length_scale=0.5, precision=4.0)
    assert (wr2, dr2) == pytest.approx((0.25 / 50, 2 / (4.0 * 50)))


def test_concrete_module_regularises_its_layers_weights_and_input_dim() -> None:
    layer = nn.Linear(6, 3)
    cd = dropkit.ConcreteDropout(layer, p=0.25, weight_regularizer=1e-2, dropout_regularizer=1e-3)
    cd(torch.randn(4, 6))
    w2 = sum((w * w).sum() for w in layer.parameters())
    want = FL.concrete_dropout_regularizer(0.25, w2, 6, 1e-2, 1e-3)
    torch.testing.assert_close(cd.regularization(), want)
    cd.regularization().backward()
    assert cd.p_logit.grad is not None and layer.weight.grad is not None


def test_concrete_p_reads_the_logit_and_setting_it_reinitialises_the_logit() -> None:
    cd = dropkit.ConcreteDropout(nn.Linear(2, 2), p=0.1)
    assert cd.p == pytest.approx(0.1)
    assert isinstance(cd, dropkit.DropoutBase) and dropkit.is_dropout_module(cd)
    cd.p = 0.4
    assert cd.p_logit.item() == pytest.approx(math.log(0.4 / 0.6))
    assert len(list(cd.parameters())) == 3  # the logit stays one parameter
    with pytest.raises(ValueError, match="p must be in"):
        cd.p = 0.0
    with pytest.raises(ValueError, match="p must be in"):
        cd.p = 1.0


def test_concrete_eval_passes_input_to_the_layer_unchanged() -> None:
    layer = nn.Linear(4, 2)
    cd = dropkit.ConcreteDropout(layer).eval()
    x = torch.randn(3, 4)
    torch.testing.assert_close(cd(x), layer(x))


def test_scheduler_skips_concrete_dropout() -> None:
    net = nn.Sequential(dropkit.Dropout(0.1), dropkit.ConcreteDropout(nn.Linear(3, 3), p=0.2))
    sched = dropkit.DropoutScheduler(net, lambda t: 0.3)
    assert list(sched.modules) == ["0"]
    assert net[1].p == pytest.approx(0.2)


def test_mc_dropout_samples_concrete_and_variational_dropout_reproducibly() -> None:
    from dropkit import mc

    torch.manual_seed(0)
    net = nn.Sequential(
        dropkit.ConcreteDropout(nn.Linear(4, 8), p=0.3),
        nn.ReLU(),
        dropkit.VariationalDropout(0.3),
        nn.Linear(8, 2),
    )
    x = torch.randn(5, 4)
    samples = mc.predict(net, x, 10, seed=0)
    assert samples.shape == (10, 5, 2) and samples.std(0).min() > 0
    torch.testing.assert_close(samples, mc.predict(net, x, 10, seed=0, batched=False))
    torch.testing.assert_close(net.eval()(x), net[3](torch.relu(net[0].layer(x))))


def test_concrete_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="layer must be an nn.Module"):
        dropkit.ConcreteDropout("linear")
    with pytest.raises(ValueError, match="temperature"):
        dropkit.ConcreteDropout(nn.Linear(2, 2), temperature=0.0)
    with pytest.raises(ValueError, match="weight_regularizer"):
        dropkit.ConcreteDropout(nn.Linear(2, 2), weight_regularizer=-1.0)
    with pytest.raises(ValueError, match=r"open interval \(0, 1\)"):
        FL.concrete_dropout(torch.ones(3), torch.tensor(1.5))
    with pytest.raises(TypeError, match="floating-point"):
        FL.concrete_dropout(torch.ones(3, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match="does not broadcast"):
        FL.concrete_dropout(torch.ones(3), torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="input_dim"):
        FL.concrete_dropout_regularizer(0.5, 1.0, 0, 1e-6, 1e-5)
    conv = dropkit.ConcreteDropout(nn.Conv2d(1, 1, 1))
    with pytest.raises(RuntimeError, match="input_dim"):
        conv.regularization()
    with pytest.raises(ValueError, match="no ConcreteDropout"):
        dropkit.concrete_regularization(nn.Linear(2, 2))


@pytest.fixture
def one_thread():
    """Small models train faster on one thread than on a contended pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _learned_concrete_rates(n: int, seed: int, steps: int = 200) -> list[float]:
    """A 1-32-32-1 MLP with Concrete dropout before each layer, fit to N points of sin(2x)."""
    torch.manual_seed(seed)
    x = torch.rand(n, 1) * 4 - 2
    y = torch.sin(2 * x) + 0.1 * torch.randn(n, 1)
    wr, dr = FL.concrete_regularizer_weights(n, length_scale=1e-2, precision=1.0)

    def cd(i: int, o: int) -> dropkit.ConcreteDropout:
        return dropkit.ConcreteDropout(
            nn.Linear(i, o), weight_regularizer=wr, dropout_regularizer=dr
        )

    net = nn.Sequential(cd(1, 32), nn.ReLU(), cd(32, 32), nn.ReLU(), cd(32, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.mse_loss(net(x), y) + dropkit.concrete_regularization(net)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [m.p for m in net.modules() if isinstance(m, dropkit.ConcreteDropout)]


def test_concrete_learns_a_larger_rate_with_less_data(one_thread) -> None:
    # Gal et al. 2017, fig. 2: the learned p falls as N grows (l²/N and 2/(τN) shrink). Seen here
    # with margin 0.08-0.11 on the mean rate over seeds 0-3; the test asserts half that margin.
    few = _learned_concrete_rates(16, seed=0)
    many = _learned_concrete_rates(512, seed=0)
    assert all(a > b for a, b in zip(few, many, strict=True)), (few, many)
    assert sum(few) / 3 > sum(many) / 3 + 0.04, (few, many)


# --------------------------------------------------------------------------------------------------
# Variational dropout (Kingma et al. 2015)


def test_variational_dropout_noise_has_mean_one_and_variance_alpha() -> None:
    torch.manual_seed(0)
    n, alpha = 200_000, 0.25
    y = FL.variational_dropout(torch.ones(n), torch.tensor(math.log(alpha)))
    assert_mean_close(y.mean().item(), 1.0, math.sqrt(alpha), n)
    assert_variance_close(y.var().item(), alpha, n)


def test_variational_dropout_alpha_is_clamped_at_one_and_per_unit() -> None:
    torch.manual_seed(1)
    n = 100_000
    log_alpha = torch.tensor([math.log(0.04), 3.0])  # the second is clamped to α = 1
    y = FL.variational_dropout(torch.ones(n, 2), log_alpha)
    assert_variance_close(y[:, 0].var().item(), 0.04, n)
    assert_variance_close(y[:, 1].var().item(), 1.0, n)
    x = torch.randn(2, 2)
    assert FL.variational_dropout(x, log_alpha, training=False) is x


def test_variational_dropout_module_p_is_alpha_over_one_plus_alpha() -> None:
    layer = dropkit.VariationalDropout(0.2, num_features=4)
    torch.testing.assert_close(layer.log_alpha, torch.full((4,), math.log(0.25)))
    assert layer.p == pytest.approx(0.2)
    layer.p = 0.5
    assert layer.log_alpha.abs().max().item() < 1e-7
    layer(torch.randn(3, 4)).sum().backward()
    assert layer.log_alpha.grad is not None
    with pytest.raises(ValueError, match=r"\(0, 0.5\]"):
        layer.p = 0.6
    with pytest.raises(TypeError, match="num_features"):
        dropkit.VariationalDropout(0.2, num_features=2.5)


def test_variational_linear_local_reparameterisation_moments() -> None:
    # One input repeated: each output ~ N(xθᵀ + b, (x²)(α θ²)ᵀ) independently over repeats.
    torch.manual_seed(2)
    n = 100_000
    layer = dropkit.VariationalLinear(3, 2, p=0.3, alpha_shape="unit")
    with torch.no_grad():
        layer.log_alpha.copy_(torch.log(torch.tensor([0.1, 0.5, 1.0])))
    x = torch.tensor([[1.0, -2.0, 0.5]]).expand(n, 3)
    y = layer(x).detach()
    mean = F.linear(x[:1], layer.weight, layer.bias)[0].detach()
    var = (x[0] ** 2 * torch.tensor([0.1, 0.5, 1.0]) * layer.weight**2).sum(1).detach()
    for j in range(2):
        assert_mean_close(y[:, j].mean().item(), mean[j].item(), var[j].sqrt().item(), n)
        assert_variance_close(y[:, j].var().item(), var[j].item(), n)
    layer.eval()
    torch.testing.assert_close(layer(x[:2]), F.linear(x[:2], layer.weight, layer.bias))


def test_variational_linear_kl_counts_every_weight() -> None:
    layer = dropkit.VariationalLinear(4, 3, p=0.2, alpha_shape="layer")
    want = 12 * FL.variational_dropout_kl(torch.tensor(math.log(0.25)))
    torch.testing.assert_close(layer.kl(), want)
    with pytest.raises(ValueError, match="alpha_shape"):
        dropkit.VariationalLinear(4, 3, alpha_shape="row")


def _true_neg_kl(log_alpha: float) -> float:
    """−KL(N(θ, αθ²) ‖ log-uniform) by quadrature: 0.5 log α − E log|1 + √α ε| + C, with C set so
    that −KL → 0 as α → ∞ (C = −(γ + log 2)/2, Molchanov et al.'s convention)."""
    eps = torch.linspace(-12, 12, 2_000_001, dtype=torch.float64)
    h = (eps[1] - eps[0]).item()
    density = torch.exp(-(eps**2) / 2) / math.sqrt(2 * math.pi)
    e_log = (density * torch.log(torch.abs(1 + math.exp(log_alpha / 2) * eps))).sum().item() * h
    return 0.5 * log_alpha - e_log - 0.5 * (0.5772156649015329 + math.log(2))


LOG_ALPHAS = [-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0]


@pytest.fixture(scope="module")
def true_neg_kl() -> dict[float, float]:
    return {la: _true_neg_kl(la) for la in LOG_ALPHAS}


def test_molchanov_kl_approximation_is_within_001_of_the_true_kl(true_neg_kl) -> None:
    approx = -FL.sparse_variational_dropout_kl(torch.tensor(LOG_ALPHAS, dtype=torch.float64))
    for la, a in zip(LOG_ALPHAS, approx.tolist(), strict=True):
        assert abs(a - true_neg_kl[la]) < 0.01, (la, a, true_neg_kl[la])


def test_kingma_kl_approximation_is_the_true_kl_up_to_a_constant_for_alpha_below_one(
    true_neg_kl,
) -> None:
    small = [la for la in LOG_ALPHAS if la <= 0]
    approx = -FL.variational_dropout_kl(torch.tensor(small, dtype=torch.float64))
    offsets = [a - true_neg_kl[la] for la, a in zip(small, approx.tolist(), strict=True)]
    # The true −KL moves by 4.2 over this range; the paper's fit is constant to a few hundredths.
    assert max(offsets) - min(offsets) < 0.05, offsets
    # At α = 1: −KL = 0.5·0 + c1 + c2 + c3 with the paper's constants.
    at_one = FL.variational_dropout_kl(torch.tensor(0.0, dtype=torch.float64)).item()
    assert at_one == pytest.approx(-(1.16145124 - 1.50204118 + 0.58629921), abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Sparse variational dropout (Molchanov et al. 2017)


def test_svdo_log_alpha_is_log_sigma2_minus_log_theta2() -> None:
    layer = dropkit.LinearSVDO(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.5, -2.0], [0.1, 3.0, 1.0]]))
        layer.log_sigma2.copy_(torch.tensor([[0.0, -1.0, 2.0], [-3.0, 1.0, 30.0]]))
    want = (layer.log_sigma2 - torch.log(layer.weight**2)).clamp(-10, 10)
    torch.testing.assert_close(layer.log_alpha, want, atol=1e-6, rtol=1e-6)
    assert layer.log_alpha[1, 2].item() == 10.0


def test_linear_svdo_training_samples_with_additive_noise_variance() -> None:
    torch.manual_seed(3)
    n = 100_000
    layer = dropkit.LinearSVDO(3, 2, init_log_sigma2=-1.0)
    x = torch.tensor([[0.5, -1.0, 2.0]]).expand(n, 3)
    y = layer(x).detach()
    mean = F.linear(x[:1], layer.weight, layer.bias)[0].detach()
    var = (x[0] ** 2).sum() * math.exp(-1.0)  # (x²) σ²ᵀ, independent of θ
    for j in range(2):
        assert_mean_close(y[:, j].mean().item(), mean[j].item(), math.sqrt(var), n)
        assert_variance_close(y[:, j].var().item(), var.item(), n)


def test_svdo_eval_zeroes_exactly_the_weights_with_log_alpha_above_threshold() -> None:
    torch.manual_seed(4)
    layer = dropkit.LinearSVDO(8, 5)
    with torch.no_grad():
        layer.log_sigma2.copy_(torch.log(layer.weight**2) + torch.linspace(-6, 6, 40).reshape(5, 8))
    kept = layer.log_alpha < 3.0
    assert 0 < int(kept.sum()) < 40
    x = torch.randn(7, 8)
    layer.eval()
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight * kept, layer.bias))
    assert dropkit.sparsity(layer) == pytest.approx(1 - kept.float().mean().item())
    layer.threshold = 10.5  # nothing is above the clamp
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    assert dropkit.sparsity(layer) == 0.0


def test_conv2d_svdo_matches_its_functional_form_and_prunes_in_eval() -> None:
    torch.manual_seed(5)
    conv = dropkit.Conv2dSVDO(2, 3, 3, padding=1)
    with torch.no_grad():
        conv.log_sigma2.copy_(torch.log(conv.weight**2) - 1.0)  # log α = −1: kept
        conv.log_sigma2[0].fill_(20.0)  # first output channel: log α clamps at 10 → pruned
    x = torch.randn(2, 2, 5, 5)
    conv.eval()
    want = FL.sparse_variational_conv2d(
        x, conv.weight, conv.log_sigma2, conv.bias, training=False, padding=1
    )
    torch.testing.assert_close(conv(x), want)
    torch.testing.assert_close(conv(x)[:, 0], conv.bias[0].expand(2, 5, 5).detach())
    assert dropkit.sparsity(conv) == pytest.approx(1 / 3)
    # Training: per output element mean conv(x, θ) + b and variance conv(x², σ²).
    conv.train()
    n = 20_000
    xs = x[:1].expand(n, 2, 5, 5)
    y = conv(xs).detach()[:, 1, 2, 2]
    mean = F.conv2d(x[:1], conv.weight, conv.bias, padding=1)[0, 1, 2, 2].item()
    var = F.conv2d(x[:1] ** 2, torch.exp(conv.log_sigma2), padding=1)[0, 1, 2, 2].item()
    assert_mean_close(y.mean().item(), mean, math.sqrt(var), n)
    assert_variance_close(y.var().item(), var, n)


def test_kl_divergence_sums_every_variational_module() -> None:
    net = nn.Sequential(
        dropkit.LinearSVDO(4, 5),
        nn.ReLU(),
        dropkit.VariationalDropout(0.3),
        dropkit.LinearSVDO(5, 2),
    )
    want = net[0].kl() + net[2].kl() + net[3].kl()
    torch.testing.assert_close(dropkit.kl_divergence(net), want)
    kl0 = FL.sparse_variational_dropout_kl(net[0].log_alpha).sum()
    torch.testing.assert_close(net[0].kl(), kl0)
    assert dropkit.kl_divergence(nn.Linear(2, 2)).item() == 0.0


def test_elbo_loss_warms_the_kl_weight_up_linearly() -> None:
    torch.manual_seed(6)
    net = dropkit.LinearSVDO(4, 3)
    loss_fn = dropkit.ELBOLoss(net, n_data=50, kl_weight=0.5, warmup_steps=4)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    weights = []
    for _ in range(6):
        weights.append(loss_fn.current_kl_weight)
        loss_fn.step()
    assert weights == [0.0, 0.125, 0.25, 0.375, 0.5, 0.5]
    net.eval()
    want = 50 * F.cross_entropy(net(x), y) + 0.5 * net.kl()
    torch.testing.assert_close(loss_fn(net(x), y), want)
    assert list(loss_fn.parameters()) == []


def test_sparse_variational_functions_reject_bad_arguments() -> None:
    w = torch.randn(3, 4)
    with pytest.raises(ValueError, match="log_sigma2 must have weight's shape"):
        FL.sparse_variational_linear(torch.randn(2, 4), w, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="in_features=4"):
        FL.sparse_variational_linear(torch.randn(2, 5), w, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="threshold"):
        FL.sparse_variational_linear(
            torch.randn(2, 4), w, torch.zeros(3, 4), threshold=float("nan")
        )
    with pytest.raises(ValueError, match="rank 3-D or 4-D"):
        dropkit.Conv2dSVDO(1, 1, 3)(torch.randn(5, 5))
    with pytest.raises(ValueError, match="no LinearSVDO"):
        dropkit.sparsity(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        dropkit.sparsity("net")
    with pytest.raises(ValueError, match="n_data"):
        dropkit.ELBOLoss(nn.Linear(2, 2), n_data=0)
    with pytest.raises(TypeError, match="nll must be a scalar"):
        FL.elbo_loss(torch.ones(3), 0.0, 10)
    with pytest.raises(TypeError, match="log_alpha must be a torch.Tensor"):
        FL.sparse_variational_dropout_kl(3.0)


@pytest.mark.slow
def test_sparse_vd_on_digits_prunes_90_percent_within_2_points_of_a_plain_mlp() -> None:
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sparse_vd.py"
    spec = importlib.util.spec_from_file_location("bench_sparse_vd", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = bench.run(seed=0)
    finally:
        torch.set_num_threads(threads)
    assert r["sparsity"] >= 0.90, r
    assert r["svdo_acc"] >= r["plain_acc"] - 0.02, r


# --------------------------------------------------------------------------------------------------
# Standout (Ba & Frey 2013)


def test_standout_keeps_each_unit_with_its_own_probability() -> None:
    n = 100_000
    pi = torch.tensor([0.1, 0.5, 0.9]).expand(n, 3)
    y = FL.standout(torch.ones(n, 3), pi, generator=torch.Generator().manual_seed(7))
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    for j, p in enumerate([0.1, 0.5, 0.9]):
        assert_fraction_close(int(y[:, j].sum()), n, p)


def test_standout_gradient_uses_the_local_expectation_of_the_mask() -> None:
    a = randn_without_zeros(4, 5, requires_grad=True)  # y != 0 is then the mask
    pi = torch.rand(4, 5, generator=torch.Generator().manual_seed(8)).requires_grad_()
    g_out = torch.randn(4, 5)
    y = FL.standout(a, pi, generator=torch.Generator().manual_seed(9))
    y.backward(g_out)
    mask = (y.detach() != 0).float()
    torch.testing.assert_close(a.grad, mask * g_out)
    torch.testing.assert_close(pi.grad, a.detach() * g_out)


def test_tied_standout_eval_is_expectation_with_keep_prob_from_the_layers_weights() -> None:
    torch.manual_seed(10)
    layer = nn.Linear(6, 4)
    so = dropkit.Standout(layer, nn.ReLU(), alpha=1.5, beta=-0.5).eval()
    x = torch.randn(3, 6)
    z = layer(x)
    torch.testing.assert_close(so(x), torch.relu(z) * torch.sigmoid(1.5 * z - 0.5))
    assert [n for n, _ in so.named_parameters()] == ["layer.weight", "layer.bias"]
    assert not dropkit.is_dropout_module(so)


def test_tied_standout_trains_the_layer_only_through_its_output() -> None:
    torch.manual_seed(11)
    so = dropkit.Standout(nn.Linear(5, 3), nn.ReLU())
    x = torch.randn(8, 5)
    torch.manual_seed(12)
    so(x).sum().backward()
    got = so.layer.weight.grad.clone()
    so.zero_grad()
    torch.manual_seed(12)
    z = so.layer(x)
    pi = torch.sigmoid(z).detach()
    FL.standout(torch.relu(z), pi).sum().backward()
    torch.testing.assert_close(got, so.layer.weight.grad)


def test_untied_standout_learns_its_own_network() -> None:
    torch.manual_seed(13)
    so = dropkit.Standout(nn.Linear(5, 3), nn.Sigmoid(), tied=False, learn_alpha_beta=True)
    so(torch.randn(8, 5)).sum().backward()
    assert (
        so.standout_layer.weight.grad is not None and so.standout_layer.weight.grad.abs().sum() > 0
    )
    assert so.alpha.grad is not None and so.beta.grad is not None


def test_standout_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="layer must be an nn.Linear"):
        dropkit.Standout(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="alpha must be a finite"):
        dropkit.Standout(nn.Linear(2, 2), alpha=float("nan"))
    with pytest.raises(ValueError, match="keep_prob must lie in"):
        FL.standout(torch.ones(3), torch.tensor([0.5, 1.5, 0.2]))
    with pytest.raises(ValueError, match="does not broadcast"):
        FL.standout(torch.ones(3), torch.full((2,), 0.5))


# --------------------------------------------------------------------------------------------------
# Shared properties and the remaining argument checks


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    training=st.booleans(),
)
def test_learned_functions_keep_shape_and_dtype(
    shape: list[int], dtype: torch.dtype, training: bool
) -> None:
    x = torch.randn(shape, dtype=dtype)
    log_alpha = torch.zeros(shape[-1], dtype=dtype)
    pi = torch.full(shape, 0.5, dtype=dtype)
    for y in (
        FL.concrete_dropout(x, 0.3, training),
        FL.variational_dropout(x, log_alpha, training),
        FL.standout(x, pi, training),
    ):
        assert y.shape == x.shape and y.dtype == dtype


def test_remaining_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="log_alpha of shape"):
        FL.variational_dropout(torch.ones(2, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="rank 2"):
        FL.variational_linear(torch.ones(2, 3), torch.ones(3), None, torch.zeros(()))
    with pytest.raises(TypeError, match="threshold must be a real number"):
        dropkit.LinearSVDO(2, 2, threshold="3")
    with pytest.raises(ValueError, match="warmup_steps"):
        dropkit.ELBOLoss(nn.Linear(2, 2), n_data=10, warmup_steps=-1)
    with pytest.raises(TypeError, match="activation must be an nn.Module"):
        dropkit.Standout(nn.Linear(2, 2), activation=torch.relu)
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        FL.relaxed_bernoulli_mask(0.5, (3,), temperature=-1.0)
    with pytest.raises(TypeError, match="p must be a number in"):
        FL.relaxed_bernoulli_mask("0.5", (3,))
