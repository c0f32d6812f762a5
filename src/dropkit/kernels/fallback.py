r"""Counter-based dropout in plain torch ops, for devices without a dropkit kernel (meta, MPS, XPU, …).

Same API and same bits as :mod:`dropkit.kernels.cpu` (numba) and :mod:`dropkit.kernels.gpu`
(Triton): Philox4x32-10 (Salmon et al. 2011, Random123) keyed by the 64-bit ``seed``, element ``k``
of a call reads the 16-bit word at stream position ``offset + k``, and an element is kept iff that
word is ``>= threshold`` with ``threshold = round(p · 2^16)``. The kept fraction is therefore
``keep_probability = 1 − threshold / 2^16`` exactly, and the scale uses that same value.

Philox needs 32×32→64-bit products. torch has no uint64 arithmetic on every device, so the words
live in int64 tensors: a product of two values below 2^32 wraps modulo 2^64 in int64, which keeps
all 64 bits; ``(prod >> 32) & 0xFFFFFFFF`` is the high word and ``prod & 0xFFFFFFFF`` the low one.

This path is slow next to the fused kernels (about twenty tensor ops per Philox round), but the
mask is still a pure function of ``(seed, offset)``, so backward regenerates it and nothing is
stored, and a mask drawn here equals the one the CPU or CUDA kernel draws.

Example:
    >>> import torch
    >>> from dropkit.kernels import fallback
    >>> m = fallback.keep_mask(10, seed=1, offset=0, threshold=32768, device="cpu")
    >>> m.dtype, m.shape
    (torch.bool, torch.Size([10]))
    >>> torch.equal(m, fallback.keep_mask(10, seed=1, offset=0, threshold=32768, device="cpu"))
    True
"""

from __future__ import annotations

import torch

from dropkit.kernels.philox import (
    LANES_PER_BLOCK,
    PHILOX_M0,
    PHILOX_M1,
    PHILOX_ROUNDS,
    PHILOX_W0,
    PHILOX_W1,
)

__all__ = [
    "philox_blocks",
    "philox_uint16",
    "keep_mask",
    "dropout_forward",
    "dropout_backward",
    "bias_dropout_add",
]

_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
WORDS_PER_COUNTER = LANES_PER_BLOCK  # one Philox4x32 block = 128 bits = eight 16-bit words


def _mulhilo(multiplier: int, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    product = value * multiplier  # wraps mod 2^64 in int64: every bit survives
    return (product >> 32) & _MASK32, product & _MASK32


def _philox4x32(
    c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    k0 = seed & _MASK32
    k1 = (seed >> 32) & _MASK32
    for round_index in range(PHILOX_ROUNDS):
        if round_index:
            k0 = (k0 + PHILOX_W0) & _MASK32
            k1 = (k1 + PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox_blocks(first: int, count: int, seed: int, device: torch.device | str) -> torch.Tensor:
    """Philox blocks ``first .. first + count − 1`` as a (count, 4) int64 tensor of 32-bit words.

    Row ``i`` holds the outputs ``x0 .. x3`` of counter ``(b lo, b hi, 0, 0)``, ``b = first + i``,
    keyed by the 64-bit ``seed`` (the blocks :func:`philox_uint16` splits into 16-bit lanes).
    """
    blocks = torch.arange(count, dtype=torch.int64, device=torch.device(device)) + first
    zeros = torch.zeros_like(blocks)
    words = _philox4x32(blocks & _MASK32, (blocks >> 32) & _MASK32, zeros, zeros, seed & _MASK64)
    return torch.stack(words, 1)


def philox_uint16(n: int, seed: int, offset: int, device: torch.device | str) -> torch.Tensor:
    """The 16-bit words at stream positions ``offset … offset + n − 1`` as an int32 tensor (n,).

    Position ``i`` is half ``i % 2`` (low half first) of output word ``(i // 2) % 4`` of the Philox
    block whose 64-bit counter is ``i // 8`` (low 32 bits in c0, high in c1; c2 = c3 = 0).
    """
    seed &= _MASK64
    offset &= _MASK64
    device = torch.device(device)
    if n == 0:
        return torch.empty(0, dtype=torch.int32, device=device)
    first = offset // WORDS_PER_COUNTER
    last = (offset + n - 1) // WORDS_PER_COUNTER
    # Counters are below 2^61, so they fit int64; split into the two 32-bit counter words.
    blocks = torch.arange(last - first + 1, dtype=torch.int64, device=device) + first
    zeros = torch.zeros_like(blocks)
    words = torch.stack(
        _philox4x32(blocks & _MASK32, (blocks >> 32) & _MASK32, zeros, zeros, seed), 1
    )
    halves = torch.stack((words & 0xFFFF, words >> 16), 2).reshape(-1)
    start = offset % WORDS_PER_COUNTER
    return halves[start : start + n].to(torch.int32)


def keep_mask(
    n: int, seed: int, offset: int, threshold: int, device: torch.device | str
) -> torch.Tensor:
    """A bool tensor (n,): True where the 16-bit word at position ``offset + k`` is >= threshold."""
    return philox_uint16(n, seed, offset, device) >= threshold


def _scaled_mask(
    n: int, seed: int, offset: int, threshold: int, scale: float, like: torch.Tensor
) -> torch.Tensor:
    return keep_mask(n, seed, offset, threshold, like.device).to(like.dtype) * scale


def dropout_forward(
    x: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> torch.Tensor:
    """y = m ⊙ x · scale over x's row-major elements (x contiguous); m from :func:`keep_mask`."""
    flat = x.reshape(-1)
    # where (not multiply) so that a dropped inf or NaN gives 0, as the fused kernels do.
    keep = keep_mask(flat.numel(), seed, offset, threshold, x.device)
    return torch.where(keep, flat * scale, torch.zeros((), dtype=x.dtype, device=x.device)).view_as(
        x
    )


def dropout_backward(
    grad: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> torch.Tensor:
    """∂L/∂x = m ⊙ ∂L/∂y · scale, the mask regenerated from ``(seed, offset)``."""
    return dropout_forward(grad, seed, offset, threshold, scale)


def bias_dropout_add(
    x: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor,
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
) -> torch.Tensor:
    """y = residual + dropout(x + bias); ``bias`` broadcasts over x's last dim (x contiguous)."""
    return residual + dropout_forward((x + bias).contiguous(), seed, offset, threshold, scale)
