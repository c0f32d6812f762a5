"""The base every dropkit dropout module shares.

It holds the rate ``p`` (checked on every assignment, so a scheduler or a search cannot set a bad
rate), ``inplace`` and ``scaling``. Monte-Carlo dropout, the rate scheduler and the audit find
dropout modules by this class (and torch.nn's ``_DropoutNd``).
"""

from __future__ import annotations

from torch import nn

from dropkit._validate import check_probability, check_scaling


class DropoutBase(nn.Module):
    """Holds ``p``, ``inplace`` and ``scaling`` and checks them once, at the boundary.

    Subclasses implement ``forward`` as one call into :mod:`dropkit.functional`.
    Set ``allow_one=False`` on subclasses whose rule is undefined at p = 1 (Gaussian dropout).
    """

    allow_one: bool = True
    has_scaling: bool = True

    def __init__(self, p: float = 0.5, inplace: bool = False, scaling: str = "inverted") -> None:
        super().__init__()
        self.p = p
        self.inplace = bool(inplace)
        self.scaling = check_scaling(scaling)

    @property
    def p(self) -> float:
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        self._p = check_probability(value, "p", allow_one=self.allow_one)

    def extra_repr(self) -> str:
        parts = [f"p={self.p}"]
        if self.inplace:
            parts.append("inplace=True")
        if self.has_scaling and self.scaling != "inverted":
            parts.append(f"scaling={self.scaling!r}")
        return ", ".join(parts)


def is_dropout_module(module: nn.Module) -> bool:
    """True for dropkit's dropout modules and torch.nn's Dropout, Dropout1d/2d/3d, AlphaDropout and
    FeatureAlphaDropout."""
    return isinstance(module, (DropoutBase, nn.modules.dropout._DropoutNd))
