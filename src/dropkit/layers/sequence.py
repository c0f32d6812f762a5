r"""Sequence dropout: locked (variational) dropout and embedding (word) dropout.

Gal & Ghahramani 2016, "A theoretically grounded application of dropout in recurrent neural
networks" (https://arxiv.org/abs/1512.05287); Merity, Keskar, Socher 2017, AWD-LSTM
(https://arxiv.org/abs/1708.02182).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from dropkit._masking import eval_scale
from dropkit._validate import check_bool, check_scaling
from dropkit.functional import sequence as F
from dropkit.layers.base import DropoutBase

__all__ = ["LockedDropout", "EmbeddingDropout"]


class LockedDropout(DropoutBase):
    r"""Locked (variational) dropout: one mask per sequence, shared by every time step.

    Training: y_t = m ⊙ x_t · s for all t, m ~ Bernoulli(1 − p) of shape (N, C) drawn once per
    forward (Gal & Ghahramani 2016; AWD-LSTM's ``LockedDropout``); s = 1/(1 − p) (inverted) or 1
    (inference). Eval: identity (inverted) or (1 − p) x (inference). Accepts PackedSequence.
    See :func:`dropkit.functional.locked_dropout`.

    Args:
        p: probability of dropping a feature of a sequence, in [0, 1].
        batch_first: inputs are (N, T, C) instead of (T, N, C).
        scaling: ``"inverted"`` or ``"inference"``.
        inplace: write the result into the input.

    Shape:
        input (T, N, C), (N, T, C) with ``batch_first``, or (T, C); output the same.

    Example:
        >>> import torch, dropkit
        >>> layer = dropkit.LockedDropout(0.3, batch_first=True)
        >>> y = layer(torch.ones(2, 6, 4))
        >>> bool((y == y[:, :1]).all())  # every time step of a sequence shares its mask
        True
    """

    def __init__(
        self,
        p: float = 0.5,
        *,
        batch_first: bool = False,
        scaling: str = "inverted",
        inplace: bool = False,
    ) -> None:
        super().__init__(p, inplace, scaling)
        self.batch_first = check_bool(batch_first, "batch_first")

    def forward(self, input: torch.Tensor | PackedSequence) -> torch.Tensor | PackedSequence:
        if torch.jit.is_scripting():
            if isinstance(input, torch.Tensor):
                return self.scripted_forward(input, -1)
            raise RuntimeError(
                "LockedDropout under TorchScript takes a Tensor, not a PackedSequence"
            )
        return F.locked_dropout(
            input,
            self.p,
            self.training,
            self.inplace,
            batch_first=self.batch_first,
            scaling=self.scaling,
        )

    def extra_repr(self) -> str:
        parts = [super().extra_repr()]
        if self.batch_first:
            parts.append("batch_first=True")
        return ", ".join(parts)


class EmbeddingDropout(nn.Embedding, DropoutBase):
    r"""An ``nn.Embedding`` with embedding (word) dropout: whole rows of the matrix dropped.

    Training: each word type v is kept with probability 1 − p, and every occurrence of a dropped
    word in the batch looks up the zero vector; kept rows are scaled by 1/(1 − p) (inverted) or 1
    (inference). Eval: ``nn.Embedding`` (inverted) or (1 − p) W[input] (inference). A drop-in
    replacement for ``nn.Embedding`` (same parameters and options, ``from_pretrained`` works).
    See :func:`dropkit.functional.embedding_dropout`.

    Args:
        num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq,
            sparse, device, dtype: as ``nn.Embedding``.
        p: probability of dropping a word type, in [0, 1].
        scaling: ``"inverted"`` or ``"inference"``.

    Shape:
        input (*) integer; output (*, embedding_dim).

    Example:
        >>> import torch, dropkit
        >>> emb = dropkit.EmbeddingDropout(100, 16, p=0.1)
        >>> emb
        EmbeddingDropout(100, 16, p=0.1)
        >>> emb(torch.randint(0, 100, (4, 7))).shape
        torch.Size([4, 7, 16])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
        _weight: torch.Tensor | None = None,
        _freeze: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        p: float = 0.1,
        scaling: str = "inverted",
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq,
            sparse, _weight, _freeze, device, dtype,
        )  # fmt: skip
        self.p = p
        self.scaling = check_scaling(scaling)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            # Eval under TorchScript: nn.Embedding with W (inverted) or (1 − p) W (inference).
            if self.training:
                raise RuntimeError(
                    "EmbeddingDropout cannot run its training forward under TorchScript (only "
                    "eval): train in eager mode or with torch.compile"
                )
            weight = self.weight * (1.0 - self._p) if self.scaling == "inference" else self.weight
            return nn.functional.embedding(
                input, weight, self.padding_idx, self.max_norm, self.norm_type,
                self.scale_grad_by_freq, self.sparse,
            )  # fmt: skip
        return F.embedding_dropout(
            input, self.weight, self.p, self.training,
            padding_idx=self.padding_idx, max_norm=self.max_norm, norm_type=self.norm_type,
            scale_grad_by_freq=self.scale_grad_by_freq, sparse=self.sparse, scaling=self.scaling,
        )  # fmt: skip

    def extra_repr(self) -> str:
        parts = [nn.Embedding.extra_repr(self), f"p={self.p}"]
        if self.scaling != "inverted":
            parts.append(f"scaling={self.scaling!r}")
        return ", ".join(parts)

    def to_plain(self) -> nn.Embedding:
        """The ``nn.Embedding`` this layer computes in eval (rows scaled by 1 − p for inference)."""
        weight = self.weight.detach() * eval_scale(self.p, self.scaling)
        return nn.Embedding(
            self.num_embeddings, self.embedding_dim, self.padding_idx, self.max_norm,
            self.norm_type, self.scale_grad_by_freq, self.sparse, _weight=weight.clone(),
        )  # fmt: skip
