r"""Uncertainty from Monte-Carlo dropout samples, and the metrics that say whether to trust it.

Inputs are the T samples of :func:`dropkit.mc.predict` — (T, N, C) class probabilities or logits,
(T, N) or (T, N, 1) regression outputs — as torch tensors or NumPy arrays; every function returns
NumPy arrays or plain floats, so the results go straight into a table or a plot.

Classification (p̄ = (1/T) Σ_t p_t is the predictive mean; H[p] = −Σ_c p_c log p_c):

- predictive entropy  H[p̄]                                  (total uncertainty)
- mutual information  I = H[p̄] − (1/T) Σ_t H[p_t]           (BALD, Houlsby et al. 2011: the part
  due to the weights, large where the samples disagree)
- variation ratio     1 − f_mode / T, f_mode = how many samples vote for the most common class
- per-class variance  Var_t[p_t,c]

Regression (Gal & Ghahramani 2016, sec. 4 and eq. 8, homoscedastic noise of precision τ):

- E[y*] ≈ (1/T) Σ_t ŷ_t
- Var[y*] ≈ τ⁻¹ + (1/T) Σ_t ŷ_t² − E[y*]²
- log p(y* | x*) ≈ logsumexp_t(−τ/2 ‖y* − ŷ_t‖²) − log T − ½ log 2π + ½ log τ (per output dim)
- τ and weight decay (eq. 7): τ = l² (1 − p) / (2 N λ) with prior length-scale l, drop rate p
  (Gal's p is the *keep* probability, here 1 − p), N training points and the weight decay λ of the
  paper's objective (1/N) Σ ½ ‖y − ŷ‖² + λ Σ ‖W‖². The same network trained on another objective
  has another λ: :func:`weight_decay_from_tau` and :func:`tau_from_weight_decay` take the
  ``convention`` explicitly (:data:`WEIGHT_DECAY_CONVENTIONS`).
- Predictive intervals: the MC predictive distribution is the mixture (1/T) Σ_t N(ŷ_t, τ⁻¹);
  :func:`predictive_cdf` is its CDF at the observed y (the probability integral transform),
  :func:`predictive_interval` its central intervals and :func:`interval_coverage` the share of
  observations inside them (a calibrated model covers a fraction equal to the level).

Metrics: negative log-likelihood, Brier score, expected calibration error (ECE, equal-width
confidence bins, Naeini et al. 2015; Guo et al. 2017) with a reliability diagram, AUROC of an
uncertainty score for spotting misclassified inputs, and the gap between MC averaging and
weight-scaling inference: with dropout on a softmax layer's input only, the weight-scaled logits are
the expected logits, so softmax(weight-scaled) is the normalised geometric mean of the 2^n
sub-networks (the seeds' "approximates the geometric mean"), while MC dropout takes their
arithmetic mean; :func:`weight_scaling_gap` measures both distances.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dropkit._validate import (
    check_choice,
    check_open_unit,
    check_positive_finite,
    check_positive_int,
    check_probability,
)

__all__ = [
    "ClassificationUncertainty",
    "RegressionUncertainty",
    "classification_uncertainty",
    "regression_uncertainty",
    "predictive_mean",
    "predictive_entropy",
    "mutual_information",
    "variation_ratio",
    "class_variance",
    "tau_from_prior",
    "WEIGHT_DECAY_CONVENTIONS",
    "weight_decay_from_tau",
    "tau_from_weight_decay",
    "gaussian_log_likelihood",
    "predictive_cdf",
    "predictive_interval",
    "interval_coverage",
    "rmse",
    "nll",
    "brier_score",
    "expected_calibration_error",
    "reliability_bins",
    "reliability_diagram",
    "uncertainty_histogram",
    "misclassification_auroc",
    "weight_scaling_gap",
    "classification_metrics",
    "evaluate_mc_classifier",
]

_EPS = 1e-12


# ------------------------------------------------------------------------------------------------
# Input checks
# ------------------------------------------------------------------------------------------------
def _array(value: object, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    if not isinstance(value, np.ndarray):
        if isinstance(value, (list, tuple)):
            value = np.asarray(value)
        else:
            raise TypeError(
                f"{name} must be a torch.Tensor or a NumPy array, got {type(value).__name__}"
            )
    if value.dtype == object or not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
        raise TypeError(f"{name} must hold numbers, got dtype {value.dtype}")
    return value


def _samples(samples: object, logits: bool, name: str = "samples") -> np.ndarray:
    """(T, N, C) class probabilities; softmax over C first if ``logits``."""
    arr = _array(samples, name).astype(np.float64)
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"{name} must have shape (T, N, C) with T, N, C >= 1, got {arr.shape}")
    if logits:
        arr = arr - arr.max(axis=-1, keepdims=True)
        arr = np.exp(arr)
        arr /= arr.sum(axis=-1, keepdims=True)
    elif arr.min() < -1e-6 or np.abs(arr.sum(-1) - 1).max() > 1e-4:
        raise ValueError(
            f"{name} must be probabilities summing to 1 over the last dim (pass logits=True for logits)"
        )
    return arr


def _probs(probs: object, name: str = "probs") -> np.ndarray:
    arr = _array(probs, name).astype(np.float64)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"{name} must have shape (N, C) with N, C >= 1, got {arr.shape}")
    if arr.min() < -1e-6 or np.abs(arr.sum(-1) - 1).max() > 1e-4:
        raise ValueError(f"{name} must be probabilities: each row >= 0 and summing to 1")
    return arr


def _labels(labels: object, n: int, n_classes: int | None = None) -> np.ndarray:
    arr = _array(labels, "labels")
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(
            f"labels must have shape ({n},) to match the predictions' N = {n}, got {arr.shape}"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise TypeError("labels must be integer class indices")
        arr = arr.astype(np.int64)
    if n_classes is not None and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError(
            f"labels must be in [0, {n_classes}), got values in [{arr.min()}, {arr.max()}]"
        )
    return arr


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, _EPS, None))).sum(-1)


# ------------------------------------------------------------------------------------------------
# Classification
# ------------------------------------------------------------------------------------------------
def predictive_mean(samples: object, *, logits: bool = False) -> np.ndarray:
    """p̄ = (1/T) Σ_t p_t, the MC predictive distribution.

    Args:
        samples: (T, N, C) probabilities (or logits with ``logits=True``).

    Returns:
        (N, C) array.

    Example:
        >>> import numpy as np
        >>> predictive_mean(np.array([[[1.0, 0.0]], [[0.0, 1.0]]]))
        array([[0.5, 0.5]])
    """
    return _samples(samples, logits).mean(0)


def predictive_entropy(samples: object, *, logits: bool = False) -> np.ndarray:
    r"""H[p̄] = −Σ_c p̄_c log p̄_c (nats), the total predictive uncertainty, shape (N,).

    Example:
        >>> import numpy as np
        >>> round(float(predictive_entropy(np.array([[[1.0, 0.0]], [[0.0, 1.0]]]))[0]), 4)  # log 2
        0.6931
    """
    return _entropy(_samples(samples, logits).mean(0))


def mutual_information(samples: object, *, logits: bool = False) -> np.ndarray:
    r"""BALD: I[y; ω | x] ≈ H[p̄] − (1/T) Σ_t H[p_t] ≥ 0, shape (N,).

    Zero when every sample gives the same distribution (no model uncertainty), up to H[p̄] when
    each sample is certain but they disagree.

    Example:
        >>> import numpy as np
        >>> disagree = np.array([[[1.0, 0.0]], [[0.0, 1.0]]])   # confident samples, opposite classes
        >>> agree = np.full((2, 1, 2), 0.5)                       # identical uncertain samples
        >>> round(float(mutual_information(disagree)[0]), 4), float(mutual_information(agree)[0])
        (0.6931, 0.0)
    """
    p = _samples(samples, logits)
    return np.clip(_entropy(p.mean(0)) - _entropy(p).mean(0), 0.0, None)


def variation_ratio(samples: object, *, logits: bool = False) -> np.ndarray:
    r"""1 − f_mode / T, where f_mode counts the samples whose argmax is the most common class; (N,).

    Example:
        >>> import numpy as np
        >>> s = np.array([[[0.9, 0.1]], [[0.8, 0.2]], [[0.3, 0.7]], [[0.6, 0.4]]])
        >>> variation_ratio(s)
        array([0.25])
    """
    p = _samples(samples, logits)
    votes = p.argmax(-1)  # (T, N)
    counts = np.stack([(votes == c).sum(0) for c in range(p.shape[-1])], axis=-1)
    return 1.0 - counts.max(-1) / p.shape[0]


def class_variance(samples: object, *, logits: bool = False) -> np.ndarray:
    r"""Var_t[p_t,c] = (1/T) Σ_t p_t,c² − p̄_c², per input and class: (N, C).

    Example:
        >>> import numpy as np
        >>> class_variance(np.array([[[1.0, 0.0]], [[0.0, 1.0]]]))
        array([[0.25, 0.25]])
    """
    return _samples(samples, logits).var(0)


@dataclass
class ClassificationUncertainty:
    """Every classification summary of T MC samples, as NumPy arrays.

    Attributes:
        mean: (N, C) predictive mean p̄.
        prediction: (N,) argmax of p̄.
        confidence: (N,) max_c p̄_c.
        entropy: (N,) predictive entropy H[p̄].
        mutual_information: (N,) BALD.
        variation_ratio: (N,) 1 − f_mode / T.
        class_variance: (N, C) per-class variance over samples.
    """

    mean: np.ndarray
    prediction: np.ndarray
    confidence: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    variation_ratio: np.ndarray
    class_variance: np.ndarray


def classification_uncertainty(
    samples: object, *, logits: bool = True
) -> ClassificationUncertainty:
    """All classification summaries at once (one softmax, one pass over the samples).

    Args:
        samples: (T, N, C) logits (default) or probabilities (``logits=False``).

    Example:
        >>> import torch, dropkit
        >>> from dropkit.mc import predict
        >>> net = dropkit.MLP([4, 16, 3], p=0.5)
        >>> u = classification_uncertainty(predict(net, torch.randn(6, 4), T=10, seed=0))
        >>> u.mean.shape, u.entropy.shape, bool((u.mutual_information <= u.entropy + 1e-9).all())
        ((6, 3), (6,), True)
    """
    p = _samples(samples, logits)
    mean = p.mean(0)
    entropy = _entropy(mean)
    votes = p.argmax(-1)
    counts = np.stack([(votes == c).sum(0) for c in range(p.shape[-1])], axis=-1)
    return ClassificationUncertainty(
        mean=mean,
        prediction=mean.argmax(-1),
        confidence=mean.max(-1),
        entropy=entropy,
        mutual_information=np.clip(entropy - _entropy(p).mean(0), 0.0, None),
        variation_ratio=1.0 - counts.max(-1) / p.shape[0],
        class_variance=p.var(0),
    )


# ------------------------------------------------------------------------------------------------
# Regression
# ------------------------------------------------------------------------------------------------
def _regression_samples(samples: object) -> np.ndarray:
    arr = _array(samples, "samples").astype(np.float64)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or 0 in arr.shape:
        raise ValueError(f"samples must have shape (T, N) or (T, N, D), got {arr.shape}")
    return arr


#: Weight-decay conventions: the objective that a weight decay λ multiplies Σ ‖W‖² in, and λ's
#: factor relative to the paper's λ for the same network and τ. Gal & Ghahramani 2016 write the
#: objective with E = ½ ‖y − ŷ‖² (eq. 1 and sec. 3), so τ = l² (1 − p) / (2 N λ) (eq. 7). The
#: authors' code (DropoutUncertaintyExps, ``net.py``) minimises Keras's ``mean_squared_error`` plus
#: ``l2(reg)``: the same objective without the ½, i.e. twice the paper's with λ = reg / 2, so a
#: consistent ``reg`` is twice the paper's λ. (That code computes ``reg`` with the paper's expression,
#: l² (1 − p) / (2 N τ), so the network it trains belongs to 2τ rather than the τ it reports.)
#: torch's optimisers add ``weight_decay · W`` to the gradient of ``MSELoss``: the objective
#: (1/N) Σ (y − ŷ)² + (wd / 2) Σ ‖W‖², twice the paper's with λ = wd / 4.
WEIGHT_DECAY_CONVENTIONS: dict[str, tuple[float, str]] = {
    "paper": (1.0, "(1/N) Σ ½ (y − ŷ)² + λ Σ ‖W‖²  (Gal & Ghahramani 2016, eq. 1)"),
    "code": (2.0, "(1/N) Σ (y − ŷ)² + λ Σ ‖W‖²  (the authors' Keras code: MSE + l2(λ))"),
    "torch": (
        4.0,
        "torch MSELoss + optimiser weight_decay=λ, i.e. (1/N) Σ (y − ŷ)² + (λ/2) Σ ‖W‖²",
    ),
}


def _convention_factor(convention: object) -> float:
    convention = check_choice(
        convention,
        "convention",
        sorted(WEIGHT_DECAY_CONVENTIONS),
        why="the objective the weight decay belongs to",
    )
    return WEIGHT_DECAY_CONVENTIONS[convention][0]


def _prior_terms(p: object, n_train: object, length_scale: object) -> float:
    """l² (1 − p) / (2 N), the numerator of Gal's eq. 7 over 2N, after checking each argument."""
    l = check_positive_finite(length_scale, "length_scale")  # noqa: E741 - the paper's symbol
    p = check_probability(p, "p", allow_one=False)
    n = check_positive_int(n_train, "n_train")
    return l * l * (1.0 - p) / (2.0 * n)


