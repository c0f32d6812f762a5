r"""A per-layer-rate MLP and weight-scaling inference (folding (1 − p) into the next layer).

The seeds' network: z⁽ˡ⁾ = W⁽ˡ⁾(m⁽ˡ⁻¹⁾ ⊙ a⁽ˡ⁻¹⁾) + b⁽ˡ⁾, a⁽ˡ⁾ = f(z⁽ˡ⁾), with its own rate p⁽ˡ⁾ per
layer of units (input 0.1–0.2, hidden 0.2–0.5, output 0), and at test time
a⁽ˡ⁾ = f(W⁽ˡ⁾ · (1 − p⁽ˡ⁻¹⁾) · a⁽ˡ⁻¹⁾ + b⁽ˡ⁾).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from dropkit._validate import check_positive_int, check_probability, check_scaling
from dropkit.layers.base import DropoutBase, is_dropout_module
from dropkit.layers.elementwise import Dropout

__all__ = ["MLP", "fold_dropout_scaling", "layer_rates"]

DEFAULT_INPUT_P = 0.2
DEFAULT_HIDDEN_P = 0.5


def layer_rates(sizes: Sequence[int], p: float | Sequence[float] | None) -> list[float]:
    """One dropout rate per layer of units: input, each hidden layer, output.

    ``p=None`` follows the seeds' advice: 0.2 on the input, 0.5 on hidden layers, 0 on the output.
    A number is used for every hidden layer (input and output 0). A list of ``len(sizes) - 1``
    rates covers the input and hidden layers (output 0); a list of ``len(sizes)`` adds the
    output's.

    Example:
        >>> layer_rates([10, 20, 20, 3], None)
        [0.2, 0.5, 0.5, 0.0]
        >>> layer_rates([10, 20, 3], 0.3)
        [0.0, 0.3, 0.0]
        >>> layer_rates([10, 20, 3], [0.1, 0.4])
        [0.1, 0.4, 0.0]
    """
    n_layers = len(sizes)
    if p is None:
        rates: list[object] = [DEFAULT_INPUT_P] + [DEFAULT_HIDDEN_P] * (n_layers - 2) + [0.0]
    elif isinstance(p, numbers.Real) and not isinstance(p, bool):
        rates = [0.0] + [p] * (n_layers - 2) + [0.0]
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
        raise TypeError(
            f"p must be a number, a list of numbers or None, got {p!r} of type {type(p).__name__}"
        )
    return [check_probability(r, f"p[{i}]") for i, r in enumerate(rates)]


class MLP(nn.Sequential):
    r"""A multilayer perceptron with one dropout rate per layer of units.

    The layers are ``input_dropout, fc1, act1, dropout1, fc2, …, fcL`` (and ``output_dropout`` if
    its rate is above 0): the seeds' z⁽ˡ⁾ = W⁽ˡ⁾(m⁽ˡ⁻¹⁾ ⊙ a⁽ˡ⁻¹⁾) + b⁽ˡ⁾ with
    m⁽ˡ⁻¹⁾ ~ Bernoulli(1 − p⁽ˡ⁻¹⁾). A dropout module is placed before every Linear layer, even at
    p = 0 (where it is the identity), so a scheduler or a search can change its rate later. The
    last layer has no activation: it returns logits (pair it with ``nn.CrossEntropyLoss``).

    Args:
        sizes: units per layer, input first, output last (at least 2 positive ints).
        p: rates, see :func:`layer_rates` (default: 0.2 input, 0.5 hidden, 0 output).
        activation: the module class (or factory) used between layers (default ``nn.ReLU``).
        scaling: ``"inverted"`` or ``"inference"`` for every dropout layer.
        bias: whether the Linear layers have biases.

    Shape:
        input (N, sizes[0]) or (sizes[0],); output (N, sizes[-1]) or (sizes[-1],).

    Example:
        >>> import torch, dropkit
        >>> net = dropkit.MLP([40, 100, 100, 10], p=[0.1, 0.3, 0.3])
        >>> net(torch.randn(5, 40)).shape
        torch.Size([5, 10])
        >>> [m.p for m in net.modules() if isinstance(m, dropkit.Dropout)]
        [0.1, 0.3, 0.3]
        >>> [name for name, _ in net.named_children()]
        ['input_dropout', 'fc1', 'act1', 'dropout1', 'fc2', 'act2', 'dropout2', 'fc3']
    """

    def __init__(
        self,
        sizes: Sequence[int],
        p: float | Sequence[float] | None = None,
        activation: type[nn.Module] | Callable[[], nn.Module] = nn.ReLU,
        scaling: str = "inverted",
        bias: bool = True,
    ) -> None:
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
            raise TypeError(
                f"sizes must be a sequence of at least 2 positive ints (input, ..., output), "
                f"got {sizes!r}"
            )
        if len(sizes) < 2:
            raise ValueError(
                f"sizes must have at least 2 entries (input, ..., output), got {list(sizes)}"
            )
        sizes = [check_positive_int(s, f"sizes[{i}]") for i, s in enumerate(sizes)]
        check_scaling(scaling)
        if not callable(activation):
            raise TypeError(
                f"activation must be an nn.Module class or a factory returning a module, "
                f"got {activation!r}"
            )
        rates = layer_rates(sizes, p)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        n_linear = len(sizes) - 1
        for i in range(n_linear):
            name = "input_dropout" if i == 0 else f"dropout{i}"
            layers[name] = Dropout(rates[i], scaling=scaling)
            layers[f"fc{i + 1}"] = nn.Linear(sizes[i], sizes[i + 1], bias=bias)
            if i < n_linear - 1:
                layers[f"act{i + 1}"] = activation()
        if rates[-1] > 0:
            layers["output_dropout"] = Dropout(rates[-1], scaling=scaling)
        super().__init__(layers)
        self.sizes = sizes

    __jit_unused_properties__ = ["rates"]  # torch.jit.script compiles the layers, not this

    @property
    def rates(self) -> list[float]:
        """The current rate of each dropout layer, input first (output last if it has one)."""
        return [m.p for m in self.children() if isinstance(m, Dropout)]


# Layers whose weights a (1 − p) factor on their input can be folded into: they are linear in
# the input, so layer(k·x) = layer with k·W applied to x (bias unchanged).
_FOLD_INTO = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)
# Layers a factor k >= 0 passes through unchanged: f(k·x) = k·f(x) (positively homogeneous).
_PASS_THROUGH = (
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.ReLU,
    nn.LeakyReLU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)


def _eval_factor(module: nn.Module) -> float:
    """The factor a tensor-free dropout module multiplies its input by in eval."""
    if isinstance(module, DropoutBase) and module.has_scaling and module.scaling == "inference":
        return 1.0 - float(module.p)
    return 1.0


def _is_removable(module: nn.Module) -> bool:
    """A dropout module that holds no weights: in eval it is x ↦ factor·x, so it can be removed.

    Weight-level dropout (a wrapper around a Linear layer) holds parameters and is left in place.
    """
    return (
        is_dropout_module(module)
        and next(module.parameters(), None) is None
        and next(module.buffers(), None) is None
        and next(module.children(), None) is None
    )


def _leaves(seq: nn.Sequential, path: str) -> list[tuple[nn.Module, str, nn.Module, str]]:
    """(container, name, module, path) of a Sequential's layers in execution order; nested
    Sequentials are expanded, since their forward is the composition of their children."""
    out = []
    for name, child in seq.named_children():
        if isinstance(child, nn.Sequential):
            out += _leaves(child, f"{path}{name}.")
        else:
            out.append((seq, name, child, f"{path}{name}"))
    return out


def _fold_module(module: nn.Module, path: str, uses: Counter[int]) -> None:
    if isinstance(module, nn.Sequential):
        _fold_chain(_leaves(module, path), uses)
        return
    for name, child in list(module.named_children()):
        child_path = f"{path}{name}"
        if not _is_removable(child):
            _fold_module(child, child_path + ".", uses)
        elif _eval_factor(child) == 1.0:
            setattr(module, name, nn.Identity())
        else:
            raise ValueError(
                f"fold_dropout_scaling: {child_path} ({type(child).__name__}, scaling='inference') "
                f"is called from {type(module).__name__}'s own forward, so the layer its (1 - p) "
                "factor would fold into is unknown; only dropout inside an nn.Sequential, followed "
                "by a Linear or Conv layer, can be folded"
            )


def _scale_weights(
    module: nn.Module,
    factor: float,
    path: str,
    dropout_path: str,
    uses: Counter[int],
    *,
    bias: bool,
) -> None:
    params = [module.weight] + ([module.bias] if bias and module.bias is not None else [])
    if any(uses[id(param)] > 1 for param in params):
        raise ValueError(
            f"fold_dropout_scaling: the weight of {path} is shared with another layer; folding "
            f"{dropout_path}'s (1 - p) into it would rescale that layer too"
        )
    with torch.no_grad():
        for param in params:
            param.mul_(factor)


def _fold_chain(leaves: list[tuple[nn.Module, str, nn.Module, str]], uses: Counter[int]) -> None:
    # Inference dropouts whose factor is not folded yet: (path, factor, the layer before it, if
    # only pass-through layers lie between them).
    pending: list[tuple[str, float, tuple[nn.Module, str] | None]] = []
    previous: tuple[nn.Module, str] | None = (
        None  # the last Linear/Conv, if only pass-through since
    )

    def fold_backward(blocker: str) -> None:
        # k·f(W x + b) = f(k W x + k b) for the pass-through f: fold into the layer before instead.
        for dropout_path, factor, before in pending:
            if before is None:
                allowed = ", ".join(c.__name__ for c in _FOLD_INTO)
                raise ValueError(
                    f"fold_dropout_scaling: {dropout_path} uses scaling='inference' (eval output "
                    f"(1 - p)·x) but is followed by {blocker}, which the factor can neither pass "
                    f"through nor be folded into, and no {allowed} layer precedes it; allowed "
                    f"between: {', '.join(c.__name__ for c in _PASS_THROUGH)}"
                )
            _scale_weights(before[0], factor, before[1], dropout_path, uses, bias=True)
        pending.clear()

    for container, name, module, path in leaves:
        if _is_removable(module):
            factor = _eval_factor(module)
            container._modules[name] = nn.Identity()
            if factor != 1.0:
                pending.append((path, factor, previous))
            continue
        if isinstance(module, _PASS_THROUGH):
            continue
        if isinstance(module, _FOLD_INTO):
            if pending:
                # Seeds' test-time formula: f(W·(1 − p)·a + b) — the factor moves onto W.
                factor = math.prod(f for _, f, _ in pending)
                _scale_weights(module, factor, path, pending[0][0], uses, bias=False)
                pending.clear()
            previous = (module, path)
            continue
        if pending:
            fold_backward(f"{path} ({type(module).__name__})")
        previous = None
        _fold_module(module, path + ".", uses)
    if pending:
        fold_backward("nothing (the end of its nn.Sequential)")


def fold_dropout_scaling(model: nn.Module) -> nn.Module:
    r"""Returns a copy of ``model`` with no dropout ops, for weight-scaling inference.

    Each ``scaling="inference"`` dropout (eval rule y = (1 − p) x) is removed and its (1 − p)
    factor folded into the weights of the Linear/Conv layer that follows it: W ← (1 − p) W, the
    seeds' test-time formula a⁽ˡ⁾ = f(W⁽ˡ⁾·(1 − p⁽ˡ⁻¹⁾)·a⁽ˡ⁻¹⁾ + b⁽ˡ⁾). Between the two there may be
    layers the factor passes through unchanged (f(k·x) = k·f(x) for k ≥ 0: ReLU, LeakyReLU,
    max/avg pooling, Flatten, Identity, other dropout). Where no such layer follows (an output
    dropout, or one before a BatchNorm), the factor is folded into the Linear/Conv layer *before*
    it instead, weights and bias: k·f(W x + b) = f(k W x + k b). Dropout whose eval rule is the identity
    (inverted, alpha, Gaussian, torch.nn's) is removed wherever it is. Dropout modules that hold
    tensors (DropConnect, WeightDrop, EmbeddingDropout, learned rates) are layers in their own right
    and are left in place, in eval mode. The copy is in eval mode and gives the same outputs as
    ``model.eval()``; ``model`` is not changed.

    Args:
        model: any module; inference-scaled dropout must sit in an ``nn.Sequential`` (so the
            next layer is known).

    Returns:
        A deep copy in eval mode, without dropout modules.

    Raises:
        TypeError: model is not an nn.Module.
        ValueError: an inference-scaled dropout is used outside an nn.Sequential, has no
            Linear/Conv layer to fold into on either side (only pass-through layers may lie
            between: e.g. BatchNorm or Sigmoid on both sides blocks it), or the layer it folds
            into shares its weight with another; or model is itself a dropout module. The
            message names the module's path.

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
    if is_dropout_module(model):
        raise ValueError(
            f"fold_dropout_scaling: model is itself a dropout module ({type(model).__name__}); "
            "there is no layer to fold it into"
        )
    folded = copy.deepcopy(model)
    uses: Counter[int] = Counter()
    for module in folded.modules():
        for param in module._parameters.values():
            if param is not None:
                uses[id(param)] += 1
    _fold_module(folded, "", uses)
    return folded.eval()
