"""Reading a model and running it for the diagnostics: which modules hold weights, how a batch is
fed, the order the forward pass calls the leaves in, and the functional dropout calls it makes.

Shared by :mod:`dropkit.diagnostics.activations` and :mod:`dropkit.diagnostics.checklist`; not
public API (the names are public within the package).
"""

from __future__ import annotations

import contextlib
import inspect as _pyinspect
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from dropkit.layers.base import is_dropout_module

__all__ = [
    "CallTracker",
    "call_model",
    "execution_order",
    "first_tensor",
    "is_alpha",
    "is_plain_dropout",
    "is_weight_layer",
    "outputs_equal",
    "preserved",
]

_WEIGHT_LAYERS = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd, nn.Embedding, nn.EmbeddingBag)
_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_ALPHA_NAMES = ("AlphaDropout", "FeatureAlphaDropout")


def is_weight_layer(module: nn.Module) -> bool:
    if isinstance(module, _WEIGHT_LAYERS):
        return True
    if isinstance(module, _NORM_LAYERS) or is_dropout_module(module):
        return False
    return any(True for _ in module.parameters(recurse=False))


def is_plain_dropout(module: nn.Module) -> bool:
    """A dropout module acting on activations (not a DropConnect layer or a dropout embedding)."""
    return is_dropout_module(module) and not is_weight_layer(module)


def is_alpha(module: nn.Module) -> bool:
    return type(module).__name__ in _ALPHA_NAMES or isinstance(
        module, (nn.AlphaDropout, nn.FeatureAlphaDropout)
    )


def first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def call_model(model: nn.Module, batch: Any) -> Any:
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


@contextlib.contextmanager
def preserved(model: nn.Module, seed: int | None) -> Iterator[None]:
    """Restores every module's training flag, the model's buffers and torch's RNG state on exit.

    The buffers: a training pass moves BatchNorm's running statistics (and counts batches), even
    without gradients; looking must not change the model.
    """
    flags = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            yield
        finally:
            for module, flag in flags:
                module.training = flag
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)


def execution_order(model: nn.Module, batch: Any) -> list[str]:
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
        call_model(model, batch)
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


class CallTracker:
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
        """Wraps dropkit's functional dropouts (every function with a ``training`` parameter).

        Every loaded module named ``dropkit.functional`` or ``dropkit.functional_*`` (or below
        ``dropkit.functional.``), so a functional module renamed or added is still watched.
        """
        patched = []
        names = sorted(
            name
            for name in sys.modules
            if name == "dropkit.functional"
            or name.startswith(("dropkit.functional_", "dropkit.functional."))
        )
        seen: set[int] = set()
        for mod_name in names:
            module = sys.modules.get(mod_name)
            if module is None or id(module) in seen:
                continue  # an alias: dropkit.functional_learned is dropkit.functional.learned
            seen.add(id(module))
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


def outputs_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
        return torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(outputs_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(outputs_equal(a[k], b[k]) for k in a)
    return True
