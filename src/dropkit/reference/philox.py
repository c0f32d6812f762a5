"""Readable NumPy reference of dropkit's counter-based RNG and of its dropout mask rule.

This module is the oracle the numba (``dropkit.kernels.cpu``) and Triton (``dropkit.kernels.gpu``)
kernels are tested against bit for bit, and the place to read what those kernels compute. It imports
only NumPy and the standard library (see the package docstring), and no production module imports
it: the kernels hold their own copy of the constants and the threshold rule
(:mod:`dropkit.kernels.philox`), and tests/test_bit_rule.py holds the two statements together.

The generator: Philox4x32-10
----------------------------
Philox4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011;
the Random123 library, also behind cuRAND and Triton's ``tl.randint4x``) maps a 128-bit counter
``(c0, c1, c2, c3)`` and a 64-bit key ``(k0, k1)`` to 128 random bits through ten rounds of

    hi0, lo0 = mulhilo(0xD2511F53, c0)        # 32 x 32 -> 64-bit product, split in halves
    hi1, lo1 = mulhilo(0xCD9E8D57, c2)
    (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
    (k0, k1) = (k0 + 0x9E3779B9, k1 + 0xBB67AE85)   # mod 2**32, the "Weyl" key schedule

It passes TestU01's BigCrush. There is no state: any block of the stream is computed directly
from its index, which is what lets backward regenerate the forward mask from ``(seed, offset)``.

dropkit's stream (the bit-exact contract)
-----------------------------------------
* Key: the 64-bit ``seed`` split as ``k0 = seed & 0xFFFFFFFF``, ``k1 = seed >> 32``.
* Block ``b`` (a 64-bit index) is Philox of the counter ``(b & 0xFFFFFFFF, b >> 32, 0, 0)``.
  This is exactly Triton's ``tl.randint4x(seed, b)`` for an int64 ``b``, so the Triton kernel calls
  the library primitive.
* The stream is the sequence of 16-bit lanes: position ``j`` reads block ``j // 8``, output word
  ``(j % 8) // 2`` and the low (``j % 2 == 0``) or high (``j % 2 == 1``) half of that word. In other
  words, the Philox outputs ``x0, x1, x2, x3`` of blocks 0, 1, 2, ... laid end to end and read as
  little-endian ``uint16``. One Philox call feeds eight elements.
* The element with row-major index ``k`` of a call at stream ``offset`` uses position
  ``offset + k`` (64-bit arithmetic; ``0 <= offset`` and ``offset + n <= 2**63``).
* Keep rule: with ``threshold = floor(p * 65536 + 1/2)`` (an int in [0, 65536]), element ``k`` is
  kept iff ``r16(offset + k) >= threshold``. So the keep probability is exactly
  ``1 - threshold / 65536``: p is represented to within 2**-17; ``p = 0`` keeps everything and
  ``p = 1`` (threshold 65536) drops everything.
* Forward: ``y = x * scale`` where kept, ``0`` elsewhere (a dropped NaN or inf gives 0), with
  ``scale = 1 / keep_probability`` (0 when nothing is kept) supplied by the caller. The product is
  computed in float32 for float16/bfloat16/float32 inputs (float64 for float64) and rounded once to
  the input dtype, round-to-nearest-even: what ``torch`` does for ``x * scale`` with a Python scalar.

Example:
    >>> [hex(w) for w in philox4x32_10((0, 0, 0, 0), (0, 0))]
    ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    >>> keep_mask_reference(8, seed=0, offset=0, p=0.5).tolist()
    [True, False, True, True, True, True, True, True]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# Random123 philox.h: multipliers of the two 32 x 32 -> 64 multiplications per round and the
# Weyl-sequence increments of the key schedule (golden ratio and sqrt(3) - 1, as 32-bit fractions).
PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10

#: Number of 16-bit lanes, hence stream positions, produced by one Philox4x32 call.
LANES_PER_BLOCK = 8
#: Resolution of the keep threshold: a drop rate is represented as threshold / 65536.
THRESHOLD_RANGE = 1 << 16

_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter: Sequence[int], key: Sequence[int]) -> tuple[int, int, int, int]:
    """Philox4x32-10 of one 128-bit counter under one 64-bit key, in plain Python integers.

    Ten rounds of ``(c0, c1, c2, c3) <- (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1,
    lo(M0 c0))`` with the key bumped by the Weyl constants between rounds (Random123).

    Args:
        counter: four 32-bit words ``(c0, c1, c2, c3)``, c0 the least significant.
        key: two 32-bit words ``(k0, k1)``.

    Returns:
        The four 32-bit output words.

    Example:
        >>> [hex(w) for w in philox4x32_10([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2)]
        ['0x408f276d', '0x41c83b0e', '0xa20bc7c6', '0x6d5451fd']
    """
    if len(counter) != 4 or len(key) != 2:
        raise ValueError(
            f"philox4x32_10 needs 4 counter words and 2 key words, got {len(counter)} and {len(key)}"
        )
    for word in (*counter, *key):
        if not isinstance(word, (int, np.integer)) or not 0 <= int(word) <= 0xFFFFFFFF:
            raise ValueError(f"Philox words must be integers in [0, 2**32), got {word!r}")
    c0, c1, c2, c3 = (int(w) for w in counter)
    k0, k1 = (int(w) for w in key)
    for _ in range(PHILOX_ROUNDS):
        prod0 = PHILOX_M0 * c0
        prod1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = (
            (prod1 >> 32) ^ c1 ^ k0,
            prod1 & 0xFFFFFFFF,
            (prod0 >> 32) ^ c3 ^ k1,
            prod0 & 0xFFFFFFFF,
        )
        k0 = (k0 + PHILOX_W0) & 0xFFFFFFFF
        k1 = (k1 + PHILOX_W1) & 0xFFFFFFFF
    return c0, c1, c2, c3


def philox4x32_10_array(
    c0: np.ndarray, c1: np.ndarray, c2: np.ndarray, c3: np.ndarray, k0: int, k1: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Philox4x32-10 of many counters under one key, vectorised over NumPy arrays.

    Same rounds as :func:`philox4x32_10`; the 32 x 32 -> 64-bit products are taken in ``uint64``.

    Args:
        c0, c1, c2, c3: counter words, arrays of one shape with values in [0, 2**32).
        k0, k1: key words in [0, 2**32).

    Returns:
        Four ``uint32`` arrays of the counters' shape.

    Example:
        >>> out = philox4x32_10_array(*(np.zeros(2, np.uint32),) * 4, 0, 0)
        >>> hex(int(out[0][1]))
        '0x6627e8d5'
    """
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in (c0, c1, c2, c3))
    key0, key1 = np.uint64(k0), np.uint64(k1)
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    w0, w1 = np.uint64(PHILOX_W0), np.uint64(PHILOX_W1)
    shift = np.uint64(32)
    for _ in range(PHILOX_ROUNDS):
        prod0 = m0 * c0
        prod1 = m1 * c2
        c0, c1, c2, c3 = (
            (prod1 >> shift) ^ c1 ^ key0,
            prod1 & _MASK32,
            (prod0 >> shift) ^ c3 ^ key1,
            prod0 & _MASK32,
        )
        key0 = (key0 + w0) & _MASK32
        key1 = (key1 + w1) & _MASK32
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))  # type: ignore[return-value]


