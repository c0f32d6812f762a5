"""fold_dropout_scaling: weight-scaling inference with no dropout ops, equal to the unfolded eval
model, and clear errors where the (1 − p) factor has nowhere to go."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dropkit
from dropkit.models import layer_rates


def _no_dropout_left(model: nn.Module) -> bool:
    return not any(dropkit.is_dropout_module(m) for m in model.modules())


def _assert_folds_exactly(
    model: nn.Module, x: torch.Tensor, check_train_mode: bool = True
) -> nn.Module:
    model = model.double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = model.eval()(x)
    folded = dropkit.fold_dropout_scaling(model)
    assert _no_dropout_left(folded) and not folded.training
    torch.testing.assert_close(folded(x), expected, rtol=1e-12, atol=1e-12)
    # The original is untouched: same weights, dropout still there.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not _no_dropout_left(model)
    if check_train_mode:  # nothing random is left: even in train mode the output is the same
        folded.train()
        torch.testing.assert_close(folded(x), expected, rtol=1e-12, atol=1e-12)
    return folded


def test_folded_mlp_equals_the_eval_mlp():
    torch.manual_seed(0)
    net = dropkit.MLP([12, 32, 16, 4], p=[0.2, 0.5, 0.3], scaling="inference")
    folded = _assert_folds_exactly(net, torch.randn(7, 12, dtype=torch.float64))
    # The seeds' test-time formula: W⁽ˡ⁾ ← (1 − p⁽ˡ⁻¹⁾) W⁽ˡ⁾, biases unchanged.
    keep = dropkit.ops.keep_probability(0.5)
    torch.testing.assert_close(folded.fc2.weight, net.fc2.weight * keep, rtol=1e-15, atol=0)
    assert torch.equal(folded.fc2.bias, net.fc2.bias)


def test_folded_mlp_with_an_output_rate_folds_into_the_last_layer():
    torch.manual_seed(1)
    net = dropkit.MLP([6, 8, 3], p=[0.1, 0.5, 0.25], scaling="inference")
    folded = _assert_folds_exactly(net, torch.randn(5, 6, dtype=torch.float64))
    # Output dropout (1 − p)·(W x + b): both W and b of the last layer carry the factor.
    assert torch.equal(folded.fc2.bias, net.fc2.bias * 0.75)


def test_folded_conv_net_equals_the_eval_conv_net():
    torch.manual_seed(2)
    net = nn.Sequential(
        dropkit.Dropout(0.1, scaling="inference"),
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        dropkit.Dropout2d(0.3, scaling="inference"),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3),
        nn.ReLU(),
        dropkit.Dropout(0.5, scaling="inference"),
        nn.Flatten(),
        nn.Dropout(0.2),  # torch's inverted dropout: removed
        nn.Linear(8 * 2 * 2, 5),
    )
    _assert_folds_exactly(net, torch.randn(4, 3, 8, 8, dtype=torch.float64))


def test_nested_sequentials_and_custom_modules_fold():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Linear(6, 6),
                nn.ReLU(),
                dropkit.Dropout(0.4, scaling="inference"),
                nn.Linear(6, 6),
            )
            self.skip_dropout = dropkit.Dropout(
                0.3
            )  # inverted, called in forward: identity in eval

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.skip_dropout(x) + self.body(x)

    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Sequential(nn.Linear(4, 6), nn.ReLU(), dropkit.Dropout(0.5, scaling="inference")),
        nn.Linear(6, 6),  # folds across the nested Sequential's boundary
        Block(),
        dropkit.AlphaDropout(0.1),
        dropkit.GaussianDropout(0.1),
    )
    _assert_folds_exactly(net, torch.randn(3, 4, dtype=torch.float64))


def test_inverted_model_folds_to_the_same_network_without_dropout():
    torch.manual_seed(4)
    net = dropkit.MLP([5, 9, 2], p=[0.3, 0.6])
    folded = _assert_folds_exactly(net, torch.randn(3, 5, dtype=torch.float64))
    assert torch.equal(folded.fc1.weight, net.fc1.weight)


def test_dropout_before_batchnorm_folds_into_the_layer_before_it():
    torch.manual_seed(5)
    net = nn.Sequential(
        nn.Linear(4, 6), nn.ReLU(), dropkit.Dropout(0.5, scaling="inference"), nn.BatchNorm1d(6)
    )
    net.train()(torch.randn(32, 4))  # give BatchNorm running statistics
    _assert_folds_exactly(net, torch.randn(3, 4, dtype=torch.float64), check_train_mode=False)


def test_fold_refuses_inference_dropout_with_no_layer_to_fold_into():
    net = nn.Sequential(dropkit.Dropout(0.5, scaling="inference"), nn.BatchNorm1d(4))
    with pytest.raises(
        ValueError,
        match=r"^fold_dropout_scaling: 0 uses scaling='inference'.*followed by 1 \(BatchNorm1d\)",
    ):
        dropkit.fold_dropout_scaling(net)
    net = nn.Sequential(nn.Sigmoid(), dropkit.Dropout(0.5, scaling="inference"))
    with pytest.raises(ValueError, match="followed by nothing"):
        dropkit.fold_dropout_scaling(net)


def test_fold_refuses_inference_dropout_called_from_a_custom_forward():
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = dropkit.Dropout(0.5, scaling="inference")
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.drop(x))

    with pytest.raises(
        ValueError,
        match=r"inner\.drop \(Dropout, scaling='inference'\) is called from Custom's own forward",
    ):
        dropkit.fold_dropout_scaling(nn.Sequential(nn.Linear(3, 3), _Named(inner=Custom())))


class _Named(nn.Module):
    def __init__(self, **children: nn.Module) -> None:
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for child in self.children():
            x = child(x)
        return x


def test_fold_refuses_a_weight_shared_with_another_layer():
    shared = nn.Linear(4, 4)
    net = nn.Sequential(shared, dropkit.Dropout(0.5, scaling="inference"), nn.Linear(4, 4))
    net[2].weight = shared.weight
    with pytest.raises(ValueError, match="weight of 2 is shared"):
        dropkit.fold_dropout_scaling(net)


def test_fold_refuses_a_bare_dropout_module_and_non_modules():
    with pytest.raises(ValueError, match="itself a dropout module"):
        dropkit.fold_dropout_scaling(dropkit.Dropout(0.5, scaling="inference"))
    with pytest.raises(TypeError, match="model must be an nn.Module, got str"):
        dropkit.fold_dropout_scaling("model")


def test_layer_rates_rules():
    assert layer_rates([3, 4, 5, 2], None) == [0.2, 0.5, 0.5, 0.0]
    assert layer_rates([3, 4, 2], 0.4) == [0.0, 0.4, 0.0]
    assert layer_rates([3, 4, 2], [0.1, 0.2]) == [0.1, 0.2, 0.0]
    assert layer_rates([3, 4, 2], [0.1, 0.2, 0.3]) == [0.1, 0.2, 0.3]
