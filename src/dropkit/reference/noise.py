r"""Readable NumPy reference of dropkit's counter-based uniform and Gaussian noise.

The oracle the numba (``dropkit.kernels.noise_cpu``), Triton (``dropkit.kernels.noise_gpu``) and
torch (``dropkit.kernels.noise_fallback``) noise kernels are tested against bit for bit. Like the
Bernoulli masks of :mod:`dropkit.reference.philox`, every value is a pure function of a 64-bit
``seed`` and a 64-bit stream position, so backward regenerates the noise instead of storing it.
It never imports torch.

The word stream
---------------
The noise reads the Philox4x32-10 blocks of :mod:`dropkit.reference.philox` (counter
``(b & 0xFFFFFFFF, b >> 32, 0, 0)``, key ``(seed & 0xFFFFFFFF, seed >> 32)``) as 32-bit words:
stream position ``j`` is output word ``j % 4`` of block ``j // 4``. Element ``k`` of a call at
``offset`` is position ``offset + k``. (The same blocks feed the Bernoulli masks' 16-bit lanes;
dropkit draws a fresh seed per call, so a mask and a noise never share a key.)

Uniform: ``u = float32(w >> 8) · 2^-24``
----------------------------------------
The top 24 bits of the word, scaled: a float32 on the grid ``{0, 2^-24, …, 1 − 2^-24}`` (each value
with probability 2^-24, exactly representable, so no rounding is involved), the same grid and
range [0, 1) as ``torch.rand`` for float32.

Gaussian: Box–Muller on a pair of words, in float64
---------------------------------------------------
Positions ``2i`` and ``2i + 1`` (words ``(w0, w1)`` or ``(w2, w3)`` of one block) form a pair
``(a, b)``; Box & Muller (1958):

    u1 = (a + 1) · 2^-32 ∈ (0, 1],   θ = 2π · b · 2^-32 ∈ [0, 2π),
    r = sqrt(−2 ln u1),   z[2i] = r cos θ,   z[2i + 1] = r sin θ.

So four normals per Philox call, |z| ≤ sqrt(64 ln 2) ≈ 6.66 (as cuRAND's 32-bit Box–Muller). To be
bit-identical on every device, ln, cos and sin are *not* taken from a maths library (CPU libm,
CUDA's libdevice and NumPy differ in the last bit); they are the fixed float64 sequences below,
made of IEEE-754 operations that every backend rounds identically (+, −, ×, ÷, round to nearest
even, no fused multiply-add):

* **ln u1.** ``v = float64(a) + 1`` (an exact integer in [1, 2^32]). Split ``v = m · 2^e`` from its
  bits (e the unbiased exponent, m in [1, 2)); if ``m > √2`` then ``m ← m/2, e ← e + 1``, so
  m ∈ [1/√2, √2]. With ``t = (m − 1)/(m + 1)`` (|t| ≤ 0.1716) and ``t2 = t · t``,
  ``ln m = (t + t) · P(t2)``, ``P = 1 + t2(1/3 + t2(1/5 + … + t2(1/13 + t2/15)))`` evaluated in that
  Horner order (truncation error below 4e-14). Then ``−ln u1 = (32 − e) · LN2 − ln m`` and
  ``y = (−ln u1) · 2``.
* **r = sqrt(y)** by five Newton steps on 1/sqrt(y), not by a ``sqrt`` instruction (torch's
  vectorised float64 ``sqrt`` on AVX-512 CPUs is not correctly rounded, so it would not give the
  same bits as NumPy or a GPU): ``g = float64 of the bits RSQRT_MAGIC − (bits(y) >> 1)`` (the
  "fast inverse square root" start, within 3.5 %), five times ``g ← g · (1.5 − ((0.5 · y) · g) · g)``
  (relative error below 1e-15), then ``r = y · g`` (0 for y = 0).
* **cos θ, sin θ.** Quadrant ``q = b >> 30`` and ``x = float64(b & 0x3FFFFFFF) · (2π · 2^-32)``,
  x ∈ [0, π/2). ``x2 = x · x``; ``s = x · (1 + x2(−1/3! + x2(1/5! − … + x2/17!)))`` and
  ``c = 1 + x2(−1/2! + x2(1/4! − … − x2/18!))`` (Taylor, truncation below 5e-14 on [0, π/2)).
  ``(cos θ, sin θ) = (c, s), (−s, c), (−c, −s), (s, −c)`` for q = 0, 1, 2, 3.
* **Output.** ``z = r · cos θ`` or ``r · sin θ`` in float64, which is the float64 result for
  float64 tensors; float32 (and float16/bfloat16) noise is that value rounded to nearest even.
  The float64 value is within about 1e-13 (relative) of the exact Box–Muller value, so the float32
  noise is the correctly rounded Box–Muller variate except where the exact value lies within
  1e-13 of a rounding boundary (a fraction of about 2^-20 of the elements).

The constants are Python floats: ``LN2 = math.log(2)``, ``SQRT2 = math.sqrt(2)``, ``1/n`` and
``±1/n!`` (n! exact below 2^53) correctly rounded, and ``2π · 2^-32`` = ``(2 * math.pi) * 2**-32``.

Gaussian multiplicative noise
-----------------------------
:func:`gaussian_multiply_reference` is the fused Gaussian-dropout rule ``y = x · (1 + std · z)``
as torch computes it: for float32, ``z`` rounded to float32, then ``float32(std) · z``,
``1 + ·`` and ``x · ·`` each rounded to float32; for float64 the same in float64 with the float64
``z``.

Example:
    >>> uniform_reference(4, seed=0, offset=0).tolist()  # words 0x6627e8d5, 0xe169c58d, ...
    [0.3990464210510254, 0.8805201649665833, 0.7357127666473389, 0.6054818034172058]
    >>> z = normal_reference(100_000, seed=1, offset=0, dtype=np.float64)
    >>> bool(abs(z.mean()) < 0.02 and abs(z.var() - 1) < 0.03)
    True
"""

