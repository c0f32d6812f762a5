r"""Functional forms of the weight-level variants: DropConnect on linear and convolution weights.

One function per variant holds its rule; the modules in :mod:`dropkit.layers.weights`
(``DropConnectLinear``, ``DropConnectConv1d/2d/3d`` and the recurrent ``WeightDrop``) call them.
Every Bernoulli mask is drawn through :func:`dropkit.ops.keep_mask` or
:func:`dropkit.ops.dropout_elementwise` (the counter-based kernels).

Papers:

- DropConnect: Wan, Zeiler, Zhang, LeCun, Fergus 2013, http://proceedings.mlr.press/v28/wan13.html
- Weight-drop: Merity, Keskar, Socher 2017 (AWD-LSTM), https://arxiv.org/abs/1708.02182
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as TF

from dropkit import noise as _noise
from dropkit import ops
from dropkit._masking import apply_kept, eval_scale, train_scale
from dropkit._validate import (
    check_bool,
    check_float_tensor,
    check_min_rank,
    check_positive_int,
    check_probability,
    check_rank,
    check_scaling,
    check_training,
)

__all__ = [
    "drop_connect",
    "drop_connect_linear",
    "drop_connect_conv",
    "drop_connect_linear_moments",
    "drop_connect_moment_matching",
]


# --------------------------------------------------------------------------------------------
# DropConnect
# --------------------------------------------------------------------------------------------


def drop_connect(
    weight: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    *,
    batch_size: int | None = None,
    scaling: str = "inverted",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""DropConnect's weight rule (Wan et al. 2013): the weight matrix a layer uses this step.

    Training: W̃ = M ⊙ W · s, M_ij ~ Bernoulli(1 − p), s = 1/(1 − p) (inverted) or 1 (inference).
    With ``batch_size=N`` one mask per sample is drawn and W̃ has shape (N, *W.shape).
    Eval: W (inverted) or (1 − p) W (inference: the paper's mean-weight inference).
    Gradients reach W only through kept entries: ∂L/∂W = M · s ⊙ ∂L/∂W̃.

    Args:
        weight: the weight tensor of any shape.
        p: probability of dropping a weight, in [0, 1].
        training: apply the training rule (True) or the eval rule (False).
        batch_size: None (one mask, the default) or N (one mask per sample, stacked on dim 0).
        scaling: ``"inverted"`` or ``"inference"``.
        generator: a ``torch.Generator`` for the mask.

    Shape:
        weight (*); output (*) or (N, *) with ``batch_size=N`` in training.

    Example:
        >>> import torch
        >>> from dropkit.functional import drop_connect
        >>> w = torch.ones(3, 4)
        >>> sorted(set(drop_connect(w, 0.5).flatten().tolist())) in ([0.0, 2.0], [0.0], [2.0])
        True
        >>> drop_connect(w, 0.5, batch_size=8).shape
        torch.Size([8, 3, 4])
    """
    training = check_training(training)
    check_float_tensor(weight, "weight")
    p = check_probability(p)
    check_scaling(scaling)
    if batch_size is not None:
        batch_size = check_positive_int(batch_size, "batch_size")
    if not training:
        factor = eval_scale(p, scaling)
        return weight if factor == 1.0 else weight * factor
    scale = train_scale(p, scaling)
    if batch_size is None:
        if p == 0.0:
            return weight if scale == 1.0 else weight * scale
        return ops.dropout_elementwise(weight, p, scale, generator=generator)
    shape = (batch_size,) + tuple(weight.shape)
    if p == 0.0:
        return weight.expand(shape)
    return apply_kept(weight, ops.keep_mask(shape, p, weight.device, generator=generator), scale)


def _check_drop_connect_args(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    per_sample: object,
    drop_bias: object,
) -> None:
    check_float_tensor(input)
    check_float_tensor(weight, "weight")
    if bias is not None:
        check_float_tensor(bias, "bias")
    check_bool(per_sample, "per_sample")
    check_bool(drop_bias, "drop_bias")


