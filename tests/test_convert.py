"""convert_dropout: torch.nn dropout modules become dropkit's, in place, rates and flags kept."""

from __future__ import annotations

import pytest
import torch
from stats import assert_fraction_close, assert_mean_close, assert_variance_close
from torch import nn

import dropkit
from dropkit.convert import FeatureAlphaDropout, convert_dropout
from dropkit.mc import predict


class UserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.Dropout2d(0.1), nn.Conv2d(4, 4, 3, padding=1)
        )
        self.blocks = nn.ModuleList([nn.Dropout3d(0.2), nn.FeatureAlphaDropout(0.05)])
        self.heads = nn.ModuleDict(
            {"a": nn.AlphaDropout(0.15, inplace=True), "b": nn.Dropout1d(0.25)}
        )
        self.drop = nn.Dropout(0.3, inplace=True)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x).flatten(1)))


def test_every_torch_dropout_is_swapped_keeping_p_inplace_and_training() -> None:
    net = UserNet()
    net.blocks[0].eval()
    expected = {
        "features.1": (dropkit.Dropout2d, 0.1, False, True),
        "blocks.0": (dropkit.Dropout3d, 0.2, False, False),
        "blocks.1": (FeatureAlphaDropout, 0.05, False, True),
        "heads.a": (dropkit.AlphaDropout, 0.15, True, True),
        "heads.b": (dropkit.Dropout1d, 0.25, False, True),
        "drop": (dropkit.Dropout, 0.3, True, True),
    }
    state = {k: v.clone() for k, v in net.state_dict().items()}
    same, swapped = convert_dropout(net)
    assert same is net
    assert sorted(swapped) == sorted(expected)
    for path, (cls, p, inplace, training) in expected.items():
        module = net.get_submodule(path)
        assert type(module) is cls, path
        assert (module.p, module.inplace, module.training) == (p, inplace, training), path
    assert not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in net.modules())
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_converted_model_gives_the_same_eval_output() -> None:
    torch.manual_seed(0)
    net = UserNet().eval()
    x = torch.randn(2, 1, 5, 5)
    before = net(x)
    convert_dropout(net)
    assert torch.equal(net(x), before)


def test_a_shared_module_is_replaced_by_one_module_at_every_path() -> None:
    shared = nn.Dropout(0.4)
    net = nn.Sequential(nn.Linear(3, 3), shared, nn.Linear(3, 3), shared)
    _, swapped = convert_dropout(net)
    assert swapped == ["1", "3"]
    assert net[1] is net[3] and isinstance(net[1], dropkit.Dropout)


def test_subclasses_and_models_without_dropout_are_left_alone() -> None:
    class MyDropout(nn.Dropout):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    net = nn.Sequential(nn.Linear(2, 2), MyDropout(0.5))
    assert convert_dropout(net)[1] == []
    assert type(net[1]) is MyDropout
    assert convert_dropout(nn.Linear(2, 2))[1] == []


def test_a_root_dropout_module_is_returned_converted() -> None:
    new, swapped = convert_dropout(nn.Dropout(0.2))
    assert swapped == [""] and type(new) is dropkit.Dropout and new.p == 0.2


def test_non_module_is_refused() -> None:
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        convert_dropout("not a model")


def test_feature_alpha_dropout_drops_whole_channels_and_keeps_moments() -> None:
    torch.manual_seed(0)
    layer = FeatureAlphaDropout(0.2)
    x = torch.randn(400, 50, 8)
    y = layer(x)
    a, b, alpha_prime = dropkit.functional.alpha_dropout_affine(0.2)
    kept = torch.isclose(y, a * x + b, atol=1e-5).all(-1)
    dropped = torch.isclose(y, torch.full_like(y, a * alpha_prime + b), atol=1e-5).all(-1)
    assert bool((kept ^ dropped).all())  # every channel wholly kept or wholly dropped
    assert_fraction_close(int(dropped.sum()), 400 * 50, 0.2)
    first = y[..., 0].flatten()  # one entry per channel: independent draws with mean 0, variance 1
    assert_mean_close(float(first.mean()), 0.0, 1.0, first.numel())
    assert_variance_close(float(first.var()), 1.0, first.numel(), kurtosis=6.0)
    with pytest.raises(ValueError, match="rank >= 2"):
        layer(torch.randn(5))
    assert torch.equal(layer.eval()(x), x)