def weight_decay_from_tau(
    tau: float, p: float, n_train: int, *, length_scale: float = 1.0, convention: str
) -> float:
    r"""The weight decay that makes dropout training match model precision τ (Gal & Ghahramani 2016).

    λ = c · l² (1 − p) / (2 N τ), where c is the convention's factor
    (:data:`WEIGHT_DECAY_CONVENTIONS`): 1 for the paper's objective (1/N) Σ ½ (y − ŷ)² + λ Σ ‖W‖²,
    2 for the authors' code's (Keras MSE + ``l2(λ)``), 4 for torch's ``MSELoss`` with an
    optimiser's ``weight_decay=λ``. There is no default: the factor of 2 between the paper and the
    code is easy to get wrong silently.

    Args:
        tau: model precision τ > 0, in the units of the target the network is trained on.
        p: drop rate (dropkit's p; the paper's p is the keep probability 1 − p).
        n_train: number of training points N.
        length_scale: prior length-scale l (the authors' code uses 10⁻²).
        convention: ``"paper"``, ``"code"`` or ``"torch"``.

    Example:
        >>> weight_decay_from_tau(25.0, 0.5, 1000, convention="paper")
        1e-05
        >>> weight_decay_from_tau(25.0, 0.5, 1000, convention="torch")
        4e-05
    """
    factor = _convention_factor(convention)
    return factor * _prior_terms(p, n_train, length_scale) / check_positive_finite(tau, "tau")


