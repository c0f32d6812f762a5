r"""Dropout-rate schedules and the scheduler that sets ``p`` on every dropout module of a model.

A schedule is a function of the step (or epoch) t >= 0 returning a rate in [0, 1]:

- :func:`constant`: p(t) = p.
- :func:`linear`: from ``start`` to ``end`` over ``total_steps``, then ``end``.
- :func:`cosine`: p(t) = end + (start − end)(1 + cos(π t/T))/2 for t <= T, then ``end``.
- :func:`step`: piecewise constant, ``values[i]`` from ``milestones[i − 1]`` on.
- :func:`curriculum`: curriculum dropout (Morerio et al. 2017, https://arxiv.org/abs/1703.06229),
  p(t) = p̄ (1 − exp(−γ t)), rising from 0 to p̄: the retain probability
  θ(t) = (1 − θ̄) exp(−γ t) + θ̄ of the paper, written as a drop rate p = 1 − θ.

:class:`DropoutScheduler` applies one to a model from a plain training loop; the Lightning callback
``DropoutSchedulerCallback`` (defined when ``lightning`` or ``pytorch_lightning`` is importable)
does it from a ``Trainer``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from dropkit._validate import (
    check_bool,
    check_choice,
    check_nonneg_int,
    check_positive_finite,
    check_positive_int,
    check_probability,
)
from dropkit.layers.base import DropoutBase, is_dropout_module

__all__ = [
    "Schedule",
    "constant",
    "linear",
    "cosine",
    "step",
    "curriculum",
    "DropoutScheduler",
    "DropoutScheduleHooks",
]


class Schedule:
    """A dropout-rate schedule: ``schedule(t)`` is the rate at step (or epoch) ``t``.

    Subclasses implement :meth:`rate`; calling checks ``t`` and returns a float in [0, 1].
    """

    def rate(self, t: int) -> float:
        raise NotImplementedError

    def __call__(self, t: int) -> float:
        return self.rate(check_nonneg_int(t, "t"))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class _Constant(Schedule):
    def __init__(self, p: float) -> None:
        self.p = check_probability(p, "p")

    def rate(self, t: int) -> float:
        return self.p


class _Linear(Schedule):
    def __init__(self, start: float, end: float, total_steps: int) -> None:
        self.start = check_probability(start, "start")
        self.end = check_probability(end, "end")
        self.total_steps = check_positive_int(total_steps, "total_steps")

    def rate(self, t: int) -> float:
        frac = min(t, self.total_steps) / self.total_steps
        return self.start + (self.end - self.start) * frac


class _Cosine(_Linear):
    def rate(self, t: int) -> float:
        frac = min(t, self.total_steps) / self.total_steps
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * frac))


class _Step(Schedule):
    def __init__(self, values: Sequence[float], milestones: Sequence[int]) -> None:
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise TypeError(f"values must be a sequence of rates, got {values!r}")
        if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence):
            raise TypeError(f"milestones must be a sequence of ints, got {milestones!r}")
        self.values = [check_probability(v, f"values[{i}]") for i, v in enumerate(values)]
        self.milestones = [
            check_positive_int(m, f"milestones[{i}]") for i, m in enumerate(milestones)
        ]
        if len(self.values) != len(self.milestones) + 1:
            raise ValueError(
                f"step needs one more value than milestones, got {len(self.values)} values "
                f"{self.values} and {len(self.milestones)} milestones {self.milestones}"
            )
        if any(a >= b for a, b in zip(self.milestones, self.milestones[1:], strict=False)):
            raise ValueError(f"milestones must be strictly increasing, got {self.milestones}")

    def rate(self, t: int) -> float:
        index = sum(1 for m in self.milestones if t >= m)
        return self.values[index]


class _Curriculum(Schedule):
    def __init__(self, p_final: float, gamma: float) -> None:
        self.p_final = check_probability(p_final, "p_final")
        self.gamma = check_positive_finite(gamma, "gamma")

    def rate(self, t: int) -> float:
        return self.p_final * (1.0 - math.exp(-self.gamma * t))


def constant(p: float) -> Schedule:
    """p(t) = p.

    Example:
        >>> from dropkit import schedules
        >>> schedules.constant(0.3)(100)
        0.3
    """
    return _Constant(p)


def linear(start: float, end: float, total_steps: int) -> Schedule:
    r"""p(t) = start + (end − start) · min(t, T)/T, T = ``total_steps``.

    Example:
        >>> from dropkit import schedules
        >>> s = schedules.linear(0.0, 0.5, 10)
        >>> s(0), s(5), s(10), s(20)
        (0.0, 0.25, 0.5, 0.5)
    """
    return _Linear(start, end, total_steps)


def cosine(start: float, end: float, total_steps: int) -> Schedule:
    r"""p(t) = end + (start − end) · (1 + cos(π min(t, T)/T))/2, T = ``total_steps``.

    Example:
        >>> from dropkit import schedules
        >>> s = schedules.cosine(0.5, 0.1, 100)
        >>> s(0), round(s(50), 6), s(100)
        (0.5, 0.3, 0.1)
    """
    return _Cosine(start, end, total_steps)


def step(values: Sequence[float], milestones: Sequence[int]) -> Schedule:
    r"""Piecewise constant: p(t) = values[i] for milestones[i − 1] <= t < milestones[i].

    Args:
        values: len(milestones) + 1 rates.
        milestones: strictly increasing steps >= 1 at which the rate changes.

    Example:
        >>> from dropkit import schedules
        >>> s = schedules.step([0.1, 0.3, 0.5], milestones=[10, 20])
        >>> s(0), s(10), s(25)
        (0.1, 0.3, 0.5)
    """
    return _Step(values, milestones)


def curriculum(
    p_final: float, gamma: float | None = None, *, total_steps: int | None = None
) -> Schedule:
    r"""Curriculum dropout (Morerio et al. 2017): p(t) = p̄ (1 − exp(−γ t)), from 0 towards p̄.

    Args:
        p_final: the asymptotic rate p̄, in [0, 1].
        gamma: the rate's growth γ > 0; or give ``total_steps`` T for γ = 10/T (the paper's
            choice, p within p̄·e⁻¹⁰ of p̄ at T).
        total_steps: T, used only when ``gamma`` is None.

    Example:
        >>> from dropkit import schedules
        >>> s = schedules.curriculum(0.5, total_steps=1000)
        >>> s(0), round(s(100), 4), round(s(1000), 4)
        (0.0, 0.3161, 0.5)
    """
    if gamma is None:
        if total_steps is None:
            raise ValueError("curriculum needs gamma or total_steps (for gamma = 10 / total_steps)")
        gamma = 10.0 / check_positive_int(total_steps, "total_steps")
    return _Curriculum(p_final, gamma)


ModuleFilter = Callable[[str, nn.Module], bool]


class DropoutScheduler:
    r"""Sets ``p`` on the dropout modules of a model from a schedule, per step or per epoch.

    At construction the rate for t = 0 is applied; each :meth:`step` advances t by one and
    applies the schedule again: call it after each optimiser step (or each epoch). The modules are
    dropkit's (every :class:`~dropkit.layers.base.DropoutBase`: Dropout, DropBlock, DropPath,
    DropConnect, WeightDrop, …) and torch.nn's dropout modules, optionally narrowed by name
    (regular expressions, ``re.search`` on the qualified name), by type, or by a predicate. Modules
    whose class sets ``schedulable = False`` (rates that are learned) are skipped.

    With ``relative=True`` the schedule is a multiplier of each module's own starting rate,
    p_m(t) = p_m(0) · schedule(t) (clipped to [0, 1]): per-layer rates such as
    :func:`~dropkit.drop_path_rates` keep their shape while the schedule ramps them.

    Args:
        model: the model whose dropout rates are set.
        schedule: a :class:`Schedule` or any callable t -> rate.
        names: a regex or list of regexes; a module is kept if one matches its name.
        types: a module class or tuple of classes; a module is kept if it is an instance.
        where: a predicate ``(name, module) -> bool``; a module is kept if it returns True.
        relative: the schedule multiplies each module's initial rate.

    Example:
        >>> import torch, dropkit
        >>> from dropkit import schedules
        >>> net = dropkit.MLP([4, 8, 2], p=[0.2, 0.5])
        >>> sched = dropkit.DropoutScheduler(net, schedules.linear(0.0, 0.4, total_steps=4))
        >>> for _ in range(2):
        ...     loss = net(torch.randn(3, 4)).sum()  # forward, backward, optimiser step …
        ...     sched.step()
        >>> sched.t, [m.p for m in sched.modules.values()]
        (2, [0.2, 0.2])
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: Schedule | Callable[[int], float],
        *,
        names: str | Sequence[str] | None = None,
        types: type | tuple[type, ...] | None = None,
        where: ModuleFilter | None = None,
        relative: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(schedule):
            raise TypeError(
                f"schedule must be a Schedule or a callable t -> rate, got {schedule!r}"
            )
        if isinstance(names, str):
            names = [names]
        if names is not None:
            if not all(isinstance(n, str) for n in names):
                raise TypeError(f"names must be a regex or a list of regexes, got {names!r}")
            patterns = [re.compile(n) for n in names]
        if types is not None:
            type_tuple = types if isinstance(types, tuple) else (types,)
            if not all(isinstance(t, type) for t in type_tuple):
                raise TypeError(f"types must be a class or a tuple of classes, got {types!r}")
        if where is not None and not callable(where):
            raise TypeError(f"where must be a callable (name, module) -> bool, got {where!r}")
        relative = check_bool(relative, "relative")
        selected: dict[str, nn.Module] = {}
        for name, module in model.named_modules():
            if not is_dropout_module(module) or not getattr(module, "schedulable", True):
                continue
            if names is not None and not any(pat.search(name) for pat in patterns):
                continue
            if types is not None and not isinstance(module, type_tuple):
                continue
            if where is not None and not where(name, module):
                continue
            selected[name] = module
        if not selected:
            raise ValueError(
                "DropoutScheduler found no dropout module to schedule in the model"
                + (f" matching names={names!r}" if names is not None else "")
                + (f" types={types!r}" if types is not None else "")
                + ("" if where is None else " and the where predicate")
            )
        self.modules = selected
        self.schedule = schedule
        self.relative = relative
        self.base_p = {name: float(m.p) for name, m in selected.items()}
        self.t = 0
        self._apply()

    def rates(self, t: int) -> dict[str, float]:
        """The rate each scheduled module gets at step ``t`` (without applying it)."""
        value = float(self.schedule(check_nonneg_int(t, "t")))
        if self.relative:
            if not math.isfinite(value) or value < 0.0:
                raise ValueError(
                    f"schedule({t}) must be a finite multiplier >= 0 with relative=True, got {value!r}"
                )
            return {name: min(1.0, max(0.0, base * value)) for name, base in self.base_p.items()}
        value = check_probability(value, f"schedule({t})")
        return dict.fromkeys(self.modules, value)

    def _apply(self) -> None:
        for name, rate in self.rates(self.t).items():
            module = self.modules[name]
            if isinstance(module, DropoutBase):
                module.p = rate
            else:
                module.p = check_probability(rate, f"p of {name}")

    def step(self) -> None:
        """Advances t by one and sets every scheduled module's rate."""
        self.t += 1
        self._apply()

    def get_last_p(self) -> dict[str, float]:
        """The rate of each scheduled module now."""
        return {name: float(m.p) for name, m in self.modules.items()}

    def state_dict(self) -> dict[str, Any]:
        """The step and the base rates (for ``relative``), to resume a run."""
        return {"t": self.t, "base_p": dict(self.base_p)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s step and base rates and applies the schedule at that step."""
        if not isinstance(state, dict) or "t" not in state:
            raise ValueError(
                f"state must be a dict from DropoutScheduler.state_dict(), got {state!r}"
            )
        base_p = state.get("base_p", self.base_p)
        unknown = set(base_p) - set(self.modules)
        if unknown:
            raise ValueError(f"state names modules this scheduler does not hold: {sorted(unknown)}")
        self.t = check_nonneg_int(state["t"], "t")
        self.base_p.update({k: float(v) for k, v in base_p.items()})
        self._apply()

    def __repr__(self) -> str:
        return (
            f"DropoutScheduler(t={self.t}, schedule={self.schedule!r}, "
            f"modules={list(self.modules)}, relative={self.relative})"
        )


class DropoutScheduleHooks:
    r"""The Lightning callback's logic, usable with any trainer that calls these hooks.

    ``on_fit_start`` builds a :class:`DropoutScheduler` on ``pl_module``; ``on_train_batch_end``
    (``interval="step"``) or ``on_train_epoch_end`` (``interval="epoch"``) advances it;
    ``state_dict``/``load_state_dict`` save and restore it with the trainer's checkpoints. When
    Lightning is installed, ``dropkit.schedules.DropoutSchedulerCallback`` is this class mixed into
    ``lightning.pytorch.Callback``.

    Args:
        schedule: a :class:`Schedule` or callable t -> rate.
        interval: ``"step"`` or ``"epoch"``.
        log: log the mean scheduled rate as ``"dropout_p"`` through ``pl_module.log``.
        **scheduler_kwargs: ``names``, ``types``, ``where``, ``relative`` of :class:`DropoutScheduler`.

    Example:
        >>> import torch, dropkit
        >>> from dropkit import schedules
        >>> hooks = schedules.DropoutScheduleHooks(schedules.linear(0.0, 0.5, 10), interval="epoch")
        >>> net = dropkit.MLP([4, 8, 2], p=0.5)
        >>> hooks.on_fit_start(None, net)
        >>> hooks.on_train_epoch_end(None, net)
        >>> hooks.scheduler.t
        1
    """

    def __init__(
        self,
        schedule: Schedule | Callable[[int], float],
        interval: str = "step",
        log: bool = False,
        **scheduler_kwargs: Any,
    ) -> None:
        check_choice(interval, "interval", ("step", "epoch"))
        if not callable(schedule):
            raise TypeError(
                f"schedule must be a Schedule or a callable t -> rate, got {schedule!r}"
            )
        unknown = set(scheduler_kwargs) - {"names", "types", "where", "relative"}
        if unknown:
            raise TypeError(f"unexpected DropoutScheduler arguments {sorted(unknown)}")
        super().__init__()
        self.schedule = schedule
        self.interval = interval
        self.log = bool(log)
        self.scheduler_kwargs = scheduler_kwargs
        self.scheduler: DropoutScheduler | None = None
        self._pending_state: dict[str, Any] | None = None

    def on_fit_start(self, trainer: Any, pl_module: nn.Module) -> None:
        self.scheduler = DropoutScheduler(pl_module, self.schedule, **self.scheduler_kwargs)
        if self._pending_state is not None:
            self.scheduler.load_state_dict(self._pending_state)
            self._pending_state = None

    def _advance(self, pl_module: nn.Module) -> None:
        if self.scheduler is None:
            raise RuntimeError(
                "DropoutScheduleHooks: on_fit_start was not called before training hooks"
            )
        self.scheduler.step()
        if self.log and hasattr(pl_module, "log"):
            rates = list(self.scheduler.get_last_p().values())
            pl_module.log("dropout_p", sum(rates) / len(rates))

    def on_train_batch_end(
        self, trainer: Any, pl_module: nn.Module, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.interval == "step":
            self._advance(pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: nn.Module) -> None:
        if self.interval == "epoch":
            self._advance(pl_module)

    def state_dict(self) -> dict[str, Any]:
        if self.scheduler is None:
            return dict(self._pending_state or {})
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning may restore callbacks before or after on_fit_start; both orders work.
        if not state_dict:
            return
        if self.scheduler is None:
            self._pending_state = dict(state_dict)
        else:
            self.scheduler.load_state_dict(state_dict)


def _lightning_callback_base() -> type | None:
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            if importlib.util.find_spec(name.split(".")[0]) is None:
                continue
            module = importlib.import_module(name)
        except ImportError:
            continue
        base = getattr(module, "Callback", None)
        if isinstance(base, type):
            return base
    return None


_callback_class: type | None = None


def __getattr__(name: str) -> Any:
    # Built on first access, so ``import dropkit`` never pays for importing Lightning.
    global _callback_class
    if name == "DropoutSchedulerCallback":
        if _callback_class is None:
            base = _lightning_callback_base()
            if base is None:
                raise AttributeError(
                    "dropkit.schedules.DropoutSchedulerCallback needs `lightning` or "
                    "`pytorch_lightning`; neither is importable (use DropoutScheduleHooks or "
                    "DropoutScheduler from a plain loop)"
                )
            _callback_class = type(
                "DropoutSchedulerCallback",
                (DropoutScheduleHooks, base),
                {
                    "__module__": __name__,
                    "__doc__": "A Lightning callback that schedules dropout rates; see "
                    ":class:`DropoutScheduleHooks` for the arguments.",
                },
            )
        return _callback_class
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
