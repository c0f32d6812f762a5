r"""Functional dropout: one function per variant, each the single source of its rule.

Every function validates its arguments (see :mod:`dropkit._validate`), picks the mask's shape,
applies the scaling rule and draws the mask through :mod:`dropkit.ops`, whose counter-based kernels
store no mask and give the same bits on every device.

The two scalings of the seeds:

- ``"inverted"`` (default): training y = m ⊙ x / (1 − p), m ~ Bernoulli(1 − p); eval y = x.
- ``"inference"`` (the seeds' "standard" dropout): training y = m ⊙ x; eval y = (1 − p) x.

``1 − p`` here is :func:`dropkit.ops.keep_probability` of p — the keep probability the kernel
actually uses (p on a 2^-16 grid), so the expected training output and the eval output agree
exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dropkit import ops
from dropkit._validate import (
    check_float_tensor,
    check_mask_shape,
    check_probability,
    check_rank,
    check_scaling,
)

__all__ = [
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "gaussian_dropout",
    "resolve_noise_shape",
    "train_scale",
    "eval_scale",
]

# Klambauer et al. 2017, SELU's fixed point: alpha' = -lambda * alpha.
SELU_ALPHA = 1.6732632423543772
SELU_LAMBDA = 1.0507009873554805
ALPHA_PRIME = -SELU_LAMBDA * SELU_ALPHA


def train_scale(p: float, scaling: str) -> float:
    """The factor kept units are multiplied by in training."""
    if scaling == "inference":
        return 1.0
    keep = ops.keep_probability(p)
    # p = 1 keeps nothing; a 0 scale (not 1/0) keeps forward and backward free of inf and NaN.
    return 0.0 if keep == 0.0 else 1.0 / keep


def eval_scale(p: float, scaling: str) -> float:
    """The factor every unit is multiplied by in eval."""
    return ops.keep_probability(p) if scaling == "inference" else 1.0


def resolve_noise_shape(noise_shape: Sequence[int | None] | None, shape: torch.Size) -> tuple[int, ...] | None:
    """Keras's ``noise_shape``: None entries take the input's size, 1 shares the mask along a dim.

    Returns None when the mask is elementwise (same shape as the input).
    """
    if noise_shape is None:
        return None
    if isinstance(noise_shape, (str, bytes)) or not isinstance(noise_shape, Sequence):
        raise TypeError(f"noise_shape must be a sequence of ints or None, got {noise_shape!r}")
    if len(noise_shape) != len(shape):
        raise ValueError(
            f"noise_shape {tuple(noise_shape)} must have one entry per input dim "
            f"({len(shape)} for input shape {tuple(shape)})"
        )
    filled = []
    for entry, size in zip(noise_shape, shape):
        if entry is None:
            filled.append(int(size))
        elif isinstance(entry, bool) or not isinstance(entry, int):
            raise TypeError(f"noise_shape entries must be ints or None, got {noise_shape!r}")
        else:
            filled.append(entry)
    mask_shape = check_mask_shape(filled, shape, name="noise_shape")
    return None if mask_shape == tuple(shape) else mask_shape


def _masked(
    x: torch.Tensor,
    p: float,
    scale: float,
    mask_shape: tuple[int, ...] | None,
    generator: torch.Generator | None,
    inplace: bool,
) -> torch.Tensor:
    if mask_shape is None:
        return ops.dropout_elementwise(x, p, scale, generator=generator, inplace=inplace)
    # A shared mask is small (one entry per broadcast position): draw it, then broadcast.
    factor = ops.keep_mask(mask_shape, p, x.device, generator=generator).to(x.dtype) * scale
    return x.mul_(factor) if inplace else x * factor


def dropout(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    scaling: str = "inverted",
    noise_shape: Sequence[int | None] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Drops each unit with probability ``p`` (Srivastava et al. 2014).

    Training: y = m ⊙ x · s with m ~ Bernoulli(1 − p), s = 1/(1 − p) (``scaling="inverted"``) or
    s = 1 (``scaling="inference"``). Eval: y = x (inverted) or y = (1 − p) x (inference).
    Gradients flow only through kept units: ∂L/∂x = m · s ⊙ ∂L/∂y.

    Args:
        input: a floating-point tensor of any shape.
        p: probability of dropping a unit, in [0, 1].
        training: apply the training rule (True) or the eval rule (False).
        inplace: write the result into ``input``.
        scaling: ``"inverted"`` or ``"inference"``.
        noise_shape: the mask's shape, one entry per input dim (Keras's convention): None takes the
            input's size, 1 shares one mask value along that dim. ``(None, 1, None)`` on a
            (N, T, C) input draws one mask per sequence, shared over time.
        generator: a ``torch.Generator`` to draw the mask's seed from (default: torch's global one).

    Example:
        >>> import torch, dropkit
        >>> x = torch.ones(4, 5)
        >>> y = dropkit.functional.dropout(x, 0.5)
        >>> sorted(set(y.flatten().tolist())) in ([0.0, 2.0], [0.0], [2.0])
        True
        >>> torch.equal(dropkit.functional.dropout(x, 0.5, training=False, scaling="inference"), x * 0.5)
        True
    """
    check_float_tensor(input)
    p = check_probability(p)
    check_scaling(scaling)
    mask_shape = resolve_noise_shape(noise_shape, input.shape)
    if not training:
        factor = eval_scale(p, scaling)
        if factor == 1.0:
            return input
        return input.mul_(factor) if inplace else input * factor
    if p == 0.0:
        return input
    return _masked(input, p, train_scale(p, scaling), mask_shape, generator, inplace)


