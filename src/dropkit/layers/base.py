"""The base every dropkit dropout module shares.

It holds the rate ``p`` (checked on every assignment, so a scheduler or a search cannot set a bad
rate), ``inplace`` and ``scaling``. Monte-Carlo dropout, the rate scheduler and the audit find
dropout modules by this class (and torch.nn's ``_DropoutNd``) through :func:`is_dropout_module`.

A dropout module holds no tensors: its ``state_dict`` is empty, so a model's state_dict is the same
with dropkit's or torch's dropout layers and loads into either.
"""

from __future__ import annotations

from torch import nn

from dropkit._validate import check_probability, check_scaling

__all__ = ["DropoutBase", "is_dropout_module"]


class DropoutBase(nn.Module):
    """Holds ``p``, ``inplace`` and ``scaling`` and checks them once, at the boundary.

    Subclasses implement ``forward`` as one call into :mod:`dropkit.functional`, passing
    ``self.training``, so ``train()``/``eval()`` switch the rule.

    Class attributes:
        allow_one: whether p = 1 is allowed (False for Gaussian dropout, undefined at p = 1).
        has_scaling: whether ``scaling`` means anything for this variant (False for alpha and
            Gaussian dropout, whose rules fix the scale); if False, only "inverted" is accepted
            and it is not shown in the repr.

    Args:
        p: probability of dropping a unit, in [0, 1] ([0, 1) if ``allow_one`` is False).
        inplace: write the result into the input, as torch.nn's ``inplace``.
        scaling: ``"inverted"`` (scale kept units by 1/(1 − p) in training) or ``"inference"``
            (no scale in training, × (1 − p) in eval).

    Example:
        >>> import dropkit
        >>> layer = dropkit.Dropout(0.3, scaling="inference")
        >>> layer
        Dropout(p=0.3, inplace=False, scaling='inference')
        >>> layer.p = 0.1  # re-validated: layer.p = 2 raises ValueError
        >>> dropkit.is_dropout_module(layer)
        True
    """

    allow_one: bool = True
    has_scaling: bool = True

    def __init__(self, p: float = 0.5, inplace: bool = False, scaling: str = "inverted") -> None:
        super().__init__()
        self.p = p
        self.inplace = bool(inplace)
        self.scaling = check_scaling(scaling)
        if not self.has_scaling and self.scaling != "inverted":
            raise ValueError(
                f"scaling must be 'inverted' for {type(self).__name__} (its rule fixes the scale), "
                f"got {scaling!r}"
            )

    @property
    def p(self) -> float:
        """The drop rate; assigning it re-validates."""
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        self._p = check_probability(value, "p", allow_one=self.allow_one)

    def extra_repr(self) -> str:
        """``p=…, inplace=…`` as torch.nn, then ``scaling`` when it is not the default."""
        parts = [f"p={self.p}", f"inplace={self.inplace}"]
        if self.has_scaling and self.scaling != "inverted":
            parts.append(f"scaling={self.scaling!r}")
        return ", ".join(parts)


def is_dropout_module(module: nn.Module) -> bool:
    """True for dropkit's dropout modules and torch.nn's dropout modules.

    torch.nn's are Dropout, Dropout1d/2d/3d, AlphaDropout and FeatureAlphaDropout (all subclass
    ``torch.nn.modules.dropout._DropoutNd``).

    Example:
        >>> import torch, dropkit
        >>> [dropkit.is_dropout_module(m) for m in (dropkit.Dropout2d(), torch.nn.Dropout(), torch.nn.ReLU())]
        [True, True, False]
    """
    return isinstance(module, (DropoutBase, nn.modules.dropout._DropoutNd))
