r"""Functional dropout: one function per variant, each the single source of its rule.

Every function validates its arguments (see :mod:`dropkit._validate`) before doing any work, picks
the mask's shape, applies the scaling rule and draws the Bernoulli mask through :mod:`dropkit.ops`,
whose counter-based kernels store no mask and give the same bits on every device.

The two scalings of the seeds (Srivastava et al. 2014; the seeds' "standard" and "inverted"
dropout), with m ~ Bernoulli(1 − p) drawn afresh on every call:

=============  ==========================  =====================
scaling        training                    eval
=============  ==========================  =====================
``inverted``   y = m ⊙ x / (1 − p)         y = x
``inference``  y = m ⊙ x                   y = (1 − p) x
=============  ==========================  =====================

The scales are exact, as torch computes them: a kept unit is ``x * (1 / (1 - p))`` and the
"inference" eval output ``x * (1 - p)``, bit for bit. The mask's resolution is a separate property:
the kernels compare a 16-bit random word with ``threshold = round(p · 2^16)``, so a unit is kept with
probability :func:`dropkit.ops.keep_probability` ``= 1 − threshold/2^16``, exactly 1 − p for p on
the 2^-16 grid (0.5, 0.25, 0.1875, …) and within 2^-17 of it otherwise. Off the grid E[y_train]
differs from y_eval by a relative |keep_probability(p) − (1 − p)|/(1 − p) ≤ 2^-17/(1 − p), i.e.
at most 1.6e-5 for p ≤ 0.5 (actual figures: 6.8e-6 at p = 0.1, 4.4e-6 at 0.3, 0 at 0.5, 1.5e-5
at 0.8, 6.1e-5 at 0.9); see :func:`dropkit.ops.keep_probability`.

Masks shared along dimensions use Keras's name, ``noise_shape``: the mask's shape, one entry per
input dim, where ``None`` takes the input's size and ``1`` shares one mask value along that dim
(Flax calls the same thing ``broadcast_dims``; Keras's form also says which dims are kept apart).
Channel dropout (:func:`dropout1d`, :func:`dropout2d`, :func:`dropout3d`) is ``noise_shape`` with the
spatial dims set to 1.

Layout: :func:`dropout`, :func:`train_scale`, :func:`eval_scale` and :func:`resolve_noise_shape` live in
:mod:`dropkit._masking`, the mask rule that :mod:`dropkit.functional_variants` shares; this module
re-exports them and the public names of :mod:`dropkit.functional_variants` and
:mod:`dropkit.functional_learned`, neither of which imports it.

Papers: Srivastava et al. 2014 (dropout, Gaussian dropout), Tompson et al. 2015 (spatial dropout),
Klambauer et al. 2017 (alpha dropout).
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
    check_rank,
    check_scaling,
    check_training,
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
    "alpha_dropout_affine",
]

# Klambauer et al. 2017, SELU's fixed point: alpha' = -lambda * alpha, SELU's negative saturation.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_LAMBDA = 1.0507009873554804934193349852946
ALPHA_PRIME = -SELU_LAMBDA * SELU_ALPHA


_CHANNEL_LAYOUTS = {
    1: ("(C, L)", "(N, C, L)"),
    2: ("(C, H, W)", "(N, C, H, W)"),
    3: ("(C, D, H, W)", "(N, C, D, H, W)"),
}


def _channel_dropout(
    input: torch.Tensor,
    p: float,
    training: bool,
    inplace: bool,
    scaling: str,
    generator: torch.Generator | None,
    spatial_dims: int,
) -> torch.Tensor:
    name = f"dropout{spatial_dims}d"
    check_float_tensor(input)
    p = check_probability(p)
    check_scaling(scaling)
    check_generator(generator)
    # (N, C, *spatial) or unbatched (C, *spatial); one mask value per (sample, channel). Any other
    # rank is refused: torch guesses (a 3-D input to dropout2d becomes (N, C, L)) and warns.
    check_rank(
        input, (spatial_dims + 1, spatial_dims + 2), name, layouts=_CHANNEL_LAYOUTS[spatial_dims]
    )
    lead = input.dim() - spatial_dims
    # None (the input's size) rather than input.shape[:lead]: under torch.jit.trace and the legacy
    # ONNX exporter sizes are tensors, and the noise_shape check wants ints or None.
    noise_shape = (None,) * lead + (1,) * spatial_dims
    return dropout(
        input, p, training, inplace, scaling=scaling, noise_shape=noise_shape, generator=generator
    )


_CHANNEL_DOC = r"""Drops whole channels of a {layouts} input with probability ``p``.

    Each channel c of each sample n is kept with probability 1 − p, and its whole feature map with
    it: y[n, c] = m[n, c] · x[n, c] · s with m[n, c] ~ Bernoulli(1 − p), s = 1/(1 − p) (inverted) or
    1 (inference). Eval: y = x (inverted) or (1 − p) x (inference). {paper}An unbatched input
    {unbatched} draws one mask value per channel.

    Args:
        input: a floating-point tensor {layouts}.
        p: probability of dropping a channel, in [0, 1].
        training: apply the training rule (True) or the eval rule (False).
        inplace: write the result into ``input``.
        scaling: ``"inverted"`` (default) or ``"inference"``.
        generator: a ``torch.Generator`` to draw the mask from (default: torch's global one).

    Shape:
        input {layouts}; output the same.

    Raises:
        ValueError: the input has another rank (torch.nn.functional.{name} guesses and warns for
            some ranks; dropkit refuses them), or p is outside [0, 1].

    Example:
        >>> import torch, dropkit
        >>> y = dropkit.functional.{name}(torch.ones{example}, 0.5)
        >>> y.shape
        torch.Size({shape})
        >>> bool((y == y.flatten(2)[..., :1].reshape(y.shape[:2] + (1,) * {k})).all())
        True
    """


def dropout1d(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    scaling: str = "inverted",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    training = check_training(training)
    return _channel_dropout(input, p, training, inplace, scaling, generator, 1)


def dropout2d(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    scaling: str = "inverted",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    training = check_training(training)
    return _channel_dropout(input, p, training, inplace, scaling, generator, 2)


def dropout3d(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    scaling: str = "inverted",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    training = check_training(training)
    return _channel_dropout(input, p, training, inplace, scaling, generator, 3)


dropout1d.__doc__ = _CHANNEL_DOC.format(
    layouts="(N, C, L) or (C, L)",
    unbatched="(C, L)",
    paper="",
    name="dropout1d",
    example="(8, 16, 10)",
    shape="[8, 16, 10]",
    k=1,
)
dropout2d.__doc__ = _CHANNEL_DOC.format(
    layouts="(N, C, H, W) or (C, H, W)",
    unbatched="(C, H, W)",
    paper="Spatial dropout, Tompson et al. 2015. ",
    name="dropout2d",
    example="(8, 16, 5, 5)",
    shape="[8, 16, 5, 5]",
    k=2,
)
dropout3d.__doc__ = _CHANNEL_DOC.format(
    layouts="(N, C, D, H, W) or (C, D, H, W)",
    unbatched="(C, D, H, W)",
    paper="",
    name="dropout3d",
    example="(2, 16, 3, 4, 4)",
    shape="[2, 16, 3, 4, 4]",
    k=3,
)


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