from __future__ import annotations

import math

import numpy as np

from dropkit.reference.philox import philox4x32_10_array

__all__ = [
    "WORDS_PER_BLOCK",
    "random_uint32",
    "uniform_reference",
    "sqrt_reference",
    "box_muller_reference",
    "normal_reference",
    "gaussian_multiply_reference",
]

#: 32-bit words, hence noise stream positions, per Philox4x32 call.
WORDS_PER_BLOCK = 4

LN2 = math.log(2.0)
SQRT2 = math.sqrt(2.0)
TWO_PI_2M32 = (2.0 * math.pi) * 2.0**-32
#: The float64 "fast inverse square root" constant (Lomont 2003; Robertson 2012 for float64).
RSQRT_MAGIC = 0x5FE6EB50C7B537A9
#: Newton steps on 1/sqrt(y) after the magic-constant start.
RSQRT_STEPS = 5
#: 1/3, 1/5, ..., 1/15: the odd-power coefficients of ln m = 2 atanh(t), innermost last.
LOG_COEFFS = tuple(1.0 / n for n in (3, 5, 7, 9, 11, 13, 15))
#: −1/3!, 1/5!, ..., 1/17!: sin x / x − 1 in powers of x², innermost last.
SIN_COEFFS = tuple((-1.0) ** k / math.factorial(2 * k + 1) for k in range(1, 9))
#: −1/2!, 1/4!, ..., −1/18!: cos x − 1 in powers of x², innermost last.
COS_COEFFS = tuple((-1.0) ** k / math.factorial(2 * k) for k in range(1, 10))

_MASK32 = np.uint64(0xFFFFFFFF)


def _check(n: int, seed: int, offset: int) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    if not isinstance(offset, (int, np.integer)) or int(offset) < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
    if int(offset) + int(n) > 2**63:
        raise ValueError(f"offset + n must be at most 2**63, got offset={offset} and n={n}")


def _blocks(first: int, last: int, seed: int) -> np.ndarray:
    """Philox blocks first..last as a (count, 4) uint32 array (words x0..x3 per row)."""
    blocks = np.arange(first, last + 1, dtype=np.uint64)
    zeros = np.zeros_like(blocks)
    words = philox4x32_10_array(
        blocks & _MASK32, blocks >> np.uint64(32), zeros, zeros, seed & 0xFFFFFFFF, seed >> 32
    )
    return np.stack(words, axis=1)


