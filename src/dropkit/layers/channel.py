"""Channel ("spatial") dropout: whole feature maps dropped, as torch.nn.Dropout1d/2d/3d.

One difference from torch.nn: an input of any rank other than the two documented ones (batched and
unbatched) is refused with a ValueError. torch accepts some of them with a warning and guesses
(a 3-D input to Dropout2d is treated as (N, C, L), not as the documented unbatched (C, H, W));
dropkit treats (C, H, W) as its docs say, one mask value per channel.
"""

from __future__ import annotations

import torch

from dropkit.functional import channel as F
from dropkit.layers.base import DropoutBase

__all__ = ["Dropout1d", "Dropout2d", "Dropout3d"]


class Dropout1d(DropoutBase):
    r"""Drops whole channels of a (N, C, L) or (C, L) input with probability ``p``.

    In training, each channel c of each sample is kept with probability 1 − p:
    y[n, c] = m[n, c] · x[n, c] · s with m[n, c] ~ Bernoulli(1 − p), s = 1/(1 − p) (inverted) or
    1 (inference). In eval: y = x (inverted) or (1 − p) x (inference).
    See :func:`dropkit.functional.dropout1d`.

    Args:
        p: probability of dropping a channel, in [0, 1].
        inplace: write into the input.
        scaling: ``"inverted"`` (default) or ``"inference"``.

    Shape:
        input (N, C, L) or (C, L); output the same. Other ranks raise ValueError.

    Example:
        >>> import torch, dropkit
        >>> layer = dropkit.Dropout1d(0.2)
        >>> layer(torch.randn(8, 16, 100)).shape
        torch.Size([8, 16, 100])
        >>> layer
        Dropout1d(p=0.2, inplace=False)
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.scripted_forward(input, 1)
        return F.dropout1d(input, self.p, self.training, self.inplace, scaling=self.scaling)


class Dropout2d(DropoutBase):
    r"""Drops whole channels of a (N, C, H, W) or (C, H, W) input (spatial dropout, Tompson et
    al. 2015).

    Adjacent pixels of a feature map are strongly correlated, so dropping single pixels barely
    regularises a convolutional layer; dropping the whole map does. In training,
    y[n, c] = m[n, c] · x[n, c] · s with m[n, c] ~ Bernoulli(1 − p), s = 1/(1 − p) (inverted) or
    1 (inference); eval: y = x (inverted) or (1 − p) x (inference).
    See :func:`dropkit.functional.dropout2d`.

    Args:
        p: probability of dropping a channel, in [0, 1].
        inplace: write into the input.
        scaling: ``"inverted"`` (default) or ``"inference"``.

    Shape:
        input (N, C, H, W) or (C, H, W); output the same. Other ranks raise ValueError (torch
        treats a 3-D input as (N, C, L) with a warning; dropkit as the documented (C, H, W)).

    Example:
        >>> import torch, dropkit
        >>> dropkit.Dropout2d(0.2)(torch.randn(2, 4, 5, 5)).shape
        torch.Size([2, 4, 5, 5])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.scripted_forward(input, 2)
        return F.dropout2d(input, self.p, self.training, self.inplace, scaling=self.scaling)


class Dropout3d(DropoutBase):
    r"""Drops whole channels of a (N, C, D, H, W) or (C, D, H, W) input with probability ``p``.

    In training, y[n, c] = m[n, c] · x[n, c] · s with m[n, c] ~ Bernoulli(1 − p),
    s = 1/(1 − p) (inverted) or 1 (inference); eval: y = x (inverted) or (1 − p) x (inference).
    See :func:`dropkit.functional.dropout3d`.

    Args:
        p: probability of dropping a channel, in [0, 1].
        inplace: write into the input.
        scaling: ``"inverted"`` (default) or ``"inference"``.

    Shape:
        input (N, C, D, H, W) or (C, D, H, W); output the same. Other ranks raise ValueError.

    Example:
        >>> import torch, dropkit
        >>> dropkit.Dropout3d(0.2)(torch.randn(2, 4, 3, 5, 5)).shape
        torch.Size([2, 4, 3, 5, 5])
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.scripted_forward(input, 3)
        return F.dropout3d(input, self.p, self.training, self.inplace, scaling=self.scaling)