def tau_from_weight_decay(
    weight_decay: float, p: float, n_train: int, *, length_scale: float = 1.0, convention: str
) -> float:
    r"""Model precision τ = c · l² (1 − p) / (2 N λ) of a network trained with weight decay λ.

    The inverse of :func:`weight_decay_from_tau`; ``convention`` names the objective λ belongs to.

    Example:
        >>> tau_from_weight_decay(1e-5, 0.5, 1000, convention="paper")
        25.0
        >>> tau_from_weight_decay(1e-5, 0.5, 1000, convention="code")   # λ of MSE + l2(λ)
        50.0
    """
    factor = _convention_factor(convention)
    return (
        factor
        * _prior_terms(p, n_train, length_scale)
        / check_positive_finite(weight_decay, "weight_decay")
    )


def tau_from_prior(
    length_scale: float, p: float, n_train: int, weight_decay: float, *, convention: str
) -> float:
    r"""Gal & Ghahramani's model precision τ = l² (1 − p) / (2 N λ), λ in ``convention``'s objective.

    The same as :func:`tau_from_weight_decay` with the prior's arguments first.

    Args:
        length_scale: prior length-scale l of the weights.
        p: drop rate (dropkit's p; Gal's "p" is the keep probability 1 − p).
        n_train: number of training points N.
        weight_decay: λ.
        convention: the objective λ belongs to: ``"paper"`` ((1/N) Σ ½ ‖y − ŷ‖² + λ Σ ‖W‖²),
            ``"code"`` (the authors' Keras code, MSE + ``l2(λ)``) or ``"torch"`` (``MSELoss`` and an
            optimiser's ``weight_decay=λ``); see :data:`WEIGHT_DECAY_CONVENTIONS`.

    Example:
        >>> tau_from_prior(1.0, 0.5, 1000, 1e-5, convention="paper")
        25.0
    """
    return tau_from_weight_decay(
        weight_decay, p, n_train, length_scale=length_scale, convention=convention
    )


