"""Locked (variational) dropout and embedding (word) dropout."""

from __future__ import annotations

import pytest
import torch
from inputs import randn_without_zeros
from stats import assert_fraction_close
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import dropkit
from dropkit import functional_variants as FV
from dropkit import ops


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# LockedDropout
# --------------------------------------------------------------------------------------------


def test_locked_mask_is_shared_over_time_and_drawn_per_sequence():
    p = 0.4
    y = FV.locked_dropout(torch.ones(6, 300, 50), p, generator=_gen(0))  # (T, N, C)
    assert torch.equal(y, y[:1].expand_as(y))
    keep = ops.keep_probability(p)
    assert_fraction_close(int((y[0] == 0).sum()), y[0].numel(), 1 - keep)
    values = y.unique()
    assert len(values) == 2 and values[0] == 0.0
    assert values[1].item() == pytest.approx(1 / (1 - p), rel=1e-7)
    assert not torch.equal(y[0, 0], y[0, 1])  # each sequence draws its own mask


def test_locked_batch_first_shares_over_dim_one():
    layer = dropkit.LockedDropout(0.5, batch_first=True)
    y = layer(torch.ones(4, 9, 8))  # (N, T, C)
    assert torch.equal(y, y[:, :1].expand_as(y))
    assert (y == 0).any()


def test_locked_unbatched_sequence():
    y = FV.locked_dropout(torch.ones(5, 7), 0.5, generator=_gen(1))
    assert torch.equal(y, y[:1].expand_as(y))


def test_locked_packed_sequence_shares_mask_over_valid_steps():
    lengths = torch.tensor([5, 3, 2])
    padded = torch.ones(5, 3, 6)
    packed = pack_padded_sequence(padded, lengths)
    out = FV.locked_dropout(packed, 0.5, generator=_gen(2))
    unpacked, out_lengths = pad_packed_sequence(out)
    assert torch.equal(out_lengths, lengths)
    for n, length in enumerate(lengths.tolist()):
        steps = unpacked[:length, n]
        assert torch.equal(steps, steps[:1].expand_as(steps))
    assert (unpacked == 0).any()


def test_locked_eval_rules_and_gradient():
    x = randn_without_zeros(3, 2, 4, requires_grad=True)  # y != 0 is then the mask
    layer = dropkit.LockedDropout(0.5)
    y = layer(x)
    y.sum().backward()
    assert torch.allclose(x.grad, (y.detach() != 0).float() / ops.keep_probability(0.5))
    assert layer.eval()(x) is x
    inference = dropkit.LockedDropout(0.5, scaling="inference").eval()
    assert torch.allclose(inference(x), x * ops.keep_probability(0.5))


def test_locked_feeds_an_lstm():
    lstm = nn.LSTM(4, 5)
    out, _ = lstm(dropkit.LockedDropout(0.3)(torch.randn(6, 2, 4)))
    assert dropkit.LockedDropout(0.3)(out).shape == (6, 2, 5)


def test_locked_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        FV.locked_dropout(torch.ones(2, 3, 4, 5), 0.5)


def test_locked_rejects_non_bool_batch_first():
    with pytest.raises(TypeError, match="batch_first"):
        dropkit.LockedDropout(0.5, batch_first=1)


def test_locked_rejects_integer_input():
    with pytest.raises(TypeError, match="floating-point"):
        FV.locked_dropout(torch.ones(2, 3, 4, dtype=torch.int32), 0.5)


# --------------------------------------------------------------------------------------------
# EmbeddingDropout
# --------------------------------------------------------------------------------------------


def test_embedding_dropout_drops_whole_word_rows_at_rate_p():
    p, vocab = 0.3, 20_000
    weight = torch.randn(vocab, 4)
    out = FV.embedding_dropout(torch.arange(vocab), weight, p, generator=_gen(3))
    row_dropped = (out == 0).all(dim=1)
    keep = ops.keep_probability(p)
    assert_fraction_close(int(row_dropped.sum()), vocab, 1 - keep)
    kept = ~row_dropped
    assert torch.allclose(out[kept], weight[kept] / keep)


def test_embedding_dropout_is_consistent_for_every_occurrence_of_a_word():
    ids = torch.randint(0, 10, (8, 30), generator=_gen(4))
    out = FV.embedding_dropout(ids, torch.randn(10, 3), 0.5, generator=_gen(5))
    for word in range(10):
        rows = out[ids == word]
        assert torch.equal(rows, rows[:1].expand_as(rows))
    dropped_words = {w for w in range(10) if (out[ids == w] == 0).all()}
    assert 0 < len(dropped_words) < 10


def test_embedding_dropout_gradient_reaches_only_kept_rows():
    layer = dropkit.EmbeddingDropout(50, 3, p=0.5)
    ids = torch.arange(50)
    out = layer(ids)
    out.sum().backward()
    kept = (out != 0).any(dim=1)
    assert torch.all(layer.weight.grad[~kept] == 0)
    assert torch.allclose(layer.weight.grad[kept], torch.full_like(layer.weight.grad[kept], 2.0))


def test_embedding_dropout_eval_is_nn_embedding_and_inference_scales():
    layer = dropkit.EmbeddingDropout(10, 4, padding_idx=0, p=0.4)
    plain = nn.Embedding(10, 4, padding_idx=0)
    plain.load_state_dict(layer.state_dict())
    ids = torch.tensor([[0, 3, 3, 9]])
    assert torch.equal(layer.eval()(ids), plain(ids))
    layer.scaling = "inference"
    assert torch.equal(layer(ids), plain(ids) * (1 - 0.4))
    assert torch.allclose(layer.to_plain()(ids), layer(ids))


def test_embedding_dropout_from_pretrained_and_sparse_gradients():
    layer = dropkit.EmbeddingDropout.from_pretrained(torch.randn(6, 2), freeze=False, sparse=True)
    layer.p = 0.5
    out = layer(torch.tensor([1, 2, 2]))
    out.sum().backward()
    assert layer.weight.grad.is_sparse and dropkit.is_dropout_module(layer)


def test_embedding_dropout_rejects_float_ids():
    with pytest.raises(TypeError, match="integer tensor"):
        FV.embedding_dropout(torch.tensor([1.0]), torch.randn(3, 2), 0.1)


def test_embedding_dropout_rejects_bad_p_and_weight():
    with pytest.raises(ValueError, match="p must be"):
        dropkit.EmbeddingDropout(5, 2, p=2.0)
    with pytest.raises(ValueError, match="rank"):
        FV.embedding_dropout(torch.tensor([1]), torch.randn(3, 2, 2), 0.1)
