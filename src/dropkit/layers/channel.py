"""Channel ("spatial") dropout: whole feature maps dropped, as torch.nn.Dropout1d/2d/3d."""

from __future__ import annotations

import torch

from dropkit import functional as F
from dropkit.layers.base import DropoutBase


class Dropout1d(DropoutBase):
    r"""Drops whole channels of a (N, C, L) or (C, L) input with probability ``p``.

    In training, each channel c is kept with probability 1 − p: y[:, c] = m_c · x[:, c] · s
    (s = 1/(1 − p) inverted, 1 inference). In eval: y = x (inverted) or (1 − p) x (inference).

    Example:
        >>> import torch, dropkit
        >>> layer = dropkit.Dropout1d(0.2)
        >>> layer(torch.randn(8, 16, 100)).shape
        torch.Size([8, 16, 100])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout1d(input, self.p, self.training, self.inplace, scaling=self.scaling)


class Dropout2d(DropoutBase):
    r"""Drops whole channels of a (N, C, H, W) or (C, H, W) input (Tompson et al. 2015).

    Example:
        >>> import torch, dropkit
        >>> dropkit.Dropout2d(0.2)(torch.randn(2, 4, 5, 5)).shape
        torch.Size([2, 4, 5, 5])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout2d(input, self.p, self.training, self.inplace, scaling=self.scaling)


class Dropout3d(DropoutBase):
    r"""Drops whole channels of a (N, C, D, H, W) or (C, D, H, W) input.

    Example:
        >>> import torch, dropkit
        >>> dropkit.Dropout3d(0.2)(torch.randn(2, 4, 3, 5, 5)).shape
        torch.Size([2, 4, 3, 5, 5])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout3d(input, self.p, self.training, self.inplace, scaling=self.scaling)
