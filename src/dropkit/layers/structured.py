r"""Structured dropout: contiguous blocks (DropBlock), whole residual branches (DropPath), whole
attention heads (DropHead) and attention weights.

Each module holds its state (``p`` and the variant's options) and calls one function of
:mod:`dropkit.functional.structured`, which holds the maths.

Papers: DropBlock, Ghiasi et al. 2018 (https://arxiv.org/abs/1810.12890); stochastic depth,
Huang et al. 2016 (https://arxiv.org/abs/1603.09382); DropHead, Zhou et al. 2020
(https://arxiv.org/abs/2004.13342); DropAttention, Zehui et al. 2019
(https://arxiv.org/abs/1907.11065).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dropkit._validate import (
    check_bool,
    check_choice,
    check_int_tuple,
    check_positive_int,
    check_probability,
)
from dropkit.functional import structured as F
from dropkit.layers.base import DropoutBase

__all__ = [
    "DropBlock2d",
    "DropBlock3d",
    "DropPath",
    "drop_path_rates",
    "DropHead",
    "AttentionDropout",
]


class _DropBlockNd(DropoutBase):
    allow_one = False
    has_scaling = False
    _spatial_dims = 2

    def __init__(
        self,
        p: float = 0.1,
        block_size: int | Sequence[int] = 7,
        *,
        share_channels: bool = False,
        normalize: str = "batch",
        inplace: bool = False,
    ) -> None:
        super().__init__(p, inplace)
        self.block_size = check_int_tuple(block_size, "block_size", self._spatial_dims)
        self.share_channels = check_bool(share_channels, "share_channels")
        self.normalize = check_choice(normalize, "normalize", ("batch", "sample"))

    def extra_repr(self) -> str:
        parts = [super().extra_repr(), f"block_size={self.block_size}"]
        if self.share_channels:
            parts.append("share_channels=True")
        if self.normalize != "batch":
            parts.append(f"normalize={self.normalize!r}")
        return ", ".join(parts)


class DropBlock2d(_DropBlockNd):
    r"""DropBlock (Ghiasi et al. 2018): drops contiguous ``block_size`` squares of (N, C, H, W) maps.

    Training: seeds ~ Bernoulli(γ) at the corners where a whole block fits, with the paper's
    γ = p/(b_h b_w) · HW/((H − b_h + 1)(W − b_w + 1)); every unit of a seeded block is dropped
    (a max-pool of the seed mask), and the kept units are scaled by count(M)/count_ones(M) over
    the batch (``normalize="batch"``, the paper's Algorithm 1) or per sample (``"sample"``).
    Eval: identity. See :func:`dropkit.functional.drop_block2d`.

    Args:
        p: target fraction of units to drop, in [0, 1).
        block_size: block side, an int or (b_h, b_w); must fit in the input's map in training with p > 0 (eval and p = 0 return the input).
        share_channels: one block mask per sample shared by all channels.
        normalize: ``"batch"`` or ``"sample"``.
        inplace: write the result into the input.

    Shape:
        input (N, C, H, W) or (C, H, W); output the same.

    Example:
        >>> import torch, dropkit
        >>> layer = dropkit.DropBlock2d(p=0.1, block_size=3)
        >>> layer
        DropBlock2d(p=0.1, inplace=False, block_size=(3, 3))
        >>> layer(torch.randn(2, 4, 10, 10)).shape
        torch.Size([2, 4, 10, 10])
    """

    _spatial_dims = 2

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.scripted_forward(input, -1)
        return F.drop_block2d(
            input, self.p, self.block_size, self.training, self.inplace,
            share_channels=self.share_channels, normalize=self.normalize,
        )  # fmt: skip


class DropBlock3d(_DropBlockNd):
    r"""DropBlock on volumes: drops contiguous ``block_size`` cubes of (N, C, D, H, W) maps.

    The rule of :class:`DropBlock2d` with three spatial dims and
    γ = p/(b_d b_h b_w) · DHW/((D − b_d + 1)(H − b_h + 1)(W − b_w + 1)). Eval: identity.

    Args:
        p: target fraction of units to drop, in [0, 1).
        block_size: an int or (b_d, b_h, b_w); must fit in the input's volume in training with p > 0.
        share_channels, normalize, inplace: as :class:`DropBlock2d`.

    Shape:
        input (N, C, D, H, W) or (C, D, H, W); output the same.

    Example:
        >>> import torch, dropkit
        >>> dropkit.DropBlock3d(p=0.1, block_size=2)(torch.randn(1, 2, 4, 4, 4)).shape
        torch.Size([1, 2, 4, 4, 4])
    """

    _spatial_dims = 3

    def __init__(
        self,
        p: float = 0.1,
        block_size: int | Sequence[int] = 3,
        *,
        share_channels: bool = False,
        normalize: str = "batch",
        inplace: bool = False,
    ) -> None:
        super().__init__(
            p, block_size, share_channels=share_channels, normalize=normalize, inplace=inplace
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.scripted_forward(input, -1)
        return F.drop_block3d(
            input, self.p, self.block_size, self.training, self.inplace,
            share_channels=self.share_channels, normalize=self.normalize,
        )  # fmt: skip


class DropPath(DropoutBase):
    r"""Drop-path / stochastic depth (Huang et al. 2016) for the branch of a residual block.

    Put it on the branch: ``x + drop_path(f(x))``. Training: the branch output of each sample
    (``mode="row"``) or of the whole batch (``mode="batch"``) is kept with probability 1 − p and
    scaled by 1/(1 − p) (``scale_by_keep``, timm and torchvision's default). With
    ``scaling="inference"`` (the paper's rule) kept branches are not scaled in training and eval
    multiplies the branch by 1 − p. Same semantics as ``torchvision.ops.StochasticDepth(p, mode)``.
    See :func:`dropkit.functional.drop_path` and :func:`drop_path_rates`.

    Args:
        p: probability of dropping the branch, in [0, 1].
        mode: ``"row"`` (per sample) or ``"batch"``.
        scale_by_keep: scale kept branches by 1/(1 − p) in training (inverted scaling).
        scaling: ``"inverted"`` or ``"inference"``.
        inplace: write the result into the input.

    Shape:
        input (N, *); output the same.

    Example:
        >>> import torch, dropkit
        >>> blocks = [dropkit.DropPath(r) for r in dropkit.drop_path_rates(0.2, 3)]
        >>> blocks
        [DropPath(p=0.0, inplace=False), DropPath(p=0.1, inplace=False), DropPath(p=0.2, inplace=False)]
        >>> blocks[2](torch.randn(4, 8)).shape
        torch.Size([4, 8])
    """

    def __init__(
        self,
        p: float = 0.1,
        *,
        mode: str = "row",
        scale_by_keep: bool = True,
        scaling: str = "inverted",
        inplace: bool = False,
    ) -> None:
        super().__init__(p, inplace, scaling)
        self.mode = check_choice(mode, "mode", ("row", "batch"))
        self.scale_by_keep = check_bool(scale_by_keep, "scale_by_keep")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.scripted_forward(input, -1)
        return F.drop_path(
            input, self.p, self.training, self.inplace,
            mode=self.mode, scale_by_keep=self.scale_by_keep, scaling=self.scaling,
        )  # fmt: skip

    def extra_repr(self) -> str:
        parts = [super().extra_repr()]
        if self.mode != "row":
            parts.append(f"mode={self.mode!r}")
        if not self.scale_by_keep:
            parts.append("scale_by_keep=False")
        return ", ".join(parts)


def drop_path_rates(
    drop_path_rate: float, depth: int, *, first_is_zero: bool = True
) -> list[float]:
    r"""Per-block drop-path rates rising linearly over depth.

    ``first_is_zero=True`` (timm's ``torch.linspace(0, rate, depth)`` and torchvision's
    ``rate · i/(depth − 1)``): p_i = rate · i/(depth − 1) for i = 0 … depth − 1, the first block never
    dropped, the last at ``drop_path_rate`` (a single block gets 0). ``first_is_zero=False``
    (Huang et al. 2016's linear decay rule, p_l = l/L · p_L): p_l = rate · l/depth for l = 1 … depth.

    Args:
        drop_path_rate: the last block's rate, in [0, 1].
        depth: the number of residual blocks, >= 1.
        first_is_zero: timm/torchvision's rule (True) or Huang et al.'s (False).

    Returns:
        ``depth`` floats, non-decreasing, the last equal to ``drop_path_rate`` (for depth >= 2).

    Example:
        >>> import dropkit
        >>> dropkit.drop_path_rates(0.3, 4)
        [0.0, 0.1, 0.2, 0.3]
        >>> dropkit.drop_path_rates(0.3, 3, first_is_zero=False)
        [0.1, 0.2, 0.3]
    """
    rate = check_probability(drop_path_rate, "drop_path_rate")
    depth = check_positive_int(depth, "depth")
    check_bool(first_is_zero, "first_is_zero")
    if first_is_zero:
        if depth == 1:
            return [0.0]
        # Rounding keeps printed rates tidy (0.1, not 0.10000000000000002); well below any tolerance.
        return [round(rate * i / (depth - 1), 12) for i in range(depth)]
    return [round(rate * i / depth, 12) for i in range(1, depth + 1)]


class DropHead(DropoutBase):
    r"""DropHead (Zhou et al. 2020): drops whole attention heads of (N, H, L, D) tensors.

    Training: each (sample, head) is kept with probability 1 − p; kept heads are rescaled by
    H/(number of kept heads) of their sample (``normalize="heads"``, the paper's) or by 1/(1 − p)
    (``"inverted"``). Eval: identity. Apply it to the per-head attention output before the heads
    are merged. See :func:`dropkit.functional.drop_head`.

    Args:
        p: probability of dropping a head, in [0, 1].
        normalize: ``"heads"`` or ``"inverted"``.
        inplace: write the result into the input.

    Shape:
        input (N, H, L, D); output the same.

    Example:
        >>> import torch, dropkit
        >>> dropkit.DropHead(0.25)(torch.randn(2, 8, 5, 16)).shape
        torch.Size([2, 8, 5, 16])
    """

    has_scaling = False

    def __init__(self, p: float = 0.1, *, normalize: str = "heads", inplace: bool = False) -> None:
        super().__init__(p, inplace)
        self.normalize = check_choice(normalize, "normalize", ("heads", "inverted"))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.scripted_forward(input, -1)
        return F.drop_head(input, self.p, self.training, self.inplace, normalize=self.normalize)

    def extra_repr(self) -> str:
        parts = [super().extra_repr()]
        if self.normalize != "heads":
            parts.append(f"normalize={self.normalize!r}")
        return ", ".join(parts)


class AttentionDropout(DropoutBase):
    r"""Dropout on attention weights, applied to the softmax output A (…, L, S).

    ``mode="element"`` drops single weights (as ``nn.MultiheadAttention``'s dropout),
    ``mode="key"`` drops whole keys for every query (DropAttention(c)); ``normalize="inverted"``
    rescales by 1/(1 − p), ``"rows"`` renormalises each row to sum to one (DropAttention).
    Eval: identity. See :func:`dropkit.functional.attention_dropout`.

    Args:
        p: probability of dropping a weight (or key), in [0, 1].
        mode: ``"element"`` or ``"key"``.
        normalize: ``"inverted"`` or ``"rows"``.
        inplace: write the result into the input.

    Shape:
        input (…, L, S); output the same.

    Example:
        >>> import torch, dropkit
        >>> q = k = v = torch.randn(2, 4, 6, 8)  # (N, heads, L, head_dim)
        >>> attn = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1)
        >>> out = dropkit.AttentionDropout(0.1)(attn) @ v
        >>> out.shape
        torch.Size([2, 4, 6, 8])
    """

    has_scaling = False

    def __init__(
        self,
        p: float = 0.1,
        *,
        mode: str = "element",
        normalize: str = "inverted",
        inplace: bool = False,
    ) -> None:
        super().__init__(p, inplace)
        self.mode = check_choice(mode, "mode", ("element", "key"))
        self.normalize = check_choice(normalize, "normalize", ("inverted", "rows"))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.scripted_forward(input, -1)
        return F.attention_dropout(
            input, self.p, self.training, self.inplace, mode=self.mode, normalize=self.normalize
        )

    def extra_repr(self) -> str:
        parts = [super().extra_repr()]
        if self.mode != "element":
            parts.append(f"mode={self.mode!r}")
        if self.normalize != "inverted":
            parts.append(f"normalize={self.normalize!r}")
        return ", ".join(parts)
