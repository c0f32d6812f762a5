"""Monte-Carlo dropout: mode switching, batched = loop sampling, trunk reuse, chunking, errors."""

from __future__ import annotations

import pytest
import torch
from stats import assert_fraction_close, assert_mean_close
from torch import nn

import dropkit
from dropkit.layers.base import DropoutBase
from dropkit.mc import mc_dropout, mc_plan, predict


class TorchRandDropout(DropoutBase):
    """A dropkit-style module whose mask comes from torch.rand (the generic per-block path)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return input
        keep = (torch.rand(input.shape, device=input.device) >= self.p).to(input.dtype)
        return input * keep / (1 - self.p)


class BranchyNet(nn.Module):
    """Not a Sequential: a skip connection around the dropout and a trunk side branch."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.bn = nn.BatchNorm1d(16)
        self.drop = dropkit.Dropout(p)
        self.side = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.fc1(x)))
        return self.fc2(self.drop(h) + self.side(x))


class SizeAfterDropout(nn.Module):
    """Uses x.size(0) after the dropout: the trunk value is not a batch tensor -> repeat plan."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.drop = dropkit.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc(x)).view(x.size(0), -1)


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop = dropkit.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if h.sum() > 1e9:
            h = h * 2
        return self.drop(h)


def mixed_variants_net() -> nn.Module:
    """Every dropout flavour the sampler routes differently, in one model."""
    return nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1),
        dropkit.Dropout1d(0.3),
        nn.Dropout1d(0.2),
        dropkit.AlphaDropout(0.1),
        nn.AlphaDropout(0.1),
        dropkit.GaussianDropout(0.2),
        dropkit.Dropout(0.2, noise_shape=(None, 1, None)),
        nn.Flatten(),
        TorchRandDropout(0.3),
        nn.Dropout(0.25),
        dropkit.Dropout(0.25, scaling="inference"),
        nn.Linear(4 * 5, 3),
    )


# ------------------------------------------------------------------------------------------------
# mc_dropout
# ------------------------------------------------------------------------------------------------
def test_mc_dropout_turns_on_only_dropout_modules_and_restores_every_flag() -> None:
    net = nn.Sequential(
        nn.Linear(4, 8),
        nn.BatchNorm1d(8),
        dropkit.Dropout(0.5),
        nn.Sequential(nn.Dropout(0.2), nn.LayerNorm(8)),
        nn.Linear(8, 2),
    )
    net.train()
    net[4].eval()  # a mixed starting state must come back exactly
    before = {name: m.training for name, m in net.named_modules()}
    with mc_dropout(net) as names:
        assert names == ["2", "3.0"]
        for name, m in net.named_modules():
            assert m.training == dropkit.is_dropout_module(m), name
    assert {name: m.training for name, m in net.named_modules()} == before


def test_mc_dropout_restores_flags_when_the_body_raises() -> None:
    net = dropkit.MLP([3, 4, 2], p=0.5).eval()
    with pytest.raises(RuntimeError, match="boom"), mc_dropout(net):
        raise RuntimeError("boom")
    assert not any(m.training for m in net.modules())


def test_predict_restores_flags_and_forwards_when_the_model_raises() -> None:
    class Failing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = dropkit.Dropout(0.5)
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > 2:
                raise RuntimeError("boom")
            return self.drop(x)

    net = Failing().train()
    with pytest.raises(ValueError, match="boom"):
        predict(net, torch.ones(2, 3), T=5, seed=0, batched=False)
    assert net.training and net.drop.training
    assert "forward" not in net.drop.__dict__


def test_batchnorm_uses_running_statistics_inside_predict() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(5)
    bn.running_mean.fill_(3.0)
    bn.running_var.fill_(4.0)
    net = nn.Sequential(bn, dropkit.Dropout(0.5)).train()
    x = torch.randn(7, 5) + 3.0
    expected = (x - 3.0) / torch.sqrt(torch.tensor(4.0 + bn.eps))
    samples = predict(net, x, T=4, seed=1)
    kept = samples != 0
    assert torch.allclose(samples[kept], (2 * expected).expand_as(samples)[kept], atol=1e-5)
    assert torch.equal(bn.running_mean, torch.full((5,), 3.0))  # no statistics update


# ------------------------------------------------------------------------------------------------
# Same numbers: batched = loop, whatever the chunking
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: dropkit.MLP([6, 16, 16, 3], p=[0.2, 0.5, 0.5]), (5, 6)),
        (lambda: BranchyNet(), (5, 6)),
        (lambda: SizeAfterDropout(), (5, 4)),
        (lambda: DataDependent(), (5, 4)),
        (mixed_variants_net, (5, 2, 5)),
    ],
    ids=["mlp-sequential", "branchy-fx", "size-repeat", "untraceable-repeat", "every-variant"],
)
def test_batched_and_loop_give_the_same_samples(make, shape) -> None:
    torch.manual_seed(0)
    net = make()
    x = torch.randn(*shape, dtype=torch.float64)
    net.double()
    loop = predict(net, x, T=12, seed=123, batched=False)
    batched = predict(net, x, T=12, seed=123)
    chunked = predict(net, x, T=12, seed=123, max_batch_size=5 * 5)
    assert loop.shape == (12, *net.eval()(x).shape)
    assert torch.allclose(batched, loop, rtol=1e-12, atol=1e-12)
    assert torch.allclose(chunked, loop, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(loop[0], loop[1])  # samples differ


def test_same_seed_same_samples_other_seed_other_samples_and_global_rng_untouched() -> None:
    net = dropkit.MLP([4, 32, 2], p=0.5)
    x = torch.randn(3, 4)
    state = torch.get_rng_state()
    a = predict(net, x, T=6, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, predict(net, x, T=6, seed=7))
    assert not torch.equal(a, predict(net, x, T=6, seed=8))
    torch.manual_seed(5)
    b = predict(net, x, T=6)
    torch.manual_seed(5)
    assert torch.equal(b, predict(net, x, T=6))


def _passes(net: nn.Module, rows: int, **kwargs) -> tuple[torch.Tensor, list[int], list[int]]:
    """predict's samples, the samples per forward pass (read at the last layer) and each pass's
    widest activation in bytes (the hidden layers' outputs)."""
    samples_per_pass: list[int] = []
    widest: list[int] = []
    current = [0]

    def hidden(module, args, out):
        current[0] = max(current[0], out.numel() * out.element_size())

    def last(module, args, out):
        samples_per_pass.append(out.shape[0] // rows)
        widest.append(current[0])
        current[0] = 0

    handles = [net.fc1.register_forward_hook(hidden), net.fc2.register_forward_hook(hidden)]
    handles.append(net.fc3.register_forward_hook(last))
    x = torch.randn(rows, 8, generator=torch.Generator().manual_seed(1))
    try:
        samples = predict(net, x, T=30, seed=0, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return samples, samples_per_pass, widest


def test_memory_budget_chunks_without_changing_the_samples() -> None:
    torch.manual_seed(0)
    net = dropkit.MLP([8, 64, 64, 4], p=0.5)
    rows, budget = 10, 20_000
    whole, whole_passes, whole_widest = _passes(net, rows, max_memory_bytes=1 << 30)
    small, small_passes, widest = _passes(net, rows, max_memory_bytes=budget)
    # An ample budget: after the one-sample pass that measures a sample's memory, the other 29
    # samples go in one pass whose hidden activations (29 × 10 rows × 64 float32 = 74 kB) exceed
    # the small budget. An ignored budget would show the same pass below.
    assert max(whole_passes) == 29 and max(whole_widest) == 29 * rows * 64 * 4 > budget
    # The small budget: every pass stays under it, so the 30 samples take several passes.
    assert max(widest) <= budget
    assert sum(small_passes) >= 30 and max(small_passes) < 29 and len(small_passes) > 3
    assert torch.allclose(whole, small, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Masks: fresh per sample, per row, right rate
# ------------------------------------------------------------------------------------------------
def test_each_sample_and_row_gets_its_own_elementwise_mask_at_rate_p() -> None:
    p, T, n, d = 0.3, 50, 4, 200
    net = nn.Sequential(nn.Identity(), dropkit.Dropout(p))
    samples = predict(net, torch.ones(n, d), T=T, seed=3)
    dropped = samples == 0
    assert_fraction_close(int(dropped.sum()), T * n * d, p)
    assert torch.allclose(samples[~dropped], torch.full_like(samples[~dropped], 1 / (1 - p)))
    # Two different masks agree on a unit with probability p² + (1 − p)²: far from 1.
    flat = dropped.reshape(T * n, d)
    same = (flat[:, None, :] == flat[None, :, :]).float().mean(-1)
    off_diagonal = same[~torch.eye(T * n, dtype=torch.bool)]
    assert off_diagonal.max() < 0.8


def test_channel_dropout_draws_one_mask_per_sample_and_row() -> None:
    p, T, n, c = 0.5, 40, 3, 64
    net = nn.Sequential(dropkit.Dropout2d(p))
    samples = predict(net, torch.ones(n, c, 4, 4), T=T, seed=0)
    per_channel = samples.reshape(T, n, c, 16)
    assert torch.equal(per_channel, per_channel[..., :1].expand_as(per_channel))  # whole channels
    channel_kept = per_channel[..., 0] != 0  # (T, n, c)
    assert_fraction_close(int((~channel_kept).sum()), T * n * c, p)
    patterns = {tuple(row.tolist()) for row in channel_kept.reshape(T * n, c)}
    assert len(patterns) == T * n


def test_mc_mean_of_dropout_is_unbiased() -> None:
    p, T = 0.5, 400
    net = nn.Sequential(nn.Identity(), dropkit.Dropout(p))
    samples = predict(net, torch.ones(1, 50), T=T, seed=11)
    # Each unit's sample mean: mean 1, sd of one draw = sqrt(p / (1 - p)) = 1.
    assert_mean_close(float(samples.mean()), 1.0, 1.0, T * 50)


# ------------------------------------------------------------------------------------------------
# The trunk runs once
# ------------------------------------------------------------------------------------------------
def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_sequential_trunk_runs_once_in_batched_mode_and_t_times_in_the_loop() -> None:
    net = nn.Sequential(
        nn.Sequential(nn.Linear(4, 8), nn.ReLU()), dropkit.Dropout(0.5), nn.Linear(8, 2)
    )
    trunk_calls, head_calls = _count_calls(net[0][0]), _count_calls(net[2])
    plan = mc_plan(net, torch.randn(3, 4))
    assert (plan.strategy, plan.trunk) == ("sequential", ["0.0", "0.1"])
    trunk_calls[0] = head_calls[0] = 0
    predict(net, torch.randn(3, 4), T=20, seed=0)
    assert trunk_calls[0] == 1
    assert head_calls[0] == 2  # the first sample alone (memory probe), then the other 19 at once
    trunk_calls[0] = 0
    predict(net, torch.randn(3, 4), T=20, seed=0, batched=False)
    assert trunk_calls[0] == 20


def test_fx_trunk_runs_once_for_a_custom_forward() -> None:
    net = BranchyNet()
    calls = {name: _count_calls(getattr(net, name)) for name in ("fc1", "bn", "side", "fc2")}
    plan = mc_plan(net, torch.randn(3, 6))
    assert plan.strategy == "fx"
    assert {"fc1", "bn", "side"} <= set(plan.trunk) and "fc2" not in plan.trunk
    for c in calls.values():
        c[0] = 0
    predict(net, torch.randn(3, 6), T=10, seed=0)
    assert calls["fc1"][0] == calls["bn"][0] == calls["side"][0] == 1
    assert calls["fc2"][0] == 2


def test_the_cached_graph_follows_a_swapped_module() -> None:
    torch.manual_seed(0)
    net = BranchyNet().double()
    x = torch.randn(4, 6, dtype=torch.float64)
    predict(net, x, T=3, seed=0)  # traces and caches the graph
    net.drop = nn.Dropout(0.9)  # a stale graph would still call the old p = 0.5 module
    batched = predict(net, x, T=6, seed=0)
    assert torch.allclose(batched, predict(net, x, T=6, seed=0, batched=False), atol=1e-12)


def test_models_whose_trunk_cannot_be_separated_fall_back_to_repeating_and_say_why() -> None:
    size = mc_plan(SizeAfterDropout(), torch.randn(3, 4))
    assert size.strategy == "repeat" and "not a batch tensor" in size.reason
    untraceable = mc_plan(DataDependent(), torch.randn(3, 4))
    assert untraceable.strategy == "repeat" and "torch.fx could not trace" in untraceable.reason
    assert mc_plan(dropkit.MLP([4, 8, 2]), torch.randn(3, 4), trunk="none").strategy == "repeat"


# ------------------------------------------------------------------------------------------------
# Bad input: one test each
# ------------------------------------------------------------------------------------------------
def test_t_below_one_is_refused() -> None:
    net = dropkit.MLP([4, 8, 2], p=0.5)
    with pytest.raises(ValueError, match="T must be an integer >= 1, got 0"):
        predict(net, torch.randn(2, 4), T=0)
    with pytest.raises(TypeError, match="T must be an integer"):
        predict(net, torch.randn(2, 4), T=2.5)


def test_model_without_dropout_is_refused() -> None:
    net = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ValueError, match="has no dropout module"):
        predict(net, torch.randn(2, 4))
    with pytest.raises(ValueError, match="has no dropout module"), mc_dropout(net):
        pass
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        predict(lambda x: x, torch.randn(2, 4))


def test_dropout_modules_all_at_zero_rate_are_refused() -> None:
    with pytest.raises(ValueError, match="p = 0"):
        predict(dropkit.MLP([4, 8, 2], p=[0.0, 0.0]), torch.randn(2, 4))


def test_input_of_the_wrong_shape_gives_a_clear_error() -> None:
    net = dropkit.MLP([4, 8, 2], p=0.5)
    with pytest.raises(ValueError, match=r"failed on x of shape \(2, 5\)"):
        predict(net, torch.randn(2, 5))
    with pytest.raises(ValueError, match="at least one row"):
        predict(net, torch.randn(0, 4))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        predict(net, [[1.0, 2.0, 3.0, 4.0]])


def test_model_that_does_not_keep_the_batch_in_dim_0_is_served_by_the_loop() -> None:
    class Pools(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = dropkit.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.drop(x).sum(0, keepdim=True)  # mixes the rows

    # The output mixes the rows, so batched passes cannot tell samples apart: the loop serves
    # them, with the same masks, and mc_plan says so.
    net, x = Pools(), torch.randn(3, 4)
    samples = predict(net, x, T=4, seed=0)
    assert samples.shape == (4, 1, 4)
    assert torch.equal(samples, predict(net, x, T=4, seed=0, batched=False))
    assert samples.std(0).min() > 0
    plan = mc_plan(net, x)
    assert plan.strategy == "loop" and "dim 0" in plan.reason


def test_bad_memory_budget_is_refused() -> None:
    net = dropkit.MLP([4, 8, 2], p=0.5)
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="max_memory_bytes must be an integer >= 1"):
        predict(net, x, max_memory_bytes=0)
    with pytest.raises(ValueError, match="smaller than one sample's estimated activation memory"):
        predict(net, x, max_memory_bytes=16)
    with pytest.raises(ValueError, match="max_batch_size must be at least the number of rows"):
        predict(net, x, max_batch_size=2)
    with pytest.raises(ValueError, match="seed must be an int"):
        predict(net, x, seed=-1)
