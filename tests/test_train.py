import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dropkit
from dropkit.train import evaluate, fit


def _blobs(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 4, generator=g) + 2.5 * y.unsqueeze(1).float()
    return x, y


def test_fit_learns_a_separable_problem_and_records_curves():
    x, y = _blobs()
    h = fit(dropkit.MLP([4, 16, 2], p=0.1), (x, y), (x, y), epochs=15, lr=1e-2, batch_size=32)
    assert h.epochs == 15 and len(h.val_acc) == 15
    assert h.train_acc[-1] > 0.95
    assert h.train_loss[-1] < h.train_loss[0]


def test_fit_is_reproducible_under_its_seed():
    x, y = _blobs()

    def run(seed):
        torch.manual_seed(0)  # same initial weights; fit's seed drives masks and shuffling
        return fit(dropkit.MLP([4, 16, 2], p=0.3), (x, y), epochs=3, seed=seed).train_loss

    runs = [run(7), run(7)]
    other = run(8)
    assert runs[0] == runs[1] and runs[0] != other


def test_fit_accepts_a_dataloader_and_regression():
    x = torch.randn(64, 3)
    y = x.sum(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    h = fit(nn.Linear(3, 1), loader, (x, y), epochs=30, lr=5e-2, task="regression")
    assert h.train_acc[-1] is None and h.val_loss[-1] < 0.05


def test_on_epoch_returning_true_stops_training():
    x, y = _blobs()
    h = fit(dropkit.MLP([4, 8, 2]), (x, y), epochs=10, on_epoch=lambda e, hist: e >= 1)
    assert h.epochs == 2


def test_evaluate_restores_the_training_flag():
    x, y = _blobs(20)
    net = dropkit.MLP([4, 8, 2]).train()
    evaluate(net, (x, y))
    assert net.training


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": -1.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"task": "ranking"}, "task"),
    ],
)
def test_fit_rejects_bad_arguments(kwargs, match):
    x, y = _blobs(20)
    with pytest.raises((ValueError, TypeError), match=match):
        fit(dropkit.MLP([4, 8, 2]), (x, y), **kwargs)


def test_fit_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="same number of rows"):
        fit(dropkit.MLP([4, 8, 2]), (torch.zeros(5, 4), torch.zeros(4, dtype=torch.long)))
