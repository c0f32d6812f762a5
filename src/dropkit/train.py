"""A small, seeded trainer for tensors and DataLoaders, used by the search, the ablation, MC dropout
and ``dropkit study``.

It does one thing: minibatch training with Adam (or SGD), recording per-epoch train and validation
loss and accuracy (train metrics are measured in eval mode on the training set, so the gap
A_train − A_val compares like with like).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

from dropkit._validate import check_positive_finite, check_positive_int

__all__ = ["History", "fit", "evaluate", "as_loader"]


@dataclass
class History:
    """Per-epoch curves. Accuracies are None for regression."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float | None] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float | None] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def as_records(self) -> list[dict]:
        rows = []
        for i in range(self.epochs):
            rows.append(
                {
                    "epoch": i + 1,
                    "train_loss": self.train_loss[i],
                    "train_acc": self.train_acc[i],
                    "val_loss": self.val_loss[i] if i < len(self.val_loss) else None,
                    "val_acc": self.val_acc[i] if i < len(self.val_acc) else None,
                }
            )
        return rows


def as_loader(data, batch_size: int, shuffle: bool, seed: int | None = None) -> DataLoader:
    """(x, y) tensors or an existing DataLoader → a DataLoader (seeded shuffling for tensors)."""
    if isinstance(data, DataLoader):
        return data
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(
            f"data must be an (x, y) pair of tensors or a DataLoader, got {type(data).__name__}"
        )
    x, y = data
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError("data must be an (x, y) pair of tensors")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same number of rows, got {x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[0] == 0:
        raise ValueError("data is empty: x has 0 rows")
    generator = torch.Generator().manual_seed(seed) if (shuffle and seed is not None) else None
    dataset = TensorDataset(x, y)
    # Whole batches are sliced with one index tensor (TensorDataset accepts a list of indices),
    # not stacked row by row: the same batches as DataLoader(batch_size=...) (same sampler, same
    # RNG draws) at about half the cost per step for small models.
    order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    batches = BatchSampler(order, batch_size, drop_last=False)
    return DataLoader(dataset, batch_size=None, sampler=batches, generator=generator)


def _loss_fn(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "classification":
        return nn.functional.cross_entropy
    if task == "regression":
        return lambda out, y: nn.functional.mse_loss(out.reshape(y.shape), y)
    raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")


@torch.no_grad()
def evaluate(
    model: nn.Module, data, task: str = "classification", batch_size: int = 1024
) -> tuple[float, float | None]:
    """Mean loss and accuracy (None for regression) of ``model`` in eval mode; restores its mode."""
    loss_fn = _loss_fn(task)
    was_training = model.training
    model.eval()
    try:
        total, correct, count = 0.0, 0, 0
        for xb, yb in as_loader(data, batch_size, shuffle=False):
            out = model(xb)
            total += float(loss_fn(out, yb)) * len(yb)
            if task == "classification":
                correct += int((out.argmax(-1) == yb).sum())
            count += len(yb)
    finally:
        model.train(was_training)
    return total / count, (correct / count if task == "classification" else None)


def fit(
    model: nn.Module,
    train,
    val=None,
    *,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 100,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    task: str = "classification",
    seed: int | None = 0,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    on_epoch: Callable[[int, History], bool | None] | None = None,
    on_step: Callable[[int], None] | None = None,
    progress: Iterable | None = None,
) -> History:
    """Trains ``model`` in place and returns its per-epoch :class:`History`.

    Args:
        model: any nn.Module mapping a batch of x to logits (classification) or predictions.
        train: (x, y) tensors or a DataLoader.
        val: optional validation (x, y) or DataLoader, evaluated after every epoch.
        epochs, lr, batch_size, weight_decay: the usual; Adam by default (``optimizer="sgd"`` for SGD
            with momentum 0.9).
        task: ``"classification"`` (cross-entropy) or ``"regression"`` (mean squared error).
        seed: seeds torch's global generator (so dropout masks and shuffling are reproducible);
            None leaves it alone.
        extra_loss: a function of the model added to each batch's loss (e.g. a KL or concrete
            dropout regulariser).
        on_epoch: called as ``on_epoch(epoch, history)`` after each epoch; returning True stops
            training (early stopping, Optuna pruning).
        on_step: called with the global step index before each optimisation step (rate schedules).

    Example:
        >>> import torch, dropkit
        >>> x, y = torch.randn(64, 5), torch.randint(0, 2, (64,))
        >>> h = dropkit.train.fit(dropkit.MLP([5, 8, 2], p=0.1), (x, y), epochs=2, batch_size=16)
        >>> h.epochs
        2
    """
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    check_positive_finite(lr, "lr")
    loss_fn = _loss_fn(task)
    if seed is not None:
        torch.manual_seed(seed)
    loader = as_loader(train, batch_size, shuffle=True, seed=seed)
    eval_train = train if not isinstance(train, DataLoader) else loader
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    history = History()
    step = 0
    for epoch in range(epochs):
        model.train()
        for xb, yb in loader:
            if on_step is not None:
                on_step(step)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            if extra_loss is not None:
                loss = loss + extra_loss(model)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {float(loss)} at epoch {epoch + 1}, step {step}"
                )
            loss.backward()
            opt.step()
            step += 1
        train_loss, train_acc = evaluate(model, eval_train, task)
        history.train_loss.append(train_loss)
        history.train_acc.append(train_acc)
        if val is not None:
            val_loss, val_acc = evaluate(model, val, task)
            history.val_loss.append(val_loss)
            history.val_acc.append(val_acc)
        if progress is not None and hasattr(progress, "update"):
            progress.update(1)
        if on_epoch is not None and on_epoch(epoch, history):
            break
    model.eval()
    return history
