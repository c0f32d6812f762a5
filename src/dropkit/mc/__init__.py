r"""Monte-Carlo dropout: dropout kept on at inference as samples from an approximate posterior.

Gal & Ghahramani (2016) show that a network trained with dropout before its weight layers
approximates a deep Gaussian process; keeping dropout on at test time and averaging T stochastic
forward passes gives the predictive distribution

    p(y | x) ≈ (1/T) Σ_t p(y | x, ω̂_t),   ω̂_t ~ q(ω)   (one dropout mask per pass).

This module does three things:

* :func:`mc_dropout` — a context manager that puts the model in eval mode but switches *only* the
  stochastic-regularisation modules (:func:`is_stochastic_module`) to training mode, so BatchNorm
  and everything else keep their inference rule. Every module's ``training`` flag is restored on
  exit, also when the body raises.

**Which modules are sampled** — :func:`is_stochastic_module`: dropkit's and torch.nn's dropout
modules (:func:`dropkit.is_dropout_module`: every :class:`~dropkit.DropoutBase` subclass, i.e. the
elementwise, channel, alpha, Gaussian, structured, DropConnect, WeightDrop, embedding, locked,
Concrete and variational-dropout modules, and torch.nn's ``Dropout*``), plus every module whose
class sets ``mc_stochastic = True``: dropkit's :class:`~dropkit.Standout`,
:class:`~dropkit.VariationalLinear`, :class:`~dropkit.LinearSVDO` and :class:`~dropkit.Conv2dSVDO`,
which are weight layers (no single rate ``p``, so they are not ``DropoutBase``) but whose training
forward is a draw from the noise they were trained with. A user's own stochastic module opts in
with the same class attribute. What MC means for each is its *training* forward, the distribution
the layer was fitted with:

- Standout (Ba & Frey 2013): y = m ⊙ a with m_j ~ Bernoulli(π_j) (eval: the expectation π ⊙ a);
- VariationalLinear (Kingma et al. 2015) and LinearSVDO/Conv2dSVDO (Molchanov et al. 2017): the
  pre-activations drawn from the factorised Gaussian posterior N(θ, σ²) by the local
  reparameterisation trick. For SVDO this is the *full* posterior q(W), the one the ELBO was fitted
  with: weights the eval rule prunes (log α > threshold, dropout rate > 0.95) are sampled with
  their (huge) noise rather than zeroed; the deterministic pruned mean is the layer's eval mode,
  i.e. the "weight-scaling" counterpart of the MC average. The local trick draws independent
  weights per input row — the same marginal predictive p(y | x) per row as one shared weight
  sample, which is all MC averaging uses.

torch.nn's RNN/LSTM/GRU with inter-layer dropout (``dropout > 0``, two or more layers) are
sampled too: their training mode differs from eval only by that dropout.

Only the stochastic module's own flag is switched (not its children's): a Standout's or
ConcreteDropout's wrapped layer, and a WeightDrop's RNN unless it has inter-layer dropout of its
own, stay in eval.
* :func:`predict` — T samples of ``model(x)`` as one (T, N, ...) tensor, fast:

  - the T samples run *batched*: the batch is repeated T times along dim 0 to (T·N, ...) and run
    in one forward pass, chunked so that one pass stays within a memory budget
    (``max_batch_size`` rows and/or ``max_memory_bytes`` of activations, estimated on the first
    sample; by default passes of about 1 MiB, which measured fastest);
  - the deterministic *trunk* — everything before the first active dropout module — runs once on
    the N rows and only its output is repeated. ``nn.Sequential`` models (nested ones too) are
    split at the first child that is or holds a dropout module; other models are traced with
    ``torch.fx`` and every graph node that does not depend on a dropout call is computed once. If
    the model cannot be traced, or a trunk value that the rest needs depends on the input but is
    not a batch tensor (``x.size(0)`` used after the dropout, say), the whole model runs on the
    repeated input instead; :func:`mc_plan` says which strategy a model gets and why.
* **Reproducible sampling that does not depend on batching.** Sample t's masks are a function of
  (``seed``, t) alone, whatever the chunking, so ``predict(..., batched=False)`` — a plain Python
  loop of T forward passes of ``model(x)`` — gives the same numbers as the batched call:

  - elementwise dropout (``dropkit.Dropout`` without ``noise_shape``, ``torch.nn.Dropout``), the
    k-th dropout call of a forward pass: one counter-based mask stream with key
    ``mix_seed(seed, k)``; sample t uses stream positions [t·M, (t+1)·M) where M is the number of
    elements of one sample's (N, ...) input. A chunk of samples t0 … t1 − 1 is therefore one call
    of :func:`dropkit.ops.dropout_with_seed` at offset t0·M, and the loop's pass t is the same
    call at offset t·M;
  - every other stochastic module (channel, alpha, Gaussian, DropBlock, DropConnect, WeightDrop,
    concrete and variational dropout, Standout, the SVDO and VariationalLinear layers, … and
    torch.nn's channel and alpha variants) is called once per sample block, in order, with its
    seeds drawn from a per-sample ``torch.Generator`` seeded by ``mix_seed(seed, 2^62 + t)``
    (dropkit's functional forms get it as ``generator=``; other modules see torch's global
    generators re-seeded from it). Shared-mask variants therefore draw one mask per sample, never
    one for all T copies; a stochastic module nested in another sees one sample at a time, with
    the call count it has in the loop. A WeightDrop'd RNN must be ``batch_first``; its hidden
    states are joined along their batch dim (1).

  Matmuls over T·N rows may round differently from N-row ones, so the two modes agree to float
  rounding (the masks are bit-identical).

Batching assumes what MC dropout itself assumes: dim 0 of the inputs, of every dropout's input and
of the outputs is the batch, and rows do not interact (true in eval mode for BatchNorm, LayerNorm,
convolutions, attention within a sample). Where the shapes show otherwise (a sequence-first RNN, a
loss over the batch) the remaining samples run as a loop with the same masks.

* **Functional dropout** gated on a module's flag — ``F.dropout(x, p, self.training)``, the
  channel and alpha variants, ``scaled_dot_product_attention(dropout_p=p if self.training else 0)``
  as Hugging Face's attention writes it — is found by :func:`find_dropout_sites`
  (:mod:`dropkit.dropout_sites`: eval passes with the candidate modules' flags switched on one
  way and checked to change nothing but dropout) and sampled: the *owner* modules' flags are
  switched on and a ``TorchFunctionMode`` routes their calls to the same per-sample streams
  (``F.dropout`` and SDPA's dropout: the elementwise stream of their call; the channel and alpha
  variants: the per-sample generators). :func:`predict` does this on its inputs;
  :func:`mc_dropout` given example inputs too.
* **Any inputs and outputs**: ``predict(model, *args, T=…, **kwargs)``; outputs nested in tuples,
  lists, dicts, dataclasses and Hugging Face ``ModelOutput``\ s come back leaf by leaf with a
  leading T dim.
* **Dead dropout**: :func:`predict` warns (:class:`DeadDropoutWarning`; ``strict=True`` raises)
  when an active dropout module never ran, a rate was read but never applied, an owner's flag
  gates more than dropout, or all T samples are identical.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as TF
from torch.overrides import TorchFunctionMode

from dropkit import functional as F
from dropkit import ops, rng
from dropkit._validate import check_positive_int
from dropkit.dropout_sites import (
    FUNCTIONAL_DROPOUTS,
    DropoutSites,
    functional_rate,
    interception,
    scan,
)
from dropkit.layers.base import is_dropout_module
from dropkit.layers.channel import Dropout1d, Dropout2d, Dropout3d
from dropkit.layers.elementwise import AlphaDropout, Dropout, GaussianDropout
from dropkit.layers.weights import WeightDrop

__all__ = [
    "mc_dropout",
    "predict",
    "mc_plan",
    "MCPlan",
    "DEFAULT_PASS_BYTES",
    "is_stochastic_module",
    "find_dropout_sites",
    "DropoutSites",
    "DeadDropoutWarning",
]


class DeadDropoutWarning(UserWarning):
    """MC dropout found dropout that is not sampled: a module that never ran, identical samples."""


#: Target size of one batched pass when no budget is given: the estimated activations of a pass
#: stay near 1 MiB — enough rows to amortise per-pass overhead, small enough to stay in cache and to
#: reuse allocator blocks instead of faulting in fresh pages for every large tensor. Measured on 2
#: cores, T = 100, an MLP 40-256-256-10 on 32 rows: 3.6 ms with 1–2 MiB passes, 4.9 ms with 16 MiB
#: (1520 page faults per call), 10.0 ms for a loop of T passes; on 256 rows 1 MiB passes were the
#: only size with no page faults.
DEFAULT_PASS_BYTES = 1 << 20
# Per-sample generators are keyed apart from the per-call elementwise streams (k < 2^62).
_SAMPLE_TAG = 1 << 62
_MASK64 = (1 << 64) - 1


# ------------------------------------------------------------------------------------------------
# Which modules are dropout, and switching them on
# ------------------------------------------------------------------------------------------------
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
    ) and any(_is_active(m) for m in module.modules())


def _is_active(module: nn.Module) -> bool:
    """A stochastic module whose rate is not 0 (p = 0 is deterministic: part of the trunk)."""
    if not is_stochastic_module(module):
        return False
    p = getattr(module, "p", None)
    try:
        return p is None or float(p) != 0.0
    except (TypeError, ValueError, RuntimeError):
        return True


def _check_model_type(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _no_dropout_error(model: nn.Module, scanned: bool) -> ValueError:
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
    _check_model_type(model)
    if not any(is_stochastic_module(m) for m in model.modules()):  # type: ignore[union-attr]
        raise _no_dropout_error(model, scanned=False)  # type: ignore[arg-type]
    return model  # type: ignore[return-value]


@contextlib.contextmanager
def _switched(model: nn.Module, owners: list[str] = ()) -> Iterator[list[str]]:
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
    _check_model_type(model)
    if not example_args and not example_kwargs:
        _check_model(model)
        watch = _RunWatch(model)
        with _switched(model) as names, watch:
            yield names
        watch.warn()
        return
    with torch.no_grad(), _saved_global_rng(_device_of(example_args, example_kwargs, model)):
        sites = _find_sites(model, example_args, example_kwargs)
    if not sites.owners and not any(is_stochastic_module(m) for m in model.modules()):
        raise _no_dropout_error(model, scanned=True)
    with _switched(model, sites.owners) as names:
        yield names


class _RunWatch:
    """Notes which active dropout modules run inside ``mc_dropout``; warns about the rest."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.active = {m: n for n, m in model.named_modules() if _is_active(m)}
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


