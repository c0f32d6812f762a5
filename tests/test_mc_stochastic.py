"""MC dropout over every stochastic dropkit layer, including those that are not DropoutBase.

Standout, VariationalLinear, LinearSVDO and Conv2dSVDO are weight layers with their own noise
(``mc_stochastic = True``); the rest are DropoutBase modules routed through the generic per-sample
path. For each: sampled under mc_dropout (samples differ), BatchNorm and wrapped layers stay in
eval, every flag is restored, and batched = chunked = loop for the same seed.
"""

from __future__ import annotations

import pytest
import torch
from stats import assert_mean_close
from torch import nn

import dropkit
import dropkit.convert
from dropkit.layers.base import DropoutBase
from dropkit.mc import is_stochastic_module, mc_dropout, mc_plan, predict
from tests.module_specs import public_module_classes


class LSTMHead(nn.Module):
    """A batch-first LSTM under WeightDrop, then a linear read-out of the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = dropkit.WeightDrop(nn.LSTM(3, 5, batch_first=True), p=0.4)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class LSTMHidden(LSTMHead):
    """Reads the final hidden state (num_layers, N, H): the batch is in dim 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.rnn(x)
        return self.fc(h[-1])


class Embed(nn.Module):
    """EmbeddingDropout on float ids (predict's x is the float input), then a read-out."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = dropkit.EmbeddingDropout(20, 4, p=0.3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(x.abs().mul(5).long().clamp(max=19)).mean(1))


def _dense(layer: nn.Module, width: int = 6) -> nn.Module:
    return nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU(), layer)


def _conv(layer: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), layer, nn.Flatten())


# (name, factory, input shape): the layer under test sits after a BatchNorm in eval.
CASES = [
    ("Standout", lambda: _dense(dropkit.Standout(nn.Linear(6, 5), nn.ReLU())), (7, 4)),
    (
        "Standout-untied",
        lambda: _dense(dropkit.Standout(nn.Linear(6, 5), tied=False, beta=0.5)),
        (7, 4),
    ),
    ("LinearSVDO", lambda: _dense(dropkit.LinearSVDO(6, 3, init_log_sigma2=-2.0)), (7, 4)),
    ("Conv2dSVDO", lambda: _conv(dropkit.Conv2dSVDO(2, 3, 3, init_log_sigma2=-2.0)), (7, 2, 5, 5)),
    ("VariationalLinear", lambda: _dense(dropkit.VariationalLinear(6, 3, p=0.3)), (7, 4)),
    ("VariationalDropout", lambda: _dense(dropkit.VariationalDropout(0.3, num_features=6)), (7, 4)),
    ("ConcreteDropout", lambda: _dense(dropkit.ConcreteDropout(nn.Linear(6, 3), p=0.3)), (7, 4)),
    ("DropConnectLinear", lambda: _dense(dropkit.DropConnectLinear(6, 3, p=0.3)), (7, 4)),
    (
        "DropConnectLinear-per-sample",
        lambda: _dense(dropkit.DropConnectLinear(6, 3, p=0.3, per_sample=True)),
        (7, 4),
    ),
    ("DropConnectConv2d", lambda: _conv(dropkit.DropConnectConv2d(2, 3, 3, p=0.3)), (7, 2, 5, 5)),
    ("DropBlock2d", lambda: _conv(dropkit.DropBlock2d(p=0.3, block_size=2)), (7, 2, 5, 5)),
    (
        "FeatureAlphaDropout",
        lambda: _conv(dropkit.convert.FeatureAlphaDropout(0.3)),
        (7, 2, 5, 5),
    ),
    ("DropPath", lambda: _dense(dropkit.DropPath(0.3)), (7, 4)),
    (
        "LockedDropout",
        lambda: nn.Sequential(nn.Linear(3, 4), dropkit.LockedDropout(0.3, batch_first=True)),
        (7, 5, 3),
    ),
    ("DropHead", lambda: nn.Sequential(nn.Identity(), dropkit.DropHead(0.3)), (7, 4, 3, 2)),
    (
        "AttentionDropout",
        lambda: nn.Sequential(nn.Softmax(-1), dropkit.AttentionDropout(0.3)),
        (7, 2, 3, 3),
    ),
    ("WeightDrop", LSTMHead, (7, 4, 3)),
    ("WeightDrop-hidden", LSTMHidden, (7, 4, 3)),
    ("EmbeddingDropout", Embed, (7, 3)),
]


def _stochastic_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if is_stochastic_module(m)]


def test_every_exported_stochastic_layer_is_recognised() -> None:
    """A new stochastic layer class must be a DropoutBase or set mc_stochastic (or be listed here).
    Every public module class counts, exported from ``dropkit`` or from a submodule only."""
    modules = {cls.__name__: cls for cls in public_module_classes()}
    recognised = {
        name
        for name, cls in modules.items()
        if issubclass(cls, DropoutBase) or getattr(cls, "mc_stochastic", False) is True
    }
    assert set(modules) - recognised == {"MLP", "ELBOLoss"}
    assert {"Standout", "LinearSVDO", "Conv2dSVDO", "VariationalLinear"} <= recognised
    covered = {name.split("-")[0] for name, _, _ in CASES}
    assert {
        name for name in recognised if not name.startswith(("Dropout", "Alpha", "Gaussian"))
    } - {
        "DropBlock3d",
        "DropConnectConv1d",
        "DropConnectConv3d",
    } <= covered


@pytest.mark.parametrize("make, shape", [(m, s) for _, m, s in CASES], ids=[n for n, _, _ in CASES])
def test_each_stochastic_layer_is_sampled_with_the_rest_in_eval(make, shape) -> None:
    torch.manual_seed(0)
    net = make().train()
    net.apply(lambda m: m.eval() if isinstance(m, nn.LSTM) else None)  # a mixed start state
    before = {name: m.training for name, m in net.named_modules()}
    layers = _stochastic_layers(net)
    assert layers
    x = torch.randn(*shape)
    with torch.no_grad(), mc_dropout(net) as names:
        assert len(names) == len(layers)
        for name, m in net.named_modules():
            assert m.training == is_stochastic_module(m), name  # BatchNorm, wrapped layers: eval
        a, b = net(x), net(x)
    assert not torch.allclose(a, b)  # the layer draws fresh noise on each pass
    assert {name: m.training for name, m in net.named_modules()} == before


@pytest.mark.parametrize("make, shape", [(m, s) for _, m, s in CASES], ids=[n for n, _, _ in CASES])
def test_each_stochastic_layer_batched_equals_loop(make, shape) -> None:
    torch.manual_seed(0)
    net = make().double()
    bn = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bn:
        m.running_mean.uniform_(-0.5, 0.5)
    stats = [m.running_mean.clone() for m in bn]
    x = torch.randn(*shape, dtype=torch.float64)
    loop = predict(net, x, T=6, seed=7, batched=False)
    batched = predict(net, x, T=6, seed=7)
    chunked = predict(net, x, T=6, seed=7, max_batch_size=2 * shape[0])
    assert torch.allclose(batched, loop, rtol=1e-12, atol=1e-12)
    assert torch.allclose(chunked, loop, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(loop[0], loop[1])
    assert all(torch.equal(m.running_mean, s) for m, s in zip(bn, stats, strict=True))
    assert torch.equal(predict(net, x, T=6, seed=7), batched)  # same seed, same samples


def test_trunk_before_a_standout_layer_runs_once_and_fx_treats_it_as_a_leaf() -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 6)
            self.svdo = dropkit.LinearSVDO(6, 3, init_log_sigma2=-2.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.svdo(torch.relu(self.fc(x)))

    x = torch.randn(5, 4)
    seq = _dense(dropkit.Standout(nn.Linear(6, 5)))
    assert mc_plan(seq, x).trunk == ["0", "1", "2"]
    plan = mc_plan(Custom(), x)
    assert plan.strategy == "fx" and "fc" in plan.trunk and "svdo" not in plan.trunk
    net = Custom()
    samples = predict(net, x, T=30, seed=0)
    assert torch.allclose(samples, predict(net, x, T=30, seed=0, batched=False), atol=1e-6)
    assert samples.std(0).min() > 0  # the noise is drawn per sample, not once in the trunk


def test_svdo_samples_follow_the_local_reparameterisation_moments() -> None:
    """MC over LinearSVDO = the full posterior: mean xθᵀ + b, variance (x ⊙ x) σ²ᵀ per unit."""
    torch.manual_seed(0)
    layer = dropkit.LinearSVDO(5, 3, init_log_sigma2=-1.0)
    with torch.no_grad():
        layer.log_sigma2[0, 0] = 4.0  # a weight the eval rule prunes is sampled, not zeroed
    assert not layer.kept_mask()[0, 0]
    x = torch.randn(4, 5)
    samples = predict(layer, x, T=4000, seed=3)
    with torch.no_grad():
        mean = nn.functional.linear(x, layer.weight, layer.bias)
        var = nn.functional.linear(x * x, layer.log_sigma2.exp())
    for i in range(4):
        for j in range(3):
            sample_mean = float(samples[:, i, j].mean())
            assert_mean_close(sample_mean, float(mean[i, j]), float(var[i, j]) ** 0.5, n=4000)
    assert torch.allclose(samples.var(0), var, rtol=0.15)


def test_standout_mc_mean_matches_its_expectation_rule() -> None:
    """Standout's eval rule is π ⊙ a: the MC mean of its Bernoulli(π) samples converges to it."""
    torch.manual_seed(0)
    layer = dropkit.Standout(nn.Linear(4, 3), nn.ReLU(), alpha=1.0, beta=0.0)
    x = torch.randn(6, 4)
    samples = predict(layer, x, T=4000, seed=1)
    with torch.no_grad():
        expected = layer.eval()(x)
        a = torch.relu(layer.layer(x))
        keep = layer.keep_prob(x)
    for i in range(6):
        for j in range(3):
            var = float(a[i, j] ** 2 * keep[i, j] * (1 - keep[i, j]))
            if var > 0:
                sample_mean = float(samples[:, i, j].mean())
                assert_mean_close(sample_mean, float(expected[i, j]), var**0.5, n=4000)
    assert ((samples == 0) | torch.isclose(samples, a.expand_as(samples))).all()


def test_nested_stochastic_modules_match_the_loop() -> None:
    """A Dropout inside a ConcreteDropout's wrapped layer sees one sample at a time."""
    torch.manual_seed(0)
    inner = nn.Sequential(
        nn.Linear(6, 6), dropkit.Dropout(0.4), dropkit.LinearSVDO(6, 3, init_log_sigma2=-2.0)
    )
    net = _dense(dropkit.ConcreteDropout(inner, p=0.3)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    loop = predict(net, x, T=5, seed=11, batched=False)
    assert torch.allclose(predict(net, x, T=5, seed=11), loop, rtol=1e-12, atol=1e-12)
    with mc_dropout(net):
        assert not inner[0].training and inner[1].training and inner[2].training


def test_a_model_with_only_a_standout_layer_is_accepted_and_one_without_is_refused() -> None:
    net = dropkit.Standout(nn.Linear(3, 2))
    assert predict(net, torch.randn(2, 3), T=3, seed=0).shape == (3, 2, 2)
    with pytest.raises(ValueError, match="mc_stochastic"):
        predict(nn.Sequential(nn.Linear(3, 2)), torch.randn(2, 3), T=3)
