"""Elementwise dropout modules: Dropout, AlphaDropout, GaussianDropout."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dropkit import functional as F
from dropkit.layers.base import DropoutBase


class Dropout(DropoutBase):
    r"""Drops each unit with probability ``p`` in training (Srivastava et al. 2014).

    Training: y = m ⊙ x · s, m ~ Bernoulli(1 − p), a new mask every call; s = 1/(1 − p) with
    ``scaling="inverted"`` (default), s = 1 with ``scaling="inference"``. Eval: y = x (inverted) or
    y = (1 − p) x (inference: the seeds' standard dropout; fold it into the next layer with
    :func:`dropkit.fold_dropout_scaling`).

    Args:
        p: probability of dropping a unit, in [0, 1].
        inplace: write into the input.
        scaling: ``"inverted"`` or ``"inference"``.
        noise_shape: the mask's shape, one entry per input dim; None takes the input's size and 1
            shares the mask along that dim (Keras's ``noise_shape``).

    Shape:
        input any shape; output the same.

    Example:
        >>> import torch, dropkit
        >>> layer = dropkit.Dropout(0.2)
        >>> layer(torch.randn(8, 16)).shape
        torch.Size([8, 16])
        >>> layer
        Dropout(p=0.2)
    """

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        scaling: str = "inverted",
        noise_shape: Sequence[int | None] | None = None,
    ) -> None:
        super().__init__(p, inplace, scaling)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout(
            input, self.p, self.training, self.inplace, scaling=self.scaling, noise_shape=self.noise_shape
        )

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return extra + (f", noise_shape={self.noise_shape}" if self.noise_shape is not None else "")


class AlphaDropout(DropoutBase):
    r"""Alpha dropout for self-normalising (SELU) networks (Klambauer et al. 2017).

    Keeps zero mean and unit variance of its input: dropped units take SELU's saturation value
    α' = −λα and an affine correction follows. Eval: identity.

    Example:
        >>> import torch, dropkit
        >>> dropkit.AlphaDropout(0.1)(torch.randn(4, 3)).shape
        torch.Size([4, 3])
    """

    has_scaling = False

    def __init__(
        self, p: float = 0.5, inplace: bool = False, noise_shape: Sequence[int | None] | None = None
    ) -> None:
        super().__init__(p, inplace)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.alpha_dropout(input, self.p, self.training, self.inplace, noise_shape=self.noise_shape)


class GaussianDropout(DropoutBase):
    r"""Multiplicative Gaussian noise N(1, p/(1 − p)) (Srivastava et al. 2014, sec. 10).

    The same mean and variance as inverted Bernoulli dropout's factor; eval is the identity.
    p in [0, 1).

    Example:
        >>> import torch, dropkit
        >>> dropkit.GaussianDropout(0.3).eval()(torch.ones(2))
        tensor([1., 1.])
    """

    allow_one = False
    has_scaling = False

    def __init__(self, p: float = 0.5, noise_shape: Sequence[int | None] | None = None) -> None:
        super().__init__(p)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.gaussian_dropout(input, self.p, self.training, noise_shape=self.noise_shape)
