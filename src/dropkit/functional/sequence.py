r"""Functional forms of the sequence variants: locked (variational RNN) and embedding dropout.

One function per variant holds its rule; the modules in :mod:`dropkit.layers.sequence` call them.
Every Bernoulli mask is drawn through :func:`dropkit.ops.keep_mask` (the counter-based kernels).

Papers:

- Locked (variational) dropout: Gal & Ghahramani 2016, https://arxiv.org/abs/1512.05287
- Embedding dropout: Merity, Keskar, Socher 2017 (AWD-LSTM), https://arxiv.org/abs/1708.02182
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF
from torch.nn.utils.rnn import PackedSequence

from dropkit import ops
from dropkit._masking import apply_kept, dropout, eval_scale, train_scale
from dropkit._validate import (
    check_bool,
    check_float_tensor,
    check_probability,
    check_rank,
    check_scaling,
    check_training,
)

__all__ = ["locked_dropout", "embedding_dropout"]


# --------------------------------------------------------------------------------------------
# Sequences: locked dropout and embedding dropout
# --------------------------------------------------------------------------------------------


def locked_dropout(
    input: torch.Tensor | PackedSequence,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    batch_first: bool = False,
    scaling: str = "inverted",
    generator: torch.Generator | None = None,
) -> torch.Tensor | PackedSequence:
    r"""Locked (variational) dropout (Gal & Ghahramani 2016): one mask per sequence, all time steps.

    Training: y_t = m ⊙ x_t · s for every step t, with m ~ Bernoulli(1 − p) of shape (N, C) drawn
    once per sequence (mask shape (1, N, C) for (T, N, C) input, (N, 1, C) with ``batch_first``),
    s = 1/(1 − p) (inverted) or 1 (inference). Eval: x (inverted) or (1 − p) x (inference).
    A ``PackedSequence`` gets one mask row per sequence too, applied to every packed step.

    Args:
        input: (T, N, C), (N, T, C) with ``batch_first``, unbatched (T, C), or a PackedSequence.
        p: probability of dropping a feature of a sequence, in [0, 1].
        training: apply the training rule (True) or the eval rule (False).
        inplace: write the result into ``input`` (tensors only).
        batch_first: input is (N, T, C) (as ``nn.LSTM(batch_first=True)``).
        scaling: ``"inverted"`` or ``"inference"``.
        generator: a ``torch.Generator`` for the mask.

    Shape:
        input (T, N, C); output the same.

    Example:
        >>> import torch
        >>> from dropkit.functional import locked_dropout
        >>> y = locked_dropout(torch.ones(5, 2, 3), 0.5)
        >>> bool((y == y[0]).all())  # the same mask at every time step
        True
    """
    training = check_training(training)
    check_bool(batch_first, "batch_first")
    if isinstance(input, PackedSequence):
        data = check_float_tensor(input.data, "input.data")
        p = check_probability(p)
        check_scaling(scaling)
        check_rank(data, (2,), "locked_dropout (PackedSequence data)", "input.data")
        if not training:
            factor = eval_scale(p, scaling)
            return input if factor == 1.0 else input._replace(data=data * factor)
        if p == 0.0:
            return input
        batch_sizes = input.batch_sizes
        n = int(batch_sizes[0])
        mask = ops.keep_mask((n, data.shape[1]), p, data.device, generator=generator)
        # Packed step t holds sequences 0 … batch_sizes[t] − 1 (in sorted order).
        rows = torch.cat([torch.arange(int(b)) for b in batch_sizes]).to(data.device)
        return input._replace(data=apply_kept(data, mask[rows], train_scale(p, scaling)))
    check_float_tensor(input)
    check_rank(input, (2, 3), "locked_dropout (T, N, C)")
    if input.dim() == 2:
        noise_shape: tuple[int | None, ...] = (1, None)
    elif batch_first:
        noise_shape = (None, 1, None)
    else:
        noise_shape = (1, None, None)
    return dropout(
        input, p, training, inplace, scaling=scaling, noise_shape=noise_shape, generator=generator
    )


def embedding_dropout(
    input: torch.Tensor,
    weight: torch.Tensor,
    p: float = 0.1,
    training: bool = True,
    *,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    scaling: str = "inverted",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Embedding (word) dropout (Gal & Ghahramani 2016; Merity et al. 2017): whole rows dropped.

    Training: each row v of the embedding matrix (each word type) is kept with probability 1 − p,
    m_v ~ Bernoulli(1 − p), and y = (diag(m) W · s)[input]: every occurrence of a dropped word in
    the batch is the zero vector, kept words are scaled by s = 1/(1 − p) (inverted) or 1
    (inference). Eval: W[input] (inverted) or (1 − p) W[input] (inference). The mask is one value
    per row, gathered per token, so the (V, D) matrix is never copied (sparse gradients work).

    Args:
        input: integer tensor of token ids, any shape.
        weight: (V, D) embedding matrix.
        p: probability of dropping a word type, in [0, 1].
        training: apply the training rule (True) or the eval rule (False).
        padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse: as
            ``torch.nn.functional.embedding``.
        scaling: ``"inverted"`` or ``"inference"``.
        generator: a ``torch.Generator`` for the mask.

    Shape:
        input (*) integer; output (*, D).

    Example:
        >>> import torch
        >>> from dropkit.functional import embedding_dropout
        >>> ids = torch.tensor([[1, 2, 1, 1]])
        >>> y = embedding_dropout(ids, torch.ones(4, 3), p=0.5)
        >>> torch.equal(y[0, 0], y[0, 2]) and torch.equal(y[0, 0], y[0, 3])  # word 1 is one draw
        True
    """
    training = check_training(training)
    if (
        not isinstance(input, torch.Tensor)
        or input.is_floating_point()
        or input.is_complex()
        or input.dtype == torch.bool
    ):
        got = input.dtype if isinstance(input, torch.Tensor) else type(input).__name__
        raise TypeError(
            f"embedding_dropout: input must be an integer tensor of token ids, got {got}"
        )
    check_float_tensor(weight, "weight")
    check_rank(weight, (2,), "embedding_dropout", "weight")
    p = check_probability(p)
    check_scaling(scaling)
    out = TF.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)
    if not training:
        factor = eval_scale(p, scaling)
        return out if factor == 1.0 else out * factor
    if p == 0.0:
        return out
    rows = ops.keep_mask((weight.shape[0],), p, weight.device, generator=generator)
    return apply_kept(out, rows[input].unsqueeze(-1), train_scale(p, scaling))
