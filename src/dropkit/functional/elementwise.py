r"""Elementwise dropout: each unit dropped on its own (or along ``noise_shape``).

:func:`dropout` and its scales (:func:`train_scale`, :func:`eval_scale`, :func:`resolve_noise_shape`)
live in :mod:`dropkit._masking`, the mask rule every kind builds on, and are exported here;
:func:`alpha_dropout` and :func:`gaussian_dropout` are defined here. :mod:`dropkit.layers.elementwise`
holds their modules (``Dropout``, ``AlphaDropout``, ``GaussianDropout``).

Papers: Srivastava et al. 2014 (dropout, Gaussian dropout), Klambauer et al. 2017 (alpha dropout).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dropkit import noise as _noise
from dropkit import ops
from dropkit._masking import dropout, eval_scale, resolve_noise_shape, train_scale
from dropkit._validate import (
    check_float_tensor,
    check_generator,
    check_probability,
    check_training,
)

__all__ = [
    "dropout",
    "alpha_dropout",
    "gaussian_dropout",
    "resolve_noise_shape",
    "train_scale",
    "eval_scale",
    "alpha_dropout_affine",
]

# Klambauer et al. 2017, SELU's fixed point: alpha' = -lambda * alpha, SELU's negative saturation.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_LAMBDA = 1.0507009873554804934193349852946
ALPHA_PRIME = -SELU_LAMBDA * SELU_ALPHA


def alpha_dropout_affine(p: float) -> tuple[float, float, float]:
    r"""Alpha dropout's constants (a, b, α') for drop rate p (Klambauer et al. 2017, sec. "New
    Dropout Technique").

    With q = 1 − p: a = (q + α'² q (1 − q))^(−1/2) and b = −a (1 − q) α', where α' = −λα ≈ −1.7581
    is SELU's negative saturation. Kept units become a·x + b, dropped ones a·α' + b; for x with
    mean 0 and variance 1 the output has mean 0 and variance 1. q = 1 − p exactly (as torch's
    alpha_dropout); p = 1 has no such map (returns a = 0, b = 0).

    Example:
        >>> a, b, alpha_prime = alpha_dropout_affine(0.0)
        >>> (a, b)
        (1.0, 0.0)
    """
    p = check_probability(p)
    keep = 1.0 - p
    if keep == 0.0:
        return 0.0, 0.0, ALPHA_PRIME
    a = 1.0 / math.sqrt(keep + ALPHA_PRIME**2 * keep * (1.0 - keep))
    b = -a * (1.0 - keep) * ALPHA_PRIME
    return a, b, ALPHA_PRIME


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

    Dropped units are set to α' = −λα (SELU's negative saturation) instead of 0, then an affine
    map restores zero mean and unit variance: y = a·(m ⊙ x + α'(1 − m)) + b with
    m ~ Bernoulli(q), q = 1 − p, a = (q + α'² q (1 − q))^(−1/2), b = −a (1 − q) α' (see
    :func:`alpha_dropout_affine`). Eval: identity. p = 1 returns zeros (the map is undefined
    there; torch does the same). The same rule as ``torch.nn.functional.alpha_dropout``;
    ``noise_shape=(None, None, 1, 1)`` on (N, C, H, W) gives ``feature_alpha_dropout``.

    Args:
        input: a floating-point tensor of any shape.
        p: probability of dropping a unit, in [0, 1].
        training: apply the training rule (True) or return the input (False).
        inplace: write the result into ``input``.
        noise_shape: the mask's shape, as in :func:`dropout`.
        generator: a ``torch.Generator`` to draw the mask from.

    Shape:
        input any shape; output the same.

    Example:
        >>> import torch, dropkit
        >>> _ = torch.manual_seed(0)
        >>> y = dropkit.functional.alpha_dropout(torch.randn(100_000), 0.2)
        >>> abs(y.mean().item()) < 0.03 and abs(y.var().item() - 1) < 0.03
        True
    """
    training = check_training(training)
    check_float_tensor(input)
    p = check_probability(p)
    check_generator(generator)
    mask_shape = resolve_noise_shape(noise_shape, input.shape)
    if not training or p == 0.0:
        return input
    if p == 1.0:  # zeros (not 0·x, which is NaN for an infinite x), with zero gradients
        everything = torch.ones((), dtype=torch.bool, device=input.device)
        return (
            input.masked_fill_(everything, 0.0) if inplace else input.masked_fill(everything, 0.0)
        )
    a, b, alpha_prime = alpha_dropout_affine(p)
    shape = mask_shape if mask_shape is not None else tuple(input.shape)
    kept = ops.keep_mask(shape, p, input.device, generator=generator)
    dropped_value = a * alpha_prime + b
    # y = a·x + b where kept, a·α' + b where dropped (exactly, even for an inf or NaN x).
    if inplace:
        return input.mul_(a).add_(b).masked_fill_(~kept, dropped_value)
    return torch.where(kept, input * a + b, input.new_full((), dropped_value))


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
    m/(1 − p), so E[y] = x, Var[y] = x² p/(1 − p), and eval is the identity. ∂L/∂x = ε ⊙ ∂L/∂y.
    p must be in [0, 1): at p = 1 the variance is infinite.

    Args:
        input: a floating-point tensor of any shape.
        p: the Bernoulli rate whose variance the noise matches, in [0, 1).
        training: add noise (True) or return the input (False).
        noise_shape: the noise's shape, as in :func:`dropout` (1 shares one ε along a dim).
        generator: a ``torch.Generator`` to draw ε from.

    Shape:
        input any shape; output the same.

    Example:
        >>> import torch, dropkit
        >>> dropkit.functional.gaussian_dropout(torch.ones(3), 0.5, training=False)
        tensor([1., 1., 1.])
    """
    training = check_training(training)
    check_float_tensor(input)
    p = check_probability(p, allow_one=False)
    check_generator(generator)
    mask_shape = resolve_noise_shape(noise_shape, input.shape)
    if not training or p == 0.0:
        return input
    std = math.sqrt(p / (1.0 - p))
    # Counter-based noise (dropkit.noise): the same in eager and compiled code and on every device;
    # the per-element form is one fused kernel whose backward regenerates z from the seed.
    if mask_shape is None:
        return _noise.gaussian_dropout(input, std, generator)
    z = _noise.normal(mask_shape, dtype=input.dtype, device=input.device, generator=generator)
    return input * z.mul_(std).add_(1.0)