# ------------------------------------------------------------------------------------------------
# Sampling state: which samples the current forward pass computes, and their random streams
# ------------------------------------------------------------------------------------------------
class _Sampler:
    """Routes each dropout call of a forward pass to masks keyed by (seed, sample index)."""

    def __init__(self, seed: int, rows: int, device: torch.device, batched: bool) -> None:
        self.seed = seed
        self.rows = rows  # N, rows of one sample
        self.device = device
        self.batched = batched
        self.first = 0  # index of the first sample of the current pass
        self.count = 1  # samples in the current pass
        self.calls = 0  # dropout calls so far in the current pass
        self.ran: set[nn.Module] = set()  # stochastic modules whose forward ran
        self._generators: dict[int, torch.Generator] = {}
        self._future: dict[tuple[int, int], torch.Tensor] = {}

    def begin(self, first: int, count: int) -> None:
        self.first, self.count, self.calls = first, count, 0

    def generator(self, t: int) -> torch.Generator:
        gen = self._generators.get(t)
        if gen is None:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(rng.mix_seed(self.seed, _SAMPLE_TAG + t))
            self._generators[t] = gen
        return gen

    def blocks(self, module: nn.Module | str, input: torch.Tensor) -> list[torch.Tensor]:
        if not self.batched:
            return [input]
        self.check(module, input)
        return list(input.split(self.rows))

    def check(self, module: nn.Module | str, input: torch.Tensor) -> None:
        """Raises unless ``input`` holds the current pass's count × rows rows in dim 0."""
        if self.batched and (input.dim() == 0 or input.shape[0] != self.count * self.rows):
            got = tuple(input.shape) if input.dim() else "a 0-d tensor"
            what = module if isinstance(module, str) else f"dropout module {type(module).__name__}"
            raise _BatchingError(
                f"MC batching: {what} got input of shape {got}, expected dim 0 = samples × rows "
                f"= {self.count} × {self.rows}; the model must keep the batch in dim 0 to be "
                "batched — use predict(..., batched=False)"
            )

    def future(self, length: int, source: int) -> torch.Tensor:
        """The causal mask's masked part (j > i) for (length, source), built once per shape."""
        key = (length, source)
        if key not in self._future:
            ones = torch.ones(length, source, dtype=torch.bool, device=self.device)
            self._future[key] = ones.triu(1)
        return self._future[key]

    def stream_dropout(self, name: str, x: torch.Tensor, p: float) -> torch.Tensor:
        """Elementwise dropout of the current pass: the k-th call's stream, sample t at t·M."""
        call = self.calls
        self.calls += 1
        self.check(name, x)
        return ops.dropout_with_seed(
            x,
            p,
            rng.mix_seed(self.seed, call),
            self.first * (x.numel() // self.count),
            ops.dropout_scale(p),
        )

    def functional(self, func: Callable, p: float, args: tuple, kwargs: dict) -> torch.Tensor:
        """A functional dropout (or SDPA with dropout) routed to this pass's per-sample streams."""
        name = f"torch.nn.functional.{FUNCTIONAL_DROPOUTS[func]}"
        if func is TF.scaled_dot_product_attention:
            return _attention(self, name, p, args, kwargs)
        x = args[0] if args else kwargs["input"]
        if func is TF.dropout:
            return self.stream_dropout(name, x, p)
        self.calls += 1
        batched_rank = {TF.dropout1d: 3, TF.dropout2d: 4, TF.dropout3d: 5}.get(func)
        outputs = []
        for i, block in enumerate(self.blocks(name, x)):
            gen = self.generator(self.first + i)
            if func is TF.alpha_dropout:
                outputs.append(F.alpha_dropout(block, p, True, False, generator=gen))
                continue
            shared = 2 if batched_rank is None or block.dim() == batched_rank else 1
            noise_shape = (None,) * shared + (1,) * (block.dim() - shared)
            if func is TF.feature_alpha_dropout:
                outputs.append(
                    F.alpha_dropout(block, p, True, False, noise_shape=noise_shape, generator=gen)
                )
            else:
                outputs.append(
                    F.dropout(block, p, True, False, noise_shape=noise_shape, generator=gen)
                )
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


class _BatchingError(ValueError):
    """The model does not keep samples × rows in dim 0: the loop serves these samples."""


def _attention(sampler: _Sampler, name: str, p: float, args: tuple, kwargs: dict) -> torch.Tensor:
    """scaled_dot_product_attention's maths with its dropout drawn from the sampler's stream."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound = dict(zip(names, args, strict=False)) | dict(kwargs)
    query, key, value = bound["query"], bound["key"], bound["value"]
    if bound.get("enable_gqa", False) and key.shape[-3] != query.shape[-3]:
        repeats = query.shape[-3] // key.shape[-3]
        key = key.repeat_interleave(repeats, dim=-3)
        value = value.repeat_interleave(repeats, dim=-3)
    scale = bound.get("scale")
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    mask = bound.get("attn_mask")
    if bound.get("is_causal", False):
        scores = scores.masked_fill(sampler.future(query.shape[-2], key.shape[-2]), float("-inf"))
    elif mask is not None:
        scores = (
            scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        )
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(sampler.stream_dropout(name, probs, p), value)


class _SampleMode(TorchFunctionMode):
    """Routes functional dropout with a rate > 0 to the sampler (no other call is touched)."""

    def __init__(self, sampler: _Sampler) -> None:
        super().__init__()
        self.sampler = sampler
        self._scope = interception()

    def __enter__(self) -> _SampleMode:
        self._scope.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._scope.__exit__(*exc)
        self._scope = interception()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in FUNCTIONAL_DROPOUTS:
            first = args[0] if args else next(iter(kwargs.values()), None)
            rate = functional_rate(func, args, kwargs)
            if rate > 0 and isinstance(first, torch.Tensor):
                return self.sampler.functional(func, rate, args, dict(kwargs))
        return func(*args, **kwargs)


def _elementwise_scale(module: nn.Module) -> float | None:
    """The training scale of a plain elementwise dropout, None for every other module."""
    if type(module) is Dropout and module.noise_shape is None:
        return F.train_scale(module.p, module.scaling)
    if type(module) is nn.Dropout:
        return F.train_scale(module.p, "inverted")
    return None


def _functional_rule(
    module: nn.Module,
) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
    """dropkit's functional form of a dropkit module, taking an explicit generator."""
    kind = type(module)
    if kind is Dropout:
        return lambda x, g: F.dropout(
            x,
            module.p,
            True,
            False,
            scaling=module.scaling,
            noise_shape=module.noise_shape,
            generator=g,
        )
    channel = {Dropout1d: F.dropout1d, Dropout2d: F.dropout2d, Dropout3d: F.dropout3d}.get(kind)
    if channel is not None:
        return lambda x, g: channel(x, module.p, True, False, scaling=module.scaling, generator=g)
    if kind is AlphaDropout:
        return lambda x, g: F.alpha_dropout(
            x, module.p, True, False, noise_shape=module.noise_shape, generator=g
        )
    if kind is GaussianDropout:
        return lambda x, g: F.gaussian_dropout(
            x, module.p, True, noise_shape=module.noise_shape, generator=g
        )
    return None


def _reseed_globals(seed: int, device: torch.device) -> None:
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)