def _check_stream_args(n: int, seed: int, offset: int) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    if not isinstance(offset, (int, np.integer)) or int(offset) < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
    if int(offset) + int(n) > 2**63:
        raise ValueError(f"offset + n must be at most 2**63, got offset={offset} and n={n}")


def random_uint16(n: int, seed: int, offset: int) -> np.ndarray:
    """The 16-bit random numbers at stream positions ``offset, ..., offset + n - 1``.

    Position ``j`` is the 16-bit lane ``j % 8`` of Philox block ``j // 8`` (little-endian halves of
    the output words ``x0 .. x3``), keyed by ``(seed & 0xFFFFFFFF, seed >> 32)``.

    Args:
        n: how many numbers.
        seed: the 64-bit key, in [0, 2**64).
        offset: the first stream position, ``offset + n <= 2**63``.

    Returns:
        A ``uint16`` array of shape (n,).

    Example:
        >>> random_uint16(4, seed=0, offset=0).tolist()  # 0x6627e8d5, 0xe169c58d -> low half first
        [59605, 26151, 50573, 57705]
    """
    _check_stream_args(n, seed, offset)
    seed, offset = int(seed), int(offset)
    if n == 0:
        return np.zeros(0, dtype=np.uint16)
    first_block = offset // LANES_PER_BLOCK
    last_block = (offset + n - 1) // LANES_PER_BLOCK
    blocks = np.arange(first_block, last_block + 1, dtype=np.uint64)
    zeros = np.zeros_like(blocks)
    words = philox4x32_10_array(
        blocks & _MASK32, blocks >> np.uint64(32), zeros, zeros, seed & 0xFFFFFFFF, seed >> 32
    )
    # (blocks, 4) uint32 row-major, read as little-endian uint16: lanes in stream order.
    lanes = np.stack(words, axis=1).astype("<u4").view("<u2").reshape(-1)
    start = offset - first_block * LANES_PER_BLOCK
    return lanes[start : start + n].astype(np.uint16)


