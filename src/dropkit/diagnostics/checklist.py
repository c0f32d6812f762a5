r"""The audit: a checklist of small checks for the common dropout pitfalls, and :func:`audit`.

Each check is an :class:`AuditCheck`: a name, the finding codes it reports, what it looks at, and
a function from an :class:`AuditContext` (the model, the batch, and what is measured once for
every check: the order the layers run in, two eval passes) to its :class:`Finding` records.
:data:`AUDIT_CHECKS` is the ordered table :func:`audit` runs; ``audit(..., checks=[...])`` runs a
selection of it, or checks of your own beside it.

=========================  ============================================================  =======
check                      finding codes                                                 batch
=========================  ============================================================  =======
``mode-flags``             ``dropout-active-in-eval``, ``training-flag-mismatch``
``after-last-layer``       ``dropout-after-last-layer``
``consecutive-dropout``    ``consecutive-dropout``
``before-batchnorm``       ``dropout-before-batchnorm``
``rate-range``             ``rate-out-of-range``
``functional-hardcoded``   ``functional-dropout-hardcoded``                              needed
``random-in-eval``         ``random-in-eval``                                            needed
``dead-dropout``           ``dropout-rate-never-applied``, ``dropout-never-runs``,       needed
                           ``dropout-flag-gates-more``
``scale-mismatch``         ``scale-mismatch``                                            needed
=========================  ============================================================  =======
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from dropkit.diagnostics._model import (
    CallTracker,
    call_model,
    execution_order,
    is_alpha,
    is_plain_dropout,
    is_weight_layer,
    outputs_equal,
    preserved,
)
from dropkit.diagnostics.activations import activation_stats
from dropkit.layers.base import is_dropout_module

__all__ = [
    "AUDIT_CHECKS",
    "AuditCheck",
    "AuditContext",
    "DropoutLayer",
    "Finding",
    "USUAL_RATES",
    "audit",
    "dead_dropout_findings",
]

#: The usual rate ranges (low, high) by the kind of layer a dropout module feeds: the seeds'
#: input 0.1-0.2, hidden 0.2-0.5, and lower for convolutional feature maps.
USUAL_RATES: dict[str, tuple[float, float]] = {
    "input": (0.1, 0.2),
    "hidden": (0.2, 0.5),
    "conv": (0.05, 0.3),
}

# Modules whose p is the seeds' "fraction of units dropped" (the usual ranges apply to them).
_RATED = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d")

#: Findings are reported errors first, then warnings, then info.
SEVERITY = {"error": 0, "warning": 1, "info": 2}


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


# --------------------------------------------------------------------------------------------
# What the checks look at
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DropoutLayer:
    """A dropout module acting on activations, at its place among the model's layers.

    Attributes:
        index: its position in :attr:`AuditContext.layers`.
        path: its path in the model.
        module: the module.
        p: its rate as a float, None where it has no numeric ``p``.
    """

    index: int
    path: str
    module: nn.Module
    p: float | None


class AuditContext:
    """What the checks look at: the model, the batch, and what is measured once for all of them.

    The measurements (:attr:`layers`, :attr:`eval_passes`) run on first use, without gradients,
    with every module's mode, the buffers and torch's RNG state restored, the masks seeded from
    ``seed``.

    Attributes:
        model: the model audited.
        batch: the input (None: the structure checks read registration order, data checks skip).
        rates: the usual rate ranges by layer kind (:data:`USUAL_RATES` with the overrides).
        tolerance: the scale-mismatch tolerance (see :func:`activation_stats`).
        seed: seeds the data checks' masks.
        modules: ``dict(model.named_modules())``.
    """

    def __init__(
        self,
        model: nn.Module,
        batch: Any = None,
        *,
        rates: Mapping[str, tuple[float, float]] = USUAL_RATES,
        tolerance: float = 0.05,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.batch = batch
        self.rates = dict(rates)
        self.tolerance = tolerance
        self.seed = seed
        self.modules = dict(model.named_modules())

    @property
    def order(self) -> str:
        """``"call order"`` with a batch, ``"registration order"`` without (for messages)."""
        return "call order" if self.batch is not None else "registration order"

    @functools.cached_property
    def layers(self) -> list[str]:
        """Leaf module paths (``nn.Identity`` left out) in call order with a batch, else in
        registration order."""
        if self.batch is not None:
            with preserved(self.model, self.seed), torch.no_grad():
                leaves = execution_order(self.model, self.batch)
        else:
            leaves = [n for n, m in self.modules.items() if next(m.children(), None) is None]
        return [n for n in leaves if not isinstance(self.modules[n], nn.Identity)]

    @functools.cached_property
    def weight_layers(self) -> list[int]:
        """Positions in :attr:`layers` of the layers that hold weights."""
        return [i for i, n in enumerate(self.layers) if is_weight_layer(self.modules[n])]

    def dropouts(self) -> list[DropoutLayer]:
        """The dropout modules acting on activations among :attr:`layers`, in that order."""
        found = []
        for i, path in enumerate(self.layers):
            module = self.modules[path]
            if is_plain_dropout(module):
                p = getattr(module, "p", None)
                found.append(
                    DropoutLayer(i, path, module, float(p) if isinstance(p, (int, float)) else None)
                )
        return found

    def flag_mismatches(self) -> list[tuple[str, nn.Module]]:
        """Dropout modules whose ``training`` flag differs from the model's, in module order."""
        return [
            (path, module)
            for path, module in self.modules.items()
            if path and is_dropout_module(module) and module.training != self.model.training
        ]

    @functools.cached_property
    def eval_passes(self) -> tuple[list[tuple[str, str]], bool]:
        """Two passes of the batch with every module in eval mode (the second reseeded).

        Returns:
            The functional dropout calls made with ``training=True`` during the first, as
            (path of the module whose forward made the call, function name), and whether the
            two outputs are equal.
        """
        tracker = CallTracker(self.model)
        with preserved(self.model, self.seed), torch.no_grad():
            self.model.eval()
            with tracker.active():
                first = call_model(self.model, self.batch)
            torch.manual_seed(self.seed + 1)
            second = call_model(self.model, self.batch)
        return tracker.calls, outputs_equal(first, second)


