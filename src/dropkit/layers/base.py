"""The base every dropkit dropout module shares.

It holds the rate ``p`` (checked on every assignment, so a scheduler or a search cannot set a bad
rate), ``inplace`` and ``scaling``. Monte-Carlo dropout, the rate scheduler and the audit find
dropout modules by this class (and torch.nn's ``_DropoutNd``) through :func:`is_dropout_module`.

A dropout module holds no tensors: its ``state_dict`` is empty, so a model's state_dict is the same
with dropkit's or torch's dropout layers and loads into either.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dropkit import ops
from dropkit._validate import check_probability, check_scaling

__all__ = ["DropoutBase", "is_dropout_module", "ScriptError"]


class ScriptError(TypeError):
    """A layer that ``torch.jit.script`` cannot compile: the message names it and the alternative."""


def refuse_scripting(module: nn.Module, reason: str) -> None:
    """Raises :class:`ScriptError` for ``module`` (called from ``__prepare_scriptable__``)."""
    raise ScriptError(
        f"{type(module).__name__} cannot be compiled by torch.jit.script: {reason}. Use "
        "torch.jit.trace or torch.export.export (eval), or torch.compile, instead"
    )


# TorchScript forms (torch.jit.script compiles these, never the Python paths): the same ops and
# the same bits as eager mode. ops.threshold's rule, restated in TorchScript (its cache is not
# scriptable); tests/test_conformance.py holds the two equal.
def scripted_threshold(p: float) -> int:
    return int(math.floor(p * 65536.0 + 0.5))


def scripted_scales(p: float, scaling: str) -> tuple[float, float]:
    """(training scale, eval factor) for ``scaling``, as dropkit.functional's exact rule."""
    if scaling == "inference":
        return 1.0, 1.0 - p
    return (0.0 if p == 1.0 else 1.0 / (1.0 - p)), 1.0


def scripted_dropout(
    input: torch.Tensor, p: float, training: bool, scaling: str, spatial_dims: int
) -> torch.Tensor:
    """Dropout (``spatial_dims`` = 0) or channel dropout under TorchScript, through dropkit's ops."""
    train_scale, eval_factor = scripted_scales(p, scaling)
    if not training:
        return input * eval_factor if eval_factor != 1.0 else input
    if p == 0.0:
        return input
    # TorchScript's optimiser treats a custom op as pure: with a constant anchor it would
    # constant-fold the draw (one seed, one mask, forever). A written-to anchor is never constant.
    anchor = torch.empty(0)
    anchor.zero_()
    seed = torch.ops.dropkit.draw_seed(anchor)
    if spatial_dims == 0:
        return torch.ops.dropkit.dropout_with_seed(
            input, seed, 0, scripted_threshold(p), train_scale
        )
    shape = list(input.shape[: input.dim() - spatial_dims]) + [1] * spatial_dims
    kept = torch.ops.dropkit.keep_mask(shape, seed, scripted_threshold(p), input.device)
    y = torch.where(kept, input, torch.zeros((), dtype=input.dtype, device=input.device))
    return y * train_scale if train_scale != 1.0 else y


# ops must be imported so that torch.ops.dropkit.* exist when a layer is scripted.
_OPS = ops


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
    # TorchScript: properties are compiled unless listed here; forward reads ``_p``.
    __jit_unused_properties__ = ["p"]

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

    def __prepare_scriptable__(self) -> DropoutBase:
        # torch.jit.script calls this on every submodule before compiling: record what the
        # compiled forward needs (TorchScript reads instance attributes, not class ones).
        self._script_name = type(self).__name__
        self._script_trains = not self.inplace and self._scripted_training_supported()
        return self

    def _scripted_training_supported(self) -> bool:
        return True

    def scripted_forward(self, input: torch.Tensor, spatial_dims: int) -> torch.Tensor:
        """The forward TorchScript compiles for a tensor-free layer. Eval: × (1 − p) for
        ``scaling="inference"``, else the identity (every such layer's eval rule). Training:
        dropout (``spatial_dims`` 0) or channel dropout through dropkit's ops, the same bits as
        eager mode; a layer with ``spatial_dims`` < 0 (another mask) or ``inplace`` raises."""
        if self.training:
            if spatial_dims < 0 or not self._script_trains:
                raise RuntimeError(
                    self._script_name + " cannot run its training forward under TorchScript (only "
                    "its eval forward, or training with inplace=False for Dropout and Dropout1d/2d/"
                    "3d): train in eager mode or with torch.compile"
                )
        return scripted_dropout(input, self._p, self.training, self.scaling, spatial_dims)

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
