"""One row per public dropkit module: the table the generic module tests and the conformance matrix
run over (torch's ``ModuleInfo`` idea). A new layer gets every generic test by adding a row here;
``test_modules.test_every_public_module_has_a_spec`` fails until it has one.

A row says how to build the module, how to make an input for it, which torch.nn module computes
the same thing in eval (its twin, if any), what kind of randomness it draws, and which cells of the
deployment matrix (``tests/test_conformance.py``) it passes or refuses with a documented error.
``tools/gen_deployment_table.py`` writes docs/deployment.md's table from the same rows, so the page
says exactly what the matrix asserts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import dropkit

# The deployment matrix's columns: (key, heading, mode the module is in).
CELLS: tuple[tuple[str, str, str], ...] = (
    ("export", "torch.export", "eval"),
    ("onnx_dynamo", "ONNX (dynamo)", "eval"),
    ("onnx_legacy", "ONNX (legacy)", "eval"),
    ("jit_trace", "jit.trace", "eval"),
    ("jit_script", "jit.script", "eval"),
    ("compile_aot_eager", "compile aot_eager", "train"),
    ("compile_inductor", "compile inductor", "train"),
    ("export_train", "torch.export", "train"),
    ("jit_trace_train", "jit.trace", "train"),
    ("jit_script_train", "jit.script", "train"),
)
CELL_KEYS = tuple(key for key, _, _ in CELLS)


@dataclass(frozen=True)
class Refusal:
    """A matrix cell a module does not support: the error it raises (a regex) and why."""

    error: type[BaseException]
    match: str
    reason: str


@dataclass(frozen=True)
class ModuleSpec:
    """How to build, feed and judge one public module.

    Attributes:
        cls: the public class.
        make: builds a fresh instance (float32, default device).
        inputs: ``(batch, dtype) -> tuple`` of forward arguments; floating inputs in ``dtype``.
        twin: builds the torch.nn module that computes the same output in eval from the instance
            (state_dict interchangeable both ways), or None.
        counter_based: every random draw comes from dropkit's counter-based stream (the same bits
            in eager mode and under torch.compile for the same ``torch.manual_seed``).
        stochastic: the training forward is random.
        learned: the rate (or noise variance) is a learned parameter.
        dtypes: floating dtypes the forward supports (parameters converted with ``.to``).
        twin_state: the twin's state_dict is the module's (same keys), loadable both ways.
        complete_state: the state_dict holds everything the output depends on.
        empty_batch: the forward accepts a batch of size 0 (a string: why not).
        known_bugs: generic tests (their names) that fail today, with the issue tracking the fix;
            the test is an xfail(strict=True), so it fails once fixed until the row is updated.
        refusals: matrix cells (keys of :data:`CELLS`) the module refuses, with the error.
    """

    cls: type[nn.Module]
    make: Callable[[], nn.Module]
    inputs: Callable[[int, torch.dtype], tuple]
    twin: Callable[[nn.Module], nn.Module] | None = None
    counter_based: bool = True
    stochastic: bool = True
    learned: bool = False
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    twin_state: bool = True
    complete_state: bool = True
    empty_batch: bool | str = True
    known_bugs: dict[str, str] = field(default_factory=dict)
    refusals: dict[str, Refusal] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.cls.__name__

    def expected(self, cell: str) -> str:
        """``"ok"`` or the refusal's reason, for the docs table."""
        return "ok" if cell not in self.refusals else self.refusals[cell].reason


_TRACE_TRAIN = Refusal(
    RuntimeError,
    r"cannot be traced by torch\.jit\.trace in training mode",
    "refused: the trace would record the mask's seed as a constant (trace in eval)",
)
_SCRIPT_TRAIN = Refusal(
    torch.jit.Error,  # the RuntimeError raised inside TorchScript, as the interpreter reports it
    r"cannot run its training forward under TorchScript",
    "eval only: training raises an error naming the layer",
)
_DYNAMO_RNN = Refusal(
    Exception,
    r"(?i)RNN, GRU, or LSTM",
    "refused by Dynamo, which does not trace nn.LSTM/GRU/RNN",
)


