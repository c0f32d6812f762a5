r"""Looking inside: what each dropout module does to its activations, and a checklist audit.

Two tools for the seeds' common pitfalls (dropout left on at inference, scale mismatch,
over-regularisation, dropout on the output layer):

- :func:`activation_stats` (built on :class:`ActivationRecorder`, forward hooks you can also use in
  your own loop) records, per dropout module, the mean and variance of its input and output in
  train and in eval mode and the fraction of units it dropped. It measures the module's *gain*
  g = Σ y·x / Σ x², the factor by which the module scales its input on average (y = m ⊙ x · s
  gives E[g] = (1 − p) · s). A correct dropout has the same expected gain in train and in eval:
  inverted dropout 1 and 1, ``scaling="inference"`` 1 − p and 1 − p. An unscaled training mask
  (y = m ⊙ x, eval y = x) gives 1 − p against 1: the *scale mismatch* the seeds warn about.
- :func:`audit` inspects a model (and optionally one batch) and returns :class:`Finding` records,
  each with the module's path and a suggested fix.
"""

from __future__ import annotations

import contextlib
import inspect as _pyinspect
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from dropkit.layers.base import is_dropout_module

__all__ = [
    "ActivationRecorder",
    "ActivationStats",
    "activation_stats",
    "Finding",
    "audit",
    "dead_dropout_findings",
    "USUAL_RATES",
]

#: The usual rate ranges (low, high) by the kind of layer a dropout module feeds: the seeds'
#: input 0.1-0.2, hidden 0.2-0.5, and lower for convolutional feature maps.
USUAL_RATES: dict[str, tuple[float, float]] = {
    "input": (0.1, 0.2),
    "hidden": (0.2, 0.5),
    "conv": (0.05, 0.3),
}

_WEIGHT_LAYERS = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.Embedding, nn.EmbeddingBag)
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_ALPHA_NAMES = ("AlphaDropout", "FeatureAlphaDropout")
# Modules whose p is the seeds' "fraction of units dropped" (the usual ranges apply to them).
_RATED = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d")


def _is_weight_layer(module: nn.Module) -> bool:
    if isinstance(module, _WEIGHT_LAYERS):
        return True
    if isinstance(module, _NORM_LAYERS) or is_dropout_module(module):
        return False
    return any(True for _ in module.parameters(recurse=False))


def _is_plain_dropout(module: nn.Module) -> bool:
    """A dropout module acting on activations (not a DropConnect layer or a dropout embedding)."""
    return is_dropout_module(module) and not _is_weight_layer(module)


def _is_alpha(module: nn.Module) -> bool:
    return type(module).__name__ in _ALPHA_NAMES or isinstance(
        module, (nn.AlphaDropout, nn.FeatureAlphaDropout)
    )


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    raise TypeError(
        f"batch must be a tensor (model(batch)), a tuple/list (model(*batch)) or a dict "
        f"(model(**batch)), got {type(batch).__name__}"
    )


