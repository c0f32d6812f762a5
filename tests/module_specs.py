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

import importlib
import pkgutil
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

import dropkit
import dropkit.convert

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
class TrainTwin:
    """The torch.nn module that draws the same kind of mask in training (same rate, same scale).

    Attributes:
        make: builds it from the instance.
        shape: the all-ones input both run on (large enough for 6σ bounds on the dropped fraction).
        units: reduces an output to one entry per independent draw (a channel, for channel dropout).
    """

    make: Callable[[nn.Module], nn.Module]
    shape: tuple[int, ...]
    units: Callable[[torch.Tensor], torch.Tensor] = torch.flatten


def _channels(y: torch.Tensor) -> torch.Tensor:
    """One entry per (sample, channel) of an (N, C, *) output: the mask is constant within one."""
    maps = y.flatten(2)
    assert torch.equal(maps, maps[..., :1].expand_as(maps)), "the mask varies within a channel"
    return maps[..., 0].flatten()


def _same_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype


@dataclass(frozen=True)
class ModuleSpec:
    """How to build, feed and judge one public module.

    Attributes:
        cls: the public class.
        make: builds a fresh instance (float32, default device).
        inputs: ``(batch, dtype) -> tuple`` of forward arguments; floating inputs in ``dtype``.
        twin: builds the torch.nn module that computes the same output in eval from the instance
            (state_dict interchangeable both ways where ``twin_state``), or None.
        eval_rule: the documented eval output, ``(module, *inputs) -> output``, for a module with
            no torch.nn twin (every stochastic row has one or the other).
        train_twin: the torch.nn module with the same training semantics (drop rate and scale),
            compared statistically, or None.
        counter_based: every random draw comes from dropkit's counter-based stream (the same bits
            in eager mode and under torch.compile for the same ``torch.manual_seed``).
        fused_noise: Inductor fuses the arithmetic around the (same) draws, mean + σ·ε, and rounds
            the training output differently from eager mode (within rtol 1e-5, not bit for bit).
        stochastic: the training forward is random.
        learned: the rate (or noise variance) is a learned parameter.
        dtypes: floating dtypes the forward supports (parameters converted with ``.to``).
        out_dtype: the output's floating dtype for an input (and module) of a given dtype.
        wrong_input: ``(error, regex)`` raised for an input of the wrong kind (integers where
            floats are expected, floats where token ids are).
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
    eval_rule: Callable[..., object] | None = None
    train_twin: TrainTwin | None = None
    counter_based: bool = True
    fused_noise: bool = False
    stochastic: bool = True
    learned: bool = False
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    out_dtype: Callable[[torch.dtype], torch.dtype] = _same_dtype
    wrong_input: tuple[type[BaseException], str] = (TypeError, r"must be a floating-point tensor")
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


def _half_pruned(layer: nn.Module) -> nn.Module:
    """A sparse variational layer whose every other weight has log α > threshold (pruned in eval),
    so its eval rule is seen to zero them."""
    with torch.no_grad():
        layer.log_sigma2.view(-1)[::2] = 4.0  # log α = 4 − log θ² > 5.8 for |θ| < 0.4
    return layer


def _pruned_weight(layer: nn.Module) -> torch.Tensor:
    return (layer.weight * layer.kept_mask()).detach().clone()


def _linear_twin(module: nn.Module, weight: torch.Tensor) -> nn.Linear:
    twin = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    with torch.no_grad():
        twin.weight.copy_(weight)
        if module.bias is not None:
            twin.bias.copy_(module.bias)
    return twin


def _conv2d_twin(module: nn.Conv2d, weight: torch.Tensor) -> nn.Conv2d:
    twin = nn.Conv2d(
        module.in_channels,
        module.out_channels,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        module.groups,
        module.bias is not None,
        module.padding_mode,
    )
    with torch.no_grad():
        twin.weight.copy_(weight)
        if module.bias is not None:
            twin.bias.copy_(module.bias)
    return twin


def _mlp_twin(mlp: nn.Module) -> nn.Sequential:
    """The MLP without its dropout layers, under the same child names (the same state_dict)."""
    layers = [(n, c) for n, c in mlp.named_children() if not isinstance(c, dropkit.Dropout)]
    return nn.Sequential(OrderedDict(layers))


def _standout_eval(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Ba & Frey's expectation rule: y = π ⊙ a, π = sigmoid(α z + β), a = activation(z), z = Wx + b."""
    z = module.layer(x)
    return module.activation(z) * torch.sigmoid(module.alpha * z + module.beta)