def test_converted_model_runs_mc_dropout_batched_equal_to_loop() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2)).double()
    convert_dropout(net)
    x = torch.randn(4, 6, dtype=torch.float64)
    assert torch.allclose(predict(net, x, T=8, seed=0), predict(net, x, T=8, seed=0, batched=False))


def _selu_net(feature_dropout: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.SELU(), feature_dropout)


def test_a_converted_model_with_feature_alpha_dropout_scripts_in_eval_and_training() -> None:
    torch.manual_seed(0)
    original = _selu_net(nn.FeatureAlphaDropout(0.3)).eval()
    x = torch.randn(256, 3, 2, 2)
    with torch.no_grad():
        expected = original(x)
    net, swapped = convert_dropout(original)
    assert swapped == ["2"] and type(net[2]) is FeatureAlphaDropout
    scripted = torch.jit.script(net)
    with torch.no_grad():
        # eval: the identity, as the unscripted converted model and torch's
        assert torch.equal(scripted(x), net(x)) and torch.equal(scripted(x), expected)
        h = scripted(x)  # the dropout's input
        scripted.train()
        net.train()
        torch.manual_seed(1)
        y = scripted(x)
        torch.manual_seed(1)  # the same seed: eager mode's mask, bit for bit
        assert torch.equal(y, net(x))
        assert not torch.equal(scripted(x), y)  # a fresh mask per call, no seed frozen in
    a, b, alpha_prime = dropkit.functional.alpha_dropout_affine(0.3)
    kept = torch.isclose(y, a * h + b, rtol=1e-6, atol=1e-6).flatten(2).all(-1)
    dropped = (y == a * alpha_prime + b).flatten(2).all(-1)
    assert bool((kept ^ dropped).all())  # every channel wholly kept or wholly dropped
    # 256 × 64 independent channel draws: the dropped fraction within 6σ of the binomial bound
    assert_fraction_close(int(dropped.sum()), 256 * 64, 0.3, what="dropped channels")


@pytest.mark.parametrize("shape", [(4, 8), (4, 8, 5), (4, 8, 3, 3), (2, 8, 2, 3, 3), (8, 5, 5)])
@pytest.mark.parametrize("inplace", [False, True])
def test_scripted_feature_alpha_dropout_is_eager_mode_bit_for_bit(shape, inplace) -> None:
    layer = FeatureAlphaDropout(0.4, inplace=inplace)
    scripted = torch.jit.script(layer)
    x = torch.randn(shape, dtype=torch.float64)
    for seed in (3, 4):
        torch.manual_seed(seed)
        eager = layer(x.clone())
        torch.manual_seed(seed)
        assert torch.equal(scripted(x.clone()), eager)
    y = x.clone()
    torch.manual_seed(5)
    out = scripted(y)
    assert (out.data_ptr() == y.data_ptr()) is inplace
    assert torch.equal(scripted.eval()(x), x)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_scripted_feature_alpha_dropout_edge_rates_as_eager(p) -> None:
    x = torch.randn(3, 4, 5)
    x[0, 0, 0] = float("inf")
    layer = FeatureAlphaDropout(p)
    scripted = torch.jit.script(layer)
    expected = torch.zeros_like(x) if p == 1.0 else x
    assert torch.equal(scripted(x), expected) and torch.equal(layer(x), expected)


def test_scripted_feature_alpha_dropout_refuses_bad_input_naming_it() -> None:
    scripted = torch.jit.script(FeatureAlphaDropout(0.2))
    for training in (True, False):
        scripted.train(training)
        with pytest.raises(
            torch.jit.Error, match=r"ValueError: .*rank >= 2 \(N, C, \*\), got shape"
        ):
            scripted(torch.randn(5))
        with pytest.raises(
            torch.jit.Error, match=r"TypeError: .*floating-point .*got dtype torch\.int64"
        ):
            scripted(torch.ones(2, 3, dtype=torch.int64))


@pytest.mark.parametrize("p", [1e-6, 0.05, 0.1, 0.2, 1 / 3, 0.5, 0.7, 0.9, 1 - 2**-20])
def test_the_torchscript_alpha_affine_is_eager_modes(p) -> None:
    a, b, alpha_prime = dropkit.functional.alpha_dropout_affine(p)
    assert dropkit.convert.scripted_alpha_affine(p, alpha_prime) == (a, b)
    assert torch.jit.script(dropkit.convert.scripted_alpha_affine)(p, alpha_prime) == (a, b)
