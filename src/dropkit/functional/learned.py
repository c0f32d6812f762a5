r"""Functional forms of the dropout variants whose rate is learned: the maths lives here.

- Concrete dropout (Gal, Hron & Kendall 2017, "Concrete Dropout", NeurIPS): the Bernoulli mask is
  relaxed to a continuous Concrete (relaxed Bernoulli) variable so the drop rate p gets a gradient;
  :func:`relaxed_bernoulli_mask`, :func:`concrete_dropout`, :func:`concrete_dropout_regularizer`,
  :func:`concrete_regularizer_weights`.
- Variational (Gaussian) dropout (Kingma, Salimans & Welling 2015, "Variational Dropout and the
  Local Reparameterization Trick", NeurIPS): multiplicative noise N(1, α) with α learned, the local
  reparameterisation for Linear and the paper's KL approximation; :func:`variational_dropout`,
  :func:`variational_linear`, :func:`variational_dropout_kl`.
- Sparse variational dropout (Molchanov, Ashukha & Vetrov 2017, "Variational Dropout Sparsifies
  Deep Neural Networks", ICML): one log σ² per weight, the additive-noise reparameterisation, the
  paper's KL approximation and pruning at log α > 3; :func:`sparse_variational_log_alpha`,
  :func:`sparse_variational_linear`, :func:`sparse_variational_conv2d`,
  :func:`sparse_variational_dropout_kl`, :func:`elbo_loss`.
- Standout / adaptive dropout (Ba & Frey 2013, "Adaptive dropout for training deep neural
  networks", NeurIPS): keep probabilities computed from the activations; :func:`standout_keep_prob`,
  :func:`standout`.

Noise: these rules need the noise itself (the Concrete mask is a continuous function of a uniform
u and p, the Gaussian variants need normal noise, Standout compares u with a per-unit keep
probability), so they go through :mod:`dropkit.noise` rather than the Bernoulli mask path. The
noise is counter-based like the masks: one seed per call from torch's generator (``generator=``
for reproducibility, salted per data-parallel rank), the same noise in eager and compiled code
and on every device, and backward regenerates it from the seed instead of storing it.
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from dropkit import noise as _noise
from dropkit._validate import check_float_tensor, check_positive_int, check_real, check_training

__all__ = [
    "relaxed_bernoulli_mask",
    "concrete_dropout",
    "concrete_dropout_regularizer",
    "concrete_regularizer_weights",
    "variational_dropout",
    "variational_linear",
    "variational_dropout_kl",
    "sparse_variational_log_alpha",
    "sparse_variational_linear",
    "sparse_variational_conv2d",
    "sparse_variational_dropout_kl",
    "elbo_loss",
    "standout_keep_prob",
    "standout",
    "KINGMA_C1",
    "KINGMA_C2",
    "KINGMA_C3",
    "MOLCHANOV_K1",
    "MOLCHANOV_K2",
    "MOLCHANOV_K3",
    "LOG_ALPHA_CLAMP",
]

# Kingma, Salimans & Welling 2015, eq. (10): −KL ≈ const + 0.5 log α + c1 α + c2 α² + c3 α³, α ≤ 1.
KINGMA_C1 = 1.16145124
KINGMA_C2 = -1.50204118
KINGMA_C3 = 0.58629921
# Molchanov, Ashukha & Vetrov 2017, eq. (14): −KL ≈ k1 σ(k2 + k3 log α) − 0.5 log(1 + 1/α) − k1.
MOLCHANOV_K1 = 0.63576
MOLCHANOV_K2 = 1.87320
MOLCHANOV_K3 = 1.48695
# Molchanov et al.'s reference code clamps log α to [−10, 10]: beyond it the KL is flat to float
# precision and log θ² of a weight at 0 would be −inf.
LOG_ALPHA_CLAMP = 10.0
# Variance floor in the local reparameterisation: sqrt has an infinite gradient at 0.
VAR_EPS = 1e-8


# --------------------------------------------------------------------------------------------------
# argument checks shared by the functions below


def _as_open_probability(p: object, name: str, like: torch.Tensor) -> torch.Tensor:
    """p as a tensor (kept differentiable when it is one) after checking every entry is in (0, 1)."""
    if isinstance(p, torch.Tensor):
        if not p.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor or a number, got dtype {p.dtype}"
            )
        # Eager mode checks the values; a graph capture (torch.compile, torch.export, the dynamo
        # ONNX exporter) cannot branch on them (a data-dependent branch), so there it is skipped:
        # the rates a module passes are sigmoids of a parameter, in (0, 1) by construction.
        if not torch.compiler.is_compiling():
            bad = ~((p.detach() > 0) & (p.detach() < 1))
            if bool(bad.any()):
                raise ValueError(
                    f"{name} must lie in the open interval (0, 1), got {p[bad].flatten()[0].item()!r}"
                )
        return p
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(
            f"{name} must be a number in (0, 1) or a tensor, got {p!r} of type {type(p).__name__}"
        )
    if not 0.0 < float(p) < 1.0:
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {p!r}")
    return torch.tensor(float(p), dtype=like.dtype, device=like.device)


def _check_log_alpha(log_alpha: object, name: str = "log_alpha") -> torch.Tensor:
    if not isinstance(log_alpha, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(log_alpha).__name__}")
    if not log_alpha.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {log_alpha.dtype}")
    return log_alpha


def _check_broadcasts(t: torch.Tensor, shape: torch.Size, name: str, target: str) -> None:
    try:
        torch.broadcast_shapes(t.shape, shape)
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} does not broadcast to the {target}'s shape {tuple(shape)}"
        ) from None
    if torch.broadcast_shapes(t.shape, shape) != shape:
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} would enlarge the {target}'s shape {tuple(shape)}"
        )


def _check_linear(input: torch.Tensor, weight: object, bias: object, what: str) -> torch.Tensor:
    check_float_tensor(input)
    weight = check_float_tensor(weight, "weight")
    if weight.dim() != 2:
        raise ValueError(
            f"{what} expects weight of rank 2 (out_features, in_features), got shape {tuple(weight.shape)}"
        )
    if input.dim() < 1 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{what}: input's last dim must equal in_features={weight.shape[1]}, got input shape {tuple(input.shape)}"
        )
    if bias is not None:
        check_float_tensor(bias, "bias")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(
                f"{what}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}"
            )
    return weight


# --------------------------------------------------------------------------------------------------
# Concrete dropout


def relaxed_bernoulli_mask(
    p: float | torch.Tensor,
    shape: tuple[int, ...] | torch.Size,
    temperature: float = 0.1,
    *,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""A relaxed (Concrete) Bernoulli keep mask whose gradient reaches the drop rate ``p``.

    Gal, Hron & Kendall 2017, sec. 3: with u ~ U(0, 1) and temperature t,

        z̃ = sigmoid((log p − log(1 − p) + log u − log(1 − u)) / t)     (relaxed "dropped")

    and the returned keep mask is 1 − z̃. As t → 0, z̃ → Bernoulli(p); at t = 0.1 (the paper's value)
    almost every entry is within 0.01 of 0 or 1, and E[z̃] ≈ p. ``eps`` keeps the logs finite
    (the reference code adds 1e-7 inside each log).

    Args:
        p: drop rate in (0, 1), a number or a tensor (broadcast against ``shape``; keep it a tensor
            to learn it).
        shape: the mask's shape.
        temperature: t > 0.
        eps: added inside each log, >= 0.
        dtype, device: of the uniform noise when ``p`` is a number.
        generator: torch generator for the uniform noise.

    Returns:
        A tensor of ``shape`` with values in (0, 1), differentiable in ``p``.

    Example:
        >>> import torch, dropkit
        >>> g = torch.Generator().manual_seed(0)
        >>> m = dropkit.functional.relaxed_bernoulli_mask(0.3, (10_000,), generator=g)
        >>> round(1 - m.mean().item(), 1)
        0.3
    """
    like = p if isinstance(p, torch.Tensor) else torch.empty((), dtype=dtype, device=device)
    p = _as_open_probability(p, "p", like)
    temperature = check_real(temperature, "temperature", positive=True)
    eps = check_real(eps, "eps", nonneg=True)
    shape = tuple(int(s) for s in shape)
    _check_broadcasts(p, torch.Size(shape), "p", "mask")
    u = _noise.uniform(shape, dtype=p.dtype, device=p.device, generator=generator)
    logit = (
        torch.log(p + eps)
        - torch.log(1.0 - p + eps)
        + torch.log(u + eps)
        - torch.log(1.0 - u + eps)
    )
    return 1.0 - torch.sigmoid(logit / temperature)