_WEIGHT_DROP_SCRIPT = Refusal(
    dropkit.layers.base.ScriptError,
    r"WeightDrop cannot be compiled by torch\.jit\.script",
    "refused with an error naming the layer: script .to_plain() for eval",
)
_ELBO_SCRIPT = Refusal(
    dropkit.layers.base.ScriptError,
    r"ELBOLoss cannot be compiled by torch\.jit\.script",
    "refused with an error naming the layer: a training loss; script the model",
)
_ELBO_TRACE = Refusal(
    RuntimeError,
    r"Cannot insert a Tensor that requires grad as a constant",
    "refused by the tracer: the model is held outside the module tree",
)


def _refusals(counter_based: bool = True, script_train: bool = False, **more: Refusal):
    """The usual refusals: training traces of counter-based masks and training under TorchScript
    (except the layers whose scripted training forward is dropkit's own ops)."""
    table: dict[str, Refusal] = {}
    if counter_based:
        table["jit_trace_train"] = _TRACE_TRAIN
    if not script_train:
        table["jit_script_train"] = _SCRIPT_TRAIN
    table.update(more)
    return table


def _randn(*shape: int) -> Callable[[int, torch.dtype], tuple]:
    def make(batch: int, dtype: torch.dtype) -> tuple:
        return (torch.randn(batch, *shape).to(dtype),)

    return make


def _attention(batch: int, dtype: torch.dtype) -> tuple:
    return (torch.softmax(torch.randn(batch, 2, 3, 5), dim=-1).to(dtype),)


def _tokens(batch: int, dtype: torch.dtype) -> tuple:
    return (torch.randint(0, 20, (batch, 5)),)


def _sequence(batch: int, dtype: torch.dtype) -> tuple:
    return (torch.randn(5, batch, 4).to(dtype),)  # (T, N, C)


def _logits_and_targets(batch: int, dtype: torch.dtype) -> tuple:
    return (torch.randn(batch, 3).to(dtype), torch.randint(0, 3, (batch,)))


def _same_state(module: nn.Module, twin: nn.Module) -> nn.Module:
    twin.load_state_dict(module.state_dict())
    return twin