def drop_connect_linear(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    p: float = 0.5,
    training: bool = True,
    *,
    per_sample: bool = False,
    drop_bias: bool = False,
    scaling: str = "inverted",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""A DropConnect linear layer (Wan et al. 2013): y = x (M ⊙ W)ᵀ s + b.

    Weights, not activations, are dropped: M_ij ~ Bernoulli(1 − p) masks W (and b with
    ``drop_bias=True``, as the paper, which folds b into W). One mask serves the mini-batch
    (default) or, with ``per_sample=True``, each sample n gets its own M_n (the paper's
    formulation): y_n = x_n (M_n ⊙ W)ᵀ s, computed as a batched matrix product (einsum), at a cost
    of N × |W| mask entries. Eval: y = x Wᵀ + b (inverted) or x ((1 − p) W)ᵀ + b (inference, the
    paper's mean-weight approximation; for its Gaussian moment-matching inference see
    :func:`drop_connect_moment_matching`).

    Args:
        input: (*, in_features) floating-point tensor; (N, *, in_features) with ``per_sample``.
        weight: (out_features, in_features).
        bias: (out_features,) or None.
        p: probability of dropping a weight, in [0, 1].
        training: apply the training rule (True) or the eval rule (False).
        per_sample: one mask per sample (dim 0 of ``input``) instead of one per mini-batch.
        drop_bias: mask the bias too.
        scaling: ``"inverted"`` or ``"inference"``.
        generator: a ``torch.Generator`` for the masks.

    Shape:
        input (*, in_features); output (*, out_features).

    Example:
        >>> import torch
        >>> from dropkit.functional import drop_connect_linear
        >>> x, w = torch.randn(5, 3), torch.randn(2, 3)
        >>> drop_connect_linear(x, w, p=0.5, per_sample=True).shape
        torch.Size([5, 2])
        >>> torch.equal(drop_connect_linear(x, w, p=0.5, training=False), x @ w.T)
        True
    """
    training = check_training(training)
    _check_drop_connect_args(input, weight, bias, per_sample, drop_bias)
    p = check_probability(p)
    check_scaling(scaling)
    check_rank(weight, (2,), "drop_connect_linear", "weight")
    if per_sample and training:
        check_min_rank(input, 2, "drop_connect_linear with per_sample=True")
    if input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"drop_connect_linear: input's last dim ({input.shape[-1]}) must equal weight's "
            f"in_features ({weight.shape[1]})"
        )
    if not training or not per_sample:
        w = drop_connect(weight, p, training, scaling=scaling, generator=generator)
        b = bias
        if bias is not None and drop_bias:
            b = drop_connect(bias, p, training, scaling=scaling, generator=generator)
        return TF.linear(input, w, b)
    n = input.shape[0]
    w = drop_connect(weight, p, True, batch_size=n, scaling=scaling, generator=generator)
    # Per-sample weights (N, out, in): y_n = x_n W_nᵀ for every extra dim of x_n.
    out = torch.einsum("n...i,noi->n...o", input, w)
    if bias is not None:
        if drop_bias:
            b = drop_connect(bias, p, True, batch_size=n, scaling=scaling, generator=generator)
            out = out + b.reshape((n,) + (1,) * (out.dim() - 2) + (-1,))
        else:
            out = out + bias
    return out


def drop_connect_linear_moments(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    p: float = 0.5,
    *,
    drop_bias: bool = False,
    scaling: str = "inverted",
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and variance of a DropConnect linear unit over the weight mask (Wan et al. 2013, sec. 3).

    For u = s Σ_j M_j W_j x_j + b with M_j ~ Bernoulli(q), q = 1 − p, s the training scale:

    .. math::
        E[u] = s q (W x) + b, \qquad V[u] = s^2 q (1 − q) (W ⊙ W)(x ⊙ x)

    (with ``drop_bias=True`` the bias is one more masked term: E gains s q b − b, V gains
    s² q(1 − q) b²). These are exact; the moment-matching inference of
    :func:`drop_connect_moment_matching` treats u as Gaussian with them.

    Args:
        input: (*, in_features) floating-point tensor.
        weight: (out_features, in_features).
        bias: (out_features,) or None.
        p: probability of dropping a weight, in [0, 1].
        drop_bias: the bias is masked too.
        scaling: ``"inverted"`` (s = 1/q) or ``"inference"`` (s = 1).

    Returns:
        (mean, variance), each (*, out_features).

    Example:
        >>> import torch
        >>> from dropkit.functional import drop_connect_linear_moments
        >>> mean, var = drop_connect_linear_moments(torch.ones(1, 2), torch.ones(1, 2), p=0.5)
        >>> mean.item(), var.item()  # u = 2(m1 + m2): mean 2, variance 4 · 2 · 1/4
        (2.0, 2.0)
    """
    _check_drop_connect_args(input, weight, bias, False, drop_bias)
    p = check_probability(p)
    check_scaling(scaling)
    check_rank(weight, (2,), "drop_connect_linear_moments", "weight")
    if input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"drop_connect_linear_moments: input's last dim ({input.shape[-1]}) must equal weight's "
            f"in_features ({weight.shape[1]})"
        )
    keep = 1.0 - p
    scale = train_scale(p, scaling)
    mean = TF.linear(input, weight) * (scale * keep)
    var = TF.linear(input * input, weight * weight) * (scale * scale * keep * (1.0 - keep))
    if bias is not None:
        if drop_bias:
            mean = mean + bias * (scale * keep)
            var = var + bias * bias * (scale * scale * keep * (1.0 - keep))
        else:
            mean = mean + bias
    return mean, var


