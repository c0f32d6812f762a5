r"""The overfitting gap: A_train − A_val > ε (:func:`gap`), L_val − L_train > ε (:func:`loss_gap`),
and :class:`OverfitMonitor`, which records both per epoch and flags the epoch the gap passes ε."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from dropkit._validate import check_bool, check_choice, check_positive_int, check_real
from dropkit.train import History

__all__ = ["Gap", "gap", "loss_gap", "OverfitMonitor"]


def _check_accuracy(value: object, name: str) -> float:
    value = check_real(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{name} must be a fraction in [0, 1], got {value!r} (divide percentages by 100)"
        )
    return value


@dataclass(frozen=True)
class Gap:
    """One measurement of the generalisation gap.

    ``gap`` is A_train − A_val for accuracies (``metric="accuracy"``) and L_val − L_train for
    losses (``metric="loss"``): in both cases positive means the model does better on the data it
    was trained on. ``overfitting`` is ``gap > epsilon``.
    """

    metric: str
    train: float
    val: float
    gap: float
    epsilon: float
    overfitting: bool

    def __bool__(self) -> bool:
        return self.overfitting

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for JSON and tables)."""
        return {
            "metric": self.metric,
            "train": self.train,
            "val": self.val,
            "gap": self.gap,
            "epsilon": self.epsilon,
            "overfitting": self.overfitting,
        }


def gap(train_acc: float, val_acc: float, epsilon: float = 0.05) -> Gap:
    r"""The seeds' overfitting test on accuracies: A_train − A_val > ε.

    Args:
        train_acc: accuracy on the training set, a fraction in [0, 1] (measure it in eval mode,
            as :func:`dropkit.train.fit` does, so both sides see the same network).
        val_acc: accuracy on held-out data, a fraction in [0, 1].
        epsilon: the threshold ε ≥ 0 (default 0.05, five points of accuracy).

    Returns:
        A :class:`Gap`; it is truthy when the model overfits.

    Raises:
        TypeError: an argument is not a real number.
        ValueError: an accuracy outside [0, 1] (percentages must be divided by 100), a negative
            or non-finite ε.

    Example:
        >>> from dropkit.tune import gap
        >>> g = gap(0.90, 0.60, epsilon=0.05)   # the seeds' example: a 30-point gap
        >>> round(g.gap, 2), g.overfitting
        (0.3, True)
        >>> bool(gap(0.82, 0.80))
        False
    """
    train_acc = _check_accuracy(train_acc, "train_acc")
    val_acc = _check_accuracy(val_acc, "val_acc")
    epsilon = check_real(epsilon, "epsilon", nonneg=True)
    value = train_acc - val_acc
    return Gap("accuracy", train_acc, val_acc, value, epsilon, value > epsilon)


def loss_gap(train_loss: float, val_loss: float, epsilon: float = 0.1) -> Gap:
    r"""The loss-based twin of :func:`gap`: L_val − L_train > ε.

    Useful for regression (no accuracy) and earlier than the accuracy gap: the validation loss
    starts rising while accuracies still agree. ε is in the loss's units (nats for
    cross-entropy, squared target units for mean squared error).

    Args:
        train_loss: mean loss on the training set (eval mode).
        val_loss: mean loss on held-out data.
        epsilon: the threshold ε ≥ 0 (default 0.1).

    Returns:
        A :class:`Gap` with ``metric="loss"``.

    Raises:
        TypeError: an argument is not a real number.
        ValueError: a non-finite loss, a negative or non-finite ε.

    Example:
        >>> from dropkit.tune import loss_gap
        >>> g = loss_gap(0.20, 0.95)
        >>> round(g.gap, 2), g.overfitting
        (0.75, True)
    """
    train_loss = check_real(train_loss, "train_loss")
    val_loss = check_real(val_loss, "val_loss")
    epsilon = check_real(epsilon, "epsilon", nonneg=True)
    value = val_loss - train_loss
    return Gap("loss", train_loss, val_loss, value, epsilon, value > epsilon)


