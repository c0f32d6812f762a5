"""Swap torch.nn's dropout modules in an existing model for dropkit's, in place.

So any model — a torchvision network, a Hugging Face block, your own — gets dropkit's counter-based
kernels and Monte-Carlo dropout's per-sample seeding with one call, keeping every rate:

=============================  ==============================================================
torch.nn                        dropkit (same p, same inplace, same training flag)
=============================  ==============================================================
``Dropout``                     :class:`dropkit.Dropout`
``Dropout1d/2d/3d``             :class:`dropkit.Dropout1d` / ``Dropout2d`` / ``Dropout3d``
``AlphaDropout``                :class:`dropkit.AlphaDropout`
``FeatureAlphaDropout``         :class:`FeatureAlphaDropout` (alpha dropout, one mask per channel)
=============================  ==============================================================

Only these exact classes are swapped: a user subclass of ``nn.Dropout`` may have its own
``forward``, so it is left alone (MC dropout still switches it on). A module shared at several
paths is replaced by one dropkit module at all of them. Dropout modules have no parameters or
buffers, so ``state_dict`` keys and values are unchanged.

A Hugging Face ``transformers`` model's attention does not drop through its ``nn.Dropout`` module
(the attention module reads its ``p`` and hands it to the attention function), so for such a model
``convert_dropout`` also switches the attention implementation to dropkit's
(:func:`dropkit.integrations.huggingface.use_dropkit_attention`): attention dropout in training
then runs through dropkit's counter-based kernel too (mask regenerated in backward, reproduced by
gradient checkpointing), while eval keeps torch's fused attention. ``attention=False`` leaves the
attention implementation alone.

One semantic difference to know: torch.nn.Dropout2d given a 3-D (N, C, L) input falls back (with a
warning) to 1-D channel dropout, while dropkit.Dropout2d reads a 3-D input as one unbatched
(C, H, W) sample; use Dropout1d for (N, C, L) inputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dropkit import functional as F
from dropkit.functional.elementwise import ALPHA_PRIME
from dropkit.integrations import huggingface
from dropkit.layers.base import scripted_threshold
from dropkit.layers.channel import Dropout1d, Dropout2d, Dropout3d
from dropkit.layers.elementwise import AlphaDropout, Dropout

__all__ = ["convert_dropout", "FeatureAlphaDropout"]


class FeatureAlphaDropout(AlphaDropout):
    r"""Alpha dropout of whole channels, as torch.nn.FeatureAlphaDropout (Klambauer et al. 2017).

    Each channel of an (N, C, *) input is kept or set to SELU's saturation value α' = −λα as a
    whole, then the affine correction of :func:`dropkit.functional.alpha_dropout` restores zero
    mean and unit variance. The mask's shape (N, C, 1, …, 1) follows the input's rank, so one
    module serves 1-D, 2-D and 3-D feature maps. Eval: identity.

    ``torch.jit.script`` compiles it in eval and in training (``inplace`` too): the scripted
    training forward draws its channel mask through dropkit's ops, the same bits as eager mode
    for the same ``torch.manual_seed`` (as Dropout1d/2d/3d).

    Args:
        p: probability of dropping a channel, in [0, 1].
        inplace: write into the input.

    Shape:
        input (N, C, *) with at least 2 dims; output the same.

    Example:
        >>> import torch
        >>> from dropkit.convert import FeatureAlphaDropout
        >>> y = FeatureAlphaDropout(0.5)(torch.ones(2, 3, 4))
        >>> bool((y == y[..., :1]).all())  # constant within each channel
        True
    """

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__(p, inplace)

    def __prepare_scriptable__(self) -> FeatureAlphaDropout:
        # TorchScript reads instance attributes, not module globals: the compiled forward's α'.
        self._alpha_prime = ALPHA_PRIME
        return super().__prepare_scriptable__()

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return scripted_feature_alpha_dropout(
                input, self._p, self.training, self.inplace, self._alpha_prime
            )
        if input.dim() < 2:
            raise ValueError(
                f"FeatureAlphaDropout expects input of rank >= 2 (N, C, *), got shape {tuple(input.shape)}"
            )
        noise_shape = (None, None) + (1,) * (input.dim() - 2)
        return F.alpha_dropout(input, self.p, self.training, self.inplace, noise_shape=noise_shape)


# TorchScript forms (torch.jit.script compiles these, never the Python path above): the same ops
# and the same bits as F.alpha_dropout with noise_shape (None, None, 1, ..., 1).
# tests/test_convert.py holds scripted_alpha_affine equal to F.alpha_dropout_affine.
def scripted_alpha_affine(p: float, alpha_prime: float) -> tuple[float, float]:
    """(a, b) of alpha dropout at drop rate p < 1 with α' = ``alpha_prime``, as
    :func:`dropkit.functional.alpha_dropout_affine`."""
    keep = 1.0 - p
    a = 1.0 / math.sqrt(keep + alpha_prime**2 * keep * (1.0 - keep))
    b = -a * (1.0 - keep) * alpha_prime
    return a, b


def _scripted_dtype_name(dtype: torch.dtype) -> str:
    # TorchScript prints a dtype as its enum number; name the non-floating ones an input can have.
    for candidate, name in [
        (torch.bool, "torch.bool"),
        (torch.uint8, "torch.uint8"),
        (torch.int8, "torch.int8"),
        (torch.int16, "torch.int16"),
        (torch.int32, "torch.int32"),
        (torch.int64, "torch.int64"),
        (torch.complex64, "torch.complex64"),
        (torch.complex128, "torch.complex128"),
    ]:
        if dtype == candidate:
            return name
    return "(a non-floating dtype)"


def scripted_feature_alpha_dropout(
    input: torch.Tensor, p: float, training: bool, inplace: bool, alpha_prime: float
) -> torch.Tensor:
    """FeatureAlphaDropout's forward under TorchScript: eval the identity; training one keep
    mask per (sample, channel) from dropkit's ops, kept a·x + b, dropped a·α' + b (α' =
    ``alpha_prime``, SELU's saturation)."""
    if not input.is_floating_point():
        raise TypeError(
            "input must be a floating-point tensor (float16, bfloat16, float32 or float64), got dtype "
            + _scripted_dtype_name(input.dtype)
        )
    if input.dim() < 2:
        raise ValueError(
            "FeatureAlphaDropout expects input of rank >= 2 (N, C, *), got shape "
            + str(input.shape)
        )
    if not training or p == 0.0:
        return input
    if p == 1.0:  # zeros (not 0·x, which is NaN for an infinite x), as eager mode
        everything = torch.ones((), dtype=torch.bool, device=input.device)
        if inplace:
            return input.masked_fill_(everything, 0.0)
        return input.masked_fill(everything, 0.0)
    a, b = scripted_alpha_affine(p, alpha_prime)
    # A written-to anchor, never a constant: TorchScript would otherwise fold the draw (see
    # dropkit.layers.base.scripted_dropout).
    anchor = torch.empty(0)
    anchor.zero_()
    seed = torch.ops.dropkit.draw_seed(anchor)
    shape = list(input.shape[:2]) + [1] * (input.dim() - 2)
    kept = torch.ops.dropkit.keep_mask(shape, seed, scripted_threshold(p), input.device)
    dropped_value = a * alpha_prime + b
    if inplace:
        return input.mul_(a).add_(b).masked_fill_(~kept, dropped_value)
    return torch.where(kept, input * a + b, input.new_full([], dropped_value))


_SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Dropout: Dropout,
    nn.Dropout1d: Dropout1d,
    nn.Dropout2d: Dropout2d,
    nn.Dropout3d: Dropout3d,
    nn.AlphaDropout: AlphaDropout,
    nn.FeatureAlphaDropout: FeatureAlphaDropout,
}


