r"""Channel dropout: :func:`dropout1d`, :func:`dropout2d` and :func:`dropout3d` drop whole channels.

Each is :func:`dropkit.functional.dropout` with ``noise_shape`` set to 1 along the spatial dims (one
mask value per sample and channel), after checking the input's rank, which torch's functional forms
guess. :mod:`dropkit.layers.channel` holds their modules.

Paper: Tompson et al. 2015 (spatial dropout).
"""

from __future__ import annotations

import torch

from dropkit._masking import dropout
from dropkit._validate import (
    check_float_tensor,
    check_generator,
    check_probability,
    check_rank,
    check_scaling,
    check_training,
)

__all__ = ["dropout1d", "dropout2d", "dropout3d"]


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