# --------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------


def check_mode_flags(ctx: AuditContext) -> list[Finding]:
    """A dropout module whose ``training`` flag differs from the model's."""
    findings = []
    for path, module in ctx.flag_mismatches():
        if not ctx.model.training:
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
    return findings


def check_after_last_layer(ctx: AuditContext) -> list[Finding]:
    """A dropout module (p > 0) with no weight layer after it: it drops the network's outputs."""
    if not ctx.weight_layers:
        return []
    last = ctx.weight_layers[-1]
    return [
        Finding(
            "dropout-after-last-layer",
            "warning",
            d.path,
            f"{type(d.module).__name__}(p={d.p}) comes after the last weight layer "
            f"({ctx.layers[last]}) in {ctx.order}: it drops the network's outputs.",
            "remove it (p = 0 on the output layer) or move it before the last layer.",
        )
        for d in ctx.dropouts()
        if d.index > last and (d.p is None or d.p > 0)
    ]


def check_consecutive_dropout(ctx: AuditContext) -> list[Finding]:
    """Two dropout modules in a row, which act as one with p = 1 − (1 − p₁)(1 − p₂)."""
    findings = []
    for d in ctx.dropouts():
        nxt = ctx.layers[d.index + 1] if d.index + 1 < len(ctx.layers) else None
        if nxt is None or not is_plain_dropout(ctx.modules[nxt]):
            continue
        p, p2 = d.p, getattr(ctx.modules[nxt], "p", None)
        merged = (
            f" p = 1 − (1 − {p:g})(1 − {p2:g}) = {1 - (1 - p) * (1 - p2):.3g}"
            if isinstance(p, float) and isinstance(p2, (int, float))
            else ""
        )
        findings.append(
            Finding(
                "consecutive-dropout",
                "info",
                d.path,
                f"{type(d.module).__name__} is followed directly by {nxt} "
                f"({type(ctx.modules[nxt]).__name__}) in {ctx.order}.",
                f"use a single dropout module with{merged or ' the combined rate'}.",
            )
        )
    return findings


def check_before_batchnorm(ctx: AuditContext) -> list[Finding]:
    """A dropout module (p > 0) feeding a BatchNorm, activation functions between them aside."""
    findings = []
    for d in ctx.dropouts():
        following = [
            n
            for n in ctx.layers[d.index + 1 :]
            if type(ctx.modules[n]).__module__ != "torch.nn.modules.activation"
        ]
        if (
            following
            and isinstance(ctx.modules[following[0]], nn.modules.batchnorm._BatchNorm)
            and (d.p is None or d.p > 0)
        ):
            findings.append(
                Finding(
                    "dropout-before-batchnorm",
                    "warning",
                    d.path,
                    f"{type(d.module).__name__}(p={d.p}) feeds {following[0]} (BatchNorm) in "
                    f"{ctx.order}: the variance BatchNorm normalises by differs between train and "
                    "eval (variance shift, Li et al. 2019).",
                    "apply dropout after the last BatchNorm layer (e.g. only before the classifier).",
                )
            )
    return findings


