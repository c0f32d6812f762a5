"""The kernels' bit rule: Philox4x32-10's constants, the 16-bit lane layout and the keep threshold.

The one production home of these numbers: :mod:`dropkit.kernels.cpu` (numba),
:mod:`dropkit.kernels.gpu` (Triton), :mod:`dropkit.kernels.fallback` (torch ops),
:mod:`dropkit.kernels._checks` and :mod:`dropkit.ops` import them from here. The NumPy reference
(:mod:`dropkit.reference.philox`, the tests' oracle, which also spells out the whole stream
contract) states them again independently and imports nothing of dropkit; tests/test_kernels.py
holds the two against each other and against Random123's known-answer vectors.

* Philox4x32-10 (Salmon et al. 2011, Random123): ten rounds of two 32 x 32 -> 64-bit
  multiplications by ``PHILOX_M0``/``PHILOX_M1``, the key bumped by the Weyl increments
  ``PHILOX_W0``/``PHILOX_W1`` between rounds; key ``(seed & 0xFFFFFFFF, seed >> 32)``, block ``b``
  the counter ``(b & 0xFFFFFFFF, b >> 32, 0, 0)``.
* One block gives ``LANES_PER_BLOCK`` = 8 16-bit lanes: stream position ``j`` is lane ``j % 8``
  of block ``j // 8``.
* Keep rule: element ``k`` of a call at ``offset`` is kept iff ``r16(offset + k) >= threshold``,
  ``threshold = floor(p * 65536 + 1/2)`` in [0, ``THRESHOLD_RANGE``], so the keep probability is
  exactly ``1 - threshold / 65536``.

Example:
    >>> threshold_from_p(0.1), keep_probability_from_threshold(16384), scale_from_threshold(32768)
    (6554, 0.75, 2.0)
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "LANES_PER_BLOCK",
    "PHILOX_M0",
    "PHILOX_M1",
    "PHILOX_ROUNDS",
    "PHILOX_W0",
    "PHILOX_W1",
    "THRESHOLD_RANGE",
    "keep_probability_from_threshold",
    "scale_from_threshold",
    "threshold_from_p",
]

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


def threshold_from_p(p: float) -> int:
    """The integer keep threshold for drop rate ``p``: ``floor(p * 65536 + 1/2)``.

    ``p * 65536`` is exact in float64, so ties are rounded up deterministically.

    Args:
        p: drop probability in [0, 1].

    Returns:
        An int in [0, 65536].

    Raises:
        TypeError: p is not a real number.
        ValueError: p is outside [0, 1] or NaN.

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
    if (
        not isinstance(threshold, (int, np.integer))
        or isinstance(threshold, bool)
        or not 0 <= int(threshold) <= THRESHOLD_RANGE
    ):
        raise ValueError(f"threshold must be an integer in [0, 65536], got {threshold!r}")
    return 1.0 - threshold / THRESHOLD_RANGE


def scale_from_threshold(threshold: int) -> float:
    """Inverted-dropout scale ``1 / keep_probability`` for a threshold (0 when nothing is kept).

    Example:
        >>> scale_from_threshold(32768)
        2.0
    """
    keep = keep_probability_from_threshold(threshold)
    return 0.0 if keep == 0.0 else 1.0 / keep
