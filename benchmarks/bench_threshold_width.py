"""16-bit against 32-bit keep thresholds (issue 15 item 3): what a 32-bit threshold would cost.

dropkit keeps element k iff its 16-bit Philox lane is >= round(p · 2^16): one Philox4x32-10 call
gives 8 elements. A 32-bit threshold (keep probability exact to 2^-33 instead of 2^-17) would use
one 32-bit word per element: 4 elements per call, twice the Philox arithmetic per element. This
script times the two rules in the same numba loop structure as dropkit's CPU kernel (chunks of
256 lanes: Philox into a small buffer, then a compare-and-scale pass), single-threaded, next to
``x.clone()`` and dropkit's own kernel, and prints the ratios. Medians of repeated runs.

    python benchmarks/bench_threshold_width.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numba
import numpy as np
import torch

from dropkit import kernels, ops
from dropkit.reference.philox import PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1

_M0, _M1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
_W0, _W1 = np.uint64(PHILOX_W0), np.uint64(PHILOX_W1)
_MASK32, _S32 = np.uint64(0xFFFFFFFF), np.uint64(32)
CHUNK_WORDS = 128  # 128 words = 256 16-bit lanes (dropkit's chunk) or 128 32-bit lanes


@numba.njit(inline="always", cache=True, nogil=True, error_model="numpy", boundscheck=False)
def _philox(words, first_block, n_blocks, k0, k1):
    for b in range(n_blocks):
        block = np.uint64(first_block + b)
        c0, c1, c2, c3 = block & _MASK32, block >> _S32, np.uint64(0), np.uint64(0)
        key0, key1 = k0, k1
        for _ in range(10):
            prod0 = _M0 * c0
            prod1 = _M1 * c2
            c0, c1, c2, c3 = (
                (prod1 >> _S32) ^ c1 ^ key0,
                prod1 & _MASK32,
                (prod0 >> _S32) ^ c3 ^ key1,
                prod0 & _MASK32,
            )
            key0 = (key0 + _W0) & _MASK32
            key1 = (key1 + _W1) & _MASK32
        words[4 * b] = np.uint32(c0)
        words[4 * b + 1] = np.uint32(c1)
        words[4 * b + 2] = np.uint32(c2)
        words[4 * b + 3] = np.uint32(c3)


@numba.njit(cache=True, nogil=True, error_model="numpy", boundscheck=False)
def dropout16(x, out, k0, k1, threshold, scale):
    words = np.empty(CHUNK_WORDS, dtype=np.uint32)
    lanes = words.view(np.uint16)
    per_chunk = 2 * CHUNK_WORDS
    zero = np.float32(0)
    for start in range(0, x.size, per_chunk):
        stop = min(start + per_chunk, x.size)
        _philox(words, start // 8, (stop - start + 7) // 8, k0, k1)
        for t in range(stop - start):
            v = x[start + t] * scale
            out[start + t] = v if np.int32(lanes[t]) >= threshold else zero


@numba.njit(cache=True, nogil=True, error_model="numpy", boundscheck=False)
def dropout32(x, out, k0, k1, threshold, scale):
    words = np.empty(CHUNK_WORDS, dtype=np.uint32)
    per_chunk = CHUNK_WORDS
    zero = np.float32(0)
    for start in range(0, x.size, per_chunk):
        stop = min(start + per_chunk, x.size)
        _philox(words, start // 4, (stop - start + 3) // 4, k0, k1)
        for t in range(stop - start):
            v = x[start + t] * scale
            out[start + t] = v if np.int64(words[t]) >= threshold else zero


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    p = 0.3
    t16, t32 = ops.threshold(p), int(round(p * 2**32))
    scale = np.float32(1 / (1 - p))
    k0, k1 = np.uint64(0x1234), np.uint64(0x5678)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread")
    print("| elements | x.clone() | dropkit kernel | 16-bit loop | 32-bit loop | 32-bit / 16-bit |")
    print("|---:|---:|---:|---:|---:|---:|")
    for log2 in (16, 18, 20, 22):
        n = 1 << log2
        x = torch.randn(n)
        out = torch.empty_like(x)
        xn, on = x.numpy(), out.numpy()
        clone = _median_seconds(x.clone, args.repeats)
        ours = _median_seconds(
            lambda x=x: kernels.dropout_forward(x, 7, 0, t16, float(scale)), args.repeats
        )
        w16 = _median_seconds(
            lambda xn=xn, on=on: dropout16(xn, on, k0, k1, t16, scale), args.repeats
        )
        w32 = _median_seconds(
            lambda xn=xn, on=on: dropout32(xn, on, k0, k1, t32, scale), args.repeats
        )
        kept = float((on != 0).mean())
        assert abs(kept - (1 - p)) < 0.02 or n < 1 << 16, kept
        print(
            f"| 2^{log2} | {clone * 1e6:.0f} µs | {ours * 1e6:.0f} µs | {w16 * 1e6:.0f} µs | "
            f"{w32 * 1e6:.0f} µs | {w32 / w16:.2f} |"
        )


if __name__ == "__main__":
    main()