def _layer_kind(ctx: AuditContext, d: DropoutLayer) -> str:
    """``"conv"`` (channel dropout, or a convolution beside it), ``"input"`` (before the first
    weight layer) or ``"hidden"``: the kind of layer the dropout feeds, for :data:`USUAL_RATES`."""
    after = [i for i in ctx.weight_layers if i > d.index]
    before = [i for i in ctx.weight_layers if i < d.index]
    beside = [ctx.modules[ctx.layers[i]] for i in after[:1] + before[-1:]]
    if type(d.module).__name__ in ("Dropout1d", "Dropout2d", "Dropout3d") or any(
        isinstance(m, nn.modules.conv._ConvNd) for m in beside
    ):
        return "conv"
    if not ctx.weight_layers or d.index < ctx.weight_layers[0]:
        return "input"
    return "hidden"


def _rate_finding(path: str, p: float, kind: str, lo: float, hi: float) -> Finding | None:
    if p == 1.0:
        return Finding(
            "rate-out-of-range",
            "error",
            path,
            "p = 1 drops every unit: nothing reaches the next layer in training.",
            f"use a {kind} rate in [{lo:g}, {hi:g}].",
        )
    if p > hi:
        return Finding(
            "rate-out-of-range",
            "warning",
            path,
            f"p = {p:g} is above the usual range [{lo:g}, {hi:g}] for {kind} dropout "
            "(risk of over-regularisation: underfitting).",
            f"lower it to at most {hi:g}, or choose it by validation loss (dropkit.tune.search_rates).",
        )
    if p < lo:
        return Finding(
            "rate-out-of-range",
            "info",
            path,
            f"p = {p:g} is below the usual range [{lo:g}, {hi:g}] for {kind} dropout (weak regularisation).",
            f"raise it toward {lo:g} if the model overfits (dropkit.tune.gap).",
        )
    return None


def check_rate_range(ctx: AuditContext) -> list[Finding]:
    """An elementwise or channel dropout rate outside the usual range for the layer it feeds."""
    findings = []
    for d in ctx.dropouts():
        rated = (
            isinstance(d.module, nn.modules.dropout._DropoutNd) or type(d.module).__name__ in _RATED
        )
        if d.p is None or d.p == 0 or not rated or is_alpha(d.module):
            continue
        kind = _layer_kind(ctx, d)
        finding = _rate_finding(d.path, d.p, kind, *ctx.rates[kind])
        if finding is not None:
            findings.append(finding)
    return findings


def check_functional_hardcoded(ctx: AuditContext) -> list[Finding]:
    """A functional dropout called with ``training=True`` while every module is in eval mode."""
    calls, _ = ctx.eval_passes
    return [
        Finding(
            "functional-dropout-hardcoded",
            "error",
            path,
            f"{func} was called with training=True while every module is in eval mode "
            f"(in the forward of {path or 'the model'}).",
            "pass training=self.training (or use a dropout module such as dropkit.Dropout).",
        )
        for path, func in calls
    ]


def check_random_in_eval(ctx: AuditContext) -> list[Finding]:
    """Two eval passes of the batch that differ, where no flag or functional call explains it."""
    calls, equal = ctx.eval_passes
    explained = bool(calls) or (not ctx.model.training and bool(ctx.flag_mismatches()))
    if equal or explained:
        return []
    return [
        Finding(
            "random-in-eval",
            "error",
            "",
            "two eval-mode passes of the same batch gave different outputs: something random "
            "still runs at inference.",
            "look for dropout or noise called without the module's training flag.",
        )
    ]


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
        sites = scan(model, lambda: call_model(model, batch), is_stochastic_module)
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


def check_dead_dropout(ctx: AuditContext) -> list[Finding]:
    """Dropout that regularises nothing: see :func:`dead_dropout_findings`."""
    with preserved(ctx.model, ctx.seed):
        return dead_dropout_findings(ctx.model, ctx.batch)


def check_scale_mismatch(ctx: AuditContext) -> list[Finding]:
    """A dropout module whose expected gain differs between train and eval (:func:`activation_stats`)."""
    return [
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
        for stats in activation_stats(ctx.model, ctx.batch, tolerance=ctx.tolerance, seed=ctx.seed)
        if stats.scale_mismatch
    ]


