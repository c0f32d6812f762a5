r"""Activation analysis: what each dropout module does to its activations, in train and in eval.

:func:`activation_stats` (built on :class:`ActivationRecorder`, forward hooks you can also use in
your own loop) records, per dropout module, the mean and variance of its input and output in
train and in eval mode and the fraction of units it dropped. It measures the module's *gain*
g = Σ y·x / Σ x², the factor by which the module scales its input on average (y = m ⊙ x · s
gives E[g] = (1 − p) · s). A correct dropout has the same expected gain in train and in eval:
inverted dropout 1 and 1, ``scaling="inference"`` 1 − p and 1 − p. An unscaled training mask
(y = m ⊙ x, eval y = x) gives 1 − p against 1: the *scale mismatch* the seeds warn about.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from dropkit.diagnostics._model import call_model, first_tensor, is_alpha, preserved
from dropkit.layers.base import is_dropout_module

__all__ = ["ActivationRecorder", "ActivationStats", "activation_stats"]


class _Sums:
    """Running sums of one module's input x and output y, in float64."""

    def __init__(self) -> None:
        self.calls = 0
        self.n_in = 0
        self.n_out = 0
        self.sum_x = 0.0
        self.sum_x2 = 0.0
        self.sum_y = 0.0
        self.sum_y2 = 0.0
        self.sum_xy = 0.0
        self.nonzero_in = 0
        self.dropped = 0
        self.gains: list[float] = []

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x64, y64 = x.detach().double(), y.detach().double()
        self.calls += 1
        self.n_in += x64.numel()
        self.n_out += y64.numel()
        self.sum_x += float(x64.sum())
        self.sum_x2 += float((x64 * x64).sum())
        self.sum_y += float(y64.sum())
        self.sum_y2 += float((y64 * y64).sum())
        if x64.shape == y64.shape:
            xy = float((x64 * y64).sum())
            x2 = float((x64 * x64).sum())
            self.sum_xy += xy
            nonzero = x64 != 0
            self.nonzero_in += int(nonzero.sum())
            self.dropped += int((nonzero & (y64 == 0)).sum())
            if x2 > 0:
                self.gains.append(xy / x2)

    @staticmethod
    def _moments(n: int, s: float, s2: float) -> tuple[float | None, float | None]:
        if n == 0:
            return None, None
        mean = s / n
        return mean, max(s2 / n - mean * mean, 0.0)

    def input_moments(self) -> tuple[float | None, float | None]:
        return self._moments(self.n_in, self.sum_x, self.sum_x2)

    def output_moments(self) -> tuple[float | None, float | None]:
        return self._moments(self.n_out, self.sum_y, self.sum_y2)


