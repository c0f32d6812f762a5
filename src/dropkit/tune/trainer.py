"""Training one configuration: :class:`TrainSpec` holds what to train and how (checked once);
its :meth:`~TrainSpec.run` builds the model, sets its rates, trains and returns the metrics."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dropkit._validate import check_choice, check_positive_int, check_real
from dropkit.train import History, fit
from dropkit.tune.rates import dropout_layers, set_rates

__all__ = ["TrainSpec", "built_rates", "TASKS", "BUILTIN_METRICS"]


def _n_params(fn: Callable) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


#: The metrics the built-in trainer can be scored on.
BUILTIN_METRICS = ("val_loss", "val_acc")
#: The built-in trainer's tasks: cross-entropy or mean squared error.
TASKS = ("classification", "regression")


@dataclass(frozen=True, eq=False)
class TrainSpec:
    r"""What each trial trains and how: the model, the training and the metric it is scored on.

    :class:`~dropkit.tune.RateSearch`, :func:`~dropkit.tune.ablation` and
    :func:`~dropkit.tune.sensitivity` build one from their keyword arguments (same names) and run
    every configuration through it. The fields are checked once, here; a trial only varies the
    rates and the seed.

    Args:
        build_model: ``build_model()`` → a fresh nn.Module holding dropout modules.
        train_fn: ``train_fn(model, report)`` or ``train_fn(model)``; None uses the built-in
            trainer (:func:`dropkit.train.fit`) on ``train`` and ``val``.
        eval_fn: ``eval_fn(model)`` → the metric (a float) or a mapping of metrics holding
            ``metric``; needed with ``train_fn``, refused without it.
        train, val: (x, y) tensors or DataLoaders for the built-in trainer.
        epochs, lr, batch_size, weight_decay, task: the built-in trainer's settings (an int ≥ 1,
            a number > 0, an int ≥ 1, a number ≥ 0, ``"classification"`` or ``"regression"``).
        metric: the metric a trial is scored on: with the built-in trainer ``"val_loss"`` or
            ``"val_acc"`` (classification only), else a key of what ``eval_fn`` returns.

    Raises:
        TypeError: a field of the wrong type (the message names it, its value and what is allowed).
        ValueError: a value outside what is allowed, or a missing piece (``eval_fn`` without
            ``train_fn``, no ``train``/``val`` for the built-in trainer).

    Example:
        >>> import torch, dropkit
        >>> x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
        >>> spec = TrainSpec(lambda: dropkit.MLP([4, 8, 2]), train=(x, y), val=(x, y), epochs=1)
        >>> spec.built_rates(seed=0)
        {'input_dropout': 0.2, 'dropout1': 0.5}
        >>> sorted(spec.run({"dropout1": 0.2}, seed=0))[:3]
        ['epochs', 'gap', 'loss_gap']
        >>> TrainSpec(lambda: dropkit.MLP([4, 8, 2]), train=(x, y), val=(x, y), lr=0)
        Traceback (most recent call last):
            ...
        ValueError: lr must be a number > 0, got 0.0
    """

    build_model: Callable[[], nn.Module]
    train_fn: Callable[..., Any] | None = None
    eval_fn: Callable[[nn.Module], Any] | None = None
    train: Any = None
    val: Any = None
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 100
    weight_decay: float = 0.0
    task: str = "classification"
    metric: str = "val_loss"

    def __post_init__(self) -> None:
        if not callable(self.build_model):
            raise TypeError(
                f"build_model must be a callable returning an nn.Module, got {self.build_model!r}"
            )
        checked = {
            "epochs": check_positive_int(self.epochs, "epochs"),
            "lr": check_real(self.lr, "lr", positive=True),
            "batch_size": check_positive_int(self.batch_size, "batch_size"),
            "weight_decay": check_real(self.weight_decay, "weight_decay", nonneg=True),
            "task": check_choice(self.task, "task", TASKS),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)  # frozen: the checked, normalised values
        if self.train_fn is None:
            self._check_builtin()
        else:
            if not callable(self.train_fn):
                raise TypeError(f"train_fn must be callable, got {self.train_fn!r}")
            if self.eval_fn is None or not callable(self.eval_fn):
                raise ValueError("train_fn needs an eval_fn(model) returning the validation metric")
            if not isinstance(self.metric, str) or not self.metric:
                raise TypeError(
                    f"metric must be a non-empty string (a key of what eval_fn returns), "
                    f"got {self.metric!r}"
                )

    def _check_builtin(self) -> None:
        if self.eval_fn is not None:
            raise ValueError(
                "eval_fn was given without train_fn; give both, or neither and train=/val= data"
            )
        if self.train is None or self.val is None:
            raise ValueError(
                "give train_fn and eval_fn, or train= and val= data ((x, y) tensors or DataLoaders) "
                "for the built-in trainer"
            )
        check_choice(self.metric, "metric", BUILTIN_METRICS, why="with the built-in trainer")
        if self.metric == "val_acc" and self.task != "classification":
            raise ValueError("metric='val_acc' needs task='classification'")

    def model(self, rates: Mapping[str, float], seed: int) -> nn.Module:
        """A fresh model built under ``torch.manual_seed(seed)``, its dropout rates set."""
        torch.manual_seed(seed)
        model = self.build_model()
        if not isinstance(model, nn.Module):
            raise TypeError(f"build_model() must return an nn.Module, got {type(model).__name__}")
        return set_rates(model, rates)

    def built_rates(self, seed: int) -> dict[str, float]:
        """The rates ``build_model()`` gives each dropout module (torch's RNG state untouched).

        Raises:
            ValueError: the model holds no dropout module.
        """
        rates = built_rates(self.build_model, seed)
        if not rates:
            raise ValueError("the model built by build_model() holds no dropout module")
        return rates

    def _metrics(self, value: Any) -> dict[str, float]:
        if isinstance(value, Mapping):
            if self.metric not in value:
                raise KeyError(
                    f"eval_fn returned {sorted(value)}, which lacks metric {self.metric!r}"
                )
            return {str(k): float(v) for k, v in value.items()}
        return {self.metric: float(value)}

    def run(
        self,
        rates: Mapping[str, float],
        seed: int,
        report: Callable[[int, float], None] | None = None,
    ) -> dict[str, Any]:
        """Trains one configuration; ``report(epoch, value)`` sees the metric after each epoch.

        Returns:
            The metrics: with the built-in trainer ``train_loss``, ``val_loss``, ``train_acc``,
            ``val_acc``, ``epochs``, ``loss_gap`` and ``gap``; otherwise what ``eval_fn`` returns.
        """
        model = self.model(rates, seed)
        if self.train_fn is None:
            return self._fit(model, seed, report)

        def report_epoch(epoch: int) -> None:
            if report is not None:
                report(int(epoch), self._metrics(self.eval_fn(model))[self.metric])

        if _n_params(self.train_fn) >= 2:
            self.train_fn(model, report_epoch)
        else:
            self.train_fn(model)
        return self._metrics(self.eval_fn(model))

    def _fit(
        self, model: nn.Module, seed: int, report: Callable[[int, float], None] | None
    ) -> dict[str, Any]:
        """The built-in trainer: :func:`dropkit.train.fit` with this spec's settings."""

        def on_epoch(epoch: int, history: History) -> bool:
            if report is not None:
                value = history.val_loss[-1] if self.metric == "val_loss" else history.val_acc[-1]
                report(epoch, value)
            return False

        history = fit(
            model,
            self.train,
            self.val,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            task=self.task,
            seed=seed,
            on_epoch=on_epoch,
        )
        out: dict[str, Any] = {
            "train_loss": history.train_loss[-1],
            "val_loss": history.val_loss[-1],
            "train_acc": history.train_acc[-1],
            "val_acc": history.val_acc[-1],
            "epochs": history.epochs,
        }
        out["loss_gap"] = out["val_loss"] - out["train_loss"]
        out["gap"] = out["train_acc"] - out["val_acc"] if out["train_acc"] is not None else None
        return out


def built_rates(build_model: Callable[[], nn.Module], seed: int) -> dict[str, float]:
    """The rates ``build_model()`` gives each dropout module (torch's RNG state left untouched)."""
    if not callable(build_model):
        raise TypeError(
            f"build_model must be a callable returning an nn.Module, got {build_model!r}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model()
    if not isinstance(model, nn.Module):
        raise TypeError(f"build_model() must return an nn.Module, got {type(model).__name__}")
    return {path: float(m.p) for path, m in dropout_layers(model).items()}
