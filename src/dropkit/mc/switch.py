"""Which modules MC dropout samples, finding functional dropout, and switching them on.

:func:`is_stochastic_module` says which modules are sampled, :func:`find_dropout_sites` finds the
functional dropout gated on a module's flag (Hugging Face attention) by running the model, and
:func:`mc_dropout` puts the model in eval with only those modules (and the safe owners) in
training mode. The model checks shared by every entry point live here too.
"""

from __future__ import annotations

import contextlib
import numbers
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from dropkit.dropout_sites import DropoutSites, scan
from dropkit.layers.base import is_dropout_module
from dropkit.mc.inputs import Inputs, device_of, with_shape_context
from dropkit.mc.seeds import saved_global_rng


class DeadDropoutWarning(UserWarning):
    """MC dropout found dropout that is not sampled: a module that never ran, identical samples."""


def is_stochastic_module(module: nn.Module) -> bool:
    """True for the modules MC dropout samples: dropout modules and ``mc_stochastic`` layers.

    That is :func:`dropkit.is_dropout_module` (dropkit's ``DropoutBase`` subclasses and torch.nn's
    ``Dropout*``), or a module whose ``mc_stochastic`` attribute is ``True`` — set as a class
    attribute by dropkit's Standout, VariationalLinear, LinearSVDO and Conv2dSVDO, whose training
    forward draws noise but which are weight layers, not dropout modules. A user's own stochastic
    layer opts in the same way. Such a module's training forward must be its posterior sample
    (its eval forward the deterministic approximation), and it must draw its noise from torch's
    generators (or, for the batched fast path, take dim 0 as the batch).

    torch.nn's ``RNN``/``LSTM``/``GRU`` with inter-layer dropout (``dropout > 0`` and two or more
    layers) count too: in training mode their only stochastic part is that dropout, so MC
    dropout samples it (batched prediction needs ``batch_first=True``).

    Example:
        >>> import torch, dropkit
        >>> from dropkit.mc import is_stochastic_module
        >>> [is_stochastic_module(m) for m in (torch.nn.Dropout(), dropkit.LinearSVDO(3, 2),
        ...                                    dropkit.Standout(torch.nn.Linear(3, 2)), torch.nn.Linear(3, 2))]
        [True, True, True, False]
    """
    return (
        is_dropout_module(module)
        or getattr(module, "mc_stochastic", False) is True
        or _rnn_with_dropout(module)
        or (isinstance(module, nn.MultiheadAttention) and module.dropout > 0)
    )


def _rnn_with_dropout(module: nn.Module) -> bool:
    """A torch.nn RNN/LSTM/GRU whose own inter-layer dropout is on (``dropout > 0``, 2+ layers)."""
    return isinstance(module, nn.RNNBase) and module.num_layers > 1 and module.dropout > 0


def _flag_gates_only_dropout(module: nn.Module) -> bool:
    """torch.nn's transformer layers: their training flag gates their dropout and, in eval, a fused
    fast path that computes the same function but skips the dropout modules. Switched on under MC
    dropout so their dropout runs (their attention's own dropout is a MultiheadAttention's)."""
    return isinstance(
        module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.TransformerEncoder)
    ) and any(is_active(m) for m in module.modules())


def is_active(module: nn.Module) -> bool:
    """A stochastic module whose rate is not 0 (p = 0 is deterministic: part of the trunk)."""
    if not is_stochastic_module(module):
        return False
    p = getattr(module, "p", None)
    try:
        return p is None or float(p) != 0.0
    except (TypeError, ValueError, RuntimeError):
        return True