def concrete_dropout(
    input: torch.Tensor,
    p: float | torch.Tensor,
    training: bool = True,
    temperature: float = 0.1,
    *,
    eps: float = 1e-7,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Concrete dropout (Gal, Hron & Kendall 2017): dropout with a relaxed mask, so p is learnable.

    Training: y = x ⊙ m̃ / (1 − p), m̃ = :func:`relaxed_bernoulli_mask` (p, x.shape, t) — one mask
    entry per element, inverted scaling by 1/(1 − p) as in the paper's code. Both y and ∂y/∂p are
    defined, so p (usually sigmoid of a learned logit) is trained by backprop together with
    :func:`concrete_dropout_regularizer`. Eval: y = x (the expectation under inverted scaling);
    use Monte-Carlo dropout (train-mode sampling) for the paper's predictive uncertainty.

    Args:
        input: a floating-point tensor, any shape.
        p: drop rate in (0, 1): a number or a tensor broadcastable to ``input``.
        training: apply the training rule.
        temperature: relaxation temperature t > 0 (0.1 in the paper).
        eps: added inside each log of the relaxation.
        generator: torch generator for the uniform noise.

    Shape:
        input any shape; output the same.

    Example:
        >>> import torch, dropkit
        >>> p = torch.tensor(0.2, requires_grad=True)
        >>> y = dropkit.functional.concrete_dropout(torch.ones(1000), p)
        >>> y.sum().backward()
        >>> p.grad is not None
        True
    """
    training = check_training(training)
    check_float_tensor(input)
    p = _as_open_probability(p, "p", input)
    _check_broadcasts(p, input.shape, "p", "input")
    if not training:
        return input
    temperature = check_real(temperature, "temperature", positive=True)
    eps = check_real(eps, "eps", nonneg=True)
    # relaxed_bernoulli_mask's maths in one op whose backward regenerates u from the seed.
    return _noise.concrete_dropout(input, p, temperature, eps, generator)


def concrete_dropout_regularizer(
    p: float | torch.Tensor,
    weight_sq_sum: float | torch.Tensor,
    input_dim: int,
    weight_regularizer: float,
    dropout_regularizer: float,
) -> torch.Tensor:
    r"""The Concrete dropout regulariser of one layer (Gal, Hron & Kendall 2017, eq. 3 and code).

        R = weight_regularizer · ‖W‖² / (1 − p) + dropout_regularizer · K · (p log p + (1 − p) log(1 − p))

    with K = ``input_dim`` (the number of units dropped per example). The first term is the KL of
    the weights' prior (l²/2 scaled) seen through the 1/(1 − p) rescaling; the second is the negative
    entropy of Bernoulli(p), which pulls p towards 0.5. Their balance against the data term picks p:
    with less data (larger l²/N and 2/(τN)) the regulariser wins and p grows.

    Args:
        p: drop rate in (0, 1), a number or a 0-d tensor (differentiable).
        weight_sq_sum: ‖W‖², the sum of squares of the following layer's parameters.
        input_dim: K, the number of inputs the mask covers (per example), >= 1.
        weight_regularizer: l²/N, >= 0 (:func:`concrete_regularizer_weights`).
        dropout_regularizer: 2/(τN), >= 0.

    Example:
        >>> import torch, dropkit
        >>> r = dropkit.functional.concrete_dropout_regularizer(0.5, 4.0, 10, 1e-2, 1e-1)
        >>> round(r.item(), 4)  # 1e-2·4/0.5 + 1e-1·10·(−log 2)
        -0.6131
    """
    like = p if isinstance(p, torch.Tensor) else torch.empty(())
    p = _as_open_probability(p, "p", like)
    if p.numel() != 1:
        raise ValueError(
            f"p must be a single rate for the regulariser, got a tensor of shape {tuple(p.shape)}"
        )
    input_dim = check_positive_int(input_dim, "input_dim")
    weight_regularizer = check_real(weight_regularizer, "weight_regularizer", nonneg=True)
    dropout_regularizer = check_real(dropout_regularizer, "dropout_regularizer", nonneg=True)
    if isinstance(weight_sq_sum, torch.Tensor):
        if weight_sq_sum.numel() != 1:
            raise ValueError(
                f"weight_sq_sum must be a scalar, got a tensor of shape {tuple(weight_sq_sum.shape)}"
            )
    else:
        weight_sq_sum = check_real(weight_sq_sum, "weight_sq_sum", nonneg=True)
    p = p.reshape(())
    weight_term = weight_regularizer * weight_sq_sum / (1.0 - p)
    neg_entropy = p * torch.log(p) + (1.0 - p) * torch.log1p(-p)
    return weight_term + dropout_regularizer * input_dim * neg_entropy


def concrete_regularizer_weights(
    n_data: int, length_scale: float = 1e-2, precision: float = 1.0
) -> tuple[float, float]:
    r"""The paper's regulariser weights from the prior length-scale l, model precision τ and N.

    Gal, Hron & Kendall 2017 (after Gal & Ghahramani 2016): weight_regularizer = l² / N (the prior
    length-scale, scaled by the data-set size) and dropout_regularizer = 2 / (τ N). Both shrink as N
    grows, so more data means a smaller learned p.

    Args:
        n_data: N, the number of training examples, >= 1.
        length_scale: l > 0.
        precision: τ > 0 (the inverse observation-noise variance of a regression model).

    Returns:
        (weight_regularizer, dropout_regularizer).

    Example:
        >>> import dropkit
        >>> wr, dr = dropkit.functional.concrete_regularizer_weights(100, 0.1, precision=2.0)
        >>> round(wr, 12), dr
        (0.0001, 0.01)
    """
    n_data = check_positive_int(n_data, "n_data")
    length_scale = check_real(length_scale, "length_scale", positive=True)
    precision = check_real(precision, "precision", positive=True)
    return length_scale**2 / n_data, 2.0 / (precision * n_data)


# --------------------------------------------------------------------------------------------------
# Variational (Gaussian) dropout, Kingma et al. 2015


def variational_dropout(
    input: torch.Tensor,
    log_alpha: torch.Tensor,
    training: bool = True,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Gaussian dropout with a learnable variance (Kingma, Salimans & Welling 2015, sec. 3.3).

    Training: y = x ⊙ ξ, ξ ~ N(1, α), α = exp(min(log α, 0)) — the paper constrains α ≤ 1, where its
    KL approximation holds (α = p/(1 − p) matches Bernoulli dropout with p ≤ 0.5). The noise is
    reparameterised as ξ = 1 + √α ε, ε ~ N(0, 1), so α gets a gradient. Eval: y = x (E[ξ] = 1).

    Args:
        input: a floating-point tensor.
        log_alpha: log α, broadcastable to ``input`` without enlarging it: a scalar (one α per
            layer) or one entry per unit (e.g. shape (C,) for an (N, C) input).
        training: apply the training rule.
        generator: torch generator for ε.

    Shape:
        input any shape; output the same.

    Example:
        >>> import torch, dropkit
        >>> log_alpha = torch.zeros((), requires_grad=True)
        >>> y = dropkit.functional.variational_dropout(torch.ones(4, 3), log_alpha)
        >>> y.shape
        torch.Size([4, 3])
    """
    training = check_training(training)
    check_float_tensor(input)
    log_alpha = _check_log_alpha(log_alpha)
    _check_broadcasts(log_alpha, input.shape, "log_alpha", "input")
    if not training:
        return input
    std = torch.exp(0.5 * log_alpha.clamp(max=0.0))
    return _noise.gaussian_noise_mul(input, std, generator)


def variational_linear(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    log_alpha: torch.Tensor,
    training: bool = True,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""A Linear layer with variational Gaussian dropout, by the local reparameterisation trick.

    Kingma, Salimans & Welling 2015, sec. 2.3 and 3.2: with weight noise w_ji = θ_ji ξ_ji,
    ξ ~ N(1, α), each pre-activation is Gaussian given the input, so it is sampled directly:

        γ = x θᵀ + b,   δ = (x ⊙ x)(α ⊙ θ ⊙ θ)ᵀ,   y = γ + √δ ⊙ ε,  ε ~ N(0, 1)

    with one ε per example and output unit — lower-variance gradients than sampling ξ, and no
    per-example weight matrix. α = exp(min(log α, 0)) (α ≤ 1, as in the paper). ``log_alpha`` is
    a scalar (one α for the layer), shape (in_features,) (one α per input unit, the paper's Gaussian
    dropout on the layer's inputs with independent noise per weight, its "variational (B)"), or
    shape (out_features, in_features). Eval: y = x θᵀ + b.

    Args:
        input: (*, in_features).
        weight: θ, (out_features, in_features).
        bias: (out_features,) or None.
        log_alpha: log α, broadcastable to ``weight``'s shape.
        training: sample (True) or return the mean (False).
        generator: torch generator for ε.

    Shape:
        input (*, in_features); output (*, out_features).

    Example:
        >>> import torch, dropkit
        >>> w = torch.randn(3, 5)
        >>> y = dropkit.functional.variational_linear(torch.randn(2, 5), w, None, torch.tensor(-1.0))
        >>> y.shape
        torch.Size([2, 3])
    """
    training = check_training(training)
    weight = _check_linear(input, weight, bias, "variational_linear")
    log_alpha = _check_log_alpha(log_alpha)
    _check_broadcasts(log_alpha, weight.shape, "log_alpha", "weight")
    mean = F.linear(input, weight, bias)
    if not training:
        return mean
    alpha = torch.exp(log_alpha.clamp(max=0.0))
    var = F.linear(input * input, alpha * weight * weight)
    return _noise.gaussian_reparam(mean, var, VAR_EPS, generator)


def variational_dropout_kl(log_alpha: torch.Tensor) -> torch.Tensor:
    r"""Kingma et al.'s approximation of KL(q(w) ‖ p(w)) under the log-uniform prior, per entry.

    Kingma, Salimans & Welling 2015, eq. (10), with α = exp(min(log α, 0)) (valid for α ≤ 1):

        −KL ≈ const + 0.5 log α + c1 α + c2 α² + c3 α³,
        c1 = 1.16145124, c2 = −1.50204118, c3 = 0.58629921.

    The constant is dropped (it has no gradient), so the returned KL = −(0.5 log α + c1 α + c2 α²
    + c3 α³) is defined up to an additive constant and may be negative. It falls as α grows: more
    noise, less information in the weights.

    Args:
        log_alpha: log α, any shape.

    Returns:
        KL per entry, the shape of ``log_alpha``; sum it over the weights it applies to.

    Example:
        >>> import torch, dropkit
        >>> kl = dropkit.functional.variational_dropout_kl(torch.tensor([-4.0, 0.0]))
        >>> bool(kl[0] > kl[1])
        True
    """
    log_alpha = _check_log_alpha(log_alpha).clamp(max=0.0)
    alpha = torch.exp(log_alpha)
    neg_kl = 0.5 * log_alpha + alpha * (KINGMA_C1 + alpha * (KINGMA_C2 + alpha * KINGMA_C3))
    return -neg_kl


# --------------------------------------------------------------------------------------------------
# Sparse variational dropout, Molchanov et al. 2017


def _check_log_sigma2(log_sigma2: object, weight: torch.Tensor) -> None:
    _check_log_alpha(log_sigma2, "log_sigma2")
    if log_sigma2.shape != weight.shape:
        raise ValueError(
            f"log_sigma2 must have weight's shape {tuple(weight.shape)}, got {tuple(log_sigma2.shape)}"
        )


def sparse_variational_log_alpha(weight: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
    r"""log α = log σ² − log θ² per weight (Molchanov et al. 2017, sec. 4.1), clamped to [−10, 10].

    With the additive reparameterisation w = θ + σ ε, the multiplicative form is w = θ (1 + √α ε),
    α = σ²/θ². ``1e-8`` inside the log keeps a weight at exactly 0 finite.

    Example:
        >>> import torch, dropkit
        >>> w = torch.tensor([1.0, 0.1]); ls2 = torch.log(torch.tensor([1e-2, 1e-2]))
        >>> dropkit.functional.sparse_variational_log_alpha(w, ls2).round(decimals=3)
        tensor([-4.6050, -0.0000])
    """
    weight = check_float_tensor(weight, "weight")
    _check_log_sigma2(log_sigma2, weight)
    return clamped_log_alpha(weight, log_sigma2)


def clamped_log_alpha(
    weight: torch.Tensor, log_sigma2: torch.Tensor, bound: float = LOG_ALPHA_CLAMP
) -> torch.Tensor:
    """:func:`sparse_variational_log_alpha` without the argument checks (TorchScript compiles it;
    the bound is an argument because TorchScript cannot read a global float)."""
    log_alpha = log_sigma2 - torch.log(weight * weight + 1e-8)
    return log_alpha.clamp(-bound, bound)


def sparse_variational_linear(
    input: torch.Tensor,
    weight: torch.Tensor,
    log_sigma2: torch.Tensor,
    bias: torch.Tensor | None = None,
    training: bool = True,
    threshold: float = 3.0,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Linear with sparse variational dropout (Molchanov, Ashukha & Vetrov 2017).

    Each weight has q(w) = N(θ, σ²) with σ² = exp(log σ²) its own parameter (the additive-noise
    reparameterisation, sec. 4.2: the gradient in θ no longer carries the noise's variance).
    Training samples the pre-activations by the local reparameterisation trick:

        γ = x θᵀ + b,   δ = (x ⊙ x) σ²ᵀ,   y = γ + √δ ⊙ ε,  ε ~ N(0, 1).

    Eval uses the pruned mean: y = x (θ ⊙ [log α < threshold])ᵀ + b, log α = log σ² − log θ²
    (weights with log α > 3, i.e. dropout rate α/(1 + α) > 0.95, are zeroed, sec. 4.3).

    Args:
        input: (*, in_features).
        weight: θ, (out_features, in_features).
        log_sigma2: log σ², the shape of ``weight``.
        bias: (out_features,) or None (deterministic, not pruned).
        training: sample (True) or use the pruned mean (False).
        threshold: the log α above which a weight is pruned in eval.
        generator: torch generator for ε.

    Shape:
        input (*, in_features); output (*, out_features).

    Example:
        >>> import torch, dropkit
        >>> w = torch.tensor([[1.0, 1e-3]]); ls2 = torch.full((1, 2), -6.0)
        >>> x = torch.tensor([[2.0, 5.0]])
        >>> dropkit.functional.sparse_variational_linear(x, w, ls2, training=False)
        tensor([[2.]])
    """
    training = check_training(training)
    weight = _check_linear(input, weight, bias, "sparse_variational_linear")
    threshold = check_real(threshold, "threshold")
    _check_log_sigma2(log_sigma2, weight)
    if not training:
        log_alpha = sparse_variational_log_alpha(weight, log_sigma2)
        return F.linear(input, weight * (log_alpha < threshold).to(weight.dtype), bias)
    mean = F.linear(input, weight, bias)
    var = F.linear(input * input, torch.exp(log_sigma2))
    return _noise.gaussian_reparam(mean, var, VAR_EPS, generator)


def sparse_variational_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    log_sigma2: torch.Tensor,
    bias: torch.Tensor | None = None,
    training: bool = True,
    threshold: float = 3.0,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Conv2d with sparse variational dropout (Molchanov et al. 2017), local reparameterisation.

    The same rule as :func:`sparse_variational_linear` with convolutions: training
    y = conv(x, θ) + b + √(conv(x ⊙ x, σ²)) ⊙ ε, one ε per output element; eval
    y = conv(x, θ ⊙ [log α < threshold]) + b. (Zero padding only; :class:`dropkit.Conv2dSVDO` supports
    every ``padding_mode``.)

    Args:
        input: (N, C_in, H, W) or (C_in, H, W).
        weight: θ, (C_out, C_in/groups, kH, kW).
        log_sigma2: log σ², the shape of ``weight``.
        bias: (C_out,) or None.
        training, threshold, generator: as in :func:`sparse_variational_linear`.
        stride, padding, dilation, groups: as in :func:`torch.nn.functional.conv2d`.

    Shape:
        input (N, C_in, H, W); output (N, C_out, H_out, W_out).

    Example:
        >>> import torch, dropkit
        >>> w = torch.randn(4, 3, 3, 3); ls2 = torch.full_like(w, -8.0)
        >>> dropkit.functional.sparse_variational_conv2d(torch.randn(2, 3, 8, 8), w, ls2).shape
        torch.Size([2, 4, 6, 6])
    """
    training = check_training(training)
    check_float_tensor(input)
    weight = check_float_tensor(weight, "weight")
    if weight.dim() != 4:
        raise ValueError(
            f"sparse_variational_conv2d expects a 4-D weight, got shape {tuple(weight.shape)}"
        )
    if input.dim() not in (3, 4):
        raise ValueError(
            f"sparse_variational_conv2d expects input of rank 3-D or 4-D, got a {input.dim()}-D tensor of shape {tuple(input.shape)}"
        )
    threshold = check_real(threshold, "threshold")
    _check_log_sigma2(log_sigma2, weight)
    conv = lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups)  # noqa: E731
    if not training:
        log_alpha = sparse_variational_log_alpha(weight, log_sigma2)
        return conv(input, weight * (log_alpha < threshold).to(weight.dtype), bias)
    mean = conv(input, weight, bias)
    var = conv(input * input, torch.exp(log_sigma2), None)
    return _noise.gaussian_reparam(mean, var, VAR_EPS, generator)


def sparse_variational_dropout_kl(log_alpha: torch.Tensor) -> torch.Tensor:
    r"""Molchanov et al.'s approximation of KL(q(w) ‖ p(w)) under the log-uniform prior, per entry.

    Molchanov, Ashukha & Vetrov 2017, eq. (14), accurate for every α (not only α ≤ 1):

        −KL ≈ k1 σ(k2 + k3 log α) − 0.5 log(1 + 1/α) − k1,
        k1 = 0.63576, k2 = 1.87320, k3 = 1.48695,

    with σ the logistic sigmoid. The constant −k1 makes KL → 0 as α → ∞, so the returned KL is >= 0
    and falls monotonically in α. log(1 + 1/α) is computed as softplus(−log α), stable for any log α.

    Args:
        log_alpha: log α, any shape.

    Returns:
        KL per entry, the shape of ``log_alpha``.

    Example:
        >>> import torch, dropkit
        >>> kl = dropkit.functional.sparse_variational_dropout_kl(torch.tensor([-8.0, 0.0, 8.0]))
        >>> [round(v, 3) for v in kl.tolist()]
        [4.636, 0.431, 0.0]
    """
    log_alpha = _check_log_alpha(log_alpha)
    neg_kl = (
        MOLCHANOV_K1 * torch.sigmoid(MOLCHANOV_K2 + MOLCHANOV_K3 * log_alpha)
        - 0.5 * F.softplus(-log_alpha)
        - MOLCHANOV_K1
    )
    return -neg_kl


def elbo_loss(
    nll: torch.Tensor, kl: torch.Tensor | float, n_data: int, kl_weight: float = 1.0
) -> torch.Tensor:
    r"""The negative SGVLB of Molchanov et al. 2017 (eq. 3): N · mean NLL + kl_weight · KL.

    ``nll`` is the mini-batch mean negative log-likelihood, so N · nll is an unbiased estimate of
    the data term over the whole training set; ``kl`` is the KL summed over every variational
    weight (:func:`dropkit.kl_divergence`). ``kl_weight`` < 1 is the KL warm-up (Molchanov et al.
    raise it linearly from 0 to 1 over the first epochs; :class:`dropkit.ELBOLoss` does that).

    Args:
        nll: a scalar tensor, the mean NLL of the mini-batch.
        kl: the total KL (scalar tensor or number).
        n_data: N, the training-set size, >= 1.
        kl_weight: the KL's weight, >= 0.

    Example:
        >>> import torch, dropkit
        >>> dropkit.functional.elbo_loss(torch.tensor(0.5), torch.tensor(10.0), 100, 0.5)
        tensor(55.)
    """
    if not isinstance(nll, torch.Tensor) or nll.numel() != 1:
        raise TypeError(f"nll must be a scalar tensor (the mean NLL), got {nll!r}")
    n_data = check_positive_int(n_data, "n_data")
    kl_weight = check_real(kl_weight, "kl_weight", nonneg=True)
    return nll.reshape(()) * n_data + kl_weight * kl


# --------------------------------------------------------------------------------------------------
# Standout, Ba & Frey 2013


def standout_keep_prob(
    pre_activation: torch.Tensor,
    alpha: float | torch.Tensor = 1.0,
    beta: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    r"""Standout's keep probability π = sigmoid(α · s + β) from the standout network's output s.

    Ba & Frey 2013, eq. (2)-(3): s = W_s a + b_s is computed from the layer's input activations a
    by the standout network; in the paper's tied form W_s = W, b_s = b (the layer's own
    pre-activation) and α, β scale and shift it, so strongly driven units are kept more often.

    Example:
        >>> import torch, dropkit
        >>> dropkit.functional.standout_keep_prob(torch.tensor([0.0, 100.0]), alpha=1.0, beta=0.0)
        tensor([0.5000, 1.0000])
    """
    check_float_tensor(pre_activation, "pre_activation")
    if not isinstance(alpha, torch.Tensor):
        alpha = check_real(alpha, "alpha")
    if not isinstance(beta, torch.Tensor):
        beta = check_real(beta, "beta")
    return standout_sigmoid(pre_activation, alpha, beta)


def standout_sigmoid(
    pre_activation: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """π = sigmoid(α · s + β) without the checks of :func:`standout_keep_prob` (TorchScript)."""
    return torch.sigmoid(alpha * pre_activation + beta)


def standout(
    input: torch.Tensor,
    keep_prob: torch.Tensor,
    training: bool = True,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Standout (adaptive dropout, Ba & Frey 2013): drops each unit with its own probability 1 − π.

    Training: y = m ⊙ a, m_j ~ Bernoulli(π_j), no rescaling. Eval: y = π ⊙ a, the expectation
    (the paper's test-time rule). The mask is sampled in the forward pass; in the backward pass
    the gradient reaches π through the local expectation of the mask, as the paper trains the
    standout network ("approximately computing local expectations of binary dropout variables"):

        ∂L/∂a = m ⊙ ∂L/∂y,   ∂L/∂π = a ⊙ ∂L/∂y   (i.e. ∂y/∂π taken from E[y] = π ⊙ a).

    Detach ``keep_prob`` to train the standout network by nothing but the layer's own weights.

    Args:
        input: the activations a, a floating-point tensor.
        keep_prob: π in [0, 1], the shape of ``input`` (or broadcastable to it without enlarging it).
        training: sample (True) or use the expectation (False).
        generator: torch generator for the mask.

    Shape:
        input any shape; output the same.

    Example:
        >>> import torch, dropkit
        >>> a = torch.ones(2, 3); pi = torch.full((2, 3), 0.25)
        >>> dropkit.functional.standout(a, pi, training=False)
        tensor([[0.2500, 0.2500, 0.2500],
                [0.2500, 0.2500, 0.2500]])
    """
    training = check_training(training)
    check_float_tensor(input)
    check_float_tensor(keep_prob, "keep_prob")
    _check_broadcasts(keep_prob, input.shape, "keep_prob", "input")
    if not torch.compiler.is_compiling():  # no data-dependent branch in a captured graph
        kp = keep_prob.detach()
        if bool(((kp < 0) | (kp > 1) | torch.isnan(kp)).any()):
            raise ValueError("keep_prob must lie in [0, 1] everywhere, got values outside it")
    if not training:
        return input * keep_prob
    # π differs per unit and per example, so ops.keep_mask (one scalar rate) cannot draw it: one
    # uniform per element is compared with its own π. The value is m ⊙ a; the gradient in π is
    # the local expectation's (a ⊙ grad), and backward regenerates m from the seed.
    return _noise.standout(input, keep_prob, generator)
