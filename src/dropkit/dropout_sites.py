r"""Where a model's dropout happens: its modules, its functional calls, and the flags that gate them.

Models do not all drop through dropout modules. Hugging Face's attention keeps an ``nn.Dropout``
but only reads its rate, ``dropout=self.attn_dropout.p if self.training else 0.0``, and hands it to
``scaled_dot_product_attention`` or to ``F.dropout(..., training=module.training)``: the rate is
gated on the *attention module's* flag, so switching only the dropout modules on (what MC dropout
did) samples nothing there. :func:`scan` finds such gates by running the model:

1. **eval pass** (every module in eval): records, per module (the innermost one whose ``forward``
   is running), the functional dropout calls (``torch.nn.functional.dropout``, ``dropout1d/2d/3d``,
   ``alpha_dropout``, ``feature_alpha_dropout``, ``scaled_dot_product_attention``) and their
   effective rate (``p`` if ``training`` else 0; SDPA's ``dropout_p``), and which dropout modules ran.
   The *candidates* are the modules that made such a call or hold an active stochastic module as a
   direct child (plain containers aside);
2. **flipped pass**: the candidates' own ``training`` flags set (their children stay in eval),
   every functional dropout run at rate 0 and every read of a dropout module's ``p`` recorded. A
   candidate is an *owner* when flipping it adds dropout: a functional call with a rate > 0, a read
   of a dropout module's ``p``, or a dropout child that runs only then (``nn.TransformerEncoderLayer``'s
   eval fast path skips its dropout modules);
3. **safety check**: with every rate at 0 the flipped model must give the eval pass's output (to
   float rounding). If it does not, each owner is tried alone; one whose flag changes more than its
   dropout (a BatchNorm-like rule, a cache switched off, …) is *unsafe*: it stays in eval and its
   dropout is reported, never silently sampled with side effects.

The result, :class:`DropoutSites`, also says which dropout modules are dead: ``p`` read but never
applied, or never run at all. The checks depend on the input only through the branches it takes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as TF
from torch.overrides import TorchFunctionMode

from dropkit.layers.base import is_dropout_module

__all__ = [
    "FUNCTIONAL_DROPOUTS",
    "DropoutSites",
    "scan",
    "functional_rate",
    "intercepting",
    "interception",
    "outputs_close",
]

#: The functional dropouts MC dropout samples, by the name used in reports. They share the layout
#: (input, p, training, inplace).
FUNCTIONAL_DROPOUTS: dict[Callable, str] = {
    TF.dropout: "dropout",
    TF.dropout1d: "dropout1d",
    TF.dropout2d: "dropout2d",
    TF.dropout3d: "dropout3d",
    TF.alpha_dropout: "alpha_dropout",
    TF.feature_alpha_dropout: "feature_alpha_dropout",
    TF.scaled_dot_product_attention: "scaled_dot_product_attention",
}
_SDPA = TF.scaled_dot_product_attention
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_STATE = threading.local()


def intercepting() -> bool:
    """True while dropkit's function mode routes functional dropout (MC sampling or a scan).

    Integrations that apply dropout through their own kernel (:mod:`dropkit.integrations`) call
    ``torch.nn.functional`` instead while this holds, so the call is seen and sampled per sample.
    """
    return getattr(_STATE, "depth", 0) > 0


@contextlib.contextmanager
def interception() -> Iterator[None]:
    """Marks the block as routed by a dropkit function mode (see :func:`intercepting`)."""
    _STATE.depth = getattr(_STATE, "depth", 0) + 1
    try:
        yield
    finally:
        _STATE.depth -= 1


def _arg(args: tuple, kwargs: Mapping[str, Any], index: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def functional_rate(func: Callable, args: tuple, kwargs: Mapping[str, Any]) -> float:
    """The rate a functional dropout call applies: p if training else 0 (SDPA: ``dropout_p``)."""
    if func is _SDPA:
        p = _arg(args, kwargs, 4, "dropout_p", 0.0)
        training = True
    else:
        p = _arg(args, kwargs, 1, "p", 0.5)
        training = _arg(args, kwargs, 2, "training", True)
    try:
        return float(p) if bool(training) else 0.0
    except (TypeError, ValueError, RuntimeError):
        return 1.0  # a symbolic or tensor rate: count it as dropout


def _with_rate_zero(func: Callable, args: tuple, kwargs: Mapping[str, Any]) -> Any:
    """Runs a functional dropout at rate 0: the input (dropouts) or attention without dropout."""
    if func is _SDPA:
        kwargs = dict(kwargs)
        kwargs["dropout_p"] = 0.0
        return func(*args[:4], *args[5:], **kwargs)
    return _arg(args, kwargs, 0, "input", None)


# ------------------------------------------------------------------------------------------------
# Recording a pass: the module stack, functional calls, reads of p, dropout modules that ran
# ------------------------------------------------------------------------------------------------
_TRACKING_CLASSES: dict[type, type] = {}


def _tracking_class(cls: type) -> type:
    """A subclass of a dropout module's class whose ``p`` records each read."""
    sub = _TRACKING_CLASSES.get(cls)
    if sub is not None:
        return sub
    base = next((k.__dict__["p"] for k in cls.__mro__ if "p" in k.__dict__), None)

    def get(self: nn.Module) -> Any:
        recorder = getattr(_STATE, "recorder", None)
        if recorder is not None:
            recorder.on_read(self)
        if base is not None and hasattr(base, "__get__"):
            return base.__get__(self, cls)
        return self.__dict__["p"]

    def set_(self: nn.Module, value: Any) -> None:
        if base is not None and hasattr(base, "__set__"):
            base.__set__(self, value)
        else:
            self.__dict__["p"] = value

    sub = type(cls.__name__, (cls,), {"p": property(get, set_), "__module__": cls.__module__})
    _TRACKING_CLASSES[cls] = sub
    return sub


