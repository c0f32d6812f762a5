r"""Functional forms of the structured variants: DropBlock, drop-path, DropHead, attention dropout.

One function per variant holds its rule; the modules in :mod:`dropkit.layers.structured` call them.
Every Bernoulli mask here, elementwise or broadcast, is drawn through :func:`dropkit.ops.keep_mask`
or :func:`dropkit.ops.dropout_elementwise` (the counter-based kernels), and every ``1/(1 − p)`` uses
:func:`dropkit.ops.keep_probability`.

Papers:

- DropBlock: Ghiasi, Lin, Le 2018, "DropBlock: A regularization method for convolutional
  networks", https://arxiv.org/abs/1810.12890
- Stochastic depth (drop-path): Huang, Sun, Liu, Sedra, Weinberger 2016,
  https://arxiv.org/abs/1603.09382
- DropHead: Zhou, Ge, Xu, Wei, Zhou 2020, https://arxiv.org/abs/2004.13342
- DropAttention: Zehui, Liu, Zhang, Wang, Tan 2019, https://arxiv.org/abs/1907.11065
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as TF

from dropkit import ops, rng
from dropkit._masking import apply_kept, eval_scale, train_scale
from dropkit._validate import (
    check_bool,
    check_choice,
    check_float_tensor,
    check_int_tuple,
    check_min_rank,
    check_positive_int,
    check_probability,
    check_rank,
    check_scaling,
    check_training,
)

__all__ = [
    "drop_block_gamma",
    "drop_block2d",
    "drop_block3d",
    "drop_path",
    "drop_head",
    "attention_dropout",
]


# --------------------------------------------------------------------------------------------
# DropBlock
# --------------------------------------------------------------------------------------------


def drop_block_gamma(p: float, block_size: int | Sequence[int], feat_size: Sequence[int]) -> float:
    r"""The seed rate γ of DropBlock (Ghiasi et al. 2018, eq. 1), generalised to any rank.

    .. math::
        γ = \frac{p}{\prod_d b_d} \cdot \frac{\prod_d f_d}{\prod_d (f_d − b_d + 1)}

    For a square block and map this is the paper's γ = p/b² · f²/(f − b + 1)²: the expected number
    of seeds, γ·∏(f − b + 1) (seeds only where the whole block fits), times the block's area ∏b,
    equals p·∏f, the number of units dropout at rate p would drop. Overlapping blocks make the
    realised fraction slightly smaller than p (by about p·γ·∏b/2 for small γ); the count
    normalisation of :func:`drop_block2d` keeps the output's mean exact regardless.
    The seeds are drawn by dropkit's kernels, whose keep probabilities lie on a 2^-16 grid, so the
    γ actually used is ``1 − ops.keep_probability(γ)`` (within 2^-17 of γ).

    Args:
        p: the target drop rate, in [0, 1].
        block_size: the block's size, an int or one int per spatial dim.
        feat_size: the feature map's spatial size, one int per spatial dim.

    Example:
        >>> from dropkit.functional import drop_block_gamma
        >>> round(drop_block_gamma(0.1, 7, (14, 14)), 6)  # 0.1/49 · 196/64
        0.00625
    """
    p = check_probability(p)
    if isinstance(feat_size, Sequence) and not isinstance(feat_size, (str, bytes)) and feat_size:
        feat = tuple(check_positive_int(f, "feat_size") for f in feat_size)
    else:
        raise TypeError(
            f"feat_size must be a sequence of ints, one per spatial dim, got {feat_size!r}"
        )
    block = check_int_tuple(block_size, "block_size", len(feat))
    if any(b > f for b, f in zip(block, feat, strict=True)):
        raise ValueError(
            f"block_size {block} must fit in the feature map {feat}: each entry <= the matching size"
        )
    gamma = p
    for b, f in zip(block, feat, strict=True):
        gamma *= f / (b * (f - b + 1))
    return gamma


def _drop_block(
    input: torch.Tensor,
    p: float,
    block_size: int | Sequence[int],
    training: bool,
    inplace: bool,
    share_channels: bool,
    normalize: str,
    generator: torch.Generator | None,
    spatial_dims: int,
    name: str,
) -> torch.Tensor:
    check_float_tensor(input)
    p = check_probability(p, allow_one=False)
    check_rank(input, (spatial_dims + 1, spatial_dims + 2), name)
    block = check_int_tuple(block_size, "block_size", spatial_dims)
    check_bool(share_channels, "share_channels")
    check_choice(normalize, "normalize", ("batch", "sample"))
    if not training or p == 0.0:
        # No mask is drawn, so the block need not fit: the input as is (torchvision's rule too).
        return input
    spatial = tuple(input.shape[-spatial_dims:])
    if any(b > f for b, f in zip(block, spatial, strict=True)):
        raise ValueError(
            f"{name}: block_size {block} must fit in the input's spatial size {spatial} "
            "(each entry <= the matching size) in training with p > 0"
        )
    if torch.jit.is_tracing():  # before gamma: traced sizes are tensors
        rng.raise_traced_training()
    gamma = drop_block_gamma(p, block, spatial)
    lead = tuple(input.shape[:-spatial_dims])
    if share_channels:
        lead = lead[:-1] + (1,)
    # Ghiasi et al. 2018, Alg. 1: seeds only where the whole block fits, so every dropped region is
    # a union of full blocks. A seed at (i, j) is the block's first corner.
    valid = tuple(f - b + 1 for f, b in zip(spatial, block, strict=True))
    seeds = ~ops.keep_mask(lead + valid, gamma, input.device, generator=generator)
    seeds = seeds.to(torch.float32)
    pad: list[int] = []
    for b in reversed(block):
        pad += [b - 1, b - 1]
    # Dilating the seeds by the block (max-pool, stride 1) marks every unit some block covers.
    pool = TF.max_pool2d if spatial_dims == 2 else TF.max_pool3d
    dropped = pool(TF.pad(seeds, pad), kernel_size=block, stride=1)
    keep = dropped == 0
    # Alg. 1, last step: A × count(M)/count_ones(M), over the whole batch or per sample.
    if normalize == "sample" and keep.dim() == spatial_dims + 2:
        reduce_dims = tuple(range(1, keep.dim()))
        count = float(math.prod(keep.shape[1:]))
        kept = keep.sum(dim=reduce_dims, keepdim=True, dtype=torch.float32)
    else:
        count = float(keep.numel())
        kept = keep.sum(dtype=torch.float32)
    # A fully dropped mask keeps nothing, so clamping only avoids 0/0.
    return apply_kept(input, keep, count / kept.clamp_min(1.0), inplace)


def drop_block2d(
    input: torch.Tensor,
    p: float = 0.1,
    block_size: int | Sequence[int] = 7,
    training: bool = True,
    inplace: bool = False,
    *,
    share_channels: bool = False,
    normalize: str = "batch",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""DropBlock (Ghiasi et al. 2018): drops contiguous ``block_size`` squares of feature maps.

    Training, following the paper's Algorithm 1 for each (sample, channel) map of size H × W:

    1. seeds s_ij ~ Bernoulli(γ) at the (H − b_h + 1)(W − b_w + 1) corners where a full block
       fits, with γ = p/(b_h b_w) · HW/((H − b_h + 1)(W − b_w + 1)) (:func:`drop_block_gamma`);
    2. M = 1 − maxpool_b(s): every unit inside a seeded block is dropped;
    3. y = x ⊙ M · count(M)/count_ones(M).

    Normalisation (step 3) is the paper's: ``normalize="batch"`` counts over the whole mask of the
    batch, ``"sample"`` over each sample's mask. It is data-dependent, so the output's mean over
    the normalised set equals the input's exactly; a fully dropped set gives zeros. Eval: identity.

    Args:
        input: (N, C, H, W) or (C, H, W) floating-point tensor.
        p: target fraction of units to drop, in [0, 1).
        block_size: block side, an int or (b_h, b_w); each must be <= the map's size when a mask
            is drawn (training with p > 0); in eval and at p = 0 the input is returned whatever
            its size, as torchvision's ``drop_block2d`` does.
        training: apply the training rule (True) or return ``input`` (False).
        inplace: write the result into ``input``.
        share_channels: one mask per sample shared by all channels (the paper's second variant)
            instead of one per (sample, channel) map (default, which the paper found better).
        normalize: ``"batch"`` or ``"sample"``, the set count(M)/count_ones(M) is taken over.
        generator: a ``torch.Generator`` for the seeds.

    Shape:
        input (N, C, H, W) or (C, H, W); output the same.

    Example:
        >>> import torch
        >>> from dropkit.functional import drop_block2d
        >>> _ = torch.manual_seed(0)
        >>> y = drop_block2d(torch.ones(2, 3, 12, 12), p=0.2, block_size=3)
        >>> y.shape, abs(y.mean().item() - 1.0) < 1e-5  # count normalisation keeps the mean
        (torch.Size([2, 3, 12, 12]), True)
    """
    training = check_training(training)
    return _drop_block(
        input, p, block_size, training, inplace, share_channels, normalize, generator, 2,
        "drop_block2d",
    )  # fmt: skip


