"""MC dropout over torch.nn RNNs' own inter-layer dropout (nn.LSTM/GRU(dropout=p, num_layers>=2))."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dropkit
from dropkit.mc import is_stochastic_module, mc_dropout, predict


class Forecaster(nn.Module):
    """An LSTM with inter-layer dropout and a linear head on the last step."""

    def __init__(self, batch_first: bool = True, cell: type[nn.RNNBase] = nn.LSTM) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.rnn = cell(3, 16, num_layers=2, dropout=0.5, batch_first=batch_first)
        self.norm = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        last = out[:, -1] if self.batch_first else out[-1]
        return self.head(self.norm(last))


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (nn.LSTM(3, 4, num_layers=2, dropout=0.3), True),
        (nn.GRU(3, 4, num_layers=3, dropout=0.1), True),
        (nn.RNN(3, 4, num_layers=2, dropout=0.2), True),
        (nn.LSTM(3, 4, num_layers=2, dropout=0.0), False),
        (nn.LSTM(3, 4, num_layers=1), False),
    ],
)
def test_rnns_with_inter_layer_dropout_are_stochastic(module, expected):
    assert is_stochastic_module(module) is expected


def test_mc_dropout_samples_the_lstm_dropout_and_keeps_batchnorm_in_eval():
    torch.manual_seed(0)
    model = Forecaster().double().train()
    x = torch.randn(5, 7, 3, dtype=torch.float64)
    with mc_dropout(model) as names:
        assert names == ["rnn"]
        assert model.rnn.training and not model.norm.training
        a, b = model(x), model(x)
    assert not torch.equal(a, b)
    assert model.training and model.norm.training  # restored
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_batched_prediction_equals_the_loop_for_rnn_dropout(cell):
    torch.manual_seed(1)
    model = Forecaster(cell=cell).double()
    x = torch.randn(4, 6, 3, dtype=torch.float64)
    batched = predict(model, x, T=6, seed=3)
    looped = predict(model, x, T=6, seed=3, batched=False)
    assert batched.shape == (6, 4, 1)
    torch.testing.assert_close(batched, looped, rtol=0, atol=1e-12)
    assert batched.std(0).min() > 0  # the samples differ


def test_time_major_rnn_is_served_by_the_loop_and_sampled_by_mc_dropout():
    # predict keeps samples × rows in dim 0; a (L, N, F) input has time there: the batched path
    # cannot split it, so the loop serves the samples, with the same masks.
    torch.manual_seed(2)
    model = Forecaster(batch_first=False)
    x = torch.randn(6, 4, 3)  # (L, N, F)
    samples = predict(model, x, T=3, seed=0)
    torch.testing.assert_close(samples, predict(model, x, T=3, seed=0, batched=False))
    assert samples.shape == (3, 4, 1) and samples.std(0).min() > 0
    with torch.no_grad(), mc_dropout(model):
        samples = torch.stack([model(x) for _ in range(3)])
    assert samples.shape == (3, 4, 1) and samples.std(0).min() > 0


def test_rnn_dropout_next_to_dropkit_dropout():
    torch.manual_seed(3)
    model = nn.Sequential(dropkit.Dropout(0.2), nn.Linear(3, 3))
    rnn = Forecaster().double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)

    def combined(t):
        return rnn(model.double()(t))

    wrapper = nn.Module()
    wrapper.pre, wrapper.rnn = model, rnn
    wrapper.forward = combined
    batched = predict(wrapper, x, T=4, seed=9)
    looped = predict(wrapper, x, T=4, seed=9, batched=False)
    torch.testing.assert_close(batched, looped, rtol=0, atol=1e-12)