@contextlib.contextmanager
def _saved_global_rng(device: torch.device) -> Iterator[None]:
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)


def _cat_leaves(outputs: list, dim: int) -> object:
    """Concatenates per-sample outputs: tensors along ``dim``, tuples/lists leaf by leaf."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs, dim=dim)
    if first is None:
        return None
    if isinstance(first, (tuple, list)):
        return type(first)(_cat_leaves(list(leaves), dim) for leaves in zip(*outputs, strict=True))
    raise TypeError(
        f"MC batching: a stochastic module returned {type(first).__name__}, not a tensor or a "
        "tuple of tensors; use predict(..., batched=False)"
    )


def _mc_forward(module: nn.Module, sampler: _Sampler) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward that replaces an active dropout module's during :func:`predict`."""
    original = type(module).forward
    scale = _elementwise_scale(module)
    rule = _functional_rule(module)

    def forward(input: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        sampler.ran.add(module)
        call = sampler.calls
        sampler.calls += 1
        if scale is not None and not args and not kwargs:
            # One counter-based stream per dropout call; sample t owns positions [t·M, (t+1)·M).
            sampler.check(module, input)
            return ops.dropout_with_seed(
                input,
                float(module.p),
                rng.mix_seed(sampler.seed, call),
                sampler.first * (input.numel() // sampler.count),
                scale,
            )
        blocks = sampler.blocks(module, input)
        outputs = []
        first, count, calls = sampler.first, sampler.count, sampler.calls
        total = count * sampler.rows

        def block_of(value: object, i: int) -> object:
            # Other batch arguments (an attention's key and value) are split like the input.
            if sampler.batched and len(blocks) > 1 and isinstance(value, torch.Tensor):
                if value.dim() > 0 and value.shape[0] == total:
                    return value[i * sampler.rows : (i + 1) * sampler.rows]
            return value

        for i, block in enumerate(blocks):
            gen = sampler.generator(first + i)
            if rule is not None and not args and not kwargs:
                outputs.append(rule(block, gen))
            else:
                # A stochastic module nested inside this one (a Dropout in a WeightDrop-wrapped
                # block, say) sees one sample at a time with the call count it has in the loop.
                sampler.first, sampler.count, sampler.calls = first + i, 1, calls
                _reseed_globals(rng.draw_seed(gen), sampler.device)
                block_args = [block_of(a, i) for a in args]
                block_kwargs = {k: block_of(v, i) for k, v in kwargs.items()}
                outputs.append(original(module, block, *block_args, **block_kwargs))
        sampler.first, sampler.count = first, count
        if len(outputs) == 1:
            return outputs[0]
        if isinstance(module, (WeightDrop, nn.RNNBase)) and isinstance(outputs[0], tuple):
            # An RNN's (output, hidden): output is batch-first (the blocks were split on dim 0),
            # the hidden state (num_layers · directions, N, H) has the batch in dim 1.
            return (
                torch.cat([o[0] for o in outputs]),
                _cat_leaves([o[1] for o in outputs], dim=1),
            )
        return _cat_leaves(outputs, dim=0)

    return forward


@contextlib.contextmanager
def _patched(model: nn.Module, sampler: _Sampler) -> Iterator[None]:
    patched = []
    try:
        for m in model.modules():
            if _is_active(m) and m not in patched:
                m.forward = _mc_forward(m, sampler)
                patched.append(m)
        yield
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)


# ------------------------------------------------------------------------------------------------
# Plans: how much of the model runs once (the trunk) and how the rest runs on T·N rows
# ------------------------------------------------------------------------------------------------
def _tensor_bytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    return 0


def _repeat(value: torch.Tensor, count: int) -> torch.Tensor:
    # Sample-major: rows [t·N, (t+1)·N) are copy t.
    if count == 1:
        return value
    return (
        value.unsqueeze(0)
        .expand(count, *value.shape)
        .reshape(count * value.shape[0], *value.shape[1:])
    )


@dataclass
class MCPlan:
    """How :func:`predict` runs a model.

    Attributes:
        strategy: ``"sequential"`` (split at the first dropout child), ``"fx"`` (torch.fx graph
            split), ``"repeat"`` (the whole model on the repeated input) or ``"loop"``
            (``batched=False``).
        trunk: the modules (sequential) or graph nodes (fx) computed once on the N rows.
        reason: why a trunk could not be separated (for ``"repeat"``), else "".
    """

    strategy: str
    trunk: list[str] = field(default_factory=list)
    reason: str = ""
    _run: Callable[[int], tuple[torch.Tensor, int]] | None = field(default=None, repr=False)


def _flatten_sequential(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, nn.Sequential) and type(child).forward is nn.Sequential.forward:
            out.extend(_flatten_sequential(child, path + "."))
        else:
            out.append((path, child))
    return out


def _sequential_plan(model: nn.Sequential, x: torch.Tensor) -> MCPlan:
    layers = _flatten_sequential(model, "")
    split = next(
        (i for i, (_, m) in enumerate(layers) if any(_is_active(s) for s in m.modules())),
        len(layers),
    )
    trunk, rest = layers[:split], layers[split:]
    h = x
    for _, m in trunk:
        h = m(h)
    if not isinstance(h, torch.Tensor) or h.dim() == 0 or h.shape[0] != x.shape[0]:
        return MCPlan("repeat", reason="the trunk's output is not a tensor with the input's rows")
    trunk_out = h

    def run(count: int) -> tuple[torch.Tensor, int]:
        h = _repeat(trunk_out, count)
        peak = 0
        for _, m in rest:
            out = m(h)
            peak = max(peak, _tensor_bytes(h) + _tensor_bytes(out))
            h = out
        return h, peak

    return MCPlan("sequential", [name for name, _ in trunk], _run=run)


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_stochastic_module(m) or super().is_leaf_module(m, module_qualified_name)


# Traced graphs, reused while the model's modules (and which are active) stay the same.
_TRACES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, fx.GraphModule | str]] = (
    weakref.WeakKeyDictionary()
)


