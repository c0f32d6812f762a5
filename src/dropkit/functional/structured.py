r"""Functional forms of the structured, weight-level, sequence and attention variants.

One function per variant holds its rule; the modules in :mod:`dropkit.layers.structured`,
:mod:`dropkit.layers.weights` and :mod:`dropkit.layers.sequence` call them. Every Bernoulli mask
here, elementwise or broadcast, is drawn through :func:`dropkit.ops.keep_mask` or
:func:`dropkit.ops.dropout_elementwise` (the counter-based kernels), and every ``1/(1 − p)`` uses
:func:`dropkit.ops.keep_probability`.

Papers:

- DropBlock: Ghiasi, Lin, Le 2018, "DropBlock: A regularization method for convolutional
  networks", https://arxiv.org/abs/1810.12890
- Stochastic depth (drop-path): Huang, Sun, Liu, Sedra, Weinberger 2016,
  https://arxiv.org/abs/1603.09382
- DropHead: Zhou, Ge, Xu, Wei, Zhou 2020, https://arxiv.org/abs/2004.13342
- DropAttention: Zehui, Liu, Zhang, Wang, Tan 2019, https://arxiv.org/abs/1907.11065
- DropConnect: Wan, Zeiler, Zhang, LeCun, Fergus 2013, http://proceedings.mlr.press/v28/wan13.html
- Locked (variational) dropout: Gal & Ghahramani 2016, https://arxiv.org/abs/1512.05287
- Weight-drop and embedding dropout: Merity, Keskar, Socher 2017 (AWD-LSTM),
  https://arxiv.org/abs/1708.02182
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as TF
from torch.nn.utils.rnn import PackedSequence

from dropkit import noise as _noise
from dropkit import ops, rng
from dropkit._masking import apply_kept, dropout, eval_scale, train_scale
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
    "drop_connect",
    "drop_connect_linear",
    "drop_connect_conv",
    "drop_connect_linear_moments",
    "drop_connect_moment_matching",
    "locked_dropout",
    "embedding_dropout",
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
        >>> from dropkit.functional_variants import drop_block_gamma
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
        >>> from dropkit.functional_variants import drop_block2d
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
        >>> from dropkit.functional_variants import drop_block3d
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
        >>> from dropkit.functional_variants import drop_path
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
        >>> from dropkit.functional_variants import drop_head
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
        >>> from dropkit.functional_variants import attention_dropout
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
        >>> from dropkit.functional_variants import drop_connect
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
        >>> from dropkit.functional_variants import drop_connect_linear
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
        >>> from dropkit.functional_variants import drop_connect_linear_moments
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
        >>> from dropkit.functional_variants import drop_connect_moment_matching
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
        >>> from dropkit.functional_variants import drop_connect_conv
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


# --------------------------------------------------------------------------------------------
# Sequences: locked dropout and embedding dropout
# --------------------------------------------------------------------------------------------


def locked_dropout(
    input: torch.Tensor | PackedSequence,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    batch_first: bool = False,
    scaling: str = "inverted",
    generator: torch.Generator | None = None,
) -> torch.Tensor | PackedSequence:
    r"""Locked (variational) dropout (Gal & Ghahramani 2016): one mask per sequence, all time steps.

    Training: y_t = m ⊙ x_t · s for every step t, with m ~ Bernoulli(1 − p) of shape (N, C) drawn
    once per sequence (mask shape (1, N, C) for (T, N, C) input, (N, 1, C) with ``batch_first``),
    s = 1/(1 − p) (inverted) or 1 (inference). Eval: x (inverted) or (1 − p) x (inference).
    A ``PackedSequence`` gets one mask row per sequence too, applied to every packed step.

    Args:
        input: (T, N, C), (N, T, C) with ``batch_first``, unbatched (T, C), or a PackedSequence.
        p: probability of dropping a feature of a sequence, in [0, 1].
        training: apply the training rule (True) or the eval rule (False).
        inplace: write the result into ``input`` (tensors only).
        batch_first: input is (N, T, C) (as ``nn.LSTM(batch_first=True)``).
        scaling: ``"inverted"`` or ``"inference"``.
        generator: a ``torch.Generator`` for the mask.

    Shape:
        input (T, N, C); output the same.

    Example:
        >>> import torch
        >>> from dropkit.functional_variants import locked_dropout
        >>> y = locked_dropout(torch.ones(5, 2, 3), 0.5)
        >>> bool((y == y[0]).all())  # the same mask at every time step
        True
    """
    training = check_training(training)
    check_bool(batch_first, "batch_first")
    if isinstance(input, PackedSequence):
        data = check_float_tensor(input.data, "input.data")
        p = check_probability(p)
        check_scaling(scaling)
        check_rank(data, (2,), "locked_dropout (PackedSequence data)", "input.data")
        if not training:
            factor = eval_scale(p, scaling)
            return input if factor == 1.0 else input._replace(data=data * factor)
        if p == 0.0:
            return input
        batch_sizes = input.batch_sizes
        n = int(batch_sizes[0])
        mask = ops.keep_mask((n, data.shape[1]), p, data.device, generator=generator)
        # Packed step t holds sequences 0 … batch_sizes[t] − 1 (in sorted order).
        rows = torch.cat([torch.arange(int(b)) for b in batch_sizes]).to(data.device)
        return input._replace(data=apply_kept(data, mask[rows], train_scale(p, scaling)))
    check_float_tensor(input)
    check_rank(input, (2, 3), "locked_dropout (T, N, C)")
    if input.dim() == 2:
        noise_shape: tuple[int | None, ...] = (1, None)
    elif batch_first:
        noise_shape = (None, 1, None)
    else:
        noise_shape = (1, None, None)
    return dropout(
        input, p, training, inplace, scaling=scaling, noise_shape=noise_shape, generator=generator
    )


def embedding_dropout(
    input: torch.Tensor,
    weight: torch.Tensor,
    p: float = 0.1,
    training: bool = True,
    *,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    scaling: str = "inverted",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Embedding (word) dropout (Gal & Ghahramani 2016; Merity et al. 2017): whole rows dropped.

    Training: each row v of the embedding matrix (each word type) is kept with probability 1 − p,
    m_v ~ Bernoulli(1 − p), and y = (diag(m) W · s)[input]: every occurrence of a dropped word in
    the batch is the zero vector, kept words are scaled by s = 1/(1 − p) (inverted) or 1
    (inference). Eval: W[input] (inverted) or (1 − p) W[input] (inference). The mask is one value
    per row, gathered per token, so the (V, D) matrix is never copied (sparse gradients work).

    Args:
        input: integer tensor of token ids, any shape.
        weight: (V, D) embedding matrix.
        p: probability of dropping a word type, in [0, 1].
        training: apply the training rule (True) or the eval rule (False).
        padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse: as
            ``torch.nn.functional.embedding``.
        scaling: ``"inverted"`` or ``"inference"``.
        generator: a ``torch.Generator`` for the mask.

    Shape:
        input (*) integer; output (*, D).

    Example:
        >>> import torch
        >>> from dropkit.functional_variants import embedding_dropout
        >>> ids = torch.tensor([[1, 2, 1, 1]])
        >>> y = embedding_dropout(ids, torch.ones(4, 3), p=0.5)
        >>> torch.equal(y[0, 0], y[0, 2]) and torch.equal(y[0, 0], y[0, 3])  # word 1 is one draw
        True
    """
    training = check_training(training)
    if (
        not isinstance(input, torch.Tensor)
        or input.is_floating_point()
        or input.is_complex()
        or input.dtype == torch.bool
    ):
        got = input.dtype if isinstance(input, torch.Tensor) else type(input).__name__
        raise TypeError(
            f"embedding_dropout: input must be an integer tensor of token ids, got {got}"
        )
    check_float_tensor(weight, "weight")
    check_rank(weight, (2,), "embedding_dropout", "weight")
    p = check_probability(p)
    check_scaling(scaling)
    out = TF.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)
    if not training:
        factor = eval_scale(p, scaling)
        return out if factor == 1.0 else out * factor
    if p == 0.0:
        return out
    rows = ops.keep_mask((weight.shape[0],), p, weight.device, generator=generator)
    return apply_kept(out, rows[input].unsqueeze(-1), train_scale(p, scaling))
