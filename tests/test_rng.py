"""dropkit.rng: seeds from torch's generators, reproducibility, checkpointing, salts and the tracker."""

from __future__ import annotations

import pytest
import torch
import torch.utils.checkpoint as checkpoint_utils
from stats import assert_fraction_close

import dropkit
from dropkit import ops, rng


def test_manual_seed_reproduces_a_sequence_of_masks():
    x = torch.ones(500)
    torch.manual_seed(123)
    first = [ops.dropout_elementwise(x, 0.5, 2.0) for _ in range(3)]
    torch.manual_seed(123)
    second = [ops.dropout_elementwise(x, 0.5, 2.0) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not torch.equal(first[0], first[1])  # each call advances the generator: a new mask


def test_a_draw_takes_exactly_64_bits_from_torchs_cpu_generator():
    torch.manual_seed(7)
    seed = rng.draw_seed()
    after = torch.rand(3)
    torch.manual_seed(7)
    raw = torch.empty((), dtype=torch.int64).random_(-(2**63), None).item() % 2**64
    assert seed == raw and torch.equal(after, torch.rand(3))


def test_generator_argument_is_used_and_leaves_the_global_generator_alone():
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    x = torch.ones(300)
    a = ops.dropout_elementwise(x, 0.5, 2.0, generator=torch.Generator().manual_seed(5))
    b = ops.dropout_elementwise(x, 0.5, 2.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(torch.rand(1), expected_next)
    m1 = ops.keep_mask((300,), 0.5, "cpu", generator=torch.Generator().manual_seed(5))
    assert torch.equal(m1, a != 0)


def test_seeds_are_64_bit_and_distinct_across_many_calls():
    torch.manual_seed(0)
    seeds = [rng.draw_seed() for _ in range(2000)]
    assert len(set(seeds)) == 2000 and all(0 <= s < 2**64 for s in seeds)
    assert any(s >= 2**63 for s in seeds)  # the top bit is used, not just 63 bits
    high_bits = sum(s >> 63 for s in seeds)
    assert_fraction_close(high_bits, 2000, 0.5, what="fraction of seeds with the top bit set")


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.drop = dropkit.Dropout(0.4)
        self.fc2 = torch.nn.Linear(32, 16)

    def forward(self, x):
        h = self.drop(torch.relu(self.fc1(x)))
        return ops.bias_dropout_add(self.fc2(h), None, x, 0.3)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_checkpoint_recomputes_exactly_the_same_masks(use_reentrant):
    torch.manual_seed(0)
    block = _Block()
    x = torch.randn(8, 16, requires_grad=True)

    def grads(run):
        torch.manual_seed(42)
        out = run(x)
        out.square().sum().backward()
        result = [out.detach()] + [p.grad.clone() for p in (x, *block.parameters())]
        x.grad = None
        block.zero_grad()
        return result

    plain = grads(block)
    checkpointed = grads(
        lambda t: checkpoint_utils.checkpoint(block, t, use_reentrant=use_reentrant)
    )
    for a, b in zip(plain, checkpointed, strict=True):
        assert torch.equal(a, b)


def test_checkpoint_without_rng_preservation_would_differ():
    # The property above is real: without restoring the RNG state the recomputation draws anew, and
    # fc2's weight gradient (which uses the recomputed dropped activations) changes.
    torch.manual_seed(0)
    block = _Block()
    x = torch.randn(8, 16, requires_grad=True)
    torch.manual_seed(42)
    block(x).square().sum().backward()
    plain = block.fc2.weight.grad.clone()
    block.zero_grad()
    torch.manual_seed(42)
    out = checkpoint_utils.checkpoint(block, x, use_reentrant=False, preserve_rng_state=False)
    out.square().sum().backward()
    assert not torch.equal(plain, block.fc2.weight.grad)


def test_mix_seed_is_a_bijection_per_salt_and_separates_salts():
    seeds = range(1000)
    assert len({rng.mix_seed(s, 3) for s in seeds}) == 1000
    assert len({rng.mix_seed(12345, salt) for salt in range(1000)}) == 1000


def test_without_distributed_the_raw_draw_is_used():
    assert rng.current_salt() is None
    g = torch.Generator().manual_seed(9)
    raw = torch.empty((), dtype=torch.int64).random_(
        -(2**63), None, generator=torch.Generator().manual_seed(9)
    )
    assert rng.draw_seed(g) == raw.item() % 2**64


def test_tracker_fork_salts_the_draw_and_restores_the_default():
    tracker = rng.RNGStatesTracker()
    tracker.add("model-parallel-rng", 4000)
    tracker.add("other", 4001)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = rng.draw_seed(g())
    with tracker.fork("model-parallel-rng"):
        forked = rng.draw_seed(g())
        with tracker.fork("other"):
            nested = rng.draw_seed(g())
        assert rng.draw_seed(g()) == forked
    assert len({plain, forked, nested}) == 3
    assert rng.draw_seed(g()) == plain
    assert tracker.get_states() == {"model-parallel-rng": 4000, "other": 4001}


def test_forked_masks_are_reproduced_by_checkpoint():
    tracker = rng.RNGStatesTracker()
    tracker.add("tp", 77)
    lin = torch.nn.Linear(10, 10)

    def body(t):
        with tracker.fork("tp"):
            return dropkit.functional.dropout(lin(t), 0.5)

    x = torch.randn(4, 10, requires_grad=True)
    torch.manual_seed(3)
    body(x).sum().backward()
    plain = x.grad.clone()
    x.grad = None
    torch.manual_seed(3)
    checkpoint_utils.checkpoint(body, x, use_reentrant=False).sum().backward()
    assert torch.equal(plain, x.grad)


def test_tracker_refuses_bad_and_duplicate_states():
    tracker = rng.RNGStatesTracker()
    tracker.add("a", 1)
    with pytest.raises(ValueError, match="already exists"):
        tracker.add("a", 2)
    with pytest.raises(ValueError, match="already used"):
        tracker.add("b", 1)
    with pytest.raises(ValueError, match="not registered"):
        tracker.fork("missing")
    with pytest.raises(TypeError, match="seed"):
        tracker.add("c", 1.5)
    with pytest.raises(TypeError, match="name"):
        tracker.add(3, 4)
    tracker.set_states({"x": 9})
    assert tracker.get_states() == {"x": 9}
    tracker.reset()
    assert tracker.get_states() == {}


def test_model_parallel_manual_seed_seeds_torch_and_the_tracker():
    rng.model_parallel_manual_seed(11)
    first = torch.rand(2)
    assert rng.get_rng_tracker().get_states() == {"model-parallel-rng": 11 + 2718}
    rng.model_parallel_manual_seed(11)
    assert torch.equal(torch.rand(2), first)
    rng.get_rng_tracker().reset()


def test_region_salt_is_shared_outside_distributed():
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    with rng.model_parallel_region():
        a = rng.draw_seed(g())
    with rng.model_parallel_region():
        b = rng.draw_seed(g())
    assert a == b != rng.draw_seed(g())