class OverfitMonitor:
    r"""Records train/validation curves per epoch and flags the epoch where the gap passes ε.

    Feed it from any loop with :meth:`update`, or hand it to :func:`dropkit.train.fit` as
    ``on_epoch=monitor`` (it reads the last entry of the history). For each epoch it records
    both gaps, A_train − A_val and L_val − L_train; the one named by ``metric`` is tested against ε.
    The flagged epoch is the first epoch e with gap > ε at e, e + 1, …, e + patience − 1.

    Args:
        epsilon: the threshold ε (default 0.05 for ``metric="accuracy"``, 0.1 for ``"loss"``).
        metric: ``"accuracy"`` (A_train − A_val) or ``"loss"`` (L_val − L_train).
        patience: how many consecutive epochs the gap must exceed ε (default 1).
        stop: when used as ``on_epoch``, return True (stop training) once the gap is flagged.

    Example:
        >>> from dropkit.tune import OverfitMonitor
        >>> monitor = OverfitMonitor(epsilon=0.05)
        >>> for train_acc, val_acc in [(0.60, 0.58), (0.75, 0.71), (0.85, 0.72), (0.95, 0.71)]:
        ...     _ = monitor.update(train_acc=train_acc, val_acc=val_acc)
        >>> monitor.flagged_epoch
        3
        >>> [round(r["gap"], 2) for r in monitor.records]
        [0.02, 0.04, 0.13, 0.24]
    """

    def __init__(
        self,
        epsilon: float | None = None,
        *,
        metric: str = "accuracy",
        patience: int = 1,
        stop: bool = False,
    ) -> None:
        check_choice(metric, "metric", ("accuracy", "loss"))
        if epsilon is None:
            epsilon = 0.05 if metric == "accuracy" else 0.1
        self.epsilon = check_real(epsilon, "epsilon", nonneg=True)
        self.metric = metric
        self.patience = check_positive_int(patience, "patience")
        self.stop = check_bool(stop, "stop")
        self.records: list[dict[str, Any]] = []
        self.flagged_epoch: int | None = None
        self._run = 0

    @property
    def overfitting(self) -> bool:
        """True once an epoch has been flagged."""
        return self.flagged_epoch is not None

    def update(
        self,
        train_loss: float | None = None,
        val_loss: float | None = None,
        train_acc: float | None = None,
        val_acc: float | None = None,
        *,
        epoch: int | None = None,
    ) -> bool:
        """Records one epoch; returns True when the gap is flagged (at this or an earlier epoch).

        Epochs are numbered from 1; ``epoch`` defaults to one more than the last recorded. The
        values the metric needs (accuracies or losses) must be given.
        """
        if epoch is None:
            epoch = self.records[-1]["epoch"] + 1 if self.records else 1
        epoch = check_positive_int(epoch, "epoch")
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": None if train_loss is None else check_real(train_loss, "train_loss"),
            "val_loss": None if val_loss is None else check_real(val_loss, "val_loss"),
            "train_acc": None if train_acc is None else _check_accuracy(train_acc, "train_acc"),
            "val_acc": None if val_acc is None else _check_accuracy(val_acc, "val_acc"),
        }
        have_acc = row["train_acc"] is not None and row["val_acc"] is not None
        have_loss = row["train_loss"] is not None and row["val_loss"] is not None
        if self.metric == "accuracy" and not have_acc:
            raise ValueError("OverfitMonitor(metric='accuracy') needs train_acc and val_acc")
        if self.metric == "loss" and not have_loss:
            raise ValueError("OverfitMonitor(metric='loss') needs train_loss and val_loss")
        row["gap"] = row["train_acc"] - row["val_acc"] if have_acc else None
        row["loss_gap"] = row["val_loss"] - row["train_loss"] if have_loss else None
        tested = row["gap"] if self.metric == "accuracy" else row["loss_gap"]
        row["over"] = tested > self.epsilon
        self.records.append(row)
        self._run = self._run + 1 if row["over"] else 0
        if self.flagged_epoch is None and self._run >= self.patience:
            self.flagged_epoch = self.records[-self.patience]["epoch"]
        return self.overfitting

    def __call__(self, epoch: int, history: History) -> bool:
        """The ``on_epoch`` hook of :func:`dropkit.train.fit`: records the history's last epoch."""
        self.update(
            train_loss=history.train_loss[-1],
            val_loss=history.val_loss[-1] if history.val_loss else None,
            train_acc=history.train_acc[-1],
            val_acc=history.val_acc[-1] if history.val_acc else None,
            epoch=epoch + 1,
        )
        return self.stop and self.overfitting

    def plot(self, ax: Any = None, path: str | os.PathLike | None = None) -> Any:
        """Draws the curves and marks the flagged epoch; see :func:`dropkit.tune.plot_curves`."""
        from dropkit.tune.plots import plot_curves  # plots sits above overfit: imported on use

        return plot_curves(self.records, flagged_epoch=self.flagged_epoch, ax=ax, path=path)