#: The model each ELBOLoss row was built with (the loss holds it outside its module tree).
_ELBO_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _elbo() -> nn.Module:
    model = dropkit.LinearSVDO(6, 3)
    loss = dropkit.ELBOLoss(model, n_data=100, kl_weight=0.5)
    _ELBO_MODELS[loss] = model
    return loss


def _elbo_eval(loss: nn.Module, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """N · NLL (cross-entropy, the mini-batch mean) + w · KL(model)."""
    nll = nn.functional.cross_entropy(output, target)
    return loss.n_data * nll + loss.kl_weight * dropkit.kl_divergence(_ELBO_MODELS[loss])


SPECS: tuple[ModuleSpec, ...] = (
    ModuleSpec(
        dropkit.Dropout,
        lambda: dropkit.Dropout(0.3),
        _randn(6),
        twin=lambda m: nn.Dropout(m.p),
        train_twin=TrainTwin(lambda m: nn.Dropout(m.p), (256, 256)),
        refusals=_refusals(script_train=True),
    ),
    ModuleSpec(
        dropkit.Dropout1d,
        lambda: dropkit.Dropout1d(0.3),
        _randn(3, 5),
        twin=lambda m: nn.Dropout1d(m.p),
        train_twin=TrainTwin(lambda m: nn.Dropout1d(m.p), (256, 64, 3), _channels),
        refusals=_refusals(script_train=True),
    ),
    ModuleSpec(
        dropkit.Dropout2d,
        lambda: dropkit.Dropout2d(0.3),
        _randn(3, 4, 4),
        twin=lambda m: nn.Dropout2d(m.p),
        train_twin=TrainTwin(lambda m: nn.Dropout2d(m.p), (256, 64, 2, 2), _channels),
        refusals=_refusals(script_train=True),
    ),
    ModuleSpec(
        dropkit.Dropout3d,
        lambda: dropkit.Dropout3d(0.3),
        _randn(3, 2, 3, 3),
        twin=lambda m: nn.Dropout3d(m.p),
        train_twin=TrainTwin(lambda m: nn.Dropout3d(m.p), (256, 64, 1, 2, 2), _channels),
        refusals=_refusals(script_train=True),
    ),
    ModuleSpec(
        dropkit.AlphaDropout,
        lambda: dropkit.AlphaDropout(0.3),
        _randn(6),
        twin=lambda m: nn.AlphaDropout(m.p),
        train_twin=TrainTwin(lambda m: nn.AlphaDropout(m.p), (256, 256)),
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.convert.FeatureAlphaDropout,
        lambda: dropkit.convert.FeatureAlphaDropout(0.3),
        _randn(3, 4, 4),
        twin=lambda m: nn.FeatureAlphaDropout(m.p),
        train_twin=TrainTwin(lambda m: nn.FeatureAlphaDropout(m.p), (256, 64, 2, 2), _channels),
        refusals=_refusals(script_train=True),
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
        wrong_input=(TypeError, r"input must be an integer tensor of token ids"),
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
        wrong_input=(ValueError, r"RNN input dtype \(torch\.int64\) does not match"),  # torch's
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
        twin=lambda m: m.layer,  # eval: the input passes unchanged into the layer
        twin_state=False,  # the layer's keys are prefixed with "layer.", and p_logit is extra
        learned=True,
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.VariationalDropout,
        lambda: dropkit.VariationalDropout(0.3, num_features=6),
        _randn(6),
        twin=lambda m: nn.Identity(),  # eval: y = x
        twin_state=False,  # log_alpha
        learned=True,
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.VariationalLinear,
        lambda: dropkit.VariationalLinear(6, 4, p=0.2),
        _randn(6),
        twin=lambda m: _linear_twin(m, m.weight),  # eval: y = xθᵀ + b
        twin_state=False,  # log_alpha
        learned=True,
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.LinearSVDO,
        lambda: _half_pruned(dropkit.LinearSVDO(6, 4)),
        _randn(6),
        fused_noise=True,  # local reparameterisation: mean + sqrt(var) · ε
        twin=lambda m: _linear_twin(m, _pruned_weight(m)),  # eval: θ ⊙ [log α < threshold]
        twin_state=False,  # log_sigma2
        learned=True,
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.Conv2dSVDO,
        lambda: _half_pruned(dropkit.Conv2dSVDO(2, 3, 3)),
        _randn(2, 6, 6),
        fused_noise=True,  # local reparameterisation: mean + sqrt(var) · ε
        twin=lambda m: _conv2d_twin(m, _pruned_weight(m)),  # eval: θ ⊙ [log α < threshold]
        twin_state=False,  # log_sigma2
        wrong_input=(RuntimeError, r"Input type \(long int\) and bias type"),  # nn.Conv2d's
        learned=True,
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.Standout,
        lambda: dropkit.Standout(nn.Linear(6, 4), nn.ReLU(), alpha=1.5, beta=-0.5),
        _randn(6),
        eval_rule=_standout_eval,
        wrong_input=(RuntimeError, r"mat1 and mat2 must have the same dtype"),  # nn.Linear's
        learned=True,
        refusals=_refusals(),
    ),
    ModuleSpec(
        dropkit.MLP,
        lambda: dropkit.MLP([6, 8, 3], p=0.2),
        _randn(6),
        twin=_mlp_twin,
        refusals=_refusals(script_train=True),
    ),
    ModuleSpec(
        dropkit.ELBOLoss,
        _elbo,
        _logits_and_targets,
        stochastic=False,
        eval_rule=_elbo_eval,
        # The loss reads its model's KL; the model is held outside the module tree (not a
        # submodule, so .to() and state_dict leave it alone) and stays float32 here: a half
        # precision NLL plus its float32 KL is float32, by torch's type promotion.
        complete_state=False,
        out_dtype=lambda dtype: torch.promote_types(dtype, torch.float32),
        wrong_input=(NotImplementedError, r"log_softmax"),  # cross_entropy's, on integer logits
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


def _is_module_class(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, nn.Module)


def public_modules() -> list[str]:
    """Every public module of the package: ``dropkit`` and each submodule on no private path."""
    names = ["dropkit"]
    for info in pkgutil.walk_packages(dropkit.__path__, "dropkit."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def public_module_classes() -> list[type]:
    """Every public nn.Module subclass of dropkit: each one a public module exports (its
    ``__all__``: ``dropkit``, ``dropkit.layers``, ``dropkit.convert``, ...), and each class with a
    public name defined in a public module (``dropkit.layers.*``, ``dropkit.mc``,
    ``dropkit.models``, ...), whether or not it is re-exported."""
    classes = set()
    for module_name in public_modules():
        module = importlib.import_module(module_name)
        exported = [getattr(module, name) for name in getattr(module, "__all__", ())]
        classes.update(value for value in exported if _is_module_class(value))
        for name, value in vars(module).items():
            if not name.startswith("_") and getattr(value, "__module__", None) == module_name:
                if _is_module_class(value):
                    classes.add(value)
    return sorted(
        classes,
        key=lambda cls: (cls.__module__, cls.__qualname__),
    )