def _replacement(module: nn.Module) -> nn.Module:
    new = _SWAPS[type(module)](module.p, inplace=module.inplace)
    new.train(module.training)
    return new


def convert_dropout(model: nn.Module, *, attention: bool = True) -> tuple[nn.Module, list[str]]:
    """Replaces every torch.nn dropout module of ``model`` by dropkit's equivalent, in place.

    For a Hugging Face ``transformers`` model whose attention goes through transformers'
    attention interface, attention dropout is switched to dropkit's kernel as well (see the
    module doc); ``attention=False`` leaves it on torch's.

    Args:
        model: any ``nn.Module``.
        attention: also route a transformers model's attention dropout through dropkit.

    Returns:
        ``(model, swapped)``: the model (the same object, unless ``model`` is itself a torch.nn
        dropout module, which has no parent to be replaced in: then its dropkit replacement) and the
        qualified names of the swapped modules ("" for the model itself), in ``named_modules``
        order (a shared module is listed under each of its paths).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Example:
        >>> import torch, dropkit
        >>> from dropkit.convert import convert_dropout
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 2))
        >>> net, swapped = convert_dropout(net)
        >>> swapped, net[1]
        (['1'], Dropout(p=0.3, inplace=False))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(attention, bool):
        raise TypeError(f"attention must be a bool, got {attention!r}")
    if (
        attention
        and huggingface.is_transformers_model(model)
        and getattr(model, "_supports_attention_backend", False)
    ):
        huggingface.use_dropkit_attention(model)
    if type(model) in _SWAPS:
        return _replacement(model), [""]
    replacements: dict[int, nn.Module] = {}
    swapped: list[str] = []
    # named_modules(remove_duplicate=False) lists a shared module under every path it has.
    targets = [
        (name, m) for name, m in model.named_modules(remove_duplicate=False) if type(m) in _SWAPS
    ]
    for name, module in targets:
        new = replacements.get(id(module))
        if new is None:
            new = replacements[id(module)] = _replacement(module)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        parent._modules[child] = new
        swapped.append(name)
    return model, swapped
