r"""Dropout whose rate is learned: Concrete, variational, sparse variational, Standout.

Papers:

- Gal, Hron & Kendall 2017, "Concrete Dropout" (NeurIPS) — :class:`ConcreteDropout`.
- Kingma, Salimans & Welling 2015, "Variational Dropout and the Local Reparameterization Trick"
  (NeurIPS) — :class:`VariationalDropout`, :class:`VariationalLinear`.
- Molchanov, Ashukha & Vetrov 2017, "Variational Dropout Sparsifies Deep Neural Networks" (ICML) —
  :class:`LinearSVDO`, :class:`Conv2dSVDO`, :func:`sparsity`, :class:`ELBOLoss`.
- Ba & Frey 2013, "Adaptive dropout for training deep neural networks" (NeurIPS) — :class:`Standout`.

Which of them are :class:`~dropkit.layers.base.DropoutBase` modules: those with one drop rate ``p``
whose eval rule leaves the wrapped computation intact — :class:`ConcreteDropout` (p = sigmoid of
its learned logit) and :class:`VariationalDropout` (p = α/(1 + α)). :class:`VariationalLinear`,
:class:`LinearSVDO` and :class:`Conv2dSVDO` are weight layers (subclasses of ``nn.Linear`` /
``nn.Conv2d``) with a noise variance per weight or unit, and :class:`Standout` has a keep probability
per unit and example rather than a rate: none of them has a single ``p`` a scheduler could set, and
removing them (as dropout is removed for inference) would remove the layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dropkit import noise
from dropkit._validate import (
    check_choice,
    check_open_rate,
    check_positive_int,
    check_real,
)
from dropkit.functional import learned as FL
from dropkit.layers.base import DropoutBase, refuse_scripting

__all__ = [
    "ConcreteDropout",
    "concrete_regularization",
    "VariationalDropout",
    "VariationalLinear",
    "LinearSVDO",
    "Conv2dSVDO",
    "kl_divergence",
    "sparsity",
    "ELBOLoss",
    "Standout",
]


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _refuse_scripted_training(training: bool, name: str) -> None:
    if training:
        raise RuntimeError(
            name + " cannot run its training forward under TorchScript (only eval): train in "
            "eager mode or with torch.compile"
        )


# --------------------------------------------------------------------------------------------------
# Concrete dropout


class ConcreteDropout(DropoutBase):
    r"""Concrete dropout around a layer: the drop rate of the layer's input is learned.

    Gal, Hron & Kendall 2017. ``forward(x) = layer(concrete_dropout(x, p))``: in training each input
    element is multiplied by a relaxed Bernoulli keep mask m̃ (temperature t = 0.1) and by 1/(1 − p),

        m̃ = 1 − sigmoid((log p − log(1 − p) + log u − log(1 − u)) / t),   u ~ U(0, 1),

    so the loss is differentiable in p = sigmoid(``p_logit``). Add :meth:`regularization` (or
    :func:`concrete_regularization` over the whole model) to the loss:

        R = weight_regularizer · ‖W‖² / (1 − p) + dropout_regularizer · K · (p log p + (1 − p) log(1 − p))

    with ‖W‖² over the wrapped layer's parameters, K the number of input elements per example, and
    the paper's weight_regularizer = l²/N, dropout_regularizer = 2/(τN)
    (:func:`dropkit.functional.concrete_regularizer_weights`). In eval the input passes
    unchanged (inverted scaling); keep the module in train mode for Monte-Carlo predictions.

    ``p`` reads the current learned rate as a float. Setting ``p`` (a rate scheduler does) resets
    ``p_logit`` to logit(p); p must be in (0, 1). Since p is learned, ``schedulable`` is False and
    :class:`dropkit.DropoutScheduler` skips the module.

    Args:
        layer: the module whose input is dropped (e.g. ``nn.Linear``); its parameters enter ‖W‖².
        p: initial drop rate in (0, 1) (the paper's code starts at 0.1).
        temperature: relaxation temperature t > 0 (0.1).
        weight_regularizer: l²/N, >= 0 (the paper's Keras default 1e-6).
        dropout_regularizer: 2/(τN), >= 0 (the paper's Keras default 1e-5).
        input_dim: K; None takes the number of elements of one example of the last input.
        eps: added inside the logs of the relaxation.

    Shape:
        as the wrapped layer.

    Example:
        >>> import torch, dropkit
        >>> layer = dropkit.ConcreteDropout(torch.nn.Linear(8, 4), p=0.2)
        >>> layer(torch.randn(5, 8)).shape
        torch.Size([5, 4])
        >>> round(layer.p, 6)
        0.2
        >>> layer.regularization().requires_grad
        True
    """

    allow_one = False
    has_scaling = False
    # Its rate is learned: DropoutScheduler skips it (setting p still works, re-initialising it).
    schedulable = False
    __jit_unused_properties__ = ["p", "p_tensor"]

    def __init__(
        self,
        layer: nn.Module,
        p: float = 0.1,
        temperature: float = 0.1,
        weight_regularizer: float = 1e-6,
        dropout_regularizer: float = 1e-5,
        input_dim: int | None = None,
        eps: float = 1e-7,
    ) -> None:
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be an nn.Module, got {type(layer).__name__}")
        temperature = check_real(temperature, "temperature", positive=True)
        weight_regularizer = check_real(weight_regularizer, "weight_regularizer", nonneg=True)
        dropout_regularizer = check_real(dropout_regularizer, "dropout_regularizer", nonneg=True)
        eps = check_real(eps, "eps", nonneg=True)
        if input_dim is not None:
            input_dim = check_positive_int(input_dim, "input_dim")
        super().__init__(p)
        self.layer = layer
        self.temperature = temperature
        self.weight_regularizer = weight_regularizer
        self.dropout_regularizer = dropout_regularizer
        self.input_dim = input_dim
        self.eps = eps
        self._seen_input_dim: int | None = None

    @property
    def p(self) -> float:
        """The current drop rate sigmoid(p_logit), as a float (read-only view of the learned logit)."""
        return float(torch.sigmoid(self.p_logit.detach()).item())

    @p.setter
    def p(self, value: float) -> None:
        logit = _logit(check_open_rate(value, "p", reason="its logit is learned"))
        if "p_logit" not in self._parameters:
            self.p_logit = nn.Parameter(torch.tensor(logit))
        else:
            with torch.no_grad():
                self.p_logit.fill_(logit)

    @property
    def p_tensor(self) -> torch.Tensor:
        """sigmoid(p_logit) as a differentiable 0-d tensor."""
        return torch.sigmoid(self.p_logit)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # eval: the input passes unchanged (inverted scaling)
            _refuse_scripted_training(self.training, "ConcreteDropout")
            return self.layer(input)
        # K = elements of one example; shape-based, so an empty batch (0, K) works as nn.Linear does.
        self._seen_input_dim = math.prod(input.shape[1:]) if input.dim() > 1 else input.numel()
        dropped = FL.concrete_dropout(
            input, self.p_tensor, self.training, self.temperature, eps=self.eps
        )
        return self.layer(dropped)

    def regularization(self) -> torch.Tensor:
        """The paper's regulariser R for this layer (see the class docstring), differentiable."""
        input_dim = self.input_dim if self.input_dim is not None else self._seen_input_dim
        if input_dim is None:
            input_dim = getattr(self.layer, "in_features", None)
        if input_dim is None:
            raise RuntimeError(
                "ConcreteDropout.regularization needs input_dim: pass input_dim=... or call the "
                "module once so it can take it from the input"
            )
        weight_sq_sum = sum((w * w).sum() for w in self.layer.parameters())
        if not isinstance(weight_sq_sum, torch.Tensor):
            weight_sq_sum = torch.zeros((), device=self.p_logit.device)
        return FL.concrete_dropout_regularizer(
            self.p_tensor,
            weight_sq_sum,
            input_dim,
            self.weight_regularizer,
            self.dropout_regularizer,
        )

    def extra_repr(self) -> str:
        return (
            f"p={self.p:.4g}, temperature={self.temperature}, weight_regularizer={self.weight_regularizer:g}, "
            f"dropout_regularizer={self.dropout_regularizer:g}"
        )


def concrete_regularization(model: nn.Module) -> torch.Tensor:
    """The sum of :meth:`ConcreteDropout.regularization` over every ConcreteDropout in ``model``.

    Example:
        >>> import torch, dropkit
        >>> net = torch.nn.Sequential(dropkit.ConcreteDropout(torch.nn.Linear(3, 2)), torch.nn.ReLU())
        >>> _ = net(torch.randn(4, 3))
        >>> dropkit.concrete_regularization(net).shape
        torch.Size([])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    terms = [m.regularization() for m in model.modules() if isinstance(m, ConcreteDropout)]
    if not terms:
        raise ValueError(
            f"concrete_regularization: {type(model).__name__} holds no ConcreteDropout module"
        )
    return torch.stack(terms).sum()


# --------------------------------------------------------------------------------------------------
# Variational dropout, Kingma et al. 2015


class VariationalDropout(DropoutBase):
    r"""Gaussian dropout with a learned variance α (Kingma, Salimans & Welling 2015).

    Training: y = x ⊙ ξ, ξ ~ N(1, α), α = exp(log α) ≤ 1 (clamped, as in the paper), one α for the
    layer (``num_features=None``) or one per unit along the last dim. Eval: y = x. Add
    :meth:`kl` (× the fan-out of the next layer, for the paper's per-weight count; or use
    :class:`VariationalLinear`, which counts it) to the loss, e.g. through :class:`ELBOLoss`.

    ``p`` is the equivalent Bernoulli rate p = α/(1 + α) (the mean over units when per unit); setting
    it sets every log α to log(p/(1 − p)). Because α ≤ 1, p must be in (0, 0.5]. The rate is
    learned, so :class:`dropkit.DropoutScheduler` skips the module (``schedulable`` is False).

    Args:
        p: initial rate in (0, 0.5] (α = p/(1 − p)).
        num_features: None for one α, or the size of the last dim for one α per unit.

    Shape:
        input (*, num_features) (or any shape when ``num_features`` is None); output the same.

    Example:
        >>> import torch, dropkit
        >>> layer = dropkit.VariationalDropout(0.5, num_features=3)
        >>> layer(torch.randn(4, 3)).shape
        torch.Size([4, 3])
        >>> round(layer.p, 6), layer.log_alpha.shape
        (0.5, torch.Size([3]))
    """

    allow_one = False
    has_scaling = False
    # Its rate is learned: DropoutScheduler skips it (setting p still works, re-initialising it).
    schedulable = False

    def __init__(self, p: float = 0.5, num_features: int | None = None) -> None:
        if num_features is not None:
            num_features = check_positive_int(num_features, "num_features")
        self.num_features = num_features
        super().__init__(p)

    @property
    def p(self) -> float:
        """α/(1 + α) = sigmoid(log α), averaged over units, with α clamped at 1."""
        return float(torch.sigmoid(self.log_alpha.detach().clamp(max=0.0)).mean().item())

    @p.setter
    def p(self, value: float) -> None:
        log_alpha = _logit(check_open_rate(value, "p", upper=0.5, reason="its logit is learned"))
        if "log_alpha" not in self._parameters:
            shape = () if self.num_features is None else (self.num_features,)
            self.log_alpha = nn.Parameter(torch.full(shape, log_alpha))
        else:
            with torch.no_grad():
                self.log_alpha.fill_(log_alpha)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # eval: the identity
            _refuse_scripted_training(self.training, "VariationalDropout")
            return input
        return FL.variational_dropout(input, self.log_alpha, self.training)

    def kl(self) -> torch.Tensor:
        """Kingma et al.'s KL approximation summed over this module's α (one term per α)."""
        return FL.variational_dropout_kl(self.log_alpha).sum()

    def extra_repr(self) -> str:
        extra = f"p={self.p:.4g}"
        return extra + (
            f", num_features={self.num_features}" if self.num_features is not None else ""
        )


_ALPHA_SHAPES = ("layer", "unit", "weight")


class VariationalLinear(nn.Linear):
    r"""Linear with variational Gaussian dropout by the local reparameterisation trick.

    Kingma, Salimans & Welling 2015: weights w_ji = θ_ji ξ_ji, ξ ~ N(1, α) with a learned α, and the
    pre-activations sampled directly, y = xθᵀ + b + √((x ⊙ x)(α ⊙ θ ⊙ θ)ᵀ) ⊙ ε
    (:func:`dropkit.functional.variational_linear`). ``alpha_shape`` picks one α for the
    layer, one per input unit (the paper's Gaussian dropout on the inputs), or one per weight.
    Eval: y = xθᵀ + b. :meth:`kl` sums the paper's approximation over every weight.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        p: initial equivalent rate in (0, 0.5], α = p/(1 − p).
        alpha_shape: ``"layer"``, ``"unit"`` or ``"weight"``.

    Shape:
        input (*, in_features); output (*, out_features).

    Example:
        >>> import torch, dropkit
        >>> layer = dropkit.VariationalLinear(5, 3, p=0.2, alpha_shape="unit")
        >>> layer(torch.randn(2, 5)).shape, layer.log_alpha.shape
        (torch.Size([2, 3]), torch.Size([5]))
    """

    # Its training forward is a posterior sample: dropkit.mc samples it (is_stochastic_module).
    mc_stochastic = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        p: float = 0.5,
        alpha_shape: str = "unit",
    ) -> None:
        check_choice(alpha_shape, "alpha_shape", _ALPHA_SHAPES)
        log_alpha = _logit(check_open_rate(p, "p", upper=0.5, reason="its logit is learned"))
        super().__init__(in_features, out_features, bias)
        shape = {"layer": (), "unit": (in_features,), "weight": (out_features, in_features)}[
            alpha_shape
        ]
        self.alpha_shape = alpha_shape
        self.log_alpha = nn.Parameter(torch.full(shape, log_alpha))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # eval: y = xθᵀ + b
            _refuse_scripted_training(self.training, "VariationalLinear")
            return nn.functional.linear(input, self.weight, self.bias)
        return FL.variational_linear(input, self.weight, self.bias, self.log_alpha, self.training)

    def kl(self) -> torch.Tensor:
        """Kingma et al.'s KL approximation summed over every weight (each weight has its α)."""
        per_alpha = FL.variational_dropout_kl(self.log_alpha)
        return per_alpha.expand_as(self.weight).sum()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha_shape={self.alpha_shape!r}"


# --------------------------------------------------------------------------------------------------
# Sparse variational dropout, Molchanov et al. 2017


class _SVDOMixin:
    """log σ² per weight, log α, KL and the pruning mask shared by LinearSVDO and Conv2dSVDO."""

    # No class-level annotations (weight, log_sigma2, threshold): torch.jit.script would read them.
    # Its training forward is a posterior sample: dropkit.mc samples it (is_stochastic_module).
    mc_stochastic = True
    __jit_unused_properties__ = ["log_alpha"]

    def scripted_eval_weight(self, name: str) -> torch.Tensor:
        """θ with every weight whose log α exceeds the threshold zeroed (the TorchScript eval)."""
        _refuse_scripted_training(self.training, name)  # type: ignore[attr-defined]
        log_alpha = FL.clamped_log_alpha(self.weight, self.log_sigma2)
        return self.weight * (log_alpha < self.threshold).to(self.weight.dtype)

    def _init_svdo(self, threshold: float, init_log_sigma2: float) -> None:
        self.threshold = check_real(threshold, "threshold")
        init_log_sigma2 = check_real(init_log_sigma2, "init_log_sigma2")
        # Molchanov et al.'s code starts log σ² at −10: the network begins almost deterministic.
        self.log_sigma2 = nn.Parameter(torch.full_like(self.weight, init_log_sigma2))

    @property
    def log_alpha(self) -> torch.Tensor:
        """log α = log σ² − log θ², per weight, clamped to [−10, 10]."""
        return FL.sparse_variational_log_alpha(self.weight, self.log_sigma2)

    def kl(self) -> torch.Tensor:
        """Molchanov et al.'s KL approximation summed over every weight."""
        return FL.sparse_variational_dropout_kl(self.log_alpha).sum()

    def kept_mask(self) -> torch.Tensor:
        """True where a weight survives pruning (log α < threshold)."""
        with torch.no_grad():
            return self.log_alpha < self.threshold


class LinearSVDO(_SVDOMixin, nn.Linear):
    r"""Linear layer with sparse variational dropout (Molchanov, Ashukha & Vetrov 2017).

    Each weight has a Gaussian posterior N(θ, σ²) with its own log σ² (the additive-noise
    reparameterisation); its dropout rate is α/(1 + α) with log α = log σ² − log θ². Training draws
    the pre-activations by the local reparameterisation trick; eval uses θ with every weight whose
    log α > ``threshold`` (3 in the paper, a dropout rate above 0.95) zeroed. Train with
    :class:`ELBOLoss` (N · NLL + KL, :meth:`kl` being the paper's approximation); read the fraction
    pruned with :func:`sparsity`.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        threshold: log α above which a weight is pruned in eval (3.0).
        init_log_sigma2: initial log σ² (−10, as in the paper's code).

    Shape:
        input (*, in_features); output (*, out_features).

    Example:
        >>> import torch, dropkit
        >>> layer = dropkit.LinearSVDO(6, 3)
        >>> layer(torch.randn(4, 6)).shape
        torch.Size([4, 3])
        >>> layer.kl().item() > 0
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        threshold: float = 3.0,
        init_log_sigma2: float = -10.0,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        self._init_svdo(threshold, init_log_sigma2)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return nn.functional.linear(input, self.scripted_eval_weight("LinearSVDO"), self.bias)
        return FL.sparse_variational_linear(
            input, self.weight, self.log_sigma2, self.bias, self.training, self.threshold
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", threshold={self.threshold}"


class Conv2dSVDO(_SVDOMixin, nn.Conv2d):
    r"""Conv2d with sparse variational dropout (Molchanov et al. 2017), one log σ² per weight.

    Training: y = conv(x, θ) + b + √(conv(x ⊙ x, σ²)) ⊙ ε (local reparameterisation, one ε per
    output element); eval: y = conv(x, θ ⊙ [log α < threshold]) + b. Every ``nn.Conv2d`` option
    (stride, padding, padding_mode, dilation, groups) applies to both convolutions.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
        padding_mode: as ``nn.Conv2d``.
        threshold: log α above which a weight is pruned in eval (3.0).
        init_log_sigma2: initial log σ² (−10).

    Shape:
        input (N, C_in, H, W) or (C_in, H, W); output as ``nn.Conv2d``.

    Example:
        >>> import torch, dropkit
        >>> conv = dropkit.Conv2dSVDO(3, 4, 3, padding=1)
        >>> conv(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 4, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        threshold: float = 3.0,
        init_log_sigma2: float = -10.0,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
        )
        self._init_svdo(threshold, init_log_sigma2)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self._conv_forward(input, self.scripted_eval_weight("Conv2dSVDO"), self.bias)
        if input.dim() not in (3, 4):
            raise ValueError(
                f"Conv2dSVDO expects input of rank 3-D or 4-D, got a {input.dim()}-D tensor of shape {tuple(input.shape)}"
            )
        if not self.training:
            kept = (self.log_alpha < self.threshold).to(self.weight.dtype)
            return self._conv_forward(input, self.weight * kept, self.bias)
        # Same maths as functional.learned.sparse_variational_conv2d, through _conv_forward so that
        # padding_mode (reflect, replicate, circular) applies to both convolutions.
        mean = self._conv_forward(input, self.weight, self.bias)
        var = self._conv_forward(input * input, torch.exp(self.log_sigma2), None)
        return noise.gaussian_reparam(mean, var, FL.VAR_EPS)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", threshold={self.threshold}"


def kl_divergence(model: nn.Module) -> torch.Tensor:
    r"""The total KL of ``model``: the sum of ``kl()`` over its variational modules.

    Counts :class:`LinearSVDO`, :class:`Conv2dSVDO`, :class:`VariationalLinear` and
    :class:`VariationalDropout`. Returns a 0-d zero tensor when there are none.

    Example:
        >>> import torch, dropkit
        >>> net = torch.nn.Sequential(dropkit.LinearSVDO(4, 8), torch.nn.ReLU(), dropkit.LinearSVDO(8, 2))
        >>> bool(dropkit.kl_divergence(net) > 0)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    kinds = (_SVDOMixin, VariationalLinear, VariationalDropout)
    terms = [m.kl() for m in model.modules() if isinstance(m, kinds)]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def sparsity(model: nn.Module) -> float:
    r"""The fraction of sparse-variational weights pruned in eval (log α > threshold).

    Counted over the weights of every :class:`LinearSVDO` and :class:`Conv2dSVDO` in ``model``
    (biases are not pruned and not counted).

    Example:
        >>> import torch, dropkit
        >>> layer = dropkit.LinearSVDO(4, 2)
        >>> with torch.no_grad():
        ...     _ = layer.log_sigma2[0].fill_(10.0)  # first row: huge noise → pruned
        ...     _ = layer.weight.fill_(1.0)
        >>> dropkit.sparsity(layer)
        0.5
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    pruned = total = 0
    for m in model.modules():
        if isinstance(m, _SVDOMixin):
            kept = m.kept_mask()
            pruned += int((~kept).sum().item())
            total += kept.numel()
    if total == 0:
        raise ValueError(
            f"sparsity: {type(model).__name__} holds no LinearSVDO or Conv2dSVDO layer"
        )
    return pruned / total


class ELBOLoss(nn.Module):
    r"""The negative SGVLB of Molchanov et al. 2017: N · NLL(output, target) + w · KL(model).

    ``forward(output, target)`` computes the mini-batch mean NLL with ``nll`` (cross-entropy by
    default), multiplies it by the training-set size N and adds w · :func:`kl_divergence` (model).
    KL warm-up: with ``warmup_steps`` > 0, w = kl_weight · min(1, step / warmup_steps) rises linearly
    from 0; call :meth:`step` once per step (or epoch — your choice of unit).

    Args:
        model: the network whose variational modules give the KL.
        n_data: N, the training-set size, >= 1.
        kl_weight: the final KL weight, >= 0 (1 for the true ELBO).
        warmup_steps: steps of linear warm-up, >= 0 (0: none).
        nll: the per-batch mean negative log-likelihood, ``(output, target) -> scalar``.

    Example:
        >>> import torch, dropkit
        >>> net = dropkit.LinearSVDO(4, 3)
        >>> loss_fn = dropkit.ELBOLoss(net, n_data=100, warmup_steps=10)
        >>> loss_fn.current_kl_weight
        0.0
        >>> loss = loss_fn(net(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
        >>> loss_fn.step(); loss_fn.current_kl_weight
        0.1
    """

    def __init__(
        self,
        model: nn.Module,
        n_data: int,
        kl_weight: float = 1.0,
        warmup_steps: int = 0,
        nll: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        super().__init__()
        self.n_data = check_positive_int(n_data, "n_data")
        self.kl_weight = check_real(kl_weight, "kl_weight", nonneg=True)
        self.warmup_steps = check_positive_int(warmup_steps, "warmup_steps", minimum=0)
        self.nll = nll
        # Held outside the module tree so the loss does not register the model as a submodule.
        self._model = [model]
        self.steps_done = 0

    @property
    def current_kl_weight(self) -> float:
        """kl_weight · min(1, steps_done / warmup_steps) (kl_weight when there is no warm-up)."""
        if self.warmup_steps == 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, self.steps_done / self.warmup_steps)

    def step(self) -> None:
        """Advances the KL warm-up by one step."""
        self.steps_done += 1

    def __prepare_scriptable__(self) -> ELBOLoss:
        refuse_scripting(
            self,
            "it holds its model outside the module tree and calls a Python nll; script the "
            "model and compute the loss in Python",
        )
        return self

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return FL.elbo_loss(
            self.nll(output, target),
            kl_divergence(self._model[0]),
            self.n_data,
            self.current_kl_weight,
        )


# --------------------------------------------------------------------------------------------------
# Standout, Ba & Frey 2013


class Standout(nn.Module):
    r"""A Linear layer whose units are dropped by an adaptive ("standout") network (Ba & Frey 2013).

    forward(x): z = layer(x), a = activation(z), and the keep probabilities come from the layer's
    input through the standout network, π = sigmoid(α · (W_s x + b_s) + β):

    - ``tied=True`` (the paper's final form, sec. 4: the learned standout weights "recapitulate" the
      network's, so they are set from them): W_s = W, b_s = b, i.e. π = sigmoid(α z + β). The
      standout network has no parameters of its own; z enters π detached, so W is trained only
      through the layer's output (the standout network is a function of W, not a second path
      training it).
    - ``tied=False``: W_s, b_s are a separate learned ``nn.Linear`` (``standout_layer``).

    Training: y = m ⊙ a, m_j ~ Bernoulli(π_j) (no rescaling); the standout network's gradient
    uses the local expectation of the mask, ∂L/∂π = a ⊙ ∂L/∂y
    (:func:`dropkit.functional.standout`). Eval: y = π ⊙ a, the paper's expectation rule.
    α and β are fixed hyperparameters (``learn_alpha_beta=True`` learns them).

    Args:
        layer: the ``nn.Linear`` whose outputs are dropped.
        activation: applied to the layer's output before the mask (None: identity).
        alpha: α, the scale of the standout network's input to the sigmoid.
        beta: β, its shift (negative values drop more).
        tied: tie the standout network to the layer's weights.
        learn_alpha_beta: make α and β learnable parameters.

    Shape:
        input (*, in_features); output (*, out_features).

    Example:
        >>> import torch, dropkit
        >>> layer = dropkit.Standout(torch.nn.Linear(6, 4), alpha=1.0, beta=0.0)
        >>> layer(torch.randn(3, 6)).shape
        torch.Size([3, 4])
    """

    # Its training forward draws the Bernoulli(π) mask: dropkit.mc samples it (is_stochastic_module).
    mc_stochastic = True

    def __init__(
        self,
        layer: nn.Linear,
        activation: nn.Module | None = None,
        alpha: float = 1.0,
        beta: float = 0.0,
        tied: bool = True,
        learn_alpha_beta: bool = False,
    ) -> None:
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}")
        if activation is not None and not isinstance(activation, nn.Module):
            raise TypeError(
                f"activation must be an nn.Module or None, got {type(activation).__name__}"
            )
        alpha = check_real(alpha, "alpha")
        beta = check_real(beta, "beta")
        super().__init__()
        self.layer = layer
        self.activation = activation if activation is not None else nn.Identity()
        self.tied = bool(tied)
        self.standout_layer = (
            None if self.tied else nn.Linear(layer.in_features, layer.out_features)
        )
        if learn_alpha_beta:
            self.alpha = nn.Parameter(torch.tensor(alpha))
            self.beta = nn.Parameter(torch.tensor(beta))
        else:
            self.register_buffer("alpha", torch.tensor(alpha))
            self.register_buffer("beta", torch.tensor(beta))

    def keep_prob(
        self, input: torch.Tensor, pre_activation: torch.Tensor | None = None
    ) -> torch.Tensor:
        """π = sigmoid(α (W_s x + b_s) + β) for the input x (``pre_activation`` = layer(x) if known)."""
        if self.tied:
            s = (self.layer(input) if pre_activation is None else pre_activation).detach()
        else:
            s = self.standout_layer(input)
        return FL.standout_keep_prob(s, self.alpha, self.beta)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # eval: y = π ⊙ a, the paper's expectation rule
            _refuse_scripted_training(self.training, "Standout")
            z = self.layer(input)
            if self.standout_layer is None:
                s = z.detach()
            else:
                s = self.standout_layer(input)
            return self.activation(z) * FL.standout_sigmoid(s, self.alpha, self.beta)
        z = self.layer(input)
        return FL.standout(self.activation(z), self.keep_prob(input, z), self.training)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha.item():g}, beta={self.beta.item():g}, tied={self.tied}"
