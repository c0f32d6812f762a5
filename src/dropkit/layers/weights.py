r"""Weight-level dropout: DropConnect layers and weight-drop for recurrent networks.

DropConnect (Wan et al. 2013, http://proceedings.mlr.press/v28/wan13.html) drops weights, not
activations. :class:`DropConnectLinear` and :class:`DropConnectConv1d`/``2d``/``3d`` subclass the
matching ``torch.nn`` layer (same parameters, same state_dict keys, drop-in replacements) and add
``p``; :class:`WeightDrop` (Merity et al. 2017, AWD-LSTM, https://arxiv.org/abs/1708.02182) applies
DropConnect to the hidden-to-hidden weights of an ``nn.LSTM``/``nn.GRU``/``nn.RNN``.

All of them subclass :class:`~dropkit.layers.base.DropoutBase`, so the rate scheduler and MC dropout
find them. Being layers, not pure dropout, they expose :meth:`to_plain`, the equivalent
torch.nn layer for eval-mode inference.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as TF
from torch import nn
from torch.func import functional_call

from dropkit._masking import eval_scale, train_scale
from dropkit._validate import check_bool, check_scaling
from dropkit.functional import weights as F
from dropkit.layers.base import DropoutBase, refuse_scripting

__all__ = [
    "DropConnectLinear",
    "DropConnectConv1d",
    "DropConnectConv2d",
    "DropConnectConv3d",
    "WeightDrop",
]


class _DropConnectMixin:
    """State shared by the DropConnect layers (set after the torch.nn layer's own __init__)."""

    has_scaling = True

    def _init_drop(self, p: float, per_sample: bool, drop_bias: bool, scaling: str) -> None:
        self.p = p  # type: ignore[attr-defined]
        self.scaling = check_scaling(scaling)
        self.per_sample = check_bool(per_sample, "per_sample")
        self.drop_bias = check_bool(drop_bias, "drop_bias")

    def scripted_eval_parameters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) of the eval rule, for the TorchScript forward: W and b, or (1 − p) W
        (and (1 − p) b with ``drop_bias``) for inference scaling. Training raises."""
        if self.training:  # type: ignore[attr-defined]
            raise RuntimeError(
                self._script_name + " cannot run its training forward under TorchScript (only "  # type: ignore[attr-defined]
                "eval): train in eager mode or with torch.compile"
            )
        weight: torch.Tensor = self.weight  # type: ignore[attr-defined]
        bias: torch.Tensor | None = self.bias  # type: ignore[attr-defined]
        if self.scaling == "inference":
            factor = 1.0 - self._p  # type: ignore[attr-defined]
            weight = weight * factor
            if bias is not None and self.drop_bias:
                bias = bias * factor
        return weight, bias

    def _drop_repr(self) -> str:
        parts = [f"p={self.p}"]  # type: ignore[attr-defined]
        if self.per_sample:
            parts.append("per_sample=True")
        if self.drop_bias:
            parts.append("drop_bias=True")
        if self.scaling != "inverted":
            parts.append(f"scaling={self.scaling!r}")
        return ", ".join(parts)

    def _plain_state(self) -> dict[str, torch.Tensor]:
        """The parameters of the equivalent plain layer in eval (W, or (1 − p) W for inference)."""
        factor = eval_scale(self.p, self.scaling)  # type: ignore[attr-defined]
        state = {}
        for name, value in self.state_dict().items():  # type: ignore[attr-defined]
            scaled = name == "weight" or (name == "bias" and self.drop_bias)
            state[name] = value * factor if scaled else value.clone()
        return state


class DropConnectLinear(_DropConnectMixin, nn.Linear, DropoutBase):
    r"""A Linear layer with DropConnect (Wan et al. 2013): y = x (M ⊙ W)ᵀ s + b.

    Training: M_ij ~ Bernoulli(1 − p), one mask per mini-batch (default) or per sample
    (``per_sample=True``, computed as one batched product); s = 1/(1 − p) (inverted) or 1
    (inference). Eval: ``nn.Linear`` (inverted) or ``nn.Linear`` with weights (1 − p) W (inference,
    the paper's mean-weight inference). :meth:`moment_matching` gives Wan et al.'s Gaussian
    moment-matching inference of a(layer(x)). See
    :func:`dropkit.functional.drop_connect_linear`.

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.
        p: probability of dropping a weight, in [0, 1].
        per_sample: one weight mask per sample instead of one per mini-batch.
        drop_bias: mask the bias too (the paper folds b into W).
        scaling: ``"inverted"`` or ``"inference"``.

    Shape:
        input (*, in_features) ((N, *, in_features) with per_sample); output (*, out_features).

    Example:
        >>> import torch, dropkit
        >>> layer = dropkit.DropConnectLinear(8, 4, p=0.3)
        >>> layer
        DropConnectLinear(in_features=8, out_features=4, bias=True, p=0.3)
        >>> layer(torch.randn(5, 8)).shape
        torch.Size([5, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        p: float = 0.5,
        *,
        per_sample: bool = False,
        drop_bias: bool = False,
        scaling: str = "inverted",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._init_drop(p, per_sample, drop_bias, scaling)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            weight, bias = self.scripted_eval_parameters()
            return TF.linear(input, weight, bias)
        return F.drop_connect_linear(
            input, self.weight, self.bias, self.p, self.training,
            per_sample=self.per_sample, drop_bias=self.drop_bias, scaling=self.scaling,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"{nn.Linear.extra_repr(self)}, {self._drop_repr()}"

    @classmethod
    def from_linear(cls, linear: nn.Linear, p: float = 0.5, **kwargs: object) -> DropConnectLinear:
        """A DropConnectLinear with a copy of ``linear``'s parameters.

        Example:
            >>> import torch, dropkit
            >>> dense = torch.nn.Linear(3, 2)
            >>> dc = dropkit.DropConnectLinear.from_linear(dense, p=0.5).eval()
            >>> x = torch.randn(4, 3)
            >>> torch.equal(dc(x), dense(x))
            True
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        layer = cls(
            linear.in_features, linear.out_features, linear.bias is not None, p,
            device=w.device, dtype=w.dtype, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        layer.load_state_dict(linear.state_dict())
        return layer

    def moment_matching(
        self,
        input: torch.Tensor,
        activation: Callable[[torch.Tensor], torch.Tensor] = torch.relu,
        num_samples: int = 1000,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """a(layer(input)) by Wan et al.'s Gaussian moment-matching inference (their Algorithm 2).

        See :func:`dropkit.functional.drop_connect_moment_matching`.

        Example:
            >>> import torch, dropkit
            >>> layer = dropkit.DropConnectLinear(16, 4, p=0.5)
            >>> layer.moment_matching(torch.randn(2, 16), num_samples=32).shape
            torch.Size([2, 4])
        """
        return F.drop_connect_moment_matching(
            input, self.weight, self.bias, self.p, activation, num_samples,
            drop_bias=self.drop_bias, scaling=self.scaling, generator=generator,
        )  # fmt: skip

    def to_plain(self) -> nn.Linear:
        """The ``nn.Linear`` this layer computes in eval (weights scaled by 1 − p for inference).

        Example:
            >>> import torch, dropkit
            >>> dc = dropkit.DropConnectLinear(3, 2, p=0.5, scaling="inference").eval()
            >>> x = torch.randn(4, 3)
            >>> torch.allclose(dc.to_plain()(x), dc(x))
            True
        """
        w = self.weight
        plain = nn.Linear(
            self.in_features, self.out_features, self.bias is not None, w.device, w.dtype
        )
        plain.load_state_dict(self._plain_state())
        return plain


class _DropConnectConvNd(_DropConnectMixin):
    _plain_cls: type[nn.modules.conv._ConvNd]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            weight, bias = self.scripted_eval_parameters()
            return self._conv_forward(input, weight, bias)  # type: ignore[attr-defined]
        if self.padding_mode != "zeros":  # type: ignore[attr-defined]
            # As nn.ConvNd: pad explicitly for reflect/replicate/circular, then convolve unpadded.
            input = TF.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)  # type: ignore[attr-defined]
            padding: object = 0
        else:
            padding = self.padding  # type: ignore[attr-defined]
        return F.drop_connect_conv(
            input, self.weight, self.bias, self.p, self.training,  # type: ignore[attr-defined]
            stride=self.stride, padding=padding, dilation=self.dilation, groups=self.groups,  # type: ignore[attr-defined]
            per_sample=self.per_sample, drop_bias=self.drop_bias, scaling=self.scaling,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"{self._plain_cls.extra_repr(self)}, {self._drop_repr()}"  # type: ignore[arg-type]

    def _conv_config(self) -> dict[str, object]:
        return {
            "in_channels": self.in_channels,  # type: ignore[attr-defined]
            "out_channels": self.out_channels,  # type: ignore[attr-defined]
            "kernel_size": self.kernel_size,  # type: ignore[attr-defined]
            "stride": self.stride,  # type: ignore[attr-defined]
            "padding": self.padding,  # type: ignore[attr-defined]
            "dilation": self.dilation,  # type: ignore[attr-defined]
            "groups": self.groups,  # type: ignore[attr-defined]
            "bias": self.bias is not None,  # type: ignore[attr-defined]
            "padding_mode": self.padding_mode,  # type: ignore[attr-defined]
            "device": self.weight.device,  # type: ignore[attr-defined]
            "dtype": self.weight.dtype,  # type: ignore[attr-defined]
        }

    @classmethod
    def from_conv(cls, conv: nn.modules.conv._ConvNd, p: float = 0.5, **kwargs: object):  # type: ignore[no-untyped-def]
        """A DropConnect convolution with a copy of ``conv``'s configuration and parameters.

        Example:
            >>> import torch, dropkit
            >>> conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            >>> dc = dropkit.DropConnectConv2d.from_conv(conv, p=0.2).eval()
            >>> x = torch.randn(1, 3, 5, 5)
            >>> torch.equal(dc(x), conv(x))
            True
        """
        if type(conv) is not cls._plain_cls:
            raise TypeError(
                f"conv must be an nn.{cls._plain_cls.__name__}, got {type(conv).__name__}"
            )
        config = _DropConnectConvNd._conv_config(conv)  # type: ignore[arg-type]
        layer = cls(p=p, **config, **kwargs)  # type: ignore[call-arg]
        layer.load_state_dict(conv.state_dict())
        return layer

    def to_plain(self) -> nn.modules.conv._ConvNd:
        """The torch.nn convolution this layer computes in eval (weights (1 − p) W for inference)."""
        plain = self._plain_cls(**self._conv_config())  # type: ignore[arg-type]
        plain.load_state_dict(self._plain_state())
        return plain


_CONV_ARGS_DOC = """
    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype: as the matching ``torch.nn`` convolution.
        p: probability of dropping a kernel weight, in [0, 1].
        per_sample: one weight mask per sample (a grouped convolution) instead of one per batch.
        drop_bias: mask the bias too.
        scaling: ``"inverted"`` or ``"inference"``.
"""


def _make_conv(plain: type[nn.modules.conv._ConvNd], k: int, example: str) -> type:
    def __init__(
        self: nn.Module,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | str | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        p: float = 0.5,
        *,
        per_sample: bool = False,
        drop_bias: bool = False,
        scaling: str = "inverted",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        plain.__init__(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
            padding_mode, device, dtype,
        )  # fmt: skip
        self._init_drop(p, per_sample, drop_bias, scaling)  # type: ignore[operator]

    doc = f"""A {plain.__name__} with DropConnect (Wan et al. 2013): kernel weights dropped, not activations.

    Training: y = conv(x, M ⊙ W · s) + b, M ~ Bernoulli(1 − p) of W's shape, one mask per
    mini-batch (default) or per sample (``per_sample=True``, one grouped convolution); s = 1/(1 − p)
    (inverted) or 1 (inference). Eval: the plain convolution with W (inverted) or (1 − p) W
    (inference). See :func:`dropkit.functional.drop_connect_conv`.
{_CONV_ARGS_DOC}
    Shape:
        as ``nn.{plain.__name__}`` ((N, C, *) with ``per_sample``).

    Example:
{example}
    """
    name = f"DropConnect{plain.__name__}"
    cls = type(
        name,
        (_DropConnectConvNd, plain, DropoutBase),
        {"__init__": __init__, "__doc__": doc, "_plain_cls": plain, "__module__": __name__},
    )
    cls.__qualname__ = name
    return cls


DropConnectConv1d = _make_conv(
    nn.Conv1d,
    1,
    """        >>> import torch, dropkit
        >>> dropkit.DropConnectConv1d(2, 3, 3, p=0.2)(torch.randn(4, 2, 10)).shape
        torch.Size([4, 3, 8])""",
)
DropConnectConv2d = _make_conv(
    nn.Conv2d,
    2,
    """        >>> import torch, dropkit
        >>> layer = dropkit.DropConnectConv2d(3, 8, 3, padding=1, p=0.2, per_sample=True)
        >>> layer(torch.randn(4, 3, 16, 16)).shape
        torch.Size([4, 8, 16, 16])""",
)
DropConnectConv3d = _make_conv(
    nn.Conv3d,
    3,
    """        >>> import torch, dropkit
        >>> dropkit.DropConnectConv3d(1, 2, 3, p=0.2)(torch.randn(2, 1, 5, 5, 5)).shape
        torch.Size([2, 2, 3, 3, 3])""",
)


class WeightDrop(DropoutBase):
    r"""Weight-drop (Merity et al. 2017, AWD-LSTM): DropConnect on an RNN's recurrent weights.

    Wraps an ``nn.LSTM``, ``nn.GRU`` or ``nn.RNN``. In training, each forward draws one mask
    M ~ Bernoulli(1 − p) per hidden-to-hidden matrix ``weight_hh_l{k}`` (and ``_reverse``) and runs
    the RNN with M ⊙ W_hh · s, so the same dropped connections are used at every time step of the
    sequence (the recurrence is regularised without disturbing cuDNN's fused kernel). Eval: the
    RNN unchanged (inverted) or with (1 − p) W_hh (inference).

    The wrapped module keeps its parameters as they are (registered, contiguous, flattened: no
    parameter is deleted or replaced, unlike the original AWD-LSTM code); the masked weights are
    passed for one call through ``torch.func.functional_call``, so training emits no warnings about
    non-contiguous or unflattened weights.

    Args:
        module: the ``nn.LSTM``/``nn.GRU``/``nn.RNN`` to wrap.
        p: probability of dropping a recurrent weight, in [0, 1].
        weights: names of the parameters to drop (default: every ``weight_hh_l*``).
        scaling: ``"inverted"`` or ``"inference"``.

    Shape:
        as the wrapped module: ``forward(input, hx=None)`` returns its output.

    Example:
        >>> import torch, dropkit
        >>> lstm = dropkit.WeightDrop(torch.nn.LSTM(4, 8, num_layers=2), p=0.5)
        >>> lstm.weights
        ('weight_hh_l0', 'weight_hh_l1')
        >>> out, (h, c) = lstm(torch.randn(7, 3, 4))
        >>> out.shape
        torch.Size([7, 3, 8])
    """

    def __init__(
        self,
        module: nn.RNNBase,
        p: float = 0.5,
        weights: Sequence[str] | None = None,
        *,
        scaling: str = "inverted",
    ) -> None:
        if not isinstance(module, nn.RNNBase):
            raise TypeError(
                f"module must be an nn.LSTM, nn.GRU or nn.RNN, got {type(module).__name__}"
            )
        super().__init__(p, False, scaling)
        names = dict(module.named_parameters(recurse=False))
        if weights is None:
            chosen = tuple(n for n in module._flat_weights_names if n.startswith("weight_hh_l"))
        else:
            if isinstance(weights, str) or not all(isinstance(w, str) for w in weights):
                raise TypeError(f"weights must be a sequence of parameter names, got {weights!r}")
            chosen = tuple(weights)
            missing = [w for w in chosen if w not in names]
            if missing or not chosen:
                raise ValueError(
                    f"weights must name parameters of the {type(module).__name__}, got {list(chosen)}; "
                    f"it has {sorted(names)}"
                )
        self.module = module
        self.weights = chosen

    def forward(self, *args: object, **kwargs: object) -> object:
        if self.training and self.p == 0.0 and train_scale(self.p, self.scaling) == 1.0:
            return self.module(*args, **kwargs)
        if not self.training and eval_scale(self.p, self.scaling) == 1.0:
            return self.module(*args, **kwargs)
        dropped = {
            name: F.drop_connect(
                getattr(self.module, name), self.p, self.training, scaling=self.scaling
            )
            for name in self.weights
        }
        return functional_call(self.module, dropped, args, kwargs)

    def __prepare_scriptable__(self) -> WeightDrop:
        refuse_scripting(
            self,
            "its forward takes the wrapped RNN's arguments (*args, **kwargs) and calls it through "
            "torch.func.functional_call; in eval script .to_plain() (the plain RNN) instead",
        )
        return self

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weights={list(self.weights)}"

    def to_plain(self) -> nn.RNNBase:
        """A copy of the wrapped RNN with the eval weights (W_hh, or (1 − p) W_hh for inference)."""
        plain = copy.deepcopy(self.module)
        factor = eval_scale(self.p, self.scaling)
        if factor != 1.0:
            with torch.no_grad():
                for name in self.weights:
                    getattr(plain, name).mul_(factor)
        return plain
