"""The sampling entry points: :func:`predict` (T MC samples) and :func:`mc_plan` (how it runs)."""

from __future__ import annotations

import contextlib
import numbers
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from dropkit._validate import check_bool, check_choice, check_positive_int
from dropkit.dropout_sites import DropoutSites
from dropkit.mc.inputs import Inputs, with_shape_context
from dropkit.mc.outputs import Samples, all_samples_equal, sample_view
from dropkit.mc.plan import TRUNKS, MCPlan, batched_passes, build_plan, check_budget
from dropkit.mc.seeds import sample_seed, saved_global_rng
from dropkit.mc.streams import SampleMode, Sampler, patched
from dropkit.mc.switch import (
    DeadDropoutWarning,
    check_model_type,
    find_sites,
    is_active,
    require_dropout,
    switched,
)

_UNSET: Any = object()


def _legacy_T(inputs: tuple, T: object) -> tuple[tuple, object]:
    """``predict(model, x, 20)`` (the old signature): a trailing positional int is T."""
    if T is _UNSET:
        last = inputs[-1] if len(inputs) >= 2 else None
        if isinstance(last, numbers.Integral) and not isinstance(last, bool):
            return inputs[:-1], int(last)
        return inputs, 50
    return inputs, T


@contextlib.contextmanager
def _sampling(
    model: nn.Module, batch: Inputs, seed: int, batched: bool
) -> Iterator[tuple[DropoutSites, Sampler]]:
    """Sampling on: no gradients, torch's RNG state restored, the dropout switched on and routed.

    Finds the model's dropout sites on the batch, checks there is dropout to sample, switches the
    stochastic modules and the safe owners on, and routes their calls (and the functional dropout
    calls) to a :class:`~dropkit.mc.streams.Sampler` of ``seed``.
    """
    device = batch.first.device
    with torch.no_grad(), saved_global_rng(device):
        sites = find_sites(model, batch.args, batch.kwargs)
        require_dropout(model, sites)
        sampler = Sampler(seed, batch.rows, device, batched)
        mode = SampleMode(sampler) if sites.functional else contextlib.nullcontext()
        with switched(model, sites.owners), patched(model, sampler), mode:
            yield sites, sampler


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
    check_model_type(model)
    batch = Inputs(inputs, kwargs)
    trunk = check_choice(trunk, "trunk", TRUNKS)
    with _sampling(model, batch, seed=0, batched=True) as (_, sampler):
        plan = with_shape_context(model, batch, lambda: build_plan(model, batch, trunk))
        sampler.begin(0, 1)
        out, _ = with_shape_context(model, batch, lambda: plan.run(1))  # type: ignore[union-attr]
        _, batchable = sample_view(out, 1, batch.rows, True)
    if not batchable:
        return MCPlan(
            "loop",
            reason="an output leaf does not have the input's rows in dim 0, so the T samples "
            "cannot be told apart in one pass",
        )
    return plan  # type: ignore[return-value]


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
    check_model_type(model)
    inputs, T = _legacy_T(inputs, T)
    T = check_positive_int(T, "T")
    batched = check_bool(batched, "batched")
    strict = check_bool(strict, "strict")
    batch = Inputs(inputs, kwargs)
    rows = batch.rows
    max_batch_size, max_memory_bytes = check_budget(max_batch_size, max_memory_bytes, rows)
    if transform is not None and not callable(transform):
        raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
    trunk = check_choice(trunk, "trunk", TRUNKS)
    seed = sample_seed(seed)
    samples = Samples(T)

    def store(out: object, first: int, count: int, is_batched: bool) -> bool:
        view, batchable = sample_view(out, count, rows, is_batched)
        if transform is not None:
            view = transform(view)
        samples.store(view, first, count)
        return batchable

    with _sampling(model, batch, seed, batched) as (sites, sampler):
        first = 0
        if batched:
            first = batched_passes(
                model, batch, sampler, store, T, trunk, max_batch_size, max_memory_bytes
            )
        sampler.batched = False
        for t in range(first, T):
            sampler.begin(t, 1)
            out = with_shape_context(model, batch, lambda: model(*inputs, **kwargs))
            store(out, t, 1, False)
    result = samples.result()
    _report_dead(model, sites, sampler.ran, result, T, strict)
    return result


def _report_dead(
    model: nn.Module, sites: DropoutSites, ran: set[nn.Module], result: object, T: int, strict: bool
) -> None:
    names = {m: n for n, m in model.named_modules()}
    problems = []
    never = [
        n
        for m, n in names.items()
        if is_active(m)
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
    if T > 1 and all_samples_equal(result):
        problems.append(f"all T = {T} samples are identical")
    if not problems:
        return
    message = "MC dropout: " + "; ".join(problems) + " (see dropkit.mc.find_dropout_sites)"
    if strict:
        raise ValueError(message)
    warnings.warn(message, DeadDropoutWarning, stacklevel=3)