def _trace(model: nn.Module) -> fx.GraphModule | str:
    """The model's fx graph (dropout modules as leaves), or why it cannot be traced."""
    signature = tuple((name, id(m), _is_active(m), m.training) for name, m in model.named_modules())
    cached = _TRACES.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    try:
        result: fx.GraphModule | str = fx.GraphModule(model, _LeafTracer().trace(model))
    except Exception as err:  # noqa: BLE001 - any tracing failure means "cannot split"
        result = f"torch.fx could not trace {type(model).__name__}: {err}"
    _TRACES[model] = (signature, result)
    return result


def _fx_plan(model: nn.Module, x: torch.Tensor) -> MCPlan:
    gm = _trace(model)
    if isinstance(gm, str):
        return MCPlan("repeat", reason=gm)
    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if not placeholders:
        return MCPlan("repeat", reason="the traced graph takes no input")
    downstream: set[fx.Node] = set()
    from_input: set[fx.Node] = set()
    for n in nodes:
        inputs = n.all_input_nodes
        if n.op == "placeholder" or any(a in from_input for a in inputs):
            from_input.add(n)
        if (
            (n.op == "call_module" and _is_active(gm.get_submodule(n.target)))
            or (n.op == "call_function" and n.target in FUNCTIONAL_DROPOUTS)
            or any(a in downstream for a in inputs)
        ):
            downstream.add(n)
    if not downstream:
        return MCPlan("repeat", reason="no dropout module is called in the traced forward")
    output = nodes[-1]
    interp = fx.Interpreter(gm)

    def execute(n: fx.Node, env: dict) -> object:
        args = fx.node.map_arg(n.args, lambda a: env[a])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
        return getattr(interp, n.op)(n.target, args, kwargs)

    env: dict[fx.Node, object] = {}
    for i, n in enumerate(placeholders):
        if i == 0:
            env[n] = x
        elif n.args:
            env[n] = n.args[0]
        else:
            return MCPlan("repeat", reason=f"forward needs a second input ({n.name})")
    trunk_nodes = [
        n for n in nodes if n not in downstream and n.op not in ("placeholder", "output")
    ]
    for n in trunk_nodes:
        env[n] = execute(n, env)
    rest = [n for n in nodes if n in downstream and n.op != "output"]
    cut = {a for n in rest + [output] for a in n.all_input_nodes if a not in downstream}
    rows = x.shape[0]
    batch_cut = set()
    for c in cut:
        value = env[c]
        if c not in from_input:
            continue
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
            batch_cut.add(c)
        else:
            kind = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)
            return MCPlan(
                "repeat",
                reason=f"trunk value {c.name} ({kind}) depends on the input but is not a batch "
                "tensor, so it cannot be repeated for T samples",
            )
    last_use: dict[fx.Node, int] = {}
    for i, n in enumerate(rest + [output]):
        for a in n.all_input_nodes:
            last_use[a] = i

    def run(count: int) -> tuple[torch.Tensor, int]:
        local = {c: (_repeat(env[c], count) if c in batch_cut else env[c]) for c in cut}
        live = sum(_tensor_bytes(local[c]) for c in batch_cut)
        peak = live
        for i, n in enumerate(rest):
            value = execute(n, local)
            local[n] = value
            live += _tensor_bytes(value)
            peak = max(peak, live)
            for a in n.all_input_nodes:
                if last_use.get(a) == i and a in local and (a in downstream or a in batch_cut):
                    live -= _tensor_bytes(local.pop(a))
        result = fx.node.map_arg(output.args[0], lambda a: local[a])
        return result, peak

    return MCPlan("fx", [n.name for n in trunk_nodes if n.op != "get_attr"], _run=run)