@dataclass
class RegressionUncertainty:
    """MC regression summaries (NumPy): ``mean`` E[y*], ``variance`` τ⁻¹ + sample variance, and
    ``model_variance`` (the sample variance alone, the epistemic part); shape (N,) or (N, D)."""

    mean: np.ndarray
    variance: np.ndarray
    model_variance: np.ndarray

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.variance)


def regression_uncertainty(samples: object, tau: float) -> RegressionUncertainty:
    r"""E[y*] ≈ (1/T) Σ_t ŷ_t and Var[y*] ≈ τ⁻¹ + (1/T) Σ_t ŷ_t² − E[y*]² (Gal & Ghahramani 2016).

    Args:
        samples: (T, N), (T, N, 1) or (T, N, D) MC predictions.
        tau: model precision τ > 0 (homoscedastic observation noise variance τ⁻¹).

    Example:
        >>> import numpy as np
        >>> u = regression_uncertainty(np.array([[1.0, 2.0], [3.0, 2.0]]), tau=4.0)
        >>> u.mean, u.variance
        (array([2., 2.]), array([1.25, 0.25]))
    """
    arr = _regression_samples(samples)
    tau = check_positive_finite(tau, "tau")
    model_var = arr.var(0)
    return RegressionUncertainty(arr.mean(0), model_var + 1.0 / tau, model_var)


def gaussian_log_likelihood(
    samples: object, targets: object, tau: float, *, reduction: str = "mean"
) -> float | np.ndarray:
    r"""MC test log-likelihood, Gal & Ghahramani 2016 eq. 8, with logsumexp over the T samples.

    log p(y* | x*) ≈ logsumexp_t(−τ/2 ‖y* − ŷ_t‖²) − log T − (D/2) log 2π + (D/2) log τ.

    Args:
        samples: (T, N) or (T, N, D) MC predictions.
        targets: (N,) or (N, D) observed values (same units as the samples).
        tau: model precision τ > 0 in those units.
        reduction: ``"mean"`` (a float, the average over N) or ``"none"`` (per point, (N,)).

    Example:
        >>> import numpy as np
        >>> s = np.zeros((5, 3))                    # every sample predicts 0
        >>> ll = gaussian_log_likelihood(s, np.zeros(3), tau=1.0)
        >>> bool(abs(ll + 0.5 * np.log(2 * np.pi)) < 1e-12)
        True
    """
    arr = _regression_samples(samples)
    y = _array(targets, "targets").astype(np.float64)
    if arr.ndim == 3 and y.ndim == 1 and arr.shape[-1] == 1:
        y = y[:, None]
    if y.shape != arr.shape[1:]:
        raise ValueError(
            f"targets must have shape {arr.shape[1:]} to match samples {arr.shape}, got {y.shape}"
        )
    tau = check_positive_finite(tau, "tau")
    check_choice(reduction, "reduction", ("mean", "none"))
    sq = (y[None] - arr) ** 2
    dims = 1
    if sq.ndim == 3:
        dims = sq.shape[-1]
        sq = sq.sum(-1)
    a = -0.5 * tau * sq  # (T, N)
    top = a.max(0)
    lse = top + np.log(np.exp(a - top).sum(0))
    ll = (
        lse
        - math.log(arr.shape[0])
        - 0.5 * dims * math.log(2 * math.pi)
        + 0.5 * dims * math.log(tau)
    )
    return float(ll.mean()) if reduction == "mean" else ll