def random_uint32(n: int, seed: int, offset: int) -> np.ndarray:
    """The 32-bit words at noise stream positions ``offset, ..., offset + n - 1`` (uint32 (n,)).

    Example:
        >>> [hex(w) for w in random_uint32(3, seed=0, offset=1)]
        ['0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    _check(n, seed, offset)
    seed, offset = int(seed), int(offset)
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    first, last = offset // WORDS_PER_BLOCK, (offset + n - 1) // WORDS_PER_BLOCK
    words = _blocks(first, last, seed).reshape(-1)
    start = offset - first * WORDS_PER_BLOCK
    return words[start : start + n]


def uniform_reference(n: int, seed: int, offset: int) -> np.ndarray:
    """Uniform [0, 1) float32 noise: ``float32(w >> 8) · 2^-24`` per stream position.

    Example:
        >>> u = uniform_reference(10_000, seed=3, offset=0)
        >>> u.dtype, bool(u.min() >= 0 and u.max() < 1)
        (dtype('float32'), True)
    """
    words = random_uint32(n, seed, offset)
    return (words >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)


def _horner(x2: np.ndarray, coeffs: tuple[float, ...]) -> np.ndarray:
    """1 + x2 (c0 + x2 (c1 + ... + x2 c_last)), innermost first, each step two roundings."""
    p = np.full_like(x2, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        p = c + x2 * p
    return 1.0 + x2 * p


def _minus_log(a: np.ndarray) -> np.ndarray:
    """−ln((a + 1) · 2^-32) in float64, by the documented sequence (a: uint32 array)."""
    v = a.astype(np.float64) + 1.0
    bits = v.view(np.int64)
    e = (bits >> np.int64(52)) - np.int64(1023)
    m = ((bits & np.int64(0xFFFFFFFFFFFFF)) | np.int64(0x3FF0000000000000)).view(np.float64)
    big = m > SQRT2
    m = np.where(big, m * 0.5, m)
    e = np.where(big, e + 1, e)
    t = (m - 1.0) / (m + 1.0)
    ln_m = (t + t) * _horner(t * t, LOG_COEFFS)
    return (np.int64(32) - e).astype(np.float64) * LN2 - ln_m


def sqrt_reference(y: np.ndarray) -> np.ndarray:
    """sqrt(y) for float64 y >= 0 by the documented Newton sequence (not correctly rounded).

    Example:
        >>> sqrt_reference(np.array([4.0, 2.0])).tolist()  # 1.4142135623730951 correctly rounded
        [2.0, 1.414213562373095]
    """
    y = np.asarray(y, dtype=np.float64)
    g = (np.int64(RSQRT_MAGIC) - (y.view(np.int64) >> np.int64(1))).view(np.float64)
    half = 0.5 * y
    for _ in range(RSQRT_STEPS):
        g = g * (1.5 - (half * g) * g)
    return y * g


def box_muller_reference(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The float64 pair ``(r cos θ, r sin θ)`` of words ``a`` (radius) and ``b`` (angle).

    Example:
        >>> z0, z1 = box_muller_reference(np.array([2**31 - 1], np.uint32), np.array([0], np.uint32))
        >>> round(float(z0[0]), 12), float(z1[0])  # u1 = 1/2, θ = 0: (sqrt(2 ln 2), 0)
        (1.177410022515, 0.0)
    """
    a = np.asarray(a, dtype=np.uint32)
    b = np.asarray(b, dtype=np.uint32)
    r = sqrt_reference(_minus_log(a) * 2.0)
    quadrant = b >> np.uint32(30)
    x = (b & np.uint32(0x3FFFFFFF)).astype(np.float64) * TWO_PI_2M32
    x2 = x * x
    s = x * _horner(x2, SIN_COEFFS)
    c = _horner(x2, COS_COEFFS)
    cos_t = np.select([quadrant == 0, quadrant == 1, quadrant == 2], [c, -s, -c], s)
    sin_t = np.select([quadrant == 0, quadrant == 1, quadrant == 2], [s, c, -s], -c)
    return r * cos_t, r * sin_t


def normal_reference(n: int, seed: int, offset: int, dtype: type = np.float32) -> np.ndarray:
    """Standard normal noise at stream positions ``offset .. offset + n − 1`` (float32 or float64).

    Position ``j`` is ``z[j % 2]`` of the Box–Muller pair formed by the words ``j & ~1`` and
    ``j | 1``, so a position's value does not depend on where a call starts.

    Example:
        >>> whole = normal_reference(9, seed=5, offset=0)
        >>> bool((whole[3:] == normal_reference(6, seed=5, offset=3)).all())
        True
    """
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be np.float32 or np.float64, got {dtype!r}")
    _check(n, seed, offset)
    if n == 0:
        return np.zeros(0, dtype=dtype)
    first_pair = int(offset) // 2
    last_pair = (int(offset) + n - 1) // 2
    words = random_uint32(2 * (last_pair - first_pair + 1), int(seed), 2 * first_pair)
    z0, z1 = box_muller_reference(words[0::2], words[1::2])
    z = np.stack([z0, z1], axis=1).reshape(-1)
    start = int(offset) - 2 * first_pair
    return z[start : start + n].astype(dtype)


def gaussian_multiply_reference(x: np.ndarray, seed: int, offset: int, std: float) -> np.ndarray:
    """Fused Gaussian dropout ``y = x · (1 + std · z)`` over x's row-major elements.

    float32: z rounded to float32 and every operation rounded to float32 (``std`` too), as
    ``x * (1.0 + std * z)`` in torch; float64: the same in float64.

    Example:
        >>> gaussian_multiply_reference(np.zeros(3, np.float32), 0, 0, 0.5).tolist()
        [0.0, 0.0, 0.0]
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x must be a float32 or float64 array, got {x.dtype}")
    z = normal_reference(x.size, seed, offset, x.dtype.type).reshape(x.shape)
    std_t = x.dtype.type(std)
    return x * (x.dtype.type(1.0) + std_t * z)