class _Inputs:
    """A forward pass's positional and keyword inputs; tensors with N rows in dim 0 are the batch."""

    def __init__(self, args: tuple, kwargs: dict[str, Any]) -> None:
        self.args, self.kwargs = args, kwargs
        found = _first_tensor(args, "x" if len(args) == 1 else "args") or _first_tensor(kwargs, "")
        if found is None:
            kinds = ", ".join(type(a).__name__ for a in (*args, *kwargs.values())) or "nothing"
            raise TypeError(
                "x must be a torch.Tensor (or the inputs must hold one, with the batch in dim 0), "
                f"got {kinds}"
            )
        path, tensor = found
        if tensor.dim() == 0 or tensor.shape[0] == 0:
            raise ValueError(
                f"{path} must have a batch dim 0 with at least one row, got shape {tuple(tensor.shape)}"
            )
        self.first = tensor
        self.rows = int(tensor.shape[0])
        self.single = len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)

    def describe(self) -> str:
        if self.single:
            return f"x of shape {tuple(self.first.shape)}"
        parts = [_shape_of(a) for a in self.args]
        parts += [f"{k}={_shape_of(v)}" for k, v in self.kwargs.items()]
        return f"inputs ({', '.join(parts)})"

    def repeated(self, count: int) -> tuple[tuple, dict[str, Any]]:
        def rep(path: str, value: object) -> object:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == self.rows:
                return _repeat(value, count)
            return value

        if count == 1:
            return self.args, self.kwargs
        return _tree_map(rep, self.args), _tree_map(rep, self.kwargs)

    def spec(self) -> tuple:
        leaves: list = []

        def note(path: str, value: object) -> object:
            if isinstance(value, torch.Tensor):
                leaves.append((path, tuple(value.shape), value.dtype, value.device))
            else:
                leaves.append((path, type(value).__name__, value if _hashable(value) else None))
            return value

        _tree_map(note, (self.args, self.kwargs))
        return tuple(leaves)


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _shape_of(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    return type(value).__name__


def _first_tensor(value: object, path: str) -> tuple[str, torch.Tensor] | None:
    found: list[tuple[str, torch.Tensor]] = []

    def visit(p: str, leaf: object) -> object:
        if not found and isinstance(leaf, torch.Tensor):
            found.append((p, leaf))
        return leaf

    _tree_map(visit, value, path)
    return found[0] if found else None


def _children(value: object) -> list[tuple[str, object]] | None:
    """The parts of a container output: mappings (ModelOutput too), dataclasses, tuples, lists."""
    if isinstance(value, Mapping):
        return [(f"[{k!r}]" if not isinstance(k, str) else f".{k}", v) for k, v in value.items()]
    if is_dataclass(value) and not isinstance(value, type):
        return [(f".{f.name}", getattr(value, f.name)) for f in fields(value) if f.init]
    if isinstance(value, (tuple, list)):
        return [(f"[{i}]", v) for i, v in enumerate(value)]
    return None


def _tree_map(fn: Callable[[str, object], object], value: object, path: str = "") -> object:
    """Applies ``fn(path, leaf)`` to every leaf and rebuilds the containers around the results."""
    if isinstance(value, Mapping):
        items = {
            k: _tree_map(fn, v, f"{path}.{k}" if isinstance(k, str) else f"{path}[{k!r}]")
            for k, v in value.items()
        }
        if is_dataclass(value):  # a Hugging Face ModelOutput: a dataclass that is also a mapping
            return type(value)(**items)
        try:
            return type(value)(items)
        except TypeError:
            return dict(items)
    if is_dataclass(value) and not isinstance(value, type):
        return type(value)(
            **{
                f.name: _tree_map(fn, getattr(value, f.name), f"{path}.{f.name}")
                for f in fields(value)
                if f.init
            }
        )
    if isinstance(value, (tuple, list)):
        items_list = [_tree_map(fn, v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
            return type(value)(*items_list)
        return type(value)(items_list)
    return fn(path, value)


def _repeat_plan(model: nn.Module, inputs: _Inputs, reason: str) -> MCPlan:
    def run(count: int) -> tuple[object, int]:
        sizes = [0]
        hooks = [
            m.register_forward_hook(
                lambda _m, _i, out: sizes.__setitem__(0, sizes[0] + _tensor_bytes(out))
            )
            for m in model.modules()
            if not list(m.children())
        ]
        args, kwargs = inputs.repeated(count)
        try:
            out = model(*args, **kwargs)
        finally:
            for h in hooks:
                h.remove()
        return out, sizes[0] + _tensor_bytes((args, kwargs))

    return MCPlan("repeat", reason=reason, _run=run)


def _build_plan(model: nn.Module, inputs: _Inputs, trunk: str) -> MCPlan:
    if trunk == "none":
        return _repeat_plan(model, inputs, "trunk='none' was asked for")
    if not inputs.single:
        return _repeat_plan(
            model,
            inputs,
            "the model takes several inputs: the whole model runs on the repeated batch",
        )
    x = inputs.first
    if isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward:
        plan = _sequential_plan(model, x)
    else:
        plan = _fx_plan(model, x)
    if plan.strategy == "repeat":
        return _repeat_plan(model, inputs, plan.reason)
    return plan


# ------------------------------------------------------------------------------------------------
# Outputs: any nesting of tensors, with a leading sample dim added leaf by leaf
# ------------------------------------------------------------------------------------------------
def _sample_view(out: object, count: int, rows: int, batched: bool) -> tuple[object, bool]:
    """Each tensor leaf as (count, ...): split (count·N, ...) into (count, N, ...) when batched.

    Returns the view and whether every tensor leaf had N rows (batchable) — with count = 1 a
    leaf of any shape is that sample's value.
    """
    batchable = [True]

    def leaf(path: str, value: object) -> object:
        if not isinstance(value, torch.Tensor):
            return value
        if value.dim() == 0 or value.shape[0] != count * rows:
            batchable[0] = False
            if count == 1:
                return value.unsqueeze(0)
            got = tuple(value.shape) if value.dim() else "a 0-d tensor"
            raise _BatchingError(
                f"MC batching: model output{path} has shape {got}, expected dim 0 = samples × rows "
                f"= {count} × {rows}; use predict(..., batched=False)"
            )
        return value.reshape(count, rows, *value.shape[1:]) if batched else value.unsqueeze(0)

    return _tree_map(leaf, out), batchable[0]


class _Samples:
    """Stores each pass's (transformed) output leaf by leaf into (T, ...) buffers."""

    def __init__(self, T: int) -> None:
        self.T = T
        self.template: object = None
        self.buffers: dict[str, torch.Tensor] = {}
        self.started = False

    def store(self, out: object, first: int, count: int) -> None:
        seen = []

        def leaf(path: str, value: object) -> object:
            if value is None:
                return None
            where = f"model output{path}" if path else "model output"
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"{where} is a {type(value).__name__}, not a tensor: MC samples are stacked "
                    "tensors; drop it with a transform (transform=lambda out: out.logits) or the "
                    "model's own option (use_cache=False)"
                )
            if value.dim() == 0 or value.shape[0] != count:
                raise ValueError(
                    f"{where} after transform has shape {tuple(value.shape)}; transform must keep "
                    f"the leading sample dim ({count} here)"
                )
            if not self.started:
                self.buffers[path] = value.new_empty((self.T, *value.shape[1:]))
            elif path not in self.buffers or self.buffers[path].shape[1:] != value.shape[1:]:
                raise ValueError(
                    f"{where} changed structure or shape between samples ({tuple(value.shape)})"
                )
            self.buffers[path][first : first + count] = value
            seen.append(path)
            return value

        template = _tree_map(leaf, out)
        if not self.started:
            if not seen:
                raise TypeError("model output holds no tensor: nothing to sample")
            self.template, self.started = template, True

    def result(self) -> object:
        return _tree_map(
            lambda path, value: None if value is None else self.buffers[path], self.template
        )


def _all_samples_equal(samples: object) -> bool:
    equal = [True]

    def leaf(path: str, value: object) -> object:
        if isinstance(value, torch.Tensor) and value.shape[0] > 1 and equal[0]:
            # One fused comparison; a NaN anywhere counts as a difference (no warning).
            equal[0] = torch.equal(value, value[:1].expand_as(value))
        return value

    _tree_map(leaf, samples)
    return equal[0]


# ------------------------------------------------------------------------------------------------
# Public entry points
# ------------------------------------------------------------------------------------------------
def _check_seed(seed: object) -> int:
    if seed is None:
        return rng.draw_seed()
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            f"seed must be an int in [0, 2**64) or None, got {seed!r} of type {type(seed).__name__}"
        )
    if not 0 <= int(seed) <= _MASK64:
        raise ValueError(f"seed must be an int in [0, 2**64) or None, got {seed!r}")
    return int(seed)


def _check_trunk(trunk: object) -> str:
    if trunk not in ("auto", "none"):
        raise ValueError(f"trunk must be 'auto' or 'none', got {trunk!r}")
    return trunk  # type: ignore[return-value]


def _one_line(err: BaseException) -> str:
    """The first line of an error: torch and fx append traces and graph dumps on later lines."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _with_shape_context(model: nn.Module, inputs: _Inputs, call: Callable[[], object]) -> object:
    try:
        return call()
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        if isinstance(err, ValueError) and str(err).startswith(("MC batching", "max_memory")):
            raise
        raise ValueError(
            f"model ({type(model).__name__}) failed on {inputs.describe()}: {_one_line(err)}"
        ) from None


def _device_of(args: tuple, kwargs: dict, model: nn.Module) -> torch.device:
    found = _first_tensor((args, kwargs), "")
    if found is not None:
        return found[1].device
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


# Sites found per model, reused while its modules, flags, rates and the input's shapes stay the same.
_SITES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, DropoutSites]] = (
    weakref.WeakKeyDictionary()
)


def _find_sites(model: nn.Module, args: tuple, kwargs: dict) -> DropoutSites:
    inputs = _Inputs(args, kwargs)
    key = (
        tuple((name, id(m), m.training, _rate_key(m)) for name, m in model.named_modules()),
        inputs.spec(),
    )
    cached = _SITES.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    sites = _with_shape_context(
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
    _check_model_type(model)
    with torch.no_grad(), _saved_global_rng(_device_of(args, kwargs, model)):
        return _find_sites(model, args, kwargs)


_UNSET: Any = object()


def _legacy_T(inputs: tuple, T: object) -> tuple[tuple, object]:
    """``predict(model, x, 20)`` (the old signature): a trailing positional int is T."""
    if T is _UNSET:
        last = inputs[-1] if len(inputs) >= 2 else None
        if isinstance(last, numbers.Integral) and not isinstance(last, bool):
            return inputs[:-1], int(last)
        return inputs, 50
    return inputs, T


def mc_plan(model: nn.Module, *inputs: Any, trunk: str = "auto", **kwargs: Any) -> MCPlan:
    """Says how :func:`predict` will run ``model`` on these inputs: which part runs once, and why.

    Args:
        model: a model holding dropout modules (or functional dropout).
        *inputs, **kwargs: an example forward pass's inputs, as for :func:`predict`; the trunk is
            evaluated on them.
        trunk: ``"auto"`` (split where possible) or ``"none"`` (always repeat the input).

    Returns:
        An :class:`MCPlan` (``strategy``, ``trunk``, ``reason``).

    Example:
        >>> import torch, dropkit
        >>> from dropkit.mc import mc_plan
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), dropkit.Dropout(0.5),
        ...                           torch.nn.Linear(8, 2))
        >>> plan = mc_plan(net, torch.randn(3, 4))
        >>> plan.strategy, plan.trunk
        ('sequential', ['0', '1'])
    """
    _check_model_type(model)
    batch = _Inputs(inputs, kwargs)
    trunk = _check_trunk(trunk)
    with torch.no_grad(), _saved_global_rng(batch.first.device):
        sites = _find_sites(model, inputs, kwargs)
        _require_dropout(model, sites)
        sampler = _Sampler(0, batch.rows, batch.first.device, True)
        mode = _SampleMode(sampler) if sites.functional else contextlib.nullcontext()
        with _switched(model, sites.owners), _patched(model, sampler), mode:
            plan = _with_shape_context(model, batch, lambda: _build_plan(model, batch, trunk))
            sampler.begin(0, 1)
            out, _ = _with_shape_context(model, batch, lambda: plan._run(1))  # type: ignore[union-attr]
            _, batchable = _sample_view(out, 1, batch.rows, True)
    if not batchable:
        return MCPlan(
            "loop",
            reason="an output leaf does not have the input's rows in dim 0, so the T samples "
            "cannot be told apart in one pass",
        )
    return plan  # type: ignore[return-value]


def _require_dropout(model: nn.Module, sites: DropoutSites) -> None:
    has_module = any(is_stochastic_module(m) for m in model.modules())
    if not has_module and not sites.functional:
        raise _no_dropout_error(model, scanned=True)
    if not any(_is_active(m) for m in model.modules()) and not sites.functional:
        raise ValueError(
            f"every dropout module of model ({type(model).__name__}) has p = 0: the T samples would "
            "be identical; MC dropout needs a dropout module with p > 0"
        )


def predict(
    model: nn.Module,
    *inputs: Any,
    T: int = _UNSET,
    seed: int | None = None,
    batched: bool = True,
    max_batch_size: int | None = None,
    max_memory_bytes: int | None = None,
    transform: Callable[[Any], Any] | None = None,
    trunk: str = "auto",
    strict: bool = False,
    **kwargs: Any,
) -> Any:
    r"""T Monte-Carlo dropout samples of ``model(*inputs, **kwargs)``: ŷ_t = f(x; ω̂_t), t = 1 … T.

    Runs under :func:`mc_dropout` (dropout on, everything else in eval, flags restored) and
    ``torch.no_grad``, with every dropout the model runs sampled: its dropout modules, and the
    functional dropout (``torch.nn.functional.dropout`` and friends, ``scaled_dot_product_attention``'s
    ``dropout_p``) whose rate or ``training`` argument is gated on a module's flag, found by
    :func:`find_dropout_sites` (cached per model and input shapes). Sample t's masks depend only on
    (``seed``, t) — see the module doc — so the result does not depend on ``batched``,
    ``max_batch_size`` or ``max_memory_bytes`` (up to float rounding of matmuls over more rows).
    torch's global RNG state is left as it was, apart from one draw for the seed when ``seed`` is
    None.

    **Inputs.** ``predict(model, x)``, ``predict(model, x1, x2)``,
    ``predict(model, input_ids, attention_mask=mask)``: positional and keyword inputs are passed to
    the model as given. Every tensor (in any nesting of tuples, lists and dicts) whose dim 0 has the
    N rows of the first tensor input is part of the batch and is repeated for batched passes; any
    other input is shared by all samples. The old form ``predict(model, x, 20)`` (T positional)
    still works: a trailing positional int is read as T — pass ``T=`` by keyword to give a model a
    trailing int input. A model keyword named like one of predict's own (``T``, ``seed``, …) must
    be bound beforehand (``functools.partial`` on a wrapper module).

    **Outputs.** A tensor (N, *out) gives (T, N, *out). Any nesting of tuples, lists, dicts,
    dataclasses and Hugging Face ``ModelOutput``\ s comes back with the same structure, each tensor
    leaf with a new leading T dim (None stays None). ``transform`` runs first, on each pass's
    output with every tensor leaf viewed as (T_c, N, …) (T_c samples in the pass); it may select
    (``lambda out: out.logits.softmax(-1)``) or drop leaves (a Hugging Face cache must be dropped or
    switched off, ``use_cache=False``), and its result's leaves must keep the leading T_c dim.

    **Batching.** The batched path (default) runs the trunk before the first dropout once and the
    rest on (T_c·N, ...) chunks; the first sample is run alone to estimate the activation memory of
    one sample (the peak of live tensors, an upper bound under no_grad), which sets
    T_c = min(max_memory_bytes // bytes_per_sample, max_batch_size // N). Where samples cannot be
    told apart in a batched pass — an output leaf or a dropout input without T_c·N rows in dim 0
    (a time-major RNN, a loss over the batch, dropout on a weight) — the remaining samples run as a
    loop, with the same masks; :func:`mc_plan` says which.

    **Dead dropout.** A warning (:class:`DeadDropoutWarning`; ``strict=True`` raises ValueError)
    names every dropout module with p > 0 that never ran while sampling (and whose rate no owner
    applied), every module whose ``p`` was read but never applied, every owner whose flag gates
    more than dropout, and says when all T samples are identical.

    Args:
        model: any ``nn.Module`` with at least one active dropout (module with p > 0 or gated
            functional dropout).
        *inputs: the model's positional inputs; the first tensor among them (or among the keyword
            inputs) sets the batch size N (dim 0).
        T: number of samples, ≥ 1.
        seed: int in [0, 2^64) for reproducible samples; None draws one from torch's generator.
        batched: True for the fast batched path, False for a loop of T plain forward passes (the
            same numbers).
        max_batch_size: at most this many rows (T_c·N) per forward pass; ≥ N.
        max_memory_bytes: a cap on the estimated activation bytes of one forward pass; it must
            cover one sample. None (default): passes of about :data:`DEFAULT_PASS_BYTES` (1 MiB),
            or one sample per pass if a sample needs more.
        transform: applied to each pass's output before it is stored (e.g. ``torch.softmax``).
        trunk: ``"auto"`` or ``"none"`` (never split the model, repeat the input).
        strict: raise instead of warning about dead dropout.
        **kwargs: the model's keyword inputs (``attention_mask=...``).

    Returns:
        The output's structure with a leading T dim on every tensor leaf: (T, N, *out) for a tensor.

    Raises:
        ValueError: T < 1, no active dropout, a memory budget smaller than one sample, a model that
            fails on the inputs, or (``strict=True``) dead dropout.
        TypeError: wrong argument types, or an output leaf that is not a tensor after ``transform``.

    Example:
        >>> import torch, dropkit
        >>> from dropkit.mc import predict
        >>> net = dropkit.MLP([4, 16, 3], p=0.3)
        >>> x = torch.randn(5, 4)
        >>> samples = predict(net, x, T=20, seed=0)
        >>> samples.shape
        torch.Size([20, 5, 3])
        >>> torch.allclose(samples, predict(net, x, T=20, seed=0, batched=False), atol=1e-6)
        True
    """
    _check_model_type(model)
    inputs, T = _legacy_T(inputs, T)
    T = check_positive_int(T, "T")
    if not isinstance(batched, bool):
        raise TypeError(f"batched must be a bool, got {batched!r}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be a bool, got {strict!r}")
    batch = _Inputs(inputs, kwargs)
    rows = batch.rows
    if max_batch_size is not None:
        max_batch_size = check_positive_int(max_batch_size, "max_batch_size")
        if max_batch_size < rows:
            raise ValueError(
                f"max_batch_size must be at least the number of rows of x ({rows}) so one sample "
                f"fits in a pass, got {max_batch_size}; pass fewer rows per call"
            )
    if max_memory_bytes is not None:
        max_memory_bytes = check_positive_int(max_memory_bytes, "max_memory_bytes")
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
    trunk = _check_trunk(trunk)
    seed = _check_seed(seed)
    device = batch.first.device
    samples = _Samples(T)

    def store(out: object, first: int, count: int, is_batched: bool) -> bool:
        view, batchable = _sample_view(out, count, rows, is_batched)
        if transform is not None:
            view = transform(view)
        samples.store(view, first, count)
        return batchable

    with torch.no_grad(), _saved_global_rng(device):
        sites = _find_sites(model, inputs, kwargs)
        _require_dropout(model, sites)
        sampler = _Sampler(seed, rows, device, batched)
        mode = _SampleMode(sampler) if sites.functional else contextlib.nullcontext()
        with _switched(model, sites.owners), _patched(model, sampler), mode:
            first = 0
            if batched:
                first = _batched_passes(
                    model, batch, sampler, store, T, trunk, max_batch_size, max_memory_bytes
                )
            sampler.batched = False
            for t in range(first, T):
                sampler.begin(t, 1)
                out = _with_shape_context(model, batch, lambda: model(*inputs, **kwargs))
                store(out, t, 1, False)
    result = samples.result()
    _report_dead(model, sites, sampler.ran, result, T, strict)
    return result


def _batched_passes(
    model: nn.Module,
    batch: _Inputs,
    sampler: _Sampler,
    store: Callable[[object, int, int, bool], bool],
    T: int,
    trunk: str,
    max_batch_size: int | None,
    max_memory_bytes: int | None,
) -> int:
    """Runs samples in batched passes; returns the first sample left to the loop (T when none)."""
    rows = batch.rows
    try:
        plan = _with_shape_context(model, batch, lambda: _build_plan(model, batch, trunk))
        sampler.begin(0, 1)
        out, peak = _with_shape_context(model, batch, lambda: plan._run(1))  # type: ignore[union-attr]
    except _BatchingError:
        return 0
    if not store(out, 0, 1, True):
        return 1
    if max_memory_bytes is not None and peak > max_memory_bytes:
        raise ValueError(
            f"max_memory_bytes={max_memory_bytes} is smaller than one sample's estimated "
            f"activation memory ({peak} bytes for {rows} rows); raise it or pass fewer rows"
        )
    budget = max_memory_bytes if max_memory_bytes is not None else max(DEFAULT_PASS_BYTES, peak)
    per_pass = min(T - 1, budget // max(peak, 1))
    if max_batch_size is not None:
        per_pass = min(per_pass, max_batch_size // rows)
    per_pass = max(per_pass, 1)
    # Equal passes (99 samples at ≤ 16 a pass: 7 passes of 14–15, not 6 of 16 and one of 3).
    passes = -(-(T - 1) // per_pass)
    per_pass = -(-(T - 1) // passes) if passes else 1
    first = 1
    while first < T:
        count = min(per_pass, T - first)
        sampler.begin(first, count)
        try:
            out, _ = _with_shape_context(model, batch, lambda c=count: plan._run(c))  # type: ignore[union-attr]
            store(out, first, count, True)
        except _BatchingError:
            return first  # the loop serves these samples and the rest, with the same masks
        first += count
    return T


def _report_dead(
    model: nn.Module, sites: DropoutSites, ran: set[nn.Module], result: object, T: int, strict: bool
) -> None:
    names = {m: n for n, m in model.named_modules()}
    problems = []
    never = [
        n
        for m, n in names.items()
        if _is_active(m)
        and m not in ran
        and n not in sites.covered
        and n not in sites.read_not_applied
    ]
    if never:
        problems.append(
            f"dropout module(s) {', '.join(repr(n) for n in never)} never ran while sampling"
        )
    for name, reader in sites.read_not_applied.items():
        problems.append(
            f"the rate of {name!r} is read by {reader or '<model>'!r} but never applied"
        )
    for name, why in sites.unsafe.items():
        problems.append(f"{name or '<model>'!r} was left in eval, its dropout unsampled: {why}")
    if T > 1 and _all_samples_equal(result):
        problems.append(f"all T = {T} samples are identical")
    if not problems:
        return
    message = "MC dropout: " + "; ".join(problems) + " (see dropkit.mc.find_dropout_sites)"
    if strict:
        raise ValueError(message)
    warnings.warn(message, DeadDropoutWarning, stacklevel=3)