SPECS: tuple[ModuleSpec, ...] = (
    ModuleSpec(
        dropkit.Dropout,
        lambda: dropkit.Dropout(0.3),
        _randn(6),
        twin=lambda m: nn.Dropout(m.p),
        refusals=_refusals(script_train=True),
    ),
    ModuleSpec(
        dropkit.Dropout1d,
        lambda: dropkit.Dropout1d(0.3),
        _randn(3, 5),
        twin=lambda m: nn.Dropout1d(m.p),
        refusals=_refusals(script_train=True),
    ),
    ModuleSpec(
        dropkit.Dropout2d,
        lambda: dropkit.Dropout2d(0.3),
        _randn(3, 4, 4),
        twin=lambda m: nn.Dropout2d(m.p),
        refusals=_refusals(script_train=True),
    ),
    ModuleSpec(
        dropkit.Dropout3d,
        lambda: dropkit.Dropout3d(0.3),
        _randn(3, 2, 3, 3),
        twin=lambda m: nn.Dropout3d(m.p),
        refusals=_refusals(script_train=True),
    ),
    ModuleSpec(
        dropkit.AlphaDropout,
        lambda: dropkit.AlphaDropout(0.3),
        _randn(6),
        twin=lambda m: nn.AlphaDropout(m.p),
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.GaussianDropout,
        lambda: dropkit.GaussianDropout(0.3),
        _randn(6),
        twin=lambda m: nn.Identity(),
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.DropBlock2d,
        lambda: dropkit.DropBlock2d(0.2, block_size=3),
        _randn(3, 6, 6),
        twin=lambda m: nn.Identity(),
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.DropBlock3d,
        lambda: dropkit.DropBlock3d(0.2, block_size=2),
        _randn(2, 4, 4, 4),
        twin=lambda m: nn.Identity(),
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.DropPath,
        lambda: dropkit.DropPath(0.3),
        _randn(6),
        twin=lambda m: nn.Identity(),
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.DropHead,
        lambda: dropkit.DropHead(0.25),
        _randn(4, 3, 5),
        twin=lambda m: nn.Identity(),
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.AttentionDropout,
        lambda: dropkit.AttentionDropout(0.2),
        _attention,
        twin=lambda m: nn.Identity(),
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.LockedDropout,
        lambda: dropkit.LockedDropout(0.3),
        _sequence,
        twin=lambda m: nn.Identity(),
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.EmbeddingDropout,
        lambda: dropkit.EmbeddingDropout(20, 6, p=0.2),
        _tokens,
        twin=lambda m: _same_state(m, nn.Embedding(20, 6)),
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.DropConnectLinear,
        lambda: dropkit.DropConnectLinear(6, 4, p=0.3),
        _randn(6),
        twin=lambda m: m.to_plain(),
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.DropConnectConv1d,
        lambda: dropkit.DropConnectConv1d(2, 3, 3, p=0.2),
        _randn(2, 7),
        twin=lambda m: m.to_plain(),
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.DropConnectConv2d,
        lambda: dropkit.DropConnectConv2d(2, 3, 3, p=0.2),
        _randn(2, 6, 6),
        twin=lambda m: m.to_plain(),
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.DropConnectConv3d,
        lambda: dropkit.DropConnectConv3d(1, 2, 2, p=0.2),
        _randn(1, 4, 4, 4),
        twin=lambda m: m.to_plain(),
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.WeightDrop,
        lambda: dropkit.WeightDrop(nn.LSTM(4, 5), p=0.3),
        _sequence,
        twin=lambda m: m.to_plain(),
        twin_state=False,  # the wrapped RNN's keys are prefixed with "module."
        refusals=_refusals(
            jit_script=_WEIGHT_DROP_SCRIPT,
            jit_script_train=_WEIGHT_DROP_SCRIPT,
            compile_aot_eager=_DYNAMO_RNN,
            compile_inductor=_DYNAMO_RNN,
        ),
    ),
    ModuleSpec(
        dropkit.ConcreteDropout,
        lambda: dropkit.ConcreteDropout(nn.Linear(6, 4), p=0.2),
        _randn(6),
        learned=True,
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.VariationalDropout,
        lambda: dropkit.VariationalDropout(0.3, num_features=6),
        _randn(6),
        twin=None,
        learned=True,
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.VariationalLinear,
        lambda: dropkit.VariationalLinear(6, 4, p=0.2),
        _randn(6),
        learned=True,
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.LinearSVDO,
        lambda: dropkit.LinearSVDO(6, 4),
        _randn(6),
        learned=True,
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.Conv2dSVDO,
        lambda: dropkit.Conv2dSVDO(2, 3, 3),
        _randn(2, 6, 6),
        learned=True,
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.Standout,
        lambda: dropkit.Standout(nn.Linear(6, 4)),
        _randn(6),
        learned=True,
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.MLP,
        lambda: dropkit.MLP([6, 8, 3], p=0.2),
        _randn(6),
        refusals=_refusals(script_train=True),
    ),
    ModuleSpec(
        dropkit.ELBOLoss,
        lambda: dropkit.ELBOLoss(dropkit.LinearSVDO(6, 3), n_data=100),
        _logits_and_targets,
        stochastic=False,
        # The loss reads its model's KL; the model is held outside the module tree (not a
        # submodule, so .to() and state_dict leave it alone) and stays float32 here.
        complete_state=False,
        dtypes=(torch.float32, torch.float64),
        empty_batch="the mean NLL of an empty batch is NaN, as torch.nn.functional.cross_entropy's",
        refusals=_refusals(
            counter_based=False,
            onnx_legacy=_ELBO_TRACE,
            jit_trace=_ELBO_TRACE,
            jit_trace_train=_ELBO_TRACE,
            jit_script=_ELBO_SCRIPT,
            jit_script_train=_ELBO_SCRIPT,
        ),
    ),
)

#: Public nn.Module subclasses that are not layers and have no row, with the reason.
EXEMPT: dict[type, str] = {
    dropkit.DropoutBase: "an abstract base: it holds p, inplace and scaling and has no forward",
}

SPEC_BY_NAME = {spec.name: spec for spec in SPECS}


def public_module_classes() -> list[type]:
    """Every nn.Module subclass exported from ``dropkit`` (its ``__all__``)."""
    classes = []
    for name in dropkit.__all__:
        value = getattr(dropkit, name)
        if isinstance(value, type) and issubclass(value, nn.Module):
            classes.append(value)
    return classes
