"""Uncertainty summaries and calibration metrics: definitions checked against direct formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from stats import assert_fraction_close, assert_mean_close
from torch import nn

import dropkit
from dropkit import uncertainty as U
from dropkit.mc import predict


def random_probs(rng: np.random.Generator, t: int, n: int, c: int) -> np.ndarray:
    return rng.dirichlet(np.full(c, 0.5), size=(t, n))


# ------------------------------------------------------------------------------------------------
# Classification summaries
# ------------------------------------------------------------------------------------------------
def test_classification_summaries_match_their_definitions() -> None:
    rng = np.random.default_rng(0)
    p = random_probs(rng, 7, 5, 4)
    mean = p.mean(0)
    entropy = -(mean * np.log(mean)).sum(-1)
    expected_entropy = -(p * np.log(p)).sum(-1).mean(0)
    u = U.classification_uncertainty(p, logits=False)
    np.testing.assert_allclose(u.mean, mean)
    np.testing.assert_allclose(u.entropy, entropy)
    np.testing.assert_allclose(u.mutual_information, entropy - expected_entropy, atol=1e-12)
    np.testing.assert_allclose(u.class_variance, p.var(0))
    votes = p.argmax(-1)
    mode_count = np.array([np.bincount(votes[:, i], minlength=4).max() for i in range(5)])
    np.testing.assert_allclose(u.variation_ratio, 1 - mode_count / 7)
    np.testing.assert_array_equal(u.prediction, mean.argmax(-1))
    # The single-purpose functions agree with the bundle.
    np.testing.assert_allclose(U.predictive_entropy(p), u.entropy)
    np.testing.assert_allclose(U.mutual_information(p), u.mutual_information)
    np.testing.assert_allclose(U.variation_ratio(p), u.variation_ratio)
    np.testing.assert_allclose(U.class_variance(p), u.class_variance)
    np.testing.assert_allclose(U.predictive_mean(p), u.mean)


def test_logits_are_softmaxed_stably() -> None:
    logits = torch.tensor([[[1000.0, 0.0]], [[0.0, 1000.0]]])
    u = U.classification_uncertainty(logits)
    np.testing.assert_allclose(u.mean, [[0.5, 0.5]])
    assert math.isclose(float(u.mutual_information[0]), math.log(2), rel_tol=1e-9)


@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 6), n=st.integers(1, 4), c=st.integers(2, 5), seed=st.integers(0, 10_000))
def test_mutual_information_lies_between_zero_and_the_predictive_entropy(t, n, c, seed) -> None:
    p = random_probs(np.random.default_rng(seed), t, n, c)
    u = U.classification_uncertainty(p, logits=False)
    assert (u.mutual_information >= 0).all()
    assert (u.mutual_information <= u.entropy + 1e-12).all()
    assert (u.entropy <= math.log(c) + 1e-12).all()
    assert ((0 <= u.variation_ratio) & (u.variation_ratio <= 1 - 1 / c + 1e-12)).all()


def test_identical_samples_have_no_model_uncertainty() -> None:
    p = np.repeat(random_probs(np.random.default_rng(1), 1, 3, 4), 5, axis=0)
    u = U.classification_uncertainty(p, logits=False)
    np.testing.assert_allclose(u.mutual_information, 0, atol=1e-12)
    np.testing.assert_allclose(u.variation_ratio, 0)
    np.testing.assert_allclose(u.class_variance, 0, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# Regression
# ------------------------------------------------------------------------------------------------
def test_regression_variance_is_inverse_tau_plus_sample_variance() -> None:
    rng = np.random.default_rng(2)
    samples = rng.normal(size=(50, 8))
    u = U.regression_uncertainty(torch.from_numpy(samples)[..., None], tau=2.5)
    np.testing.assert_allclose(u.mean, samples.mean(0))
    np.testing.assert_allclose(u.variance, 1 / 2.5 + (samples**2).mean(0) - samples.mean(0) ** 2)
    np.testing.assert_allclose(u.model_variance, samples.var(0))
    np.testing.assert_allclose(u.std, np.sqrt(u.variance))


def test_log_likelihood_is_the_gaussian_mixture_density() -> None:
    rng = np.random.default_rng(3)
    samples, y, tau = rng.normal(size=(20, 6)), rng.normal(size=6), 1.7
    density = np.mean(
        np.sqrt(tau / (2 * np.pi)) * np.exp(-0.5 * tau * (y[None] - samples) ** 2), axis=0
    )
    per_point = U.gaussian_log_likelihood(samples, y, tau, reduction="none")
    np.testing.assert_allclose(per_point, np.log(density), rtol=1e-12)
    assert math.isclose(U.gaussian_log_likelihood(samples, y, tau), float(np.log(density).mean()))


def test_log_likelihood_stays_finite_far_from_every_sample() -> None:
    # exp(−τ/2 · 1e6) underflows to 0; logsumexp keeps the exact value −τ/2 · d² + …
    ll = U.gaussian_log_likelihood(np.zeros((3, 1)), np.array([1000.0]), tau=1.0)
    assert math.isclose(ll, -0.5 * 1e6 - 0.5 * math.log(2 * math.pi), rel_tol=1e-12)


def test_tau_from_prior_follows_gals_formula() -> None:
    # Gal & Ghahramani 2016, eq. 7: τ = p l² / (2 N λ) with the paper's p the keep probability.
    keep, scale, n, lam = 0.8, 0.5, 100, 1e-3
    paper = keep * scale**2 / (2 * n * lam)
    assert math.isclose(U.tau_from_prior(scale, 1 - keep, n, lam, convention="paper"), paper)
    with pytest.raises(ValueError, match="length_scale"):
        U.tau_from_prior(0.0, 0.2, 100, 1e-3, convention="paper")


def test_tau_from_prior_needs_an_explicit_convention() -> None:
    with pytest.raises(TypeError, match="convention"):
        U.tau_from_prior(0.5, 0.2, 100, 1e-3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="convention must be one of"):
        U.tau_from_prior(0.5, 0.2, 100, 1e-3, convention="keras")


@pytest.mark.parametrize("convention, factor", [("paper", 1.0), ("code", 2.0), ("torch", 4.0)])
def test_weight_decay_conventions_against_the_papers_formula(convention, factor) -> None:
    keep, scale, n, tau = 0.95, 1e-2, 404, 3.7
    paper_lambda = keep * scale**2 / (2 * n * tau)  # eq. 7 solved for λ
    wd = U.weight_decay_from_tau(tau, 1 - keep, n, length_scale=scale, convention=convention)
    assert math.isclose(wd, factor * paper_lambda, rel_tol=1e-12)
    back = U.tau_from_weight_decay(wd, 1 - keep, n, length_scale=scale, convention=convention)
    assert math.isclose(back, tau, rel_tol=1e-12)


def test_the_authors_codes_reg_belongs_to_twice_the_tau_it_reports() -> None:
    # net.py: reg = lengthscale² (1 − dropout) / (2 N τ), used as Keras l2(reg) on mean_squared_error.
    scale, p, n, tau = 1e-2, 0.05, 400, 0.5
    reg = scale**2 * (1 - p) / (2.0 * n * tau)
    assert math.isclose(
        U.tau_from_weight_decay(reg, p, n, length_scale=scale, convention="code"), 2 * tau
    )
    assert math.isclose(
        U.tau_from_weight_decay(reg, p, n, length_scale=scale, convention="paper"), tau
    )


def test_each_convention_is_the_papers_objective_up_to_a_constant_factor() -> None:
    # The gradient of each convention's objective is a constant times the gradient of the paper's
    # objective at λ_paper: the same minimiser, so the same τ.
    torch.manual_seed(0)
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    lam_paper = 0.03
    net = torch.nn.Linear(3, 1)

    def grads(loss: torch.Tensor) -> torch.Tensor:
        net.zero_grad()
        loss.backward()
        return torch.cat([net.weight.grad.flatten(), net.bias.grad.flatten()])

    w = net.weight
    mse = lambda: ((net(x) - y) ** 2).mean()  # noqa: E731
    paper = grads(0.5 * mse() + lam_paper * w.square().sum())
    factor_code = U.weight_decay_from_tau(1.0, 0.0, 1, convention="code") / U.weight_decay_from_tau(
        1.0, 0.0, 1, convention="paper"
    )
    code = grads(mse() + factor_code * lam_paper * w.square().sum())
    torch.testing.assert_close(code, 2 * paper)
    # torch: Adam/SGD's weight_decay adds wd·W to the gradient of MSELoss (weights only here).
    wd = 4 * lam_paper
    g = grads(torch.nn.functional.mse_loss(net(x), y))
    g[: w.numel()] += wd * w.detach().flatten()
    torch.testing.assert_close(g, 2 * paper)


# ------------------------------------------------------------------------------------------------
# Predictive intervals and coverage
# ------------------------------------------------------------------------------------------------
def test_coverage_of_a_correct_gaussian_matches_the_level() -> None:
    rng = np.random.default_rng(11)
    n, sigma = 20_000, 2.5
    mu = rng.normal(size=n)
    y = mu + sigma * rng.normal(size=n)
    cover = U.interval_coverage(mu[None], y, tau=1 / sigma**2, levels=(0.5, 0.9, 0.95))
    for level, observed in cover.items():
        assert_fraction_close(observed, n, level, what=f"coverage at {level}")


def test_coverage_of_a_gaussian_mixture_matches_the_level() -> None:
    # y ~ (1/T) Σ N(ŷ_t, 1/τ) exactly when y = ŷ_s + noise for a sample s drawn uniformly.
    rng = np.random.default_rng(12)
    n, t, tau = 10_000, 40, 4.0
    samples = rng.normal(size=(t, n)) * rng.uniform(0.5, 3.0, size=n) + rng.normal(size=n)
    y = samples[rng.integers(0, t, size=n), np.arange(n)] + rng.normal(size=n) / math.sqrt(tau)
    cover = U.interval_coverage(samples, y, tau, levels=(0.5, 0.9, 0.95))
    for level, observed in cover.items():
        assert_fraction_close(observed, n, level, what=f"mixture coverage at {level}")


def test_coverage_falls_short_for_an_overconfident_precision() -> None:
    rng = np.random.default_rng(13)
    n = 20_000
    y = rng.normal(size=n)
    # τ four times too large: intervals half as wide, 90% interval covers P(|Z| <= 1.645/2) = 0.59.
    cover = U.interval_coverage(np.zeros((1, n)), y, tau=4.0, levels=[0.9])
    expected = 2 * 0.5 * (1 + math.erf(1.6448536 / 2 / math.sqrt(2))) - 1
    assert_fraction_close(cover[0.9], n, expected, what="over-confident coverage")


def test_predictive_interval_inverts_the_predictive_cdf() -> None:
    rng = np.random.default_rng(14)
    samples = rng.normal(size=(30, 7))
    low, high = U.predictive_interval(samples, tau=2.0, level=0.9)
    np.testing.assert_allclose(U.predictive_cdf(samples, low, 2.0), 0.05, atol=1e-9)
    np.testing.assert_allclose(U.predictive_cdf(samples, high, 2.0), 0.95, atol=1e-9)
    # One sample: the Gaussian ŷ ± z σ.
    low, high = U.predictive_interval(samples[:1], tau=4.0, level=0.95)
    np.testing.assert_allclose(high - samples[0], 1.959963985 / 2.0, atol=1e-8)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"levels": (0.5, 1.0)}, ValueError, "levels must be a number in \\(0, 1\\), got 1.0"),
        ({"levels": 0.9}, TypeError, "levels must be a sequence"),
        ({"tau": 0.0}, ValueError, "tau must be a positive finite number"),
        ({"targets": np.zeros(4)}, ValueError, "targets must have shape"),
    ],
)
def test_interval_coverage_refuses_bad_arguments(kwargs, error, match) -> None:
    args = {"samples": np.zeros((2, 3)), "targets": np.zeros(3), "tau": 1.0}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        U.interval_coverage(**args)


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------
def test_nll_brier_and_ece_on_hand_computed_cases() -> None:
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.9, 0.1]])
    labels = np.array([0, 1, 1, 0])
    assert math.isclose(U.nll(probs, labels), -np.mean(np.log([0.8, 0.7, 0.4, 0.9])))
    assert math.isclose(U.brier_score(probs, labels), np.mean([0.08, 0.18, 0.72, 0.02]))
    # Two bins: (0, .5] empty; (.5, 1] holds all four, confidence 0.75, accuracy 0.75 -> ECE 0.
    assert U.expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.0, abs=1e-12)
    # Ten bins: 0.6 (wrong), 0.7 (right), 0.8 (right), 0.9 (right) each alone.
    expected = (0.6 + 0.3 + 0.2 + 0.1) / 4
    assert U.expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(expected)


def test_ece_is_small_for_calibrated_predictions_and_large_for_overconfident_ones() -> None:
    rng = np.random.default_rng(4)
    n = 20_000
    conf = rng.uniform(0.5, 1.0, n)
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = (rng.uniform(size=n) > conf).astype(int)  # right with probability conf
    assert U.expected_calibration_error(probs, labels) < 0.02
    sharp = np.stack([np.full(n, 0.99), np.full(n, 0.01)], axis=1)
    assert U.expected_calibration_error(sharp, labels) > 0.2


def test_reliability_diagram_and_histogram_write_pngs_and_accept_an_axes(tmp_path) -> None:
    from matplotlib.figure import Figure

    rng = np.random.default_rng(5)
    probs, labels = rng.dirichlet(np.ones(3), 200), rng.integers(0, 3, 200)
    path = tmp_path / "sub" / "reliability.png"
    fig = U.reliability_diagram(
        {"a": probs, "b": probs**2 / (probs**2).sum(1, keepdims=True)}, labels, path=path
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ECE" in fig.axes[0].get_legend().get_texts()[1].get_text()
    own = Figure()
    ax = own.add_subplot(1, 1, 1)
    assert U.uncertainty_histogram(rng.uniform(size=200), probs.argmax(1) == labels, ax=ax) is own
    hist_path = tmp_path / "hist.png"
    U.uncertainty_histogram(rng.uniform(size=200), probs.argmax(1) == labels, path=hist_path)
    assert hist_path.stat().st_size > 1000


def test_misclassification_auroc_counts_ordered_pairs() -> None:
    u = np.array([0.1, 0.5, 0.2, 0.9, 0.4])
    correct = np.array([True, True, True, False, False])
    # wrong scores 0.9 and 0.4 against right 0.1, 0.5, 0.2: 3 + 2 of 6 pairs ordered.
    assert U.misclassification_auroc(u, correct) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="both right and wrong"):
        U.misclassification_auroc(u, np.ones(5, bool))


def test_metrics_reject_mismatched_shapes() -> None:
    probs = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        U.nll(probs, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="labels must be in"):
        U.brier_score(probs, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="probabilities"):
        U.expected_calibration_error(probs * 2, np.zeros(4, int))
    with pytest.raises(ValueError, match="targets must have shape"):
        U.gaussian_log_likelihood(np.zeros((5, 4)), np.zeros(3), tau=1.0)
    with pytest.raises(ValueError, match=r"shape \(T, N, C\)"):
        U.classification_uncertainty(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="tau must be a positive"):
        U.regression_uncertainty(np.zeros((5, 4)), tau=-1.0)
    with pytest.raises(ValueError, match="weight_scaled_logits must have shape"):
        U.weight_scaling_gap(np.zeros((5, 4, 3)), np.zeros((4, 2)))


# ------------------------------------------------------------------------------------------------
# MC averaging against weight scaling
# ------------------------------------------------------------------------------------------------
def test_weight_scaling_is_the_geometric_mean_not_the_arithmetic_one() -> None:
    # Antithetic logits: their mean is the weight-scaled logit exactly.
    rng = np.random.default_rng(6)
    z_ws = rng.normal(size=(10, 4))
    noise = 3 * rng.normal(size=(1, 10, 4))
    samples = np.concatenate([z_ws + noise, z_ws - noise])
    gap = U.weight_scaling_gap(samples, z_ws)
    assert gap["tv_geometric"] < 1e-12
    assert gap["tv_arithmetic"] > 0.05 and gap["kl_arithmetic"] > 0


def test_mc_logits_average_to_weight_scaled_logits_for_dropout_before_a_linear_layer() -> None:
    torch.manual_seed(0)
    p, T = 0.5, 2000
    net = nn.Sequential(dropkit.Dropout(p), nn.Linear(20, 3)).double()
    x = torch.randn(4, 20, dtype=torch.float64)
    samples = predict(net, x, T=T, seed=1)
    with torch.no_grad():
        ws = net.eval()(x)
    # Each sample logit is linear in the mask: E_t[z_t] = z_ws; bound from the sample spread.
    sd = samples.std(0)
    for i in range(4):
        for c in range(3):
            assert_mean_close(float(samples[:, i, c].mean()), float(ws[i, c]), float(sd[i, c]), T)


def test_evaluate_mc_classifier_returns_plain_floats() -> None:
    torch.manual_seed(0)
    net = dropkit.MLP([5, 16, 3], p=0.3)
    x, y = torch.randn(60, 5), torch.randint(0, 3, (60,))
    report = U.evaluate_mc_classifier(net, x, y, T=5)
    for part in ("mc", "weight_scaling", "gap"):
        assert all(isinstance(v, float) for v in report[part].values()), part
    assert report["mc_probs"].shape == (60, 3) and report["correct"].dtype == bool
    assert net.training  # mode restored
