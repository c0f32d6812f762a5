"""A per-layer-rate MLP and weight-scaling inference (folding (1 − p) into the next layer)."""

from __future__ import annotations

import copy
import numbers
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from dropkit import ops
from dropkit._validate import check_probability, check_scaling
from dropkit.layers.base import is_dropout_module
from dropkit.layers.elementwise import Dropout

__all__ = ["MLP", "fold_dropout_scaling", "layer_rates"]


def layer_rates(sizes: Sequence[int], p: float | Sequence[float] | None) -> list[float]:
    """One dropout rate per layer of units: input, each hidden layer, output.

    ``p=None`` follows the seeds' advice: 0.2 on the input, 0.5 on hidden layers, 0 on the output.
    A float is used for every hidden layer (input and output 0). A list of ``len(sizes) - 1``
    rates covers input and hidden layers (output 0); a list of ``len(sizes)`` adds the output's.
    """
    n_layers = len(sizes)
    if p is None:
        rates = [0.2] + [0.5] * (n_layers - 2) + [0.0]
    elif isinstance(p, numbers.Real) and not isinstance(p, bool):
        rates = [0.0] + [float(p)] * (n_layers - 2) + [0.0]
    elif isinstance(p, Sequence) and not isinstance(p, (str, bytes)):
        if len(p) == n_layers - 1:
            rates = list(p) + [0.0]
        elif len(p) == n_layers:
            rates = list(p)
        else:
            raise ValueError(
                f"p must be a number or a list of {n_layers - 1} (input and hidden) or {n_layers} "
                f"(input, hidden, output) rates for sizes {list(sizes)}, got {len(p)} rates: {list(p)}"
            )
    else:
        raise TypeError(f"p must be a number, a list of numbers or None, got {p!r}")
    return [check_probability(r, f"p[{i}]") for i, r in enumerate(rates)]


class MLP(nn.Sequential):
    r"""A multilayer perceptron with one dropout rate per layer of units.

    The layers are ``input_dropout, fc1, act1, dropout1, fc2, …, fcL`` (and ``output_dropout`` if its
    rate is above 0): the seeds' z⁽ˡ⁾ = W⁽ˡ⁾(m⁽ˡ⁻¹⁾ ⊙ a⁽ˡ⁻¹⁾) + b⁽ˡ⁾. A dropout module is placed
    before every Linear layer, even at p = 0, so a scheduler or a search can change its rate later.

    Args:
        sizes: units per layer, input first, output last (at least 2 entries).
        p: rates, see :func:`layer_rates` (default: 0.2 input, 0.5 hidden, 0 output).
        activation: the module class used between layers (default ``nn.ReLU``).
        scaling: ``"inverted"`` or ``"inference"`` for every dropout layer.

    Example:
        >>> import torch, dropkit
        >>> net = dropkit.MLP([40, 100, 100, 10], p=[0.1, 0.3, 0.3])
        >>> net(torch.randn(5, 40)).shape
        torch.Size([5, 10])
        >>> [m.p for m in net.modules() if isinstance(m, dropkit.Dropout)]
        [0.1, 0.3, 0.3]
    """

    def __init__(
        self,
        sizes: Sequence[int],
        p: float | Sequence[float] | None = None,
        activation: type[nn.Module] = nn.ReLU,
        scaling: str = "inverted",
    ) -> None:
        if len(sizes) < 2 or not all(isinstance(s, numbers.Integral) and s >= 1 for s in sizes):
            raise ValueError(f"sizes must be at least 2 positive ints (input, ..., output), got {list(sizes)}")
        check_scaling(scaling)
        rates = layer_rates(sizes, p)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        n_linear = len(sizes) - 1
        for i in range(n_linear):
            name = "input_dropout" if i == 0 else f"dropout{i}"
            layers[name] = Dropout(rates[i], scaling=scaling)
            layers[f"fc{i + 1}"] = nn.Linear(sizes[i], sizes[i + 1])
            if i < n_linear - 1:
                layers[f"act{i + 1}"] = activation()
        if rates[-1] > 0:
            layers["output_dropout"] = Dropout(rates[-1], scaling=scaling)
        super().__init__(layers)
        self.sizes = list(sizes)


_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Bilinear)


def _fold_sequential(seq: nn.Sequential, prefix: str) -> None:
    names = list(seq._modules.keys())
    for idx, name in enumerate(names):
        module = seq._modules[name]
        path = f"{prefix}{name}"
        if isinstance(module, nn.Sequential):
            _fold_sequential(module, path + ".")
            continue
        if not is_dropout_module(module):
            if any(is_dropout_module(m) for m in module.modules()):
                raise ValueError(
                    f"fold_dropout_scaling: {path} ({type(module).__name__}) contains dropout modules "
                    "inside a custom forward; only nn.Sequential containers can be folded"
                )
            continue
        scaling = getattr(module, "scaling", "inverted")
        if scaling == "inverted" or float(module.p) == 0.0:
            seq._modules[name] = nn.Identity()
            continue
        keep = ops.keep_probability(float(module.p))
        following = seq._modules[names[idx + 1]] if idx + 1 < len(names) else None
        if not isinstance(following, _FOLDABLE):
            raise ValueError(
                f"fold_dropout_scaling: {path} uses scaling='inference' but is followed by "
                f"{type(following).__name__ if following is not None else 'nothing'}; (1 - p) can only "
                f"be folded into a following {', '.join(c.__name__ for c in _FOLDABLE)}"
            )
        # Seeds' test-time formula: W · (1 − p) · a — the factor moves onto the next layer's weights.
        with torch.no_grad():
            following.weight.mul_(keep)
        seq._modules[name] = nn.Identity()


def fold_dropout_scaling(model: nn.Module) -> nn.Module:
    r"""Returns a copy of ``model`` with no dropout ops, for weight-scaling inference.

    Each ``scaling="inference"`` dropout (eval rule y = (1 − p) x) is removed and its (1 − p) factor
    folded into the weights of the Linear/Conv layer that follows it: W ← (1 − p) W, the seeds'
    test-time formula f(W⁽ˡ⁾·(1 − p⁽ˡ⁻¹⁾)·a + b). Inverted dropout modules are removed (their eval
    rule is the identity). The copy is in eval mode and gives the same outputs as ``model.eval()``.

    Only dropout modules that are children of ``nn.Sequential`` containers can be folded (the next
    layer must be known); anything else raises ``ValueError`` naming the module.

    Example:
        >>> import torch, dropkit
        >>> net = dropkit.MLP([4, 8, 2], p=[0.2, 0.5], scaling="inference").eval()
        >>> folded = dropkit.fold_dropout_scaling(net)
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(folded(x), net(x), atol=1e-6)
        True
        >>> any(dropkit.is_dropout_module(m) for m in folded.modules())
        False
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    folded = copy.deepcopy(model)
    if is_dropout_module(folded):
        raise ValueError("fold_dropout_scaling: model is itself a dropout module; there is nothing to fold into")
    if isinstance(folded, nn.Sequential):
        _fold_sequential(folded, "")
    else:
        for name, child in folded.named_children():
            if isinstance(child, nn.Sequential):
                _fold_sequential(child, f"{name}.")
            elif is_dropout_module(child) and (
                getattr(child, "scaling", "inverted") == "inverted" or float(child.p) == 0.0
            ):
                setattr(folded, name, nn.Identity())
            elif any(is_dropout_module(m) for m in child.modules()):
                raise ValueError(
                    f"fold_dropout_scaling: {name} ({type(child).__name__}) holds dropout outside an "
                    "nn.Sequential; only nn.Sequential containers can be folded"
                )
    return folded.eval()


