r"""The mask rule every functional module shares: the scales, ``noise_shape``, applying a kept mask,
and :func:`dropout` itself.

One home for what every module of :mod:`dropkit.functional` builds on, so that none of them imports
a sibling (``dropkit.functional`` re-exports the public names here: it stays the public API). See :mod:`dropkit.functional` for the scaling table and the mask's resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dropkit import ops
from dropkit._validate import (
    check_float_tensor,
    check_generator,
    check_mask_shape,
    check_noise_shape,
    check_probability,
    check_scaling,
    check_training,
)

__all__ = ["apply_kept", "dropout", "eval_scale", "resolve_noise_shape", "train_scale"]


def apply_kept(
    x: torch.Tensor, kept: torch.Tensor, scale: float | torch.Tensor, inplace: bool = False
) -> torch.Tensor:
    """y = x · scale where ``kept`` (broadcast), else exactly 0, even where x is inf or NaN (as the
    fused kernels and :func:`dropout`): ∂y/∂x = kept · scale."""
    if isinstance(scale, torch.Tensor):
        scale = scale.to(x.dtype)
    unit = isinstance(scale, float) and scale == 1.0
    if inplace:
        x.masked_fill_(~kept, 0.0)
        return x if unit else x.mul_(scale)
    y = torch.where(kept, x, x.new_zeros(()))
    # In place on where's fresh output: one allocation, and where's backward needs only ``kept``.
    return y if unit else y.mul_(scale)


def train_scale(p: float, scaling: str = "inverted") -> float:
    r"""The factor kept units are multiplied by in training.

    s = 1/(1 − p) for ``"inverted"``, 1 for ``"inference"``; at p = 1 (nothing kept) s = 0 instead
    of 1/0, so forward and backward stay free of inf and NaN. Exact: ``1.0 / (1.0 - p)`` in double
    precision, the value torch's dropout multiplies by.

    Example:
        >>> train_scale(0.5, "inverted"), train_scale(0.5, "inference"), train_scale(1.0)
        (2.0, 1.0, 0.0)
    """
    return _train_scale(check_probability(p), check_scaling(scaling))


def _train_scale(p: float, scaling: str) -> float:
    if scaling == "inference":
        return 1.0
    return ops.dropout_scale(p)


def eval_scale(p: float, scaling: str = "inverted") -> float:
    r"""The factor every unit is multiplied by in eval: 1 − p for ``"inference"``, 1 for ``"inverted"``.

    Example:
        >>> eval_scale(0.25, "inference"), eval_scale(0.25, "inverted")
        (0.75, 1.0)
    """
    return _eval_scale(check_probability(p), check_scaling(scaling))


def _eval_scale(p: float, scaling: str) -> float:
    return 1.0 - p if scaling == "inference" else 1.0


def resolve_noise_shape(
    noise_shape: Sequence[int | None] | None, shape: torch.Size | Sequence[int]
) -> tuple[int, ...] | None:
    """Fills in Keras's ``noise_shape`` for an input of ``shape`` and checks that it broadcasts.

    ``None`` entries take the input's size; an entry of 1 shares one mask value along that dim;
    any other entry must equal the input's size. Returns None when the mask is elementwise (the
    input's own shape), else the mask's shape.

    Raises:
        TypeError: noise_shape is not a sequence of ints and Nones.
        ValueError: it has the wrong number of entries or does not broadcast to ``shape``.

    Example:
        >>> resolve_noise_shape((None, 1, None), (8, 50, 16))
        (8, 1, 16)
        >>> resolve_noise_shape((None, None), (8, 16)) is None
        True
    """
    entries = check_noise_shape(noise_shape)
    if entries is None:
        return None
    if len(entries) != len(shape):
        raise ValueError(
            f"noise_shape {entries} must have one entry per input dim: {len(shape)} for the "
            f"input's shape {tuple(shape)}, got {len(entries)}"
        )
    filled = [
        int(size) if entry is None else entry for entry, size in zip(entries, shape, strict=True)
    ]
    mask_shape = check_mask_shape(filled, shape, name="noise_shape")
    return None if mask_shape == tuple(shape) else mask_shape


# (p, scaling) -> (threshold, train scale) for checked float rates 0 < p <= 1: dropout's fast path.
_FAST: dict[tuple[float, str], tuple[int, float]] = {}


def _masked(
    x: torch.Tensor,
    p: float,
    scale: float,
    mask_shape: tuple[int, ...] | None,
    generator: torch.Generator | None,
    inplace: bool,
) -> torch.Tensor:
    """y = m ⊙ x · scale, with m elementwise (fused kernel) or of ``mask_shape``, broadcast."""
    if mask_shape is None:
        return ops.dropout_elementwise(x, p, scale, generator=generator, inplace=inplace)
    # A shared mask is small (one entry per broadcast position): draw it, then broadcast. A dropped
    # unit is exactly 0 even where x is inf or NaN (as in the fused kernel), and the scale is a
    # Python scalar applied once, so a shared mask rounds exactly as an elementwise one.
    kept = ops.keep_mask(mask_shape, p, x.device, generator=generator)
    return apply_kept(x, kept, scale, inplace)


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

    Training: y = m ⊙ x · s with m ~ Bernoulli(1 − p) drawn afresh on each call, s = 1/(1 − p)
    (``scaling="inverted"``) or s = 1 (``scaling="inference"``). Eval: y = x (inverted) or
    y = (1 − p) x (inference). Gradients flow only through kept units: ∂L/∂x = m · s ⊙ ∂L/∂y.
    p = 0 returns the input; p = 1 returns zeros (s = 0, no inf or NaN).

    Args:
        input: a floating-point tensor of any shape.
        p: probability of dropping a unit, in [0, 1].
        training: apply the training rule (True) or the eval rule (False).
        inplace: write the result into ``input`` (as ``torch.nn.functional.dropout``).
        scaling: ``"inverted"`` (default) or ``"inference"``.
        noise_shape: the mask's shape, one entry per input dim (Keras's convention): None takes
            the input's size, 1 shares one mask value along that dim. ``(None, 1, None)`` on an
            (N, T, C) input draws one mask per sequence and feature, shared over time.
        generator: a ``torch.Generator`` to draw the mask from (default: torch's global one, so
            ``torch.manual_seed`` reproduces the mask).

    Shape:
        input any shape; output the same shape and dtype.

    Raises:
        TypeError: input is not a floating-point tensor, p is not a number, scaling is not a string.
        ValueError: p outside [0, 1] or NaN, an unknown scaling, a noise_shape that does not
            broadcast to the input.

    Example:
        >>> import torch, dropkit
        >>> x = torch.ones(4, 5)
        >>> y = dropkit.functional.dropout(x, 0.5)
        >>> set(y.flatten().tolist()) <= {0.0, 2.0}
        True
        >>> dropkit.functional.dropout(x, 0.5, training=False, scaling="inference")[0]
        tensor([0.5000, 0.5000, 0.5000, 0.5000, 0.5000])
        >>> z = dropkit.functional.dropout(torch.ones(2, 3, 4), 0.5, noise_shape=(None, 1, None))
        >>> bool((z == z[:, :1]).all())  # one mask per (sample, feature), shared along dim 1
        True
    """
    if training is not True and training is not False:
        training = check_training(training)
    if training and noise_shape is None and generator is None and type(p) is float:
        # Fast path, the call every training step makes: a rate seen before (checked then, its
        # threshold and scale cached) and a plain floating-point tensor; the same checks, done by
        # the cache lookup and two type tests, then straight to the kernel.
        cached = _FAST.get((p, scaling)) if type(scaling) is str else None
        if cached is not None and type(input) is torch.Tensor and input.is_floating_point():
            return ops.dropout_prechecked(input, cached[0], cached[1], inplace)
    check_float_tensor(input)
    p_in = p
    p = check_probability(p)
    check_scaling(scaling)
    check_generator(generator)
    mask_shape = resolve_noise_shape(noise_shape, input.shape)
    if training and p > 0.0 and type(p_in) is float and len(_FAST) < 4096:
        _FAST[(p_in, scaling)] = (ops.threshold(p), _train_scale(p, scaling))
    if not training:
        factor = _eval_scale(p, scaling)
        if factor == 1.0:
            return input
        return input.mul_(factor) if inplace else input * factor
    if p == 0.0:
        return input
    return _masked(input, p, _train_scale(p, scaling), mask_shape, generator, inplace)