def threshold_from_p(p: float) -> int:
    """The integer keep threshold for drop rate ``p``: ``floor(p * 65536 + 1/2)``.

    ``p * 65536`` is exact in float64, so ties are rounded up deterministically.

    Args:
        p: drop probability in [0, 1].

    Returns:
        An int in [0, 65536].

    Example:
        >>> threshold_from_p(0.1), threshold_from_p(1.0)
        (6554, 65536)
    """
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
        raise TypeError(f"p must be a real number, got {type(p).__name__}")
    if not (0.0 <= float(p) <= 1.0):  # also rejects NaN
        raise ValueError(f"p must be a number in [0, 1], got {p}")
    return int(math.floor(float(p) * THRESHOLD_RANGE + 0.5))


def keep_probability_from_threshold(threshold: int) -> float:
    """The exact keep probability ``1 - threshold / 65536`` of the rule ``r16 >= threshold``.

    Example:
        >>> keep_probability_from_threshold(16384)
        0.75
    """
    _check_threshold(threshold)
    return 1.0 - threshold / THRESHOLD_RANGE


def scale_from_threshold(threshold: int) -> float:
    """Inverted-dropout scale ``1 / keep_probability`` for a threshold (0 when nothing is kept).

    Example:
        >>> scale_from_threshold(32768)
        2.0
    """
    keep = keep_probability_from_threshold(threshold)
    return 0.0 if keep == 0.0 else 1.0 / keep


def _check_threshold(threshold: int) -> None:
    if (
        not isinstance(threshold, (int, np.integer))
        or isinstance(threshold, bool)
        or not 0 <= int(threshold) <= THRESHOLD_RANGE
    ):
        raise ValueError(f"threshold must be an integer in [0, 65536], got {threshold!r}")


def keep_mask_from_threshold(n: int, seed: int, offset: int, threshold: int) -> np.ndarray:
    """Keep mask of ``n`` elements at stream ``offset``: ``r16(offset + k) >= threshold``.

    Example:
        >>> keep_mask_from_threshold(4, seed=0, offset=0, threshold=32768).tolist()
        [True, False, True, True]
    """
    _check_threshold(threshold)
    return random_uint16(n, seed, offset) >= int(threshold)