# --------------------------------------------------------------------------------------------
# The table, and the audit that runs it
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditCheck:
    """One check of the audit.

    Attributes:
        name: what :func:`audit`'s ``checks`` selects it by.
        codes: the finding codes it can report.
        looks_at: what it reads, in a line.
        run: the check: an :class:`AuditContext` in, its findings out.
        needs_batch: it runs the model, so it runs only when :func:`audit` is given a batch.
        per_layer: its findings concern dropout layers and are reported in layer order (in
            :attr:`AuditContext.layers`), interleaved with the neighbouring per-layer checks' in
            table order; a check without it reports its findings as one block, in its own order.
    """

    name: str
    codes: tuple[str, ...]
    looks_at: str
    run: Callable[[AuditContext], list[Finding]]
    needs_batch: bool = False
    per_layer: bool = False


#: The audit's checks, in the order :func:`audit` runs them and reports their findings (within
#: one severity).
AUDIT_CHECKS: tuple[AuditCheck, ...] = (
    AuditCheck(
        "mode-flags",
        ("dropout-active-in-eval", "training-flag-mismatch"),
        "each dropout module's training flag against the model's",
        check_mode_flags,
    ),
    AuditCheck(
        "after-last-layer",
        ("dropout-after-last-layer",),
        "the layers after each dropout module: is there a weight layer",
        check_after_last_layer,
        per_layer=True,
    ),
    AuditCheck(
        "consecutive-dropout",
        ("consecutive-dropout",),
        "the layer right after each dropout module: another dropout",
        check_consecutive_dropout,
        per_layer=True,
    ),
    AuditCheck(
        "before-batchnorm",
        ("dropout-before-batchnorm",),
        "the first layer after each dropout module, activations skipped: a BatchNorm",
        check_before_batchnorm,
        per_layer=True,
    ),
    AuditCheck(
        "rate-range",
        ("rate-out-of-range",),
        "each elementwise/channel dropout's p against USUAL_RATES for the layer it feeds",
        check_rate_range,
        per_layer=True,
    ),
    AuditCheck(
        "functional-hardcoded",
        ("functional-dropout-hardcoded",),
        "functional dropout calls during an eval pass, and their training argument",
        check_functional_hardcoded,
        needs_batch=True,
    ),
    AuditCheck(
        "random-in-eval",
        ("random-in-eval",),
        "two eval passes of the batch: equal outputs",
        check_random_in_eval,
        needs_batch=True,
    ),
    AuditCheck(
        "dead-dropout",
        ("dropout-rate-never-applied", "dropout-never-runs", "dropout-flag-gates-more"),
        "which dropout modules run, whose rates are read, what their flags gate",
        check_dead_dropout,
        needs_batch=True,
    ),
    AuditCheck(
        "scale-mismatch",
        ("scale-mismatch",),
        "each dropout module's gain in train against eval (activation_stats)",
        check_scale_mismatch,
        needs_batch=True,
    ),
)


def _usual_rates(rates: Mapping[str, tuple[float, float]] | None) -> dict[str, tuple[float, float]]:
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
    return usual


def _selected(checks: Iterable[str | AuditCheck] | None, has_batch: bool) -> list[AuditCheck]:
    """The checks to run: the table's, or the named ones and custom ones in the order given.

    Without a batch the checks that need one are left out, as in the default; a selection of only
    such checks is an error (it could find nothing).
    """
    if checks is None:
        checks = AUDIT_CHECKS
    elif isinstance(checks, (str, AuditCheck)):
        raise TypeError(f"checks must be a list of check names or AuditChecks, got {checks!r}")
    by_name = {c.name: c for c in AUDIT_CHECKS}
    chosen = []
    for item in checks:
        if isinstance(item, str):
            if item not in by_name:
                raise ValueError(f"checks: unknown check {item!r}; the checks are {list(by_name)}")
            item = by_name[item]
        elif not isinstance(item, AuditCheck):
            raise TypeError(
                f"checks must hold check names or AuditChecks, got {type(item).__name__}: {item!r}"
            )
        chosen.append(item)
    runnable = [c for c in chosen if has_batch or not c.needs_batch]
    if chosen and not runnable:
        names = [c.name for c in chosen]
        raise ValueError(f"checks: {names} all run the model and need a batch, got batch=None")
    return runnable