class ActivationRecorder:
    r"""Forward hooks on every dropout module that accumulate input/output statistics.

    Each call of a dropout module adds to the sums of its mode at call time (``module.training``):
    mean and variance of input and output, the fraction of non-zero inputs it set to zero, and
    the gain g = Σ y·x / Σ x² of the call. Use it as a context manager around any forward passes
    (your own training loop included); the hooks are removed on exit.

    Args:
        model: the model whose dropout modules (``dropkit.is_dropout_module``) are watched.

    Example:
        >>> import torch, dropkit
        >>> net = dropkit.MLP([8, 16, 2], p=[0.0, 0.5])
        >>> with ActivationRecorder(net) as rec:
        ...     _ = net.train()(torch.rand(64, 8))
        >>> round(rec.sums["dropout1"]["train"].dropped / rec.sums["dropout1"]["train"].nonzero_in, 1)
        0.5
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        self.modules = {n: m for n, m in model.named_modules() if is_dropout_module(m)}
        self.sums: dict[str, dict[str, _Sums]] = {
            n: {"train": _Sums(), "eval": _Sums()} for n in self.modules
        }
        self._handles: list[Any] = []
        self._inputs: dict[int, list[torch.Tensor]] = {}

    def __enter__(self) -> ActivationRecorder:
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._inputs.clear()

    def _pre(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            x = first_tensor(args)
            # Cloned: an inplace dropout overwrites its input before the forward hook runs.
            self._inputs.setdefault(id(module), []).append(
                x.detach().clone() if x is not None else None
            )

        return hook

    def _post(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            stack = self._inputs.get(id(module))
            x = stack.pop() if stack else None
            y = first_tensor(output)
            if x is not None and y is not None and x.is_floating_point() and y.is_floating_point():
                self.sums[name]["train" if module.training else "eval"].add(x, y)

        return hook


@dataclass
class ActivationStats:
    r"""What one dropout module did to its activations, in train and in eval.

    ``train_gain``/``eval_gain`` are the mean gains g = Σ y·x / Σ x² over the passes, and
    ``gain_se`` the standard error of ``train_gain`` over the training passes. ``scale_mismatch``
    is True when |train_gain − eval_gain| > tolerance · |eval_gain| + 4 · gain_se, None where the
    test does not apply (alpha dropout, whose affine rule is not a gain; a module whose output
    shape differs from its input's).
    """

    path: str
    kind: str
    p: float | None
    train_in_mean: float | None
    train_in_var: float | None
    train_out_mean: float | None
    train_out_var: float | None
    eval_in_mean: float | None
    eval_in_var: float | None
    eval_out_mean: float | None
    eval_out_var: float | None
    fraction_dropped: float | None
    train_gain: float | None
    eval_gain: float | None
    gain_se: float | None
    scale_mismatch: bool | None

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return asdict(self)


def _stats_from(
    path: str, module: nn.Module, train: _Sums, evl: _Sums, tolerance: float
) -> ActivationStats:
    train_in, train_out = train.input_moments(), train.output_moments()
    eval_in, eval_out = evl.input_moments(), evl.output_moments()
    train_gain = sum(train.gains) / len(train.gains) if train.gains else None
    eval_gain = sum(evl.gains) / len(evl.gains) if evl.gains else None
    gain_se = None
    if len(train.gains) > 1:
        mean = train_gain
        var = sum((g - mean) ** 2 for g in train.gains) / (len(train.gains) - 1)
        gain_se = math.sqrt(var / len(train.gains))
    elif train.gains:
        gain_se = 0.0
    mismatch = None
    if train_gain is not None and eval_gain is not None and not is_alpha(module):
        mismatch = abs(train_gain - eval_gain) > tolerance * abs(eval_gain) + 4.0 * (gain_se or 0.0)
    p = getattr(module, "p", None)
    return ActivationStats(
        path=path,
        kind=type(module).__name__,
        p=float(p) if isinstance(p, (int, float)) else None,
        train_in_mean=train_in[0],
        train_in_var=train_in[1],
        train_out_mean=train_out[0],
        train_out_var=train_out[1],
        eval_in_mean=eval_in[0],
        eval_in_var=eval_in[1],
        eval_out_mean=eval_out[0],
        eval_out_var=eval_out[1],
        fraction_dropped=train.dropped / train.nonzero_in if train.nonzero_in else None,
        train_gain=train_gain,
        eval_gain=eval_gain,
        gain_se=gain_se,
        scale_mismatch=mismatch,
    )


def activation_stats(
    model: nn.Module,
    batch: Any,
    *,
    repeats: int = 16,
    tolerance: float = 0.05,
    seed: int | None = 0,
) -> list[ActivationStats]:
    r"""Per dropout module: activation statistics in train and eval mode, and a scale check.

    Runs ``batch`` through the model ``repeats`` times in train mode (fresh masks each time) and
    once in eval mode, without gradients, then restores every module's mode, the model's buffers
    (BatchNorm's running statistics) and torch's RNG state. See :class:`ActivationStats` for the fields and the scale-mismatch test.

    Args:
        model: any nn.Module holding dropout modules.
        batch: a tensor (``model(batch)``), a tuple/list (``model(*batch)``) or a dict
            (``model(**batch)``).
        repeats: training passes (more passes, a smaller standard error of the train gain).
        tolerance: relative difference of the gains tolerated before a scale mismatch is flagged.
        seed: seeds the masks (None: torch's current generator state).

    Returns:
        One :class:`ActivationStats` per dropout module, in ``named_modules`` order.

    Example:
        >>> import torch, dropkit
        >>> net = dropkit.MLP([8, 32, 2], p=[0.0, 0.5])
        >>> s = {r.path: r for r in activation_stats(net, torch.rand(32, 8))}["dropout1"]
        >>> round(s.train_gain, 1), s.eval_gain, s.scale_mismatch
        (1.0, 1.0, False)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a number >= 0, got {tolerance!r}")
    recorder = ActivationRecorder(model)
    if not recorder.modules:
        return []
    with preserved(model, seed), torch.no_grad(), recorder:
        model.train()
        for _ in range(repeats):
            call_model(model, batch)
        model.eval()
        call_model(model, batch)
    return [
        _stats_from(
            path, module, recorder.sums[path]["train"], recorder.sums[path]["eval"], tolerance
        )
        for path, module in recorder.modules.items()
    ]