# --------------------------------------------------------------------------------------------
# Activation analysis
# --------------------------------------------------------------------------------------------


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
            x = _first_tensor(args)
            # Cloned: an inplace dropout overwrites its input before the forward hook runs.
            self._inputs.setdefault(id(module), []).append(
                x.detach().clone() if x is not None else None
            )

        return hook

    def _post(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            stack = self._inputs.get(id(module))
            x = stack.pop() if stack else None
            y = _first_tensor(output)
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
    if train_gain is not None and eval_gain is not None and not _is_alpha(module):
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


@contextlib.contextmanager
def _preserved(model: nn.Module, seed: int | None) -> Iterator[None]:
    """Restores every module's training flag and torch's RNG state on exit."""
    flags = [(m, m.training) for m in model.modules()]
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            yield
        finally:
            for module, flag in flags:
                module.training = flag


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
    once in eval mode, without gradients, then restores every module's mode and torch's RNG
    state. See :class:`ActivationStats` for the fields and the scale-mismatch test.

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
    with _preserved(model, seed), torch.no_grad(), recorder:
        model.train()
        for _ in range(repeats):
            _call(model, batch)
        model.eval()
        _call(model, batch)
    return [
        _stats_from(
            path, module, recorder.sums[path]["train"], recorder.sums[path]["eval"], tolerance
        )
        for path, module in recorder.modules.items()
    ]


# --------------------------------------------------------------------------------------------
# Audit
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One audit finding.

    Attributes:
        code: a stable identifier (``dropout-active-in-eval``, ``training-flag-mismatch``,
            ``dropout-after-last-layer``, ``rate-out-of-range``, ``dropout-before-batchnorm``,
            ``consecutive-dropout``, ``functional-dropout-hardcoded``, ``random-in-eval``,
            ``scale-mismatch``, ``dropout-rate-never-applied``, ``dropout-never-runs``,
            ``dropout-flag-gates-more``).
        severity: ``"error"``, ``"warning"`` or ``"info"``.
        path: the module's path in the model (``""`` for the model itself).
        message: what is wrong.
        fix: a suggested fix.
    """

    code: str
    severity: str
    path: str
    message: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        """The fields as a plain dict."""
        return asdict(self)

    def __str__(self) -> str:
        return f"[{self.severity}] {self.path or '<model>'}: {self.message} Fix: {self.fix}"


def _execution_order(model: nn.Module, batch: Any) -> list[str]:
    """Leaf module paths in the order the forward pass calls them (each once, first call)."""
    order: list[str] = []
    seen: set[str] = set()
    handles = []
    for name, module in model.named_modules():
        if next(module.children(), None) is None:

            def hook(mod: nn.Module, args: tuple, name: str = name) -> None:
                if name not in seen:
                    seen.add(name)
                    order.append(name)

            handles.append(module.register_forward_pre_hook(hook))
    try:
        _call(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return order


_TORCH_DROPOUTS = {
    torch.nn.functional.dropout,
    torch.nn.functional.dropout1d,
    torch.nn.functional.dropout2d,
    torch.nn.functional.dropout3d,
    torch.nn.functional.alpha_dropout,
    torch.nn.functional.feature_alpha_dropout,
}


def _training_arg(func: Callable, args: tuple, kwargs: Mapping[str, Any]) -> bool:
    try:
        bound = _pyinspect.signature(func).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return bool(kwargs.get("training", False))
    bound.apply_defaults()
    return bool(bound.arguments.get("training", False))


class _CallTracker:
    """Tracks the innermost module being run and catches dropout calls with training=True."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stack: list[tuple[str, nn.Module]] = []
        self.calls: list[tuple[str, str]] = []  # (module path, function name)
        self._in_dropkit = 0

    def on_call(self, name: str, training: bool) -> None:
        if not training or self._in_dropkit:
            return
        if self.stack and is_dropout_module(self.stack[-1][1]):
            return  # a dropout module's own call: its flag is checked separately
        path = self.stack[-1][0] if self.stack else ""
        if (path, name) not in self.calls:
            self.calls.append((path, name))

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        handles = []
        for path, module in self.model.named_modules():

            def pre(mod: nn.Module, args: tuple, path: str = path) -> None:
                self.stack.append((path, mod))

            def post(mod: nn.Module, args: tuple, out: Any) -> None:
                if self.stack:
                    self.stack.pop()

            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post, always_call=True))
        patched = self._patch_dropkit()
        tracker = self

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                kwargs = kwargs or {}
                if func in _TORCH_DROPOUTS:
                    tracker.on_call(
                        f"torch.nn.functional.{func.__name__}", _training_arg(func, args, kwargs)
                    )
                return func(*args, **kwargs)

        try:
            with Mode():
                yield
        finally:
            for handle in handles:
                handle.remove()
            for module, name, original in patched:
                setattr(module, name, original)
            self.stack.clear()

    def _patch_dropkit(self) -> list[tuple[Any, str, Callable]]:
        """Wraps dropkit's functional dropouts (every function with a ``training`` parameter)."""
        patched = []
        for mod_name in (
            "dropkit.functional",
            "dropkit.functional_variants",
            "dropkit.functional_learned",
        ):
            module = sys.modules.get(mod_name)
            if module is None:
                continue
            for attr in getattr(module, "__all__", []):
                func = getattr(module, attr, None)
                if not _pyinspect.isfunction(func):
                    continue
                try:
                    if "training" not in _pyinspect.signature(func).parameters:
                        continue
                except (TypeError, ValueError):
                    continue
                patched.append((module, attr, func))
                setattr(module, attr, self._wrap(f"{mod_name}.{attr}", func))
        return patched

    def _wrap(self, qualname: str, func: Callable) -> Callable:
        tracker = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            tracker.on_call(qualname, _training_arg(func, args, kwargs))
            tracker._in_dropkit += 1
            try:
                return func(*args, **kwargs)
            finally:
                tracker._in_dropkit -= 1

        wrapper.__wrapped__ = func  # type: ignore[attr-defined]
        return wrapper


