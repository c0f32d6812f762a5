"""How :func:`dropkit.mc.predict` runs a model: the trunk computed once, then passes of T_c samples.

A plan (:class:`MCPlan`) splits off the deterministic *trunk* — everything before the first active
dropout — and runs it once on the N rows: ``nn.Sequential`` models at the first child holding
dropout, other models on their ``torch.fx`` graph; a model that cannot be split runs whole on the
repeated input. :func:`batched_passes` then runs the remaining samples in passes sized by the
memory budget (``max_batch_size``, ``max_memory_bytes``, by default :data:`DEFAULT_PASS_BYTES`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from dropkit._validate import check_positive_int
from dropkit.dropout_sites import FUNCTIONAL_DROPOUTS
from dropkit.mc.inputs import BatchingError, Inputs, repeat_rows, tensor_bytes, with_shape_context
from dropkit.mc.streams import Sampler
from dropkit.mc.switch import is_active, is_stochastic_module


@dataclass
class MCPlan:
    """How :func:`dropkit.mc.predict` runs a model.

    Attributes:
        strategy: ``"sequential"`` (split at the first dropout child), ``"fx"`` (torch.fx graph
            split), ``"repeat"`` (the whole model on the repeated input) or ``"loop"``
            (``batched=False``).
        trunk: the modules (sequential) or graph nodes (fx) computed once on the N rows.
        reason: why a trunk could not be separated (for ``"repeat"``), else "".
        run: ``run(count)`` runs ``count`` samples after the trunk (under the sampler set up by
            predict) and returns their output and the peak bytes of live activations; None for
            ``"loop"``.
    """

    strategy: str
    trunk: list[str] = field(default_factory=list)
    reason: str = ""
    run: Callable[[int], tuple[torch.Tensor, int]] | None = field(default=None, repr=False)


#: predict's ``trunk`` choices: split the model where possible, or always repeat the input.
TRUNKS = ("auto", "none")


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
        (i for i, (_, m) in enumerate(layers) if any(is_active(s) for s in m.modules())),
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
        h = repeat_rows(trunk_out, count)
        peak = 0
        for _, m in rest:
            out = m(h)
            peak = max(peak, tensor_bytes(h) + tensor_bytes(out))
            h = out
        return h, peak

    return MCPlan("sequential", [name for name, _ in trunk], run=run)


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_stochastic_module(m) or super().is_leaf_module(m, module_qualified_name)


# Traced graphs, reused while the model's modules (and which are active) stay the same.
_TRACES: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, fx.GraphModule | str]] = (
    weakref.WeakKeyDictionary()
)


def _trace(model: nn.Module) -> fx.GraphModule | str:
    """The model's fx graph (dropout modules as leaves), or why it cannot be traced."""
    signature = tuple((name, id(m), is_active(m), m.training) for name, m in model.named_modules())
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
            (n.op == "call_module" and is_active(gm.get_submodule(n.target)))
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
        local = {c: (repeat_rows(env[c], count) if c in batch_cut else env[c]) for c in cut}
        live = sum(tensor_bytes(local[c]) for c in batch_cut)
        peak = live
        for i, n in enumerate(rest):
            value = execute(n, local)
            local[n] = value
            live += tensor_bytes(value)
            peak = max(peak, live)
            for a in n.all_input_nodes:
                if last_use.get(a) == i and a in local and (a in downstream or a in batch_cut):
                    live -= tensor_bytes(local.pop(a))
        result = fx.node.map_arg(output.args[0], lambda a: local[a])
        return result, peak

    return MCPlan("fx", [n.name for n in trunk_nodes if n.op != "get_attr"], run=run)


def _repeat_plan(model: nn.Module, inputs: Inputs, reason: str) -> MCPlan:
    def run(count: int) -> tuple[object, int]:
        sizes = [0]
        hooks = [
            m.register_forward_hook(
                lambda _m, _i, out: sizes.__setitem__(0, sizes[0] + tensor_bytes(out))
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
        return out, sizes[0] + tensor_bytes((args, kwargs))

    return MCPlan("repeat", reason=reason, run=run)


def build_plan(model: nn.Module, inputs: Inputs, trunk: str) -> MCPlan:
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


#: Target size of one batched pass when no budget is given: the estimated activations of a pass
#: stay near 1 MiB — enough rows to amortise per-pass overhead, small enough to stay in cache and to
#: reuse allocator blocks instead of faulting in fresh pages for every large tensor. Measured on 2
#: cores, T = 100, an MLP 40-256-256-10 on 32 rows: 3.6 ms with 1–2 MiB passes, 4.9 ms with 16 MiB
#: (1520 page faults per call), 10.0 ms for a loop of T passes; on 256 rows 1 MiB passes were the
#: only size with no page faults.
DEFAULT_PASS_BYTES = 1 << 20


def check_budget(
    max_batch_size: object, max_memory_bytes: object, rows: int
) -> tuple[int | None, int | None]:
    """``max_batch_size`` and ``max_memory_bytes`` checked: None or ints >= 1, a pass >= one sample."""
    if max_batch_size is not None:
        max_batch_size = check_positive_int(max_batch_size, "max_batch_size")
        if max_batch_size < rows:
            raise ValueError(
                f"max_batch_size must be at least the number of rows of x ({rows}) so one sample "
                f"fits in a pass, got {max_batch_size}; pass fewer rows per call"
            )
    if max_memory_bytes is not None:
        max_memory_bytes = check_positive_int(max_memory_bytes, "max_memory_bytes")
    return max_batch_size, max_memory_bytes  # type: ignore[return-value]


def batched_passes(
    model: nn.Module,
    batch: Inputs,
    sampler: Sampler,
    store: Callable[[object, int, int, bool], bool],
    T: int,
    trunk: str,
    max_batch_size: int | None,
    max_memory_bytes: int | None,
) -> int:
    """Runs samples in batched passes; returns the first sample left to the loop (T when none)."""
    rows = batch.rows
    try:
        plan = with_shape_context(model, batch, lambda: build_plan(model, batch, trunk))
        sampler.begin(0, 1)
        out, peak = with_shape_context(model, batch, lambda: plan.run(1))  # type: ignore[union-attr]
    except BatchingError:
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
            out, _ = with_shape_context(model, batch, lambda c=count: plan.run(c))  # type: ignore[union-attr]
            store(out, first, count, True)
        except BatchingError:
            return first  # the loop serves these samples and the rest, with the same masks
        first += count
    return T
