"""Elementwise dropout modules: Dropout, AlphaDropout, GaussianDropout.

Each is a thin nn.Module over its function in :mod:`dropkit.functional`, which holds the maths.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dropkit._validate import check_noise_shape
from dropkit.functional import elementwise as F
from dropkit.layers.base import DropoutBase

__all__ = ["Dropout", "AlphaDropout", "GaussianDropout"]


def _noise_shape_repr(noise_shape: tuple[int | None, ...] | None) -> str:
    return "" if noise_shape is None else f", noise_shape={noise_shape}"


class Dropout(DropoutBase):
    r"""Drops each unit with probability ``p`` in training (Srivastava et al. 2014).

    Training: y = m ⊙ x · s, m ~ Bernoulli(1 − p), a new mask every call; s = 1/(1 − p) with
    ``scaling="inverted"`` (default, as torch.nn.Dropout), s = 1 with ``scaling="inference"``.
    Eval: y = x (inverted) or y = (1 − p) x (inference: the seeds' standard dropout; fold the
    factor into the next layer with :func:`dropkit.fold_dropout_scaling`). See
    :func:`dropkit.functional.dropout`.

    Args:
        p: probability of dropping a unit, in [0, 1].
        inplace: write into the input.
        scaling: ``"inverted"`` or ``"inference"``.
        noise_shape: the mask's shape, one entry per input dim (Keras's ``noise_shape``): None
            takes the input's size and 1 shares one mask value along that dim, e.g.
            ``(None, 1, None)`` on (N, T, C) for one mask per sequence shared over time.

    Shape:
        input any shape (any rank with ``noise_shape=None``, else its length); output the same.

    Example:
        >>> import torch, dropkit
        >>> layer = dropkit.Dropout(0.2)
        >>> layer(torch.randn(8, 16)).shape
        torch.Size([8, 16])
        >>> layer
        Dropout(p=0.2, inplace=False)
        >>> dropkit.Dropout(0.5, scaling="inference").eval()(torch.ones(2))
        tensor([0.5000, 0.5000])
    """

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        scaling: str = "inverted",
        noise_shape: Sequence[int | None] | None = None,
    ) -> None:
        super().__init__(p, inplace, scaling)
        self.noise_shape = check_noise_shape(noise_shape)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.scripted_forward(input, 0)
        return F.dropout(
            input,
            self._p,  # the validated rate behind the ``p`` property (one lookup fewer per call)
            self.training,
            self.inplace,
            scaling=self.scaling,
            noise_shape=self.noise_shape,
        )

    def _scripted_training_supported(self) -> bool:
        return self.noise_shape is None

    def extra_repr(self) -> str:
        return super().extra_repr() + _noise_shape_repr(self.noise_shape)


class AlphaDropout(DropoutBase):
    r"""Alpha dropout for self-normalising (SELU) networks (Klambauer et al. 2017).

    Keeps zero mean and unit variance of its input: dropped units take SELU's saturation value
    α' = −λα, then y = a·(m ⊙ x + α'(1 − m)) + b restores the moments, with q = 1 − p,
    a = (q + α'² q (1 − q))^(−1/2), b = −a (1 − q) α'. Eval: identity. As
    torch.nn.AlphaDropout; ``noise_shape`` (e.g. ``(None, None, 1, 1)``) gives
    torch.nn.FeatureAlphaDropout's channel-wise form. See :func:`dropkit.functional.alpha_dropout`.

    Args:
        p: probability of dropping a unit, in [0, 1].
        inplace: write into the input.
        noise_shape: the mask's shape, as in :class:`Dropout`.

    Shape:
        input any shape; output the same.

    Example:
        >>> import torch, dropkit
        >>> dropkit.AlphaDropout(0.1)(torch.randn(4, 3)).shape
        torch.Size([4, 3])
        >>> dropkit.AlphaDropout(0.1)
        AlphaDropout(p=0.1, inplace=False)
    """

    has_scaling = False

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        noise_shape: Sequence[int | None] | None = None,
    ) -> None:
        super().__init__(p, inplace)
        self.noise_shape = check_noise_shape(noise_shape)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.scripted_forward(input, -1)
        return F.alpha_dropout(
            input, self.p, self.training, self.inplace, noise_shape=self.noise_shape
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + _noise_shape_repr(self.noise_shape)


class GaussianDropout(DropoutBase):
    r"""Multiplicative Gaussian noise N(1, p/(1 − p)) (Srivastava et al. 2014, sec. 10).

    y = x ⊙ ε with ε ~ N(1, p/(1 − p)): the same mean and variance as inverted Bernoulli dropout's
    factor m/(1 − p), so E[y] = x; eval is the identity. p in [0, 1). Not in torch.nn (Keras has
    ``GaussianDropout``); there is no ``inplace``: the noise is drawn as a tensor anyway.
    See :func:`dropkit.functional.gaussian_dropout`.

    Args:
        p: the Bernoulli rate whose variance the noise matches, in [0, 1).
        noise_shape: the noise's shape, as in :class:`Dropout`.

    Shape:
        input any shape; output the same.

    Example:
        >>> import torch, dropkit
        >>> dropkit.GaussianDropout(0.3).eval()(torch.ones(2))
        tensor([1., 1.])
        >>> dropkit.GaussianDropout(0.3)
        GaussianDropout(p=0.3)
    """

    allow_one = False
    has_scaling = False

    def __init__(self, p: float = 0.5, noise_shape: Sequence[int | None] | None = None) -> None:
        super().__init__(p)
        self.noise_shape = check_noise_shape(noise_shape)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return self.scripted_forward(input, -1)
        return F.gaussian_dropout(input, self.p, self.training, noise_shape=self.noise_shape)

    def extra_repr(self) -> str:
        return f"p={self.p}" + _noise_shape_repr(self.noise_shape)
