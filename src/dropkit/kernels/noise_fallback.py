"""Counter-based uniform and Gaussian noise in plain torch ops, for devices without a kernel.

Same bits as :mod:`dropkit.kernels.noise_cpu` (numba) and :mod:`dropkit.kernels.noise_gpu`
(Triton), following :mod:`dropkit.reference.noise` step by step: the Philox words come from
:func:`dropkit.kernels.fallback.philox_blocks` (int64 tensors holding 32-bit words), and the
Box–Muller sequence is the same float64 operations, each a separate torch op (so nothing is
contracted into a fused multiply-add). Slow (a few dozen tensor ops) but exact; needs float64
support on the device.
"""

from __future__ import annotations

import math

import torch

from dropkit.kernels._checks import check_noise_stream
from dropkit.kernels.fallback import philox_blocks

__all__ = ["uniform", "normal", "gaussian_multiply"]

_WORDS = 4
_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)
_TWO_PI_2M32 = (2.0 * math.pi) * 2.0**-32
_LOG = tuple(1.0 / n for n in (3, 5, 7, 9, 11, 13, 15))
_SIN = tuple((-1.0) ** k / math.factorial(2 * k + 1) for k in range(1, 9))
_COS = tuple((-1.0) ** k / math.factorial(2 * k) for k in range(1, 10))


def _words(n: int, seed: int, offset: int, device: torch.device | str) -> torch.Tensor:
    """The 32-bit words (int64 tensor (n,)) at noise stream positions offset .. offset + n − 1."""
    first = offset // _WORDS
    last = (offset + n - 1) // _WORDS
    words = philox_blocks(first, last - first + 1, seed, device).reshape(-1)
    start = offset - first * _WORDS
    return words[start : start + n]


def _horner(x2: torch.Tensor, coeffs: tuple[float, ...]) -> torch.Tensor:
    p = torch.full_like(x2, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        p = (x2 * p) + c
    return (x2 * p) + 1.0


def _box_muller(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r cos θ, r sin θ) in float64 for int64 tensors holding the words a and b."""
    bits = (a.to(torch.float64) + 1.0).view(torch.int64)
    e = (bits >> 52) - 1023
    m = ((bits & 0xFFFFFFFFFFFFF) | 0x3FF0000000000000).view(torch.float64)
    big = m > _SQRT2
    m = torch.where(big, m * 0.5, m)
    e = torch.where(big, e + 1, e)
    t = (m - 1.0) / (m + 1.0)
    ln_m = (t + t) * _horner(t * t, _LOG)
    y = ((32 - e).to(torch.float64) * _LN2 - ln_m) * 2.0
    # Not torch.sqrt: its vectorised float64 path on AVX-512 CPUs is not correctly rounded.
    g = (0x5FE6EB50C7B537A9 - (y.view(torch.int64) >> 1)).view(torch.float64)
    half = y * 0.5
    for _ in range(5):
        g = g * (1.5 - (half * g) * g)
    r = y * g
    quadrant = b >> 30
    x = (b & 0x3FFFFFFF).to(torch.float64) * _TWO_PI_2M32
    x2 = x * x
    s = x * _horner(x2, _SIN)
    c = _horner(x2, _COS)
    swap = (quadrant & 1) != 0
    base_cos = torch.where(swap, s, c)
    base_sin = torch.where(swap, c, s)
    cos_t = torch.where(((quadrant + 1) & 2) != 0, -base_cos, base_cos)
    sin_t = torch.where(quadrant >= 2, -base_sin, base_sin)
    return r * cos_t, r * sin_t


def uniform(n: int, seed: int, offset: int, device: torch.device | str) -> torch.Tensor:
    """Uniform [0, 1) float32 noise (n,): ``float32(w >> 8) · 2^-24``."""
    check_noise_stream(n, seed, offset)
    if n == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    return (_words(n, seed, offset, device) >> 8).to(torch.float32) * 2.0**-24


def normal(
    n: int, seed: int, offset: int, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Standard normal noise (n,), float32 or float64 (Box–Muller on word pairs)."""
    check_noise_stream(n, seed, offset)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if n == 0:
        return torch.empty(0, dtype=dtype, device=device)
    first_pair = offset // 2
    last_pair = (offset + n - 1) // 2
    words = _words(2 * (last_pair - first_pair + 1), seed, 2 * first_pair, device)
    z0, z1 = _box_muller(words[0::2], words[1::2])
    z = torch.stack((z0, z1), 1).reshape(-1)
    start = offset - 2 * first_pair
    return z[start : start + n].to(dtype)


def gaussian_multiply(x: torch.Tensor, seed: int, offset: int, std: float) -> torch.Tensor:
    """``y = x · (1 + std · z)`` (float32: z and every step in float32), x contiguous."""
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    z = normal(x.numel(), seed, offset, x.device, x.dtype).view_as(x)
    return x * ((z * std) + 1.0)
