"""Training one configuration: build the model, set its rates, train, return validation metrics."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dropkit._validate import check_positive_int
from dropkit.train import History, fit
from dropkit.tune.rates import dropout_layers, set_rates

__all__ = ["Trainer", "built_rates"]


def _n_params(fn: Callable) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


@dataclass
class Trainer:
    """Builds a model, sets its rates, trains it and returns its validation metrics."""

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
        if self.train_fn is None:
            if self.eval_fn is not None:
                raise ValueError(
                    "eval_fn was given without train_fn; give both, or neither and train=/val= data"
                )
            if self.train is None or self.val is None:
                raise ValueError(
                    "give train_fn and eval_fn, or train= and val= data ((x, y) tensors or DataLoaders) "
                    "for the built-in trainer"
                )
            if self.metric not in ("val_loss", "val_acc"):
                raise ValueError(
                    f"with the built-in trainer metric must be 'val_loss' or 'val_acc', got {self.metric!r}"
                )
            if self.metric == "val_acc" and self.task != "classification":
                raise ValueError("metric='val_acc' needs task='classification'")
            self.epochs = check_positive_int(self.epochs, "epochs")
        else:
            if not callable(self.train_fn):
                raise TypeError(f"train_fn must be callable, got {self.train_fn!r}")
            if self.eval_fn is None or not callable(self.eval_fn):
                raise ValueError("train_fn needs an eval_fn(model) returning the validation metric")

    def model(self, rates: Mapping[str, float], seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = self.build_model()
        if not isinstance(model, nn.Module):
            raise TypeError(f"build_model() must return an nn.Module, got {type(model).__name__}")
        return set_rates(model, rates)

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
        """Trains one configuration; ``report(epoch, value)`` sees the metric after each epoch."""
        model = self.model(rates, seed)
        if self.train_fn is None:

            def on_epoch(epoch: int, history: History) -> bool:
                if report is not None:
                    value = (
                        history.val_loss[-1] if self.metric == "val_loss" else history.val_acc[-1]
                    )
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

        def report_epoch(epoch: int) -> None:
            if report is not None:
                report(int(epoch), self._metrics(self.eval_fn(model))[self.metric])

        if _n_params(self.train_fn) >= 2:
            self.train_fn(model, report_epoch)
        else:
            self.train_fn(model)
        return self._metrics(self.eval_fn(model))


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