class _Recorder(TorchFunctionMode):
    """Records one forward pass: functional dropout (run at rate 0), p reads, modules run."""

    def __init__(self, model: nn.Module, names: dict[nn.Module, str]) -> None:
        super().__init__()
        self.model = model
        self.names = names
        self.stack: list[nn.Module] = []
        self.calls: list[tuple[nn.Module, str, float]] = []  # (caller, function, rate)
        self.reads: dict[nn.Module, set[nn.Module]] = {}  # dropout module -> its readers
        self.ran: set[nn.Module] = set()

    def on_read(self, module: nn.Module) -> None:
        if self.stack and self.stack[-1] is not module:
            self.reads.setdefault(module, set()).add(self.stack[-1])

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        name = FUNCTIONAL_DROPOUTS.get(func)
        if name is None:
            return func(*args, **kwargs)
        caller = self.stack[-1] if self.stack else self.model
        if not is_dropout_module(caller):
            self.calls.append((caller, name, functional_rate(func, args, kwargs)))
        return _with_rate_zero(func, args, kwargs)

    @contextlib.contextmanager
    def recording(
        self, dropout_modules: list[nn.Module], stochastic: list[nn.Module]
    ) -> Iterator[_Recorder]:
        handles = []
        watched = set(stochastic)
        for module in self.names:

            def pre(mod: nn.Module, args: tuple) -> None:
                self.stack.append(mod)
                if mod in watched:
                    self.ran.add(mod)

            def post(mod: nn.Module, args: tuple, out: Any) -> None:
                if self.stack:
                    self.stack.pop()

            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post, always_call=True))
        swapped: dict[nn.Module, type] = {}
        try:
            for m in dropout_modules:
                swapped[m] = type(m)
                m.__class__ = _tracking_class(type(m))
            _STATE.recorder = self
            with self, interception():
                yield self
        finally:
            _STATE.recorder = None
            for m, cls in swapped.items():
                m.__class__ = cls
            for handle in handles:
                handle.remove()
            self.stack.clear()


# ------------------------------------------------------------------------------------------------
# Comparing outputs of any structure
# ------------------------------------------------------------------------------------------------
def _items(value: Any) -> list[tuple[str, Any]] | None:
    if isinstance(value, Mapping):
        return [(f"[{k!r}]", v) for k, v in value.items()]
    if is_dataclass(value) and not isinstance(value, type):
        return [(f".{f.name}", getattr(value, f.name)) for f in fields(value)]
    if isinstance(value, (tuple, list)):
        return [(f"[{i}]", v) for i, v in enumerate(value)]
    return None