def _channel_dropout(
    input: torch.Tensor,
    p: float,
    training: bool,
    inplace: bool,
    scaling: str,
    generator: torch.Generator | None,
    spatial_dims: int,
    name: str,
) -> torch.Tensor:
    check_float_tensor(input)
    p = check_probability(p)
    check_scaling(scaling)
    # (N, C, *spatial) or unbatched (C, *spatial); one mask value per (sample, channel).
    check_rank(input, (spatial_dims + 1, spatial_dims + 2), name)
    batched = input.dim() == spatial_dims + 2
    lead = 2 if batched else 1
    noise_shape = tuple(input.shape[:lead]) + (1,) * spatial_dims
    return dropout(
        input, p, training, inplace, scaling=scaling, noise_shape=noise_shape, generator=generator
    )


def dropout1d(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    scaling: str = "inverted",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Drops whole channels of a (N, C, L) or (C, L) input with probability ``p``.

    Example:
        >>> import torch, dropkit
        >>> dropkit.functional.dropout1d(torch.randn(8, 16, 100), 0.2).shape
        torch.Size([8, 16, 100])
    """
    return _channel_dropout(input, p, training, inplace, scaling, generator, 1, "dropout1d")


def dropout2d(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    scaling: str = "inverted",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Drops whole channels of a (N, C, H, W) or (C, H, W) input with probability ``p``
    (spatial dropout, Tompson et al. 2015)."""
    return _channel_dropout(input, p, training, inplace, scaling, generator, 2, "dropout2d")


def dropout3d(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    scaling: str = "inverted",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Drops whole channels of a (N, C, D, H, W) or (C, D, H, W) input with probability ``p``."""
    return _channel_dropout(input, p, training, inplace, scaling, generator, 3, "dropout3d")


def alpha_dropout(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    noise_shape: Sequence[int | None] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Alpha dropout (Klambauer et al. 2017): keeps the mean and variance of SELU-normalised inputs.

    Dropped units are set to α' = −λα (SELU's negative saturation) instead of 0, then an affine map
    a·(m ⊙ x + α'(1 − m)) + b restores zero mean and unit variance, with q = 1 − p,
    a = (q + α'² q (1 − q))^(-1/2) and b = −a (1 − q) α'. Eval: identity. p = 1 returns zeros.

    Example:
        >>> import torch, dropkit
        >>> _ = torch.manual_seed(0)
        >>> y = dropkit.functional.alpha_dropout(torch.randn(100_000), 0.2)
        >>> abs(y.mean().item()) < 0.03 and abs(y.var().item() - 1) < 0.03
        True
    """
    check_float_tensor(input)
    p = check_probability(p)
    mask_shape = resolve_noise_shape(noise_shape, input.shape)
    if not training or p == 0.0:
        return input
    if p == 1.0:
        return input.mul_(0.0) if inplace else input * 0.0
    keep = ops.keep_probability(p)
    a = 1.0 / math.sqrt(keep + ALPHA_PRIME**2 * keep * (1.0 - keep))
    b = -a * (1.0 - keep) * ALPHA_PRIME
    shape = mask_shape if mask_shape is not None else tuple(input.shape)
    kept = ops.keep_mask(shape, p, input.device, generator=generator).to(input.dtype)
    # y = a·(m·x + α'(1 − m)) + b = (a·m)·x + (a·α'(1 − m) + b)
    multiplier = kept * a
    offset = (1.0 - kept) * (a * ALPHA_PRIME) + b
    if inplace:
        return input.mul_(multiplier).add_(offset)
    return torch.addcmul(offset, input, multiplier)


def gaussian_dropout(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    *,
    noise_shape: Sequence[int | None] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Gaussian dropout (Srivastava et al. 2014, sec. 10): y = x ⊙ ε, ε ~ N(1, p/(1 − p)).

    The multiplicative noise has the mean and variance of inverted Bernoulli dropout's factor
    m/(1 − p), so E[y] = x and eval is the identity. p must be in [0, 1): at p = 1 the variance is
    infinite.

    Example:
        >>> import torch, dropkit
        >>> dropkit.functional.gaussian_dropout(torch.ones(3), 0.5, training=False)
        tensor([1., 1., 1.])
    """
    check_float_tensor(input)
    p = check_probability(p, allow_one=False)
    mask_shape = resolve_noise_shape(noise_shape, input.shape)
    if not training or p == 0.0:
        return input
    std = math.sqrt(p / (1.0 - p))
    shape = mask_shape if mask_shape is not None else tuple(input.shape)
    noise = torch.randn(shape, device=input.device, dtype=input.dtype, generator=generator)
    return input * noise.mul_(std).add_(1.0)