def _outputs_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
        return torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_outputs_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_outputs_equal(a[k], b[k]) for k in a)
    return True


_SEVERITY = {"error": 0, "warning": 1, "info": 2}


def dead_dropout_findings(model: nn.Module, batch: Any) -> list[Finding]:
    """The dead-dropout check: dropout whose rate is read but never applied, or that never runs.

    Runs :func:`dropkit.dropout_sites.scan` on the batch (eval passes, then with the modules whose
    flag gates functional dropout switched on, every rate at 0). Reports
    ``dropout-rate-never-applied`` (warning): a module's ``p`` is read (by its attention module,
    say) but the module never runs and the reader applies no dropout — e.g. an attention function
    that ignores the rate it is given; ``dropout-never-runs`` (warning): a module with p > 0 that
    neither runs nor has its rate read; ``dropout-flag-gates-more`` (info): a module whose
    training flag gates functional dropout and something else, so MC dropout leaves it in eval.
    A rate applied functionally by its owner (Hugging Face attention) is not dead.

    Args:
        model: the model.
        batch: an input as for :func:`audit`.

    Returns:
        The findings, in module order.
    """
    from dropkit.dropout_sites import describe, scan
    from dropkit.mc import is_stochastic_module

    with torch.no_grad():
        sites = scan(model, lambda: _call(model, batch), is_stochastic_module)
    modules = dict(model.named_modules())
    findings = []
    for path, reader in sites.read_not_applied.items():
        findings.append(
            Finding(
                "dropout-rate-never-applied",
                "warning",
                path,
                f"{describe(modules[path])} never runs and its rate is read by "
                f"{reader or 'the model'}, which applies no dropout with it: it regularises nothing.",
                "call the module on the activations, or pass its rate to a dropout that is applied "
                "(an attention function that honours dropout=).",
            )
        )
    for path in sites.never_ran:
        findings.append(
            Finding(
                "dropout-never-runs",
                "warning",
                path,
                f"{describe(modules[path])} is never called in the forward pass and its rate is "
                "never read: it regularises nothing.",
                "call it in forward, or remove it.",
            )
        )
    for path, why in sites.unsafe.items():
        findings.append(
            Finding(
                "dropout-flag-gates-more",
                "info",
                path,
                f"{type(modules[path]).__name__}'s training flag gates functional dropout, but "
                f"{why}: MC dropout leaves it in eval and does not sample that dropout.",
                "gate the dropout on the dropout module's own flag (self.drop.training) instead.",
            )
        )
    return findings