def outputs_close(a: Any, b: Any, rtol: float = 1e-4) -> bool:
    """Same structure and tensors equal to ``rtol`` of their largest magnitude (NaN equals NaN)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if not a.is_floating_point():
            return torch.equal(a, b)
        if not torch.equal(a.isnan(), b.isnan()):
            return False
        a, b = a.nan_to_num(), b.nan_to_num()
        scale = max(float(a.abs().max()) if a.numel() else 0.0, 1e-6)
        return bool(((a - b).abs() <= rtol * scale).all())
    items_a, items_b = _items(a), _items(b)
    if items_a is None or items_b is None:
        return items_a is None and items_b is None
    return len(items_a) == len(items_b) and all(
        ka == kb and outputs_close(va, vb, rtol)
        for (ka, va), (kb, vb) in zip(items_a, items_b, strict=True)
    )


# ------------------------------------------------------------------------------------------------
# The scan
# ------------------------------------------------------------------------------------------------
@dataclass
class DropoutSites:
    """Where a model drops, found by :func:`scan`.

    Attributes:
        owners: modules whose own ``training`` flag gates dropout they apply functionally (an HF
            attention module) and that are safe to switch on for MC dropout.
        unsafe: owners whose flag changes more than dropout, with why; they stay in eval.
        functional: ``(module, function, rate)`` for each functional dropout call in a pass with
            the owners switched on and a rate > 0.
        ran: the stochastic modules whose ``forward`` ran in that pass.
        covered: dropout modules that never run but whose ``p`` an owner reads and applies
            functionally (HF's ``attn_dropout``): sampled through the owner.
        read_not_applied: dropout modules (p > 0) whose ``p`` is read but that neither run nor
            have a functional dropout at the reader: their rate is never applied.
        never_ran: active stochastic modules that neither ran nor had their ``p`` read.

    Every entry is a module's qualified name ("" for the model itself).
    """

    owners: list[str] = field(default_factory=list)
    unsafe: dict[str, str] = field(default_factory=dict)
    functional: list[tuple[str, str, float]] = field(default_factory=list)
    ran: set[str] = field(default_factory=set)
    covered: set[str] = field(default_factory=set)
    read_not_applied: dict[str, str] = field(default_factory=dict)
    never_ran: list[str] = field(default_factory=list)


def _rate(module: nn.Module) -> float | None:
    p = getattr(module, "p", None)
    try:
        return None if p is None else float(p)
    except (TypeError, ValueError, RuntimeError):
        return None


def scan(
    model: nn.Module,
    run: Callable[[], Any],
    is_stochastic: Callable[[nn.Module], bool] = is_dropout_module,
) -> DropoutSites:
    """Runs ``run()`` (a forward pass of ``model``) two to a few times and locates its dropout.

    See the module doc for the passes. Every module's ``training`` flag is restored; call it under
    ``torch.no_grad()``. Random draws happen only in stochastic modules other than dropout (kept
    in eval here), so torch's RNG is not consumed.

    Args:
        model: the model.
        run: a zero-argument callable running one forward pass of ``model`` and returning its output.
        is_stochastic: which modules MC dropout switches on itself (default: dropout modules).

    Returns:
        A :class:`DropoutSites`.
    """
    names = {m: n for n, m in model.named_modules()}
    stochastic = [m for m in names if is_stochastic(m)]
    active = [m for m in stochastic if (_rate(m) is None or _rate(m) > 0)]
    dropout_modules = [m for m in stochastic if is_dropout_module(m)]
    flags = [(m, m.training) for m in names]

    def record(flipped: list[nn.Module]) -> tuple[_Recorder, Any]:
        model.eval()
        for m in flipped:
            m.training = True
        recorder = _Recorder(model, names)
        with recorder.recording(dropout_modules, stochastic):
            out = run()
        return recorder, out

    try:
        eval_pass, reference = record([])
        candidates = {caller for caller, _, _ in eval_pass.calls}
        for m in names:
            if isinstance(m, _CONTAINERS) or is_stochastic(m):
                continue
            if any(c in active for c in m.children()):
                candidates.add(m)
        order = list(names)
        if candidates:
            flip_pass, flipped_out = record(sorted(candidates, key=order.index))
        else:
            flip_pass, flipped_out = eval_pass, reference

        def gains(m: nn.Module) -> bool:
            before = sum(1 for c, _, r in eval_pass.calls if c is m and r > 0)
            after = sum(1 for c, _, r in flip_pass.calls if c is m and r > 0)
            read = any(m in readers for readers in flip_pass.reads.values())
            runs = any(c in flip_pass.ran and c not in eval_pass.ran for c in m.children())
            return after > before or read or runs

        owners = [m for m in names if m in candidates and gains(m)]
        unsafe: dict[nn.Module, str] = {}
        if owners and not outputs_close(reference, flipped_out):
            _, together = record(owners)
            if not outputs_close(reference, together):
                for m in list(owners):
                    _, alone = record([m])
                    if not outputs_close(reference, alone):
                        unsafe[m] = (
                            "its training flag changes the output with every dropout rate at 0, "
                            "so it gates more than dropout"
                        )
                owners = [m for m in owners if m not in unsafe]
        final, _ = record(owners) if owners else (eval_pass, None)
    finally:
        for m, flag in flags:
            m.training = flag

    sites = DropoutSites(
        owners=[names[m] for m in owners], unsafe={names[m]: why for m, why in unsafe.items()}
    )
    sites.functional = [(names[c], n, r) for c, n, r in final.calls if r > 0]
    appliers = {c for c, _, r in final.calls if r > 0}
    ran = flip_pass.ran | final.ran
    sites.ran = {names[m] for m in stochastic if m in ran}
    for m in active:
        if m in ran:
            continue
        readers = flip_pass.reads.get(m, set())
        if readers & appliers:
            sites.covered.add(names[m])
        elif readers:
            sites.read_not_applied[names[m]] = names[next(iter(readers))]
        else:
            sites.never_ran.append(names[m])
    return sites


def describe(module: nn.Module) -> str:
    """``ClassName(p=…)`` for reports."""
    rate = _rate(module)
    return f"{type(module).__name__}(p={rate:g})" if rate is not None else type(module).__name__