def keep_mask_reference(n: int, seed: int, offset: int, p: float) -> np.ndarray:
    """Keep mask (True = kept) of ``n`` elements for drop rate ``p`` at stream ``offset``.

    Each entry is kept with probability exactly ``1 - threshold_from_p(p) / 65536``.

    Args:
        n: number of elements (the row-major size of the tensor being dropped).
        seed: 64-bit seed in [0, 2**64).
        offset: first stream position of the call.
        p: drop probability in [0, 1].

    Returns:
        A bool array of shape (n,).

    Example:
        >>> keep_mask_reference(6, seed=1234, offset=2**40, p=0.0).all()
        np.True_
    """
    return keep_mask_from_threshold(n, seed, offset, threshold_from_p(p))


def _scaled(x: np.ndarray, scale: float) -> np.ndarray:
    """``x * scale`` as torch computes it: in float32 (float64 for float64), rounded once."""
    if x.dtype == np.float64:
        return x * np.float64(scale)
    if x.dtype in (np.float32, np.float16):
        with np.errstate(over="ignore"):  # overflow to inf is the intended IEEE result
            return (x.astype(np.float32) * np.float32(scale)).astype(x.dtype)
    raise TypeError(f"x must be a float16, float32 or float64 array, got {x.dtype}")


def dropout_forward_reference(
    x: np.ndarray, seed: int, offset: int, threshold: int, scale: float
) -> np.ndarray:
    """Dropout of ``x`` (any shape, read in row-major order) with the stream at ``offset``.

    ``y[k] = x[k] * scale`` if ``r16(offset + k) >= threshold`` else ``0``.

    Args:
        x: float16, float32 or float64 array.
        seed: 64-bit seed.
        offset: stream position of ``x``'s first element.
        threshold: keep threshold in [0, 65536].
        scale: the factor for kept elements (usually ``scale_from_threshold(threshold)``).

    Returns:
        An array of ``x``'s shape and dtype.

    Example:
        >>> dropout_forward_reference(np.ones(4, np.float32), 0, 0, 32768, 2.0).tolist()
        [2.0, 0.0, 2.0, 2.0]
    """
    x = np.asarray(x)
    keep = keep_mask_from_threshold(x.size, seed, offset, threshold).reshape(x.shape)
    return np.where(keep, _scaled(x, scale), np.zeros((), dtype=x.dtype)).astype(x.dtype)


def dropout_backward_reference(
    grad: np.ndarray, seed: int, offset: int, threshold: int, scale: float
) -> np.ndarray:
    """Gradient of :func:`dropout_forward_reference`: the same mask and scale applied to ``grad``.

    Example:
        >>> dropout_backward_reference(np.ones(4), 0, 0, 32768, 2.0).tolist()
        [2.0, 0.0, 2.0, 2.0]
    """
    return dropout_forward_reference(grad, seed, offset, threshold, scale)


def bias_dropout_add_reference(
    x: np.ndarray,
    bias: np.ndarray,
    residual: np.ndarray,
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
) -> np.ndarray:
    """``residual + dropout(x + bias)``, each operation rounded to the dtype as torch eager does.

    Args:
        x: array (..., H).
        bias: array (H,), broadcast over the last dim.
        residual: array of ``x``'s shape.
        seed, offset, threshold, scale: as in :func:`dropout_forward_reference`.

    Example:
        >>> bias_dropout_add_reference(
        ...     np.zeros((1, 4)), np.ones(4), np.ones((1, 4)), 0, 0, 32768, 2.0
        ... ).tolist()
        [[3.0, 1.0, 3.0, 3.0]]
    """
    x = np.asarray(x)
    compute = np.float64 if x.dtype == np.float64 else np.float32
    h = (x.astype(compute) + np.asarray(bias).astype(compute)).astype(x.dtype)
    dropped = dropout_forward_reference(h, seed, offset, threshold, scale)
    return (dropped.astype(compute) + np.asarray(residual).astype(compute)).astype(x.dtype)