def audit(
    model: nn.Module,
    batch: Any = None,
    *,
    rates: Mapping[str, tuple[float, float]] | None = None,
    tolerance: float = 0.05,
    ignore: Iterable[str] = (),
    seed: int = 0,
) -> list[Finding]:
    r"""Checks a model for the common dropout pitfalls; each finding names the module and a fix.

    Without a batch, the structure is read in registration order (``named_modules``); with a
    batch the forward pass is run (without gradients, modes and RNG state restored) and the order
    the modules are really called in is used, and three checks that need data are added.

    Checks:

    - ``dropout-active-in-eval`` (error): the model is in eval mode but a dropout module's
      ``training`` flag is True (e.g. ``model.eval()`` then ``model.dropout.train()``), so
      predictions are random. ``training-flag-mismatch`` (warning): the model trains but a dropout
      module is in eval, so it does nothing.
    - ``dropout-after-last-layer`` (warning): a dropout module with no weight layer after it drops
      the network's outputs (the seeds: p = 0 on the output layer).
    - ``rate-out-of-range`` (warning above the range, info below it): elementwise and channel
      dropout outside :data:`USUAL_RATES` for the layer it feeds (input 0.1–0.2, hidden 0.2–0.5,
      convolutional 0.05–0.3); p = 1 is an error (everything dropped).
    - ``dropout-before-batchnorm`` (warning): dropout feeding a BatchNorm (activations between
      them aside) shifts the variance BatchNorm's running statistics see between train and eval
      (Li et al. 2019).
    - ``consecutive-dropout`` (info): two dropout modules in a row act as one with
      p = 1 − (1 − p₁)(1 − p₂).
    - with a batch: ``functional-dropout-hardcoded`` (error): with every module in eval mode a
      functional dropout (``torch.nn.functional.dropout`` and friends, caught by a
      ``TorchFunctionMode``, or dropkit's, patched for the duration) was called with
      ``training=True``; its path is the module whose ``forward`` made the call.
      ``random-in-eval`` (error): two eval passes of the batch gave different outputs.
      ``dropout-rate-never-applied``, ``dropout-never-runs``, ``dropout-flag-gates-more``: dead
      dropout, see :func:`dead_dropout_findings` (its own small check).
      ``scale-mismatch`` (error): see :func:`activation_stats`.

    Args:
        model: the model.
        batch: optional input (tensor, tuple/list of positional inputs, or dict of keyword inputs).
        rates: overrides of :data:`USUAL_RATES` by kind (``"input"``, ``"hidden"``, ``"conv"``).
        tolerance: see :func:`activation_stats`.
        ignore: finding codes to leave out.
        seed: seeds the data checks' masks.

    Returns:
        The findings, errors first, then warnings, then info; each kind in module order.

    Example:
        >>> import torch, dropkit
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Dropout(0.5))
        >>> [f.code for f in audit(net)]
        ['dropout-after-last-layer']
        >>> audit(dropkit.MLP([4, 8, 2], p=[0.2, 0.5]).eval(), torch.randn(3, 4))
        []
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    usual = dict(USUAL_RATES)
    for kind, bounds in (rates or {}).items():
        if kind not in USUAL_RATES:
            raise ValueError(f"rates keys must be among {list(USUAL_RATES)}, got {kind!r}")
        lo, hi = bounds
        if not (0.0 <= lo <= hi <= 1.0):
            raise ValueError(
                f"rates[{kind!r}] must be (low, high) with 0 <= low <= high <= 1, got {bounds!r}"
            )
        usual[kind] = (float(lo), float(hi))
    ignore = set(ignore)
    modules = dict(model.named_modules())
    findings: list[Finding] = []

    # Mode flags.
    for path, module in modules.items():
        if not path or not is_dropout_module(module) or module.training == model.training:
            continue
        if not model.training:
            findings.append(
                Finding(
                    "dropout-active-in-eval",
                    "error",
                    path,
                    f"{type(module).__name__} is in training mode while the model is in eval mode: "
                    "its predictions are random.",
                    "call model.eval() after the last .train() on any submodule; for deliberate "
                    "Monte-Carlo dropout use dropkit's MC-dropout helpers instead of flipping flags.",
                )
            )
        else:
            findings.append(
                Finding(
                    "training-flag-mismatch",
                    "warning",
                    path,
                    f"{type(module).__name__} is in eval mode while the model trains: it drops nothing.",
                    "call model.train() on the whole model (not on submodules) before training.",
                )
            )

    # Structure, in execution order when a batch is given.
    if batch is not None:
        with _preserved(model, seed), torch.no_grad():
            leaves = _execution_order(model, batch)
    else:
        leaves = [n for n, m in modules.items() if next(m.children(), None) is None]
    order = "call order" if batch is not None else "registration order"
    significant = [n for n in leaves if not isinstance(modules[n], nn.Identity)]
    weight_idx = [i for i, n in enumerate(significant) if _is_weight_layer(modules[n])]
    first_weight = weight_idx[0] if weight_idx else None
    last_weight = weight_idx[-1] if weight_idx else None
    for i, path in enumerate(significant):
        module = modules[path]
        if not _is_plain_dropout(module):
            continue
        p = getattr(module, "p", None)
        p = float(p) if isinstance(p, (int, float)) else None
        if last_weight is not None and i > last_weight and (p is None or p > 0):
            findings.append(
                Finding(
                    "dropout-after-last-layer",
                    "warning",
                    path,
                    f"{type(module).__name__}(p={p}) comes after the last weight layer "
                    f"({significant[last_weight]}) in {order}: it drops the network's outputs.",
                    "remove it (p = 0 on the output layer) or move it before the last layer.",
                )
            )
        nxt = significant[i + 1] if i + 1 < len(significant) else None
        if nxt is not None and _is_plain_dropout(modules[nxt]):
            p2 = getattr(modules[nxt], "p", None)
            merged = (
                f" p = 1 − (1 − {p:g})(1 − {p2:g}) = {1 - (1 - p) * (1 - p2):.3g}"
                if isinstance(p, float) and isinstance(p2, (int, float))
                else ""
            )
            findings.append(
                Finding(
                    "consecutive-dropout",
                    "info",
                    path,
                    f"{type(module).__name__} is followed directly by {nxt} ({type(modules[nxt]).__name__}) in {order}.",
                    f"use a single dropout module with{merged or ' the combined rate'}.",
                )
            )
        following = [
            n
            for n in significant[i + 1 :]
            if type(modules[n]).__module__ != "torch.nn.modules.activation"
        ]
        if (
            following
            and isinstance(modules[following[0]], nn.modules.batchnorm._BatchNorm)
            and (p is None or p > 0)
        ):
            findings.append(
                Finding(
                    "dropout-before-batchnorm",
                    "warning",
                    path,
                    f"{type(module).__name__}(p={p}) feeds {following[0]} (BatchNorm) in {order}: the "
                    "variance BatchNorm normalises by differs between train and eval (variance shift, "
                    "Li et al. 2019).",
                    "apply dropout after the last BatchNorm layer (e.g. only before the classifier).",
                )
            )
        rated = isinstance(module, nn.modules.dropout._DropoutNd) or type(module).__name__ in _RATED
        if p is None or p == 0 or not rated or _is_alpha(module):
            continue
        conv_next = next(
            (modules[n] for n in significant[i + 1 :] if _is_weight_layer(modules[n])), None
        )
        conv_prev = next(
            (modules[n] for n in reversed(significant[:i]) if _is_weight_layer(modules[n])), None
        )
        if type(module).__name__ in ("Dropout1d", "Dropout2d", "Dropout3d") or any(
            isinstance(m, nn.modules.conv._ConvNd) for m in (conv_next, conv_prev) if m is not None
        ):
            kind = "conv"
        elif first_weight is None or i < first_weight:
            kind = "input"
        else:
            kind = "hidden"
        lo, hi = usual[kind]
        if p == 1.0:
            findings.append(
                Finding(
                    "rate-out-of-range",
                    "error",
                    path,
                    "p = 1 drops every unit: nothing reaches the next layer in training.",
                    f"use a {kind} rate in [{lo:g}, {hi:g}].",
                )
            )
        elif p > hi:
            findings.append(
                Finding(
                    "rate-out-of-range",
                    "warning",
                    path,
                    f"p = {p:g} is above the usual range [{lo:g}, {hi:g}] for {kind} dropout "
                    "(risk of over-regularisation: underfitting).",
                    f"lower it to at most {hi:g}, or choose it by validation loss (dropkit.tune.search_rates).",
                )
            )
        elif p < lo:
            findings.append(
                Finding(
                    "rate-out-of-range",
                    "info",
                    path,
                    f"p = {p:g} is below the usual range [{lo:g}, {hi:g}] for {kind} dropout (weak regularisation).",
                    f"raise it toward {lo:g} if the model overfits (dropkit.tune.gap).",
                )
            )

    # Data checks.
    if batch is not None:
        tracker = _CallTracker(model)
        with _preserved(model, seed), torch.no_grad():
            model.eval()
            with tracker.active():
                first = _call(model, batch)
            torch.manual_seed(seed + 1)
            second = _call(model, batch)
        for path, func in tracker.calls:
            findings.append(
                Finding(
                    "functional-dropout-hardcoded",
                    "error",
                    path,
                    f"{func} was called with training=True while every module is in eval mode "
                    f"(in the forward of {path or 'the model'}).",
                    "pass training=self.training (or use a dropout module such as dropkit.Dropout).",
                )
            )
        if (
            not _outputs_equal(first, second)
            and not tracker.calls
            and not any(f.code == "dropout-active-in-eval" for f in findings)
        ):
            findings.append(
                Finding(
                    "random-in-eval",
                    "error",
                    "",
                    "two eval-mode passes of the same batch gave different outputs: something random "
                    "still runs at inference.",
                    "look for dropout or noise called without the module's training flag.",
                )
            )
        with _preserved(model, seed):
            findings.extend(dead_dropout_findings(model, batch))
        for stats in activation_stats(model, batch, tolerance=tolerance, seed=seed):
            if stats.scale_mismatch:
                findings.append(
                    Finding(
                        "scale-mismatch",
                        "error",
                        stats.path,
                        f"the expected activation differs between train and eval: gain "
                        f"{stats.train_gain:.3f} ± {stats.gain_se:.3f} in training, {stats.eval_gain:.3f} in "
                        f"eval (p = {stats.p}).",
                        "scale kept units by 1/(1 − p) in training (inverted dropout) or multiply by "
                        "(1 − p) in eval, not neither.",
                    )
                )
    findings = [f for f in findings if f.code not in ignore]
    findings.sort(key=lambda f: _SEVERITY[f.severity])
    return findings