def drop_connect_moment_matching(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    p: float = 0.5,
    activation: Callable[[torch.Tensor], torch.Tensor] = torch.relu,
    num_samples: int = 1000,
    *,
    drop_bias: bool = False,
    scaling: str = "inverted",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""DropConnect inference by Gaussian moment matching (Wan et al. 2013, Algorithm 2).

    The paper's alternative to the mean-weight rule: each pre-activation u is approximated by
    N(E[u], V[u]) with the exact moments of :func:`drop_connect_linear_moments`, Z samples
    u_z ~ N(E[u], V[u]) go through the activation a, and r = (1/Z) Σ_z a(u_z) approximates
    E_M[a(u)], which mean-weight inference a(E[u]) gets wrong for a non-linear a.

    Args:
        input: (*, in_features) floating-point tensor.
        weight: (out_features, in_features).
        bias: (out_features,) or None.
        p: probability of dropping a weight, in [0, 1].
        activation: the non-linearity a after the layer (default ReLU).
        num_samples: Z, the Gaussian samples per unit.
        drop_bias: the bias is masked too.
        scaling: ``"inverted"`` or ``"inference"``, as used in training.
        generator: a ``torch.Generator`` for the Gaussian samples.

    Shape:
        input (*, in_features); output (*, out_features).

    Example:
        >>> import torch
        >>> from dropkit.functional import drop_connect_moment_matching
        >>> x, w = torch.randn(4, 16), torch.randn(3, 16)
        >>> drop_connect_moment_matching(x, w, p=0.5, num_samples=64).shape
        torch.Size([4, 3])
    """
    if not callable(activation):
        raise TypeError(f"activation must be callable, got {activation!r}")
    num_samples = check_positive_int(num_samples, "num_samples")
    mean, var = drop_connect_linear_moments(
        input, weight, bias, p, drop_bias=drop_bias, scaling=scaling
    )
    std = var.clamp_min(0.0).sqrt()
    noise = _noise.normal(
        (num_samples,) + tuple(mean.shape),
        dtype=mean.dtype,
        device=mean.device,
        generator=generator,
    )
    return activation(mean + std * noise).mean(dim=0)


_CONVS = {1: TF.conv1d, 2: TF.conv2d, 3: TF.conv3d}


def drop_connect_conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    p: float = 0.5,
    training: bool = True,
    *,
    stride: int | Sequence[int] = 1,
    padding: int | str | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    per_sample: bool = False,
    drop_bias: bool = False,
    scaling: str = "inverted",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""A DropConnect convolution (1-, 2- or 3-d, from the weight's rank): y = conv(x, M ⊙ W · s) + b.

    Every kernel weight is dropped with probability p, M ~ Bernoulli(1 − p) of W's shape
    (out, in/groups, *kernel); one mask per mini-batch (default) or one per sample
    (``per_sample=True``), computed as a single grouped convolution: the N samples become N·groups
    groups of one (1, N·C, *) input convolved with the stacked (N·out, in/groups, *kernel) masked
    weights. Eval: W (inverted) or (1 − p) W (inference). ``padding`` may be an int, a tuple or
    ``"same"``/``"valid"``; non-zero padding modes are applied by the module before calling this.

    Args:
        input: (N, C, *spatial) or (C, *spatial) floating-point tensor (batched for per_sample).
        weight: (out, C/groups, *kernel) with 1 to 3 kernel dims.
        bias: (out,) or None.
        p: probability of dropping a weight, in [0, 1].
        training: apply the training rule (True) or the eval rule (False).
        stride, padding, dilation, groups: as ``torch.nn.functional.conv2d``.
        per_sample: one mask per sample instead of one per mini-batch.
        drop_bias: mask the bias too.
        scaling: ``"inverted"`` or ``"inference"``.
        generator: a ``torch.Generator`` for the masks.

    Shape:
        input (N, C, *spatial); output (N, out, *spatial_out), as the matching ``conv``.

    Example:
        >>> import torch
        >>> from dropkit.functional import drop_connect_conv
        >>> x, w = torch.randn(4, 3, 8, 8), torch.randn(5, 3, 3, 3)
        >>> drop_connect_conv(x, w, p=0.3, padding=1, per_sample=True).shape
        torch.Size([4, 5, 8, 8])
    """
    training = check_training(training)
    _check_drop_connect_args(input, weight, bias, per_sample, drop_bias)
    p = check_probability(p)
    check_scaling(scaling)
    check_rank(weight, (3, 4, 5), "drop_connect_conv", "weight")
    groups = check_positive_int(groups, "groups")
    k = weight.dim() - 2
    conv = _CONVS[k]
    if per_sample and training:
        check_rank(input, (k + 2,), f"drop_connect_conv ({k}-d, per_sample=True)")
    else:
        check_rank(input, (k + 1, k + 2), f"drop_connect_conv ({k}-d)")
    channels = input.shape[-k - 1]
    if channels != weight.shape[1] * groups:
        raise ValueError(
            f"drop_connect_conv: input has {channels} channels but weight expects "
            f"{weight.shape[1]} × groups={groups} = {weight.shape[1] * groups}"
        )
    if not training or not per_sample:
        w = drop_connect(weight, p, training, scaling=scaling, generator=generator)
        b = bias
        if bias is not None and drop_bias:
            b = drop_connect(bias, p, training, scaling=scaling, generator=generator)
        return conv(input, w, b, stride, padding, dilation, groups)
    n = input.shape[0]
    out_channels = weight.shape[0]
    w = drop_connect(weight, p, True, batch_size=n, scaling=scaling, generator=generator)
    w = w.reshape((n * out_channels,) + tuple(weight.shape[1:]))
    x = input.reshape((1, n * channels) + tuple(input.shape[2:]))
    out = conv(x, w, None, stride, padding, dilation, n * groups)
    out = out.reshape((n, out_channels) + tuple(out.shape[2:]))
    if bias is not None:
        if drop_bias:
            b = drop_connect(bias, p, True, batch_size=n, scaling=scaling, generator=generator)
        else:
            b = bias.expand(n, out_channels)
        out = out + b.reshape((n, out_channels) + (1,) * k)
    return out