def _run(check: AuditCheck, ctx: AuditContext) -> list[Finding]:
    findings = list(check.run(ctx))
    for f in findings:
        if not isinstance(f, Finding) or f.severity not in SEVERITY:
            raise TypeError(
                f"check {check.name!r} must return Findings with severity in {list(SEVERITY)}, "
                f"got {f!r}"
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
    checks: Iterable[str | AuditCheck] | None = None,
) -> list[Finding]:
    r"""Checks a model for the common dropout pitfalls; each finding names the module and a fix.

    Runs the checks of :data:`AUDIT_CHECKS` (or ``checks``). Without a batch, the structure is
    read in registration order (``named_modules``); with a batch the forward pass is run (without
    gradients, modes, buffers and RNG state restored) and the order the modules are really called in is
    used, and the four checks that need data are added.

    Checks:

    - ``mode-flags``: ``dropout-active-in-eval`` (error): the model is in eval mode but a dropout
      module's ``training`` flag is True (e.g. ``model.eval()`` then ``model.dropout.train()``),
      so predictions are random. ``training-flag-mismatch`` (warning): the model trains but a
      dropout module is in eval, so it does nothing.
    - ``after-last-layer``: ``dropout-after-last-layer`` (warning): a dropout module with no
      weight layer after it drops the network's outputs (the seeds: p = 0 on the output layer).
    - ``consecutive-dropout``: ``consecutive-dropout`` (info): two dropout modules in a row act as
      one with p = 1 − (1 − p₁)(1 − p₂).
    - ``before-batchnorm``: ``dropout-before-batchnorm`` (warning): dropout feeding a BatchNorm
      (activations between them aside) shifts the variance BatchNorm's running statistics see
      between train and eval (Li et al. 2019).
    - ``rate-range``: ``rate-out-of-range`` (warning above the range, info below it): elementwise
      and channel dropout outside :data:`USUAL_RATES` for the layer it feeds (input 0.1–0.2,
      hidden 0.2–0.5, convolutional 0.05–0.3); p = 1 is an error (everything dropped).
    - with a batch: ``functional-hardcoded``: ``functional-dropout-hardcoded`` (error): with every
      module in eval mode a functional dropout (``torch.nn.functional.dropout`` and friends,
      caught by a ``TorchFunctionMode``, or dropkit's, patched for the duration) was called with
      ``training=True``; its path is the module whose ``forward`` made the call.
      ``random-in-eval`` (error): two eval passes of the batch gave different outputs.
      ``dead-dropout``: ``dropout-rate-never-applied``, ``dropout-never-runs``,
      ``dropout-flag-gates-more``, see :func:`dead_dropout_findings`.
      ``scale-mismatch`` (error): see :func:`activation_stats`.

    Args:
        model: the model.
        batch: optional input (tensor, tuple/list of positional inputs, or dict of keyword inputs).
        rates: overrides of :data:`USUAL_RATES` by kind (``"input"``, ``"hidden"``, ``"conv"``).
        tolerance: see :func:`activation_stats`.
        ignore: finding codes to leave out.
        seed: seeds the data checks' masks.
        checks: the checks to run, in this order: names from :data:`AUDIT_CHECKS` and
            :class:`AuditCheck`\ s of your own (None: the whole table). Without a batch the
            checks that need one are left out (all of them needing one is an error).

    Returns:
        The findings, errors first, then warnings, then info; each kind in check order (the
        per-layer checks' findings in layer order).

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
    ctx = AuditContext(model, batch, rates=_usual_rates(rates), tolerance=tolerance, seed=seed)
    selected = _selected(checks, batch is not None)
    ignore = set(ignore)
    findings: list[Finding] = []
    by_layer: list[Finding] = []  # the current run of per-layer checks' findings
    for check in selected:
        if not check.per_layer and by_layer:
            findings += _in_layer_order(by_layer, ctx)
            by_layer = []
        (by_layer if check.per_layer else findings).extend(_run(check, ctx))
    findings += _in_layer_order(by_layer, ctx)
    findings = [f for f in findings if f.code not in ignore]
    findings.sort(key=lambda f: SEVERITY[f.severity])
    return findings


def _in_layer_order(findings: list[Finding], ctx: AuditContext) -> list[Finding]:
    """Stable sort by the finding's layer position (a layer's findings stay in check order)."""
    if not findings:
        return []
    position = {path: i for i, path in enumerate(ctx.layers)}
    return sorted(findings, key=lambda f: position.get(f.path, len(position)))