def check_model_type(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def no_dropout_error(model: nn.Module, scanned: bool) -> ValueError:
    where = (
        "and no functional dropout gated on a module's flag ran on the given inputs"
        if scanned
        else "(pass example inputs, mc_dropout(model, x), to find functional dropout too)"
    )
    return ValueError(
        f"model ({type(model).__name__}) has no dropout module {where}: MC dropout needs at least "
        "one dropkit dropout module (DropoutBase), torch.nn Dropout/Dropout1d/2d/3d/AlphaDropout/"
        "FeatureAlphaDropout, an RNN/LSTM/GRU with dropout > 0 and 2+ layers, a "
        "MultiheadAttention with dropout > 0, a stochastic layer (mc_stochastic = True: Standout, "
        "VariationalLinear, LinearSVDO, Conv2dSVDO) or a functional dropout; "
        "dropkit.convert.convert_dropout swaps torch.nn's for dropkit's"
    )


def _check_model(model: object) -> nn.Module:
    check_model_type(model)
    if not any(is_stochastic_module(m) for m in model.modules()):  # type: ignore[union-attr]
        raise no_dropout_error(model, scanned=False)  # type: ignore[arg-type]
    return model  # type: ignore[return-value]


def require_dropout(model: nn.Module, sites: DropoutSites) -> None:
    has_module = any(is_stochastic_module(m) for m in model.modules())
    if not has_module and not sites.functional:
        raise no_dropout_error(model, scanned=True)
    if not any(is_active(m) for m in model.modules()) and not sites.functional:
        raise ValueError(
            f"every dropout module of model ({type(model).__name__}) has p = 0: the T samples would "
            "be identical; MC dropout needs a dropout module with p > 0"
        )


@contextlib.contextmanager
def switched(model: nn.Module, owners: list[str] = ()) -> Iterator[list[str]]:
    """Eval mode, with the stochastic modules and the given owners' own flags on; restored."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        names = []
        for name, m in model.named_modules():
            if is_stochastic_module(m) or name in owners or _flag_gates_only_dropout(m):
                m.training = True
                names.append(name)
        yield names
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def mc_dropout(model: nn.Module, *example_args: Any, **example_kwargs: Any) -> Iterator[list[str]]:
    r"""Inside, only the stochastic-regularisation modules of ``model`` are in training mode.

    On entry every module is put in eval mode (BatchNorm uses its running statistics, and so on)
    and each module for which :func:`is_stochastic_module` holds — dropkit's ``DropoutBase``
    subclasses, torch.nn's ``Dropout*``, and ``mc_stochastic`` layers (Standout, VariationalLinear,
    LinearSVDO, Conv2dSVDO) — has its own ``training`` flag set (not its children's: a wrapped
    layer stays in eval), so each forward pass draws a fresh mask or noise: one sample ω̂_t ~ q(ω)
    of the approximate posterior. On exit every module's ``training`` flag is put back as it was,
    even if the body raised.

    Functional dropout gated on a module's flag (Hugging Face attention:
    ``dropout=self.attn_dropout.p if self.training else 0.0``) is found only by running the model:
    given example inputs, ``mc_dropout(model, x, attention_mask=m)`` runs
    :func:`find_dropout_sites` on them and also switches on the *owners* it finds safe (modules
    whose flag gates nothing but dropout); :func:`predict` always does. Without example inputs,
    a warning (:class:`DeadDropoutWarning`) on exit names each switched-on dropout module that
    never ran inside the block although the model did (its rate is likely applied by its parent).

    Args:
        model: any ``nn.Module`` holding at least one dropout module (or, with example inputs,
            functional dropout).
        *example_args, **example_kwargs: optional inputs of one forward pass, to find functional
            dropout (run without gradients, flags and RNG restored).

    Yields:
        The qualified names of the modules switched on ("" for the model itself).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``model`` holds no stochastic module (and no functional dropout was found).

    Example:
        >>> import torch, dropkit
        >>> from dropkit.mc import mc_dropout
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
        ...                           dropkit.Dropout(0.5), torch.nn.Linear(8, 2)).train()
        >>> with mc_dropout(net) as names:
        ...     names, net[1].training, net[2].training
        (['2'], False, True)
        >>> net[1].training  # restored
        True
    """
    check_model_type(model)
    if not example_args and not example_kwargs:
        _check_model(model)
        watch = _RunWatch(model)
        with switched(model) as names, watch:
            yield names
        watch.warn()
        return
    with torch.no_grad(), saved_global_rng(device_of(example_args, example_kwargs, model)):
        sites = find_sites(model, example_args, example_kwargs)
    if not sites.owners and not any(is_stochastic_module(m) for m in model.modules()):
        raise no_dropout_error(model, scanned=True)
    with switched(model, sites.owners) as names:
        yield names


class _RunWatch:
    """Notes which active dropout modules run inside ``mc_dropout``; warns about the rest."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.active = {m: n for n, m in model.named_modules() if is_active(m)}
        self.ran: set[nn.Module] = set()
        self.model_ran = False
        self._handles: list = []

    def __enter__(self) -> _RunWatch:
        def mark(module: nn.Module, args: tuple) -> None:
            self.ran.add(module)

        def model_ran(module: nn.Module, args: tuple) -> None:
            self.model_ran = True

        self._handles = [m.register_forward_pre_hook(mark) for m in self.active]
        self._handles.append(self.model.register_forward_pre_hook(model_ran))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def warn(self) -> None:
        dead = [n for m, n in self.active.items() if m not in self.ran]
        if self.model_ran and dead:
            warnings.warn(
                f"mc_dropout: dropout module(s) {', '.join(repr(n) for n in dead)} never ran inside "
                "the block: their rate is likely applied functionally by a parent left in eval "
                "(Hugging Face attention), so it was not sampled; pass example inputs, "
                "mc_dropout(model, x), or use dropkit.mc.predict",
                DeadDropoutWarning,
                stacklevel=3,
            )


# Sites found per model, reused while its modules, flags, rates and the input's shapes stay the same.
_SITES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, DropoutSites]] = (
    weakref.WeakKeyDictionary()
)


def find_sites(model: nn.Module, args: tuple, kwargs: dict) -> DropoutSites:
    inputs = Inputs(args, kwargs)
    key = (
        tuple((name, id(m), m.training, _rate_key(m)) for name, m in model.named_modules()),
        inputs.spec(),
    )
    cached = _SITES.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    sites = with_shape_context(
        model,
        inputs,
        lambda: scan(model, lambda: model(*args, **kwargs), is_stochastic_module),
    )
    _SITES[model] = (key, sites)  # type: ignore[assignment]
    return sites  # type: ignore[return-value]


def _rate_key(module: nn.Module) -> object:
    for attr in ("p", "dropout"):
        value = getattr(module, attr, None)
        if isinstance(value, numbers.Real):
            return float(value)
    return None


def find_dropout_sites(model: nn.Module, *args: Any, **kwargs: Any) -> DropoutSites:
    """Where ``model`` drops on these inputs: :func:`dropkit.dropout_sites.scan`.

    Runs a few forward passes without gradients (flags and torch's RNG state restored) and returns
    the owners MC dropout switches on (modules whose flag gates functional dropout, e.g. Hugging
    Face attention), the unsafe ones, the functional calls and the dead dropout modules. Module
    names are qualified names ("" for the model itself).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from dropkit.mc import find_dropout_sites
        >>> class Net(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc = nn.Linear(4, 4)
        ...     def forward(self, x):
        ...         return nn.functional.dropout(self.fc(x), 0.3, self.training)
        >>> find_dropout_sites(Net(), torch.randn(2, 4)).owners
        ['']
    """
    check_model_type(model)
    with torch.no_grad(), saved_global_rng(device_of(args, kwargs, model)):
        return find_sites(model, args, kwargs)