def rmse(predictions: object, targets: object) -> float:
    """Root mean squared error √(mean (ŷ − y)²) of (N,) or (N, D) predictions.

    Example:
        >>> import numpy as np
        >>> rmse(np.array([1.0, 3.0]), np.array([0.0, 0.0]))
        2.23606797749979
    """
    pred = _array(predictions, "predictions").astype(np.float64)
    y = _array(targets, "targets").astype(np.float64)
    if pred.shape != y.shape:
        raise ValueError(f"predictions {pred.shape} and targets {y.shape} must have the same shape")
    return float(np.sqrt(np.mean((pred - y) ** 2)))


def _mixture(samples: object, tau: float, targets: object | None = None):
    """(T, N) samples, τ, and (N,) targets checked against them (for the interval functions)."""
    arr = _regression_samples(samples)
    if arr.ndim != 2:
        raise ValueError(f"samples must have shape (T, N) or (T, N, 1), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("samples must be finite (a NaN or inf prediction has no interval)")
    tau = check_positive_finite(tau, "tau")
    if targets is None:
        return arr, tau, None
    y = _array(targets, "targets").astype(np.float64)
    if y.ndim == 2 and y.shape[-1] == 1:
        y = y[:, 0]
    if y.shape != arr.shape[1:]:
        raise ValueError(
            f"targets must have shape {arr.shape[1:]} to match samples {arr.shape}, got {y.shape}"
        )
    return arr, tau, y


def _mixture_cdf(arr: np.ndarray, tau: float, y: np.ndarray) -> np.ndarray:
    z = torch.from_numpy(math.sqrt(tau) * (y[None] - arr))
    return torch.special.ndtr(z).mean(0).numpy()


def predictive_cdf(samples: object, targets: object, tau: float) -> np.ndarray:
    r"""F(y) = (1/T) Σ_t Φ(√τ (y − ŷ_t)), the MC predictive CDF at each observed y; shape (N,).

    The predictive distribution of MC dropout with homoscedastic noise of precision τ is the
    mixture (1/T) Σ_t N(ŷ_t, τ⁻¹); T = 1 (one deterministic prediction, weight scaling) is a plain
    Gaussian. For a calibrated model these values (the probability integral transform) are uniform
    on [0, 1], and y lies in the central interval of level c exactly when |F(y) − ½| ≤ c/2.

    Args:
        samples: (T, N) or (T, N, 1) predictions.
        targets: (N,) observed values, in the samples' units.
        tau: precision τ > 0 in those units.

    Example:
        >>> import numpy as np
        >>> predictive_cdf(np.zeros((1, 3)), np.array([-1.0, 0.0, 1.0]), tau=1.0).round(4)
        array([0.1587, 0.5   , 0.8413])
    """
    arr, tau, y = _mixture(samples, tau, targets)
    return _mixture_cdf(arr, tau, y)


def predictive_interval(
    samples: object, tau: float, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    r"""The central ``level`` interval [F⁻¹((1 − c)/2), F⁻¹((1 + c)/2)] of the MC predictive mixture.

    F is the mixture CDF of :func:`predictive_cdf`; its quantiles are found by bisection to about
    10⁻⁹ of the interval's width (T = 1 gives ŷ ± z σ exactly, up to that tolerance).

    Returns:
        ``(lower, upper)``, two (N,) arrays.

    Example:
        >>> import numpy as np
        >>> low, high = predictive_interval(np.zeros((1, 2)), tau=1.0, level=0.95)
        >>> high.round(4)
        array([1.96, 1.96])
    """
    arr, tau, _ = _mixture(samples, tau)
    level = check_open_unit(level, "level")
    sigma = 1.0 / math.sqrt(tau)
    bounds = []
    for q in ((1.0 - level) / 2.0, (1.0 + level) / 2.0):
        low = arr.min(0) - 12.0 * sigma
        high = arr.max(0) + 12.0 * sigma
        for _ in range(64):
            mid = 0.5 * (low + high)
            below = _mixture_cdf(arr, tau, mid) < q
            low = np.where(below, mid, low)
            high = np.where(below, high, mid)
        bounds.append(0.5 * (low + high))
    return bounds[0], bounds[1]


def interval_coverage(
    samples: object,
    targets: object,
    tau: float,
    levels: object = (0.5, 0.9, 0.95),
) -> dict[float, float]:
    r"""Share of observations inside the central predictive interval of each level.

    y is inside the central interval of level c when (1 − c)/2 ≤ F(y) ≤ (1 + c)/2, with F the
    predictive CDF (:func:`predictive_cdf`); for a calibrated model the share is c, up to the
    binomial noise √(c (1 − c) / N). Below c: intervals too narrow (over-confident); above:
    too wide.

    Args:
        samples: (T, N) or (T, N, 1) predictions (T = 1 for a deterministic model).
        targets: (N,) observed values.
        tau: the noise precision τ > 0 in the targets' units.
        levels: nominal levels in (0, 1).

    Returns:
        ``{level: observed share}``.

    Example:
        >>> import numpy as np
        >>> y = np.random.default_rng(0).normal(size=4000)          # N(0, 1) observations
        >>> cover = interval_coverage(np.zeros((1, 4000)), y, tau=1.0)
        >>> {c: round(v, 2) for c, v in cover.items()}
        {0.5: 0.5, 0.9: 0.9, 0.95: 0.95}
    """
    arr, tau, y = _mixture(samples, tau, targets)
    if isinstance(levels, (str, bytes)) or not isinstance(levels, (list, tuple, np.ndarray)):
        raise TypeError(f"levels must be a sequence of numbers in (0, 1), got {levels!r}")
    checked = [check_open_unit(c, "levels") for c in levels]
    if not checked:
        raise ValueError("levels must hold at least one level, got none")
    u = _mixture_cdf(arr, tau, y)
    return {c: float((np.abs(u - 0.5) <= c / 2.0).mean()) for c in checked}


# ------------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------------
def nll(probs: object, labels: object) -> float:
    """Mean negative log-likelihood −(1/N) Σ_i log p_i,y_i (probabilities clipped at 1e-12).

    Example:
        >>> import numpy as np
        >>> round(nll(np.array([[0.5, 0.5], [0.25, 0.75]]), np.array([0, 1])), 6)
        0.490415
    """
    p = _probs(probs)
    y = _labels(labels, p.shape[0], p.shape[1])
    return float(-np.log(np.clip(p[np.arange(len(y)), y], _EPS, None)).mean())


def brier_score(probs: object, labels: object) -> float:
    r"""Brier score (1/N) Σ_i Σ_c (p_i,c − 1[y_i = c])², in [0, 2].

    Example:
        >>> import numpy as np
        >>> brier_score(np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([0, 0]))
        0.25
    """
    p = _probs(probs)
    y = _labels(labels, p.shape[0], p.shape[1])
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(((p - onehot) ** 2).sum(-1).mean())


def reliability_bins(probs: object, labels: object, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Equal-width confidence bins: per bin the mean confidence, the accuracy and the count.

    Confidence is max_c p_c; bin b holds confidences in ((b−1)/B, b/B] (the first also holds 0).

    Returns:
        dict with ``edges`` (B+1,), ``confidence`` (B,), ``accuracy`` (B,) (NaN for empty bins)
        and ``count`` (B,).

    Example:
        >>> import numpy as np
        >>> bins = reliability_bins(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]), n_bins=2)
        >>> bins["count"].tolist(), bins["accuracy"].tolist()
        ([0, 2], [nan, 0.5])
    """
    p = _probs(probs)
    y = _labels(labels, p.shape[0], p.shape[1])
    n_bins = check_positive_int(n_bins, "n_bins")
    conf = p.max(-1)
    correct = (p.argmax(-1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "confidence": mean_conf, "accuracy": accuracy, "count": count}


def expected_calibration_error(probs: object, labels: object, n_bins: int = 15) -> float:
    r"""ECE = Σ_b (n_b / N) |acc_b − conf_b| over equal-width confidence bins (Guo et al. 2017).

    Example:
        >>> import numpy as np
        >>> expected_calibration_error(np.array([[0.9, 0.1], [0.6, 0.4]]), np.array([0, 1]), n_bins=2)
        0.25
    """
    bins = reliability_bins(probs, labels, n_bins)
    used = bins["count"] > 0
    weight = bins["count"][used] / bins["count"].sum()
    return float((weight * np.abs(bins["accuracy"][used] - bins["confidence"][used])).sum())


def _figure_for(ax: object, figsize: tuple[float, float]):
    if ax is None:
        # A bare Figure (no pyplot): no global state, PNGs rendered by the Agg canvas.
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.add_subplot(1, 1, 1)
    return ax.figure, ax


def _save(fig, path: str | Path | None) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")


def reliability_diagram(
    probs: object | dict[str, object],
    labels: object | None = None,
    n_bins: int = 15,
    *,
    ax=None,
    path: str | Path | None = None,
    title: str | None = None,
):
    """Reliability diagram: accuracy against confidence per bin, the diagonal, and the ECE.

    Args:
        probs: (N, C) probabilities, or a dict ``{label: probs}`` to overlay several models (e.g.
            MC dropout against weight scaling) on the same axes.
        labels: (N,) class indices.
        n_bins: number of equal-width bins.
        ax: a matplotlib Axes to draw on (None: a new figure, no pyplot state used).
        path: where to save a PNG (optional).
        title: the axes' title.

    Returns:
        The matplotlib Figure.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> p = rng.dirichlet(np.ones(3), size=50)
        >>> fig = reliability_diagram(p, rng.integers(0, 3, 50), n_bins=5)
        >>> len(fig.axes)
        1
    """
    series = probs if isinstance(probs, dict) else {"model": probs}
    if labels is None:
        raise ValueError("labels must be given (N,) class indices")
    fig, ax = _figure_for(ax, (4.5, 4.5))
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfect calibration")
    width = 1.0 / check_positive_int(n_bins, "n_bins")
    for i, (name, p) in enumerate(series.items()):
        bins = reliability_bins(p, labels, n_bins)
        ece = expected_calibration_error(p, labels, n_bins)
        used = bins["count"] > 0
        centers = (bins["edges"][:-1] + width / 2)[used]
        shift = (i - (len(series) - 1) / 2) * width / max(len(series), 1)
        ax.bar(
            centers + shift,
            bins["accuracy"][used],
            width=width / max(len(series), 1),
            alpha=0.6,
            edgecolor="black",
            lw=0.5,
            label=f"{name} (ECE {ece:.3f})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max predicted probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)
    return fig


def uncertainty_histogram(
    uncertainty: object,
    correct: object,
    *,
    bins: int = 30,
    ax=None,
    path: str | Path | None = None,
    xlabel: str = "predictive entropy (nats)",
    title: str | None = None,
):
    """Histograms of an uncertainty score for right and for wrong predictions, and their AUROC.

    Args:
        uncertainty: (N,) scores (entropy, mutual information, variation ratio, …).
        correct: (N,) bools, True where the prediction was right.
        bins: histogram bins.
        ax, path, title: as :func:`reliability_diagram`.
        xlabel: the score's name.

    Returns:
        The matplotlib Figure.

    Example:
        >>> import numpy as np
        >>> fig = uncertainty_histogram(np.array([0.1, 0.2, 0.9, 1.0]), np.array([True, True, False, False]))
        >>> fig.axes[0].get_xlabel()
        'predictive entropy (nats)'
    """
    u = _array(uncertainty, "uncertainty").astype(np.float64)
    ok = _array(correct, "correct").astype(bool)
    if u.ndim != 1 or ok.shape != u.shape:
        raise ValueError(
            f"uncertainty and correct must both have shape (N,), got {u.shape} and {ok.shape}"
        )
    fig, ax = _figure_for(ax, (5.5, 3.5))
    edges = np.histogram_bin_edges(u, bins=bins)
    ax.hist(u[ok], bins=edges, alpha=0.6, density=True, label=f"right ({ok.sum()})")
    ax.hist(u[~ok], bins=edges, alpha=0.6, density=True, label=f"wrong ({(~ok).sum()})")
    label = ""
    if ok.any() and (~ok).any():
        label = f" — AUROC {misclassification_auroc(u, ok):.3f}"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title((title or "Uncertainty of right and wrong predictions") + label)
    ax.legend(fontsize=8)
    _save(fig, path)
    return fig


def misclassification_auroc(uncertainty: object, correct: object) -> float:
    """AUROC of ``uncertainty`` as a detector of misclassified inputs (1.0: every wrong prediction
    is more uncertain than every right one; 0.5: no better than chance).

    Example:
        >>> import numpy as np
        >>> misclassification_auroc(np.array([0.1, 0.4, 0.9, 0.3]), np.array([True, True, False, False]))
        0.75
    """
    from sklearn.metrics import roc_auc_score

    u = _array(uncertainty, "uncertainty").astype(np.float64)
    ok = _array(correct, "correct").astype(bool)
    if u.ndim != 1 or ok.shape != u.shape:
        raise ValueError(
            f"uncertainty and correct must both have shape (N,), got {u.shape} and {ok.shape}"
        )
    if ok.all() or (~ok).all():
        raise ValueError("misclassification AUROC needs both right and wrong predictions")
    return float(roc_auc_score(~ok, u))


def weight_scaling_gap(sample_logits: object, weight_scaled_logits: object) -> dict[str, float]:
    r"""How far weight-scaling inference is from MC averaging, per input, averaged over inputs.

    With p_t = softmax(z_t) the MC samples and q = softmax(z_ws) the weight-scaled prediction:

    - ``tv_arithmetic``: mean total variation ½ Σ_c |p̄_c − q_c| between MC's arithmetic mean and q;
    - ``kl_arithmetic``: mean KL(p̄ ‖ q);
    - ``tv_geometric``: total variation between q and the normalised geometric mean of the samples,
      softmax((1/T) Σ_t log p_t) — what weight scaling approximates (exactly, in expectation, for
      dropout on a softmax layer's input only);
    - ``agreement``: fraction of inputs where argmax p̄ = argmax q.

    Args:
        sample_logits: (T, N, C) MC logits.
        weight_scaled_logits: (N, C) logits of the deterministic (eval-mode) model.

    Example:
        >>> import numpy as np
        >>> z = np.array([[[2.0, 0.0]], [[0.0, 2.0]]])
        >>> gap = weight_scaling_gap(z, np.array([[1.0, 1.0]]))
        >>> round(gap["tv_arithmetic"], 12), round(gap["tv_geometric"], 12), gap["agreement"]
        (0.0, 0.0, 1.0)
    """
    p = _samples(sample_logits, True, "sample_logits")
    z = _array(weight_scaled_logits, "weight_scaled_logits").astype(np.float64)
    if z.shape != p.shape[1:]:
        raise ValueError(f"weight_scaled_logits must have shape {p.shape[1:]}, got {z.shape}")
    q = np.exp(z - z.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    mean = p.mean(0)
    log_geo = np.log(np.clip(p, _EPS, None)).mean(0)
    geo = np.exp(log_geo - log_geo.max(-1, keepdims=True))
    geo /= geo.sum(-1, keepdims=True)
    kl = (mean * (np.log(np.clip(mean, _EPS, None)) - np.log(np.clip(q, _EPS, None)))).sum(-1)
    return {
        "tv_arithmetic": float(0.5 * np.abs(mean - q).sum(-1).mean()),
        "kl_arithmetic": float(kl.mean()),
        "tv_geometric": float(0.5 * np.abs(geo - q).sum(-1).mean()),
        "agreement": float((mean.argmax(-1) == q.argmax(-1)).mean()),
    }


def classification_metrics(probs: object, labels: object, n_bins: int = 15) -> dict[str, float]:
    """Accuracy, NLL, Brier score and ECE of (N, C) probabilities, as plain floats.

    Example:
        >>> import numpy as np
        >>> m = classification_metrics(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1]))
        >>> m["accuracy"], round(m["nll"], 4)
        (1.0, 0.1643)
    """
    p = _probs(probs)
    y = _labels(labels, p.shape[0], p.shape[1])
    return {
        "accuracy": float((p.argmax(-1) == y).mean()),
        "nll": nll(p, y),
        "brier": brier_score(p, y),
        "ece": expected_calibration_error(p, y, n_bins),
    }


def evaluate_mc_classifier(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: object,
    T: int = 50,
    *,
    seed: int | None = 0,
    n_bins: int = 15,
    **predict_kwargs: object,
) -> dict[str, object]:
    """MC dropout against weight scaling on one labelled set, in one call.

    Returns a dict with ``mc`` and ``weight_scaling`` (each :func:`classification_metrics`, plus
    the AUROC of predictive entropy for misclassification), ``gap`` (:func:`weight_scaling_gap`),
    and the per-input arrays ``mc_probs``, ``ws_probs``, ``entropy``, ``mutual_information``,
    ``correct`` for plots.

    Example:
        >>> import torch, dropkit
        >>> net = dropkit.MLP([4, 16, 3], p=0.3)
        >>> x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
        >>> report = evaluate_mc_classifier(net, x, y, T=8)
        >>> sorted(report["mc"]) == ["accuracy", "auroc_entropy", "brier", "ece", "nll"]
        True
    """
    from dropkit.mc import predict

    logits = predict(model, x, T=T, seed=seed, **predict_kwargs)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ws_logits = model(x)
    finally:
        model.train(was_training)
    u = classification_uncertainty(logits)
    labels = _labels(_array(y, "y"), u.mean.shape[0], u.mean.shape[1])
    ws_probs = torch.softmax(ws_logits.double(), -1).cpu().numpy()
    correct = u.prediction == labels
    ws_correct = ws_probs.argmax(-1) == labels
    ws_entropy = _entropy(ws_probs)

    def with_auroc(
        metrics: dict[str, float], score: np.ndarray, right: np.ndarray
    ) -> dict[str, float]:
        metrics["auroc_entropy"] = (
            misclassification_auroc(score, right)
            if right.any() and (~right).any()
            else float("nan")
        )
        return metrics

    return {
        "mc": with_auroc(classification_metrics(u.mean, labels, n_bins), u.entropy, correct),
        "weight_scaling": with_auroc(
            classification_metrics(ws_probs, labels, n_bins), ws_entropy, ws_correct
        ),
        "gap": weight_scaling_gap(logits, ws_logits),
        "mc_probs": u.mean,
        "ws_probs": ws_probs,
        "entropy": u.entropy,
        "mutual_information": u.mutual_information,
        "correct": correct,
    }