def drop_block3d(
    input: torch.Tensor,
    p: float = 0.1,
    block_size: int | Sequence[int] = 3,
    training: bool = True,
    inplace: bool = False,
    *,
    share_channels: bool = False,
    normalize: str = "batch",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""DropBlock on volumes: drops contiguous ``block_size`` cubes of (N, C, D, H, W) maps.

    The rule of :func:`drop_block2d` with three spatial dims: seeds ~ Bernoulli(γ) at the corners
    where a full block fits, γ = p/(b_d b_h b_w) · DHW/((D − b_d + 1)(H − b_h + 1)(W − b_w + 1)),
    dilated by a 3-d max-pool, then y = x ⊙ M · count(M)/count_ones(M). Eval: identity.

    Args:
        input: (N, C, D, H, W) or (C, D, H, W) floating-point tensor.
        p: target fraction of units to drop, in [0, 1).
        block_size: an int or (b_d, b_h, b_w), each <= the matching size.
        training, inplace, share_channels, normalize, generator: as :func:`drop_block2d`.

    Shape:
        input (N, C, D, H, W) or (C, D, H, W); output the same.

    Example:
        >>> import torch
        >>> from dropkit.functional import drop_block3d
        >>> drop_block3d(torch.ones(1, 2, 6, 6, 6), p=0.2, block_size=2).shape
        torch.Size([1, 2, 6, 6, 6])
    """
    training = check_training(training)
    return _drop_block(
        input, p, block_size, training, inplace, share_channels, normalize, generator, 3,
        "drop_block3d",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Drop-path (stochastic depth)
# --------------------------------------------------------------------------------------------


def drop_path(
    input: torch.Tensor,
    p: float = 0.1,
    training: bool = True,
    inplace: bool = False,
    *,
    mode: str = "row",
    scale_by_keep: bool = True,
    scaling: str = "inverted",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Drop-path / stochastic depth (Huang et al. 2016): drops a residual branch's whole output.

    Applied to the branch f(x) of a residual block x + f(x). Training:
    y = m · f(x) · s with m ~ Bernoulli(1 − p) drawn once per sample (``mode="row"``: mask shape
    (N, 1, …, 1)) or once for the whole batch (``mode="batch"``: mask shape (1, …, 1)), as
    ``torchvision.ops.stochastic_depth``. The scale s is 1/(1 − p) (``scaling="inverted"`` with
    ``scale_by_keep=True``, as timm and torchvision), or 1 (``scale_by_keep=False``: timm's
    unscaled variant, eval the identity; or ``scaling="inference"``: the paper's rule, eval
    y = (1 − p) f(x)).

    Args:
        input: the branch output, (N, …) floating-point tensor of rank >= 1.
        p: probability of dropping the branch, in [0, 1].
        training: apply the training rule (True) or the eval rule (False).
        inplace: write the result into ``input``.
        mode: ``"row"`` (per sample) or ``"batch"`` (one draw for the batch).
        scale_by_keep: divide kept branches by 1 − p in training (inverted scaling only).
        scaling: ``"inverted"`` or ``"inference"`` (Huang et al.'s test rule).
        generator: a ``torch.Generator`` for the mask.

    Shape:
        input (N, *); output the same.

    Example:
        >>> import torch
        >>> from dropkit.functional import drop_path
        >>> _ = torch.manual_seed(0)
        >>> y = drop_path(torch.ones(6, 3), p=0.5)
        >>> all(row in ([0.0] * 3, [2.0] * 3) for row in y.tolist())  # whole rows dropped
        True
    """
    training = check_training(training)
    check_float_tensor(input)
    p = check_probability(p)
    check_scaling(scaling)
    check_choice(mode, "mode", ("row", "batch"))
    check_bool(scale_by_keep, "scale_by_keep")
    check_min_rank(input, 1, "drop_path (N, *)")
    if not training:
        factor = eval_scale(p, scaling)
        if factor == 1.0:
            return input
        return input.mul_(factor) if inplace else input * factor
    if p == 0.0:
        return input
    ndim = input.dim()
    mask_shape = ((input.shape[0],) if mode == "row" else (1,)) + (1,) * (ndim - 1)
    scale = train_scale(p, scaling) if scale_by_keep else 1.0
    kept = ops.keep_mask(mask_shape, p, input.device, generator=generator)
    return apply_kept(input, kept, scale, inplace)


# --------------------------------------------------------------------------------------------
# Attention: DropHead and attention-weight dropout
# --------------------------------------------------------------------------------------------


def drop_head(
    input: torch.Tensor,
    p: float = 0.1,
    training: bool = True,
    inplace: bool = False,
    *,
    normalize: str = "heads",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""DropHead (Zhou et al. 2020): drops whole attention heads of a (N, H, L, D) tensor.

    Training: each head h of each sample n is kept with probability 1 − p, m_nh ~ Bernoulli(1 − p),
    and the kept heads are rescaled so the sample's total is preserved:

    - ``normalize="heads"`` (the paper's Algorithm 1): y_nh = m_nh · x_nh · H/Σ_h m_nh, a sample
      with no head kept is all zeros;
    - ``normalize="inverted"``: y_nh = m_nh · x_nh/(1 − p), the usual unbiased rescaling.

    Eval: identity. The input is the per-head output of attention (N, H, L, D), before the heads
    are concatenated; attention weights (N, H, L, S) work as well.

    Args:
        input: (N, H, L, D) floating-point tensor.
        p: probability of dropping a head, in [0, 1].
        training: apply the training rule (True) or return ``input`` (False).
        inplace: write the result into ``input``.
        normalize: ``"heads"`` or ``"inverted"``.
        generator: a ``torch.Generator`` for the mask.

    Shape:
        input (N, H, L, D); output the same.

    Example:
        >>> import torch
        >>> from dropkit.functional import drop_head
        >>> _ = torch.manual_seed(1)
        >>> y = drop_head(torch.ones(1, 4, 2, 3), p=0.5)
        >>> y[0, :, 0, 0]  # one head of four kept, rescaled by 4/1
        tensor([0., 0., 4., 0.])
    """
    training = check_training(training)
    check_float_tensor(input)
    p = check_probability(p)
    check_choice(normalize, "normalize", ("heads", "inverted"))
    check_rank(input, (4,), "drop_head (N, H, L, D)")
    if not training or p == 0.0:
        return input
    n, heads = input.shape[:2]
    keep = ops.keep_mask((n, heads, 1, 1), p, input.device, generator=generator)
    if normalize == "heads":
        kept = keep.sum(dim=1, keepdim=True, dtype=torch.float32)
        scale: float | torch.Tensor = heads / kept.clamp_min(1.0)
    else:
        scale = train_scale(p, "inverted")
    return apply_kept(input, keep, scale, inplace)


def attention_dropout(
    input: torch.Tensor,
    p: float = 0.1,
    training: bool = True,
    inplace: bool = False,
    *,
    mode: str = "element",
    normalize: str = "inverted",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Dropout on attention weights A = softmax(QKᵀ/√d), shape (…, L, S).

    Training, with m ~ Bernoulli(1 − p):

    - ``mode="element"`` drops single weights A_ls (the dropout of Vaswani et al. 2017 and of
      ``nn.MultiheadAttention``); ``mode="key"`` drops whole keys, one m_s shared by every query
      of the same (batch, head) (DropAttention(c), Zehui et al. 2019);
    - ``normalize="inverted"`` rescales by 1/(1 − p) (unbiased: E[y] = A);
      ``normalize="rows"`` renormalises each row to sum to one, y_ls = m A_ls / Σ_s' m A_ls'
      (DropAttention's normalised rescaling; a row with nothing kept is zeros).

    Eval: identity.

    Args:
        input: attention weights, floating-point tensor of rank >= 2, (…, L, S).
        p: probability of dropping a weight (or a key), in [0, 1].
        training: apply the training rule (True) or return ``input`` (False).
        inplace: write the result into ``input`` (``normalize="inverted"`` only uses it).
        mode: ``"element"`` or ``"key"``.
        normalize: ``"inverted"`` or ``"rows"``.
        generator: a ``torch.Generator`` for the mask.

    Shape:
        input (…, L, S); output the same.

    Example:
        >>> import torch
        >>> from dropkit.functional import attention_dropout
        >>> attn = torch.softmax(torch.randn(2, 4, 5, 5), dim=-1)
        >>> y = attention_dropout(attn, 0.3, normalize="rows")
        >>> bool(((y.sum(-1) - 1).abs() < 1e-5).logical_or(y.sum(-1) == 0).all())
        True
    """
    training = check_training(training)
    check_float_tensor(input)
    p = check_probability(p)
    check_choice(mode, "mode", ("element", "key"))
    check_choice(normalize, "normalize", ("inverted", "rows"))
    check_min_rank(input, 2, "attention_dropout (…, L, S)")
    if not training or p == 0.0:
        return input
    if normalize == "inverted":
        if mode == "element":
            return ops.dropout_elementwise(
                input, p, train_scale(p, "inverted"), generator=generator, inplace=inplace
            )
        mask_shape = tuple(input.shape[:-2]) + (1, input.shape[-1])
        keep = ops.keep_mask(mask_shape, p, input.device, generator=generator)
        return apply_kept(input, keep, train_scale(p, "inverted"), inplace)
    mask_shape = (
        tuple(input.shape) if mode == "element" else tuple(input.shape[:-2]) + (1, input.shape[-1])
    )
    kept = apply_kept(input, ops.keep_mask(mask_shape, p, input.device, generator=generator), 1.0)
    total = kept.sum(dim=-1, keepdim=True)
    return kept / torch.where(total == 0, torch.ones_like(total), total)
