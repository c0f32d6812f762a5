"""Each dropout call of a forward pass routed to the masks of its samples (seed, t).

:class:`Sampler` knows which samples the current pass computes; :func:`patched` replaces the
forward of every active stochastic module with one that draws sample t's masks (elementwise
dropout: one counter-based stream per call; every other module: once per sample block, with the
sample's generator), and :class:`SampleMode` does the same for functional dropout and
``scaled_dot_product_attention``'s ``dropout_p``. The numbers therefore do not depend on how the
T samples are split into passes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as TF
from torch.overrides import TorchFunctionMode

from dropkit import functional as F
from dropkit import ops, rng
from dropkit.dropout_sites import FUNCTIONAL_DROPOUTS, functional_rate, interception
from dropkit.layers.channel import Dropout1d, Dropout2d, Dropout3d
from dropkit.layers.elementwise import AlphaDropout, Dropout, GaussianDropout
from dropkit.layers.weights import WeightDrop
from dropkit.mc.inputs import BatchingError
from dropkit.mc.seeds import SAMPLE_TAG, reseed_globals
from dropkit.mc.switch import is_active


class Sampler:
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
            gen.manual_seed(rng.mix_seed(self.seed, SAMPLE_TAG + t))
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
            raise BatchingError(
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


def _attention(sampler: Sampler, name: str, p: float, args: tuple, kwargs: dict) -> torch.Tensor:
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


class SampleMode(TorchFunctionMode):
    """Routes functional dropout with a rate > 0 to the sampler (no other call is touched)."""

    def __init__(self, sampler: Sampler) -> None:
        super().__init__()
        self.sampler = sampler
        self._scope = interception()

    def __enter__(self) -> SampleMode:
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


def _mc_forward(module: nn.Module, sampler: Sampler) -> Callable[[torch.Tensor], torch.Tensor]:
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
                reseed_globals(rng.draw_seed(gen), sampler.device)
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
def patched(model: nn.Module, sampler: Sampler) -> Iterator[None]:
    patched = []
    try:
        for m in model.modules():
            if is_active(m) and m not in patched:
                m.forward = _mc_forward(m, sampler)
                patched.append(m)
        yield
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
