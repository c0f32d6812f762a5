"""numba CPU kernels of dropkit's counter-based dropout (Philox4x32-10, 16-bit lanes).

The bits are those of :mod:`dropkit.reference.philox` (read its docstring for the full contract):
element ``k`` of a call at stream ``offset`` is kept iff the 16-bit lane ``offset + k`` of the
Philox4x32-10 stream keyed by ``seed`` is ``>= threshold``; kept elements become ``x * scale``,
dropped ones ``0``. The product is rounded as torch rounds ``x * scale`` for a Python scalar: in
float32 (float64 for float64) and then once to the tensor's dtype, round-to-nearest-even.

How it is fast:

* One Philox call gives eight elements (16-bit lanes), so the RNG costs ~2.5 32-bit multiplies per
  element; the Philox loop over a chunk of blocks and the element loop over the chunk are both
  plain counted loops that LLVM vectorises (``vpmuludq`` for the 32 x 32 -> 64-bit products).
* The tensor is cut into chunks of ``CHUNK`` stream positions (aligned to the stream, so no Philox
  block is computed twice); the ``prange`` runs over at most 256 work items, each a contiguous run
  of at least 32 chunks with one lane buffer. Chunks are small (256 lanes, 512 bytes) so that Philox arithmetic and the
  memory stream interleave finely: with 8192-lane chunks the loads stalled during each long Philox
  phase, and the forward at 2^25 floats took 1.5x a copy into a preallocated tensor instead of
  1.2x. x is read once and y written once.
* Below ``PARALLEL_MIN`` elements a serial twin of each kernel runs, avoiding the thread-pool launch;
  above, the faster of the two twins as measured at run time (see :mod:`dropkit.kernels.threads`: on an
  oversubscribed machine a parallel region can cost a whole scheduler time slice).
* numba has no float16/bfloat16: those tensors are viewed as ``uint16`` and converted with bit
  operations (bfloat16 <-> float32 is a 16-bit shift with round-to-nearest-even; float16 uses the
  branch-free conversions of the FP16 library that torch's ``c10::Half`` uses), which are exact.
* Outputs of ``HUGE_PAGE_MIN_BYTES`` or more are allocated with ``madvise(MADV_HUGEPAGE)``: the
  page faults of a fresh 128 MiB tensor otherwise cost as much as the kernel itself.
* Compiled lazily per dtype on first use and cached on disk (``cache=True``), so later processes
  load machine code instead of compiling. No ``fastmath``: the only float operations are the
  products and sums that must round exactly as torch's (contraction into FMAs or reassociation
  would change bits), and the integer Philox code gains nothing from it.

Every function takes contiguous CPU tensors and returns new contiguous tensors (``*_out`` variants
write into a given one, which may be the input itself for in-place dropout).
"""

from __future__ import annotations

import ctypes
import sys

import numba
import numpy as np
import torch
from numba import prange

from dropkit.kernels._checks import check_bias_residual, check_cpu_tensor, check_stream
from dropkit.kernels.philox import (
    LANES_PER_BLOCK,
    PHILOX_M0,
    PHILOX_M1,
    PHILOX_W0,
    PHILOX_W1,
)
from dropkit.kernels.threads import (
    PARALLEL_COLD,
    PARALLEL_MIN,
    PathChooser,
    kernel_threads,
    run_twins,
    set_max_threads,
)

__all__ = [
    "BDA_DRIVERS",
    "CHUNK",
    "DROPOUT_DRIVERS",
    "MASK_DRIVERS",
    "PARALLEL_COLD",
    "PARALLEL_MIN",
    "bias_dropout_add",
    "dropout_backward",
    "dropout_forward",
    "dropout_forward_out",
    "empty_like",
    "keep_mask",
    "kernel_threads",
    "random_uint16",
    "scale_arg",
    "serial_entry",
    "set_max_threads",
    "warmup_calls",
]

#: Stream positions per unit of work (a multiple of 8; 512 bytes of random lanes).
CHUNK = 256

_BLOCKS_PER_CHUNK = CHUNK // LANES_PER_BLOCK
#: Parallel work items per call at most (prange splits them evenly over the threads); a constant,
#: not numba.get_num_threads(), which would stop numba caching the kernels.
_WORK_ITEMS = 256
#: ... and at least this many chunks (8192 lanes) each, so a mid-size call pays few item set-ups.
_MIN_CHUNKS_PER_ITEM = 32
_M0 = np.uint64(PHILOX_M0)
_M1 = np.uint64(PHILOX_M1)
_W0 = np.uint64(PHILOX_W0)
_W1 = np.uint64(PHILOX_W1)
_MASK32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)

_JIT = {"cache": True, "nogil": True, "error_model": "numpy", "boundscheck": False}


# ----------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------
@numba.njit(inline="always", **_JIT)
def _philox_fill(words, first_block, n_blocks, k0, k1):
    """words[4 b + w] = output word w of Philox4x32-10(counter=(blk lo, blk hi, 0, 0), key)."""
    for b in range(n_blocks):
        block = np.uint64(first_block + b)
        c0 = block & _MASK32
        c1 = block >> _S32
        c2 = np.uint64(0)
        c3 = np.uint64(0)
        key0 = k0
        key1 = k1
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


#: The generator, public for the noise kernels (:mod:`dropkit.kernels.noise_cpu`): one Philox.
philox_fill = _philox_fill


@numba.njit(inline="always", **_JIT)
def _chunk_span(c, n, offset):
    """Elements [i0, i1) of chunk c, their first Philox block and the lane of element i0."""
    # Work in indices relative to offset: absolute positions such as offset + n or the chunk's
    # end can reach 2^63 and overflow int64; every absolute value formed here is below offset + n.
    rel0 = offset % CHUNK
    i0 = max(0, c * CHUNK - rel0)
    i1 = min(n, (c + 1) * CHUNK - rel0)
    lo = offset + i0
    first_block = lo // LANES_PER_BLOCK
    n_blocks = (offset + (i1 - 1)) // LANES_PER_BLOCK - first_block + 1
    lane0 = lo - first_block * LANES_PER_BLOCK
    return i0, i1, first_block, n_blocks, lane0


@numba.njit(inline="always", **_JIT)
def _n_chunks(n, offset):
    return (offset % CHUNK + n + CHUNK - 1) // CHUNK


# ----------------------------------------------------------------------------------------------
# float16 / bfloat16 <-> float32, exact, on uint16 bit patterns
# ----------------------------------------------------------------------------------------------
@numba.njit(inline="always", **_JIT)
def _f16_to_f32(h):
    # FP16 library fp16_ieee_to_fp32_value (as c10::Half): exact, branch-free.
    w = np.uint32(h) << np.uint32(16)
    sign = w & np.uint32(0x80000000)
    two_w = np.uint32(w + w)  # numba widens uint32 sums to 64 bits: wrap explicitly
    normalized = np.uint32((two_w >> np.uint32(4)) + np.uint32(0xE0 << 23)).view(
        np.float32
    ) * np.float32(2.0**-112)
    denormalized = np.uint32((two_w >> np.uint32(17)) | np.uint32(126 << 23)).view(
        np.float32
    ) - np.float32(0.5)
    if two_w < np.uint32(1 << 27):
        bits = np.float32(denormalized).view(np.uint32)
    else:
        bits = np.float32(normalized).view(np.uint32)
    return np.uint32(sign | bits).view(np.float32)


@numba.njit(inline="always", **_JIT)
def _f32_to_f16(f):
    # FP16 library fp16_ieee_from_fp32_value (as c10::Half): round-to-nearest-even, exact.
    base = (abs(f) * np.float32(2.0**112)) * np.float32(2.0**-110)
    w = np.float32(f).view(np.uint32)
    shl1_w = np.uint32(w + w)  # numba widens uint32 sums to 64 bits: wrap explicitly
    sign = w & np.uint32(0x80000000)
    bias = shl1_w & np.uint32(0xFF000000)
    if bias < np.uint32(0x71000000):
        bias = np.uint32(0x71000000)
    base = np.uint32((bias >> np.uint32(1)) + np.uint32(0x07800000)).view(np.float32) + base
    bits = np.float32(base).view(np.uint32)
    exp_bits = (bits >> np.uint32(13)) & np.uint32(0x7C00)
    mantissa_bits = bits & np.uint32(0x0FFF)
    nonsign = exp_bits + mantissa_bits
    if shl1_w > np.uint32(0xFF000000):
        nonsign = np.uint32(0x7E00)
    return np.uint16((sign >> np.uint32(16)) | nonsign)


@numba.njit(inline="always", **_JIT)
def _bf16_to_f32(h):
    return np.uint32(np.uint32(h) << np.uint32(16)).view(np.float32)


@numba.njit(inline="always", **_JIT)
def _f32_to_bf16(f):
    # c10::BFloat16 round_to_nearest_even: NaN -> 0x7FC0.
    u = np.float32(f).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    if f != f:
        rounded = np.uint32(0x7FC0)
    return np.uint16(rounded)


# ----------------------------------------------------------------------------------------------
# Element loops of one chunk (float32/float64 native; float16/bfloat16 on uint16 bits)
# ----------------------------------------------------------------------------------------------
# Loops index slices from 0 so LLVM sees non-negative indices: numba's negative-index wraparound
# check would otherwise block vectorisation.
@numba.njit(inline="always", **_JIT)
def _apply_float(x, out, lanes, i0, i1, lane0, threshold, scale):
    zero = out.dtype.type(0)
    xs = x[i0:i1]
    ys = out[i0:i1]
    rs = lanes[lane0 : lane0 + i1 - i0]
    for t in range(i1 - i0):
        v = xs[t] * scale
        ys[t] = v if np.int32(rs[t]) >= threshold else zero


@numba.njit(inline="always", **_JIT)
def _apply_f16(x, out, lanes, i0, i1, lane0, threshold, scale):
    xs = x[i0:i1]
    ys = out[i0:i1]
    rs = lanes[lane0 : lane0 + i1 - i0]
    for t in range(i1 - i0):
        v = _f32_to_f16(_f16_to_f32(xs[t]) * scale)
        ys[t] = v if np.int32(rs[t]) >= threshold else np.uint16(0)


@numba.njit(inline="always", **_JIT)
def _apply_bf16(x, out, lanes, i0, i1, lane0, threshold, scale):
    xs = x[i0:i1]
    ys = out[i0:i1]
    rs = lanes[lane0 : lane0 + i1 - i0]
    for t in range(i1 - i0):
        v = _f32_to_bf16(_bf16_to_f32(xs[t]) * scale)
        ys[t] = v if np.int32(rs[t]) >= threshold else np.uint16(0)


@numba.njit(inline="always", **_JIT)
def _apply_mask(out, lanes, i0, i1, lane0, threshold):
    ys = out[i0:i1]
    rs = lanes[lane0 : lane0 + i1 - i0]
    for t in range(i1 - i0):
        ys[t] = np.int32(rs[t]) >= threshold


@numba.njit(inline="always", **_JIT)
def _apply_lanes(out, lanes, i0, i1, lane0):
    ys = out[i0:i1]
    rs = lanes[lane0 : lane0 + i1 - i0]
    for t in range(i1 - i0):
        ys[t] = rs[t]


# bias + dropout + residual: rows of length H inside the chunk, so the inner loops stay contiguous.
@numba.njit(inline="always", **_JIT)
def _bda_float(x, bias, res, out, lanes, i0, i1, lane0, threshold, scale):
    h_len = bias.shape[0]
    zero = out.dtype.type(0)
    i = i0
    while i < i1:
        col0 = i % h_len
        stop = min(i1, i - col0 + h_len)
        xs = x[i:stop]
        bs = bias[col0 : col0 + stop - i]
        zs = res[i:stop]
        ys = out[i:stop]
        rs = lanes[lane0 + i - i0 : lane0 + stop - i0]
        for t in range(stop - i):
            h = xs[t] + bs[t]
            d = h * scale if np.int32(rs[t]) >= threshold else zero
            ys[t] = zs[t] + d
        i = stop


@numba.njit(inline="always", **_JIT)
def _bda_f16(x, bias, res, out, lanes, i0, i1, lane0, threshold, scale):
    h_len = bias.shape[0]
    i = i0
    while i < i1:
        col0 = i % h_len
        stop = min(i1, i - col0 + h_len)
        xs = x[i:stop]
        bs = bias[col0 : col0 + stop - i]
        zs = res[i:stop]
        ys = out[i:stop]
        rs = lanes[lane0 + i - i0 : lane0 + stop - i0]
        for t in range(stop - i):
            h = _f16_to_f32(_f32_to_f16(_f16_to_f32(xs[t]) + _f16_to_f32(bs[t])))
            d = _f16_to_f32(_f32_to_f16(h * scale))
            if np.int32(rs[t]) < threshold:
                d = np.float32(0.0)
            ys[t] = _f32_to_f16(_f16_to_f32(zs[t]) + d)
        i = stop


@numba.njit(inline="always", **_JIT)
def _bda_bf16(x, bias, res, out, lanes, i0, i1, lane0, threshold, scale):
    h_len = bias.shape[0]
    i = i0
    while i < i1:
        col0 = i % h_len
        stop = min(i1, i - col0 + h_len)
        xs = x[i:stop]
        bs = bias[col0 : col0 + stop - i]
        zs = res[i:stop]
        ys = out[i:stop]
        rs = lanes[lane0 + i - i0 : lane0 + stop - i0]
        for t in range(stop - i):
            h = _bf16_to_f32(_f32_to_bf16(_bf16_to_f32(xs[t]) + _bf16_to_f32(bs[t])))
            d = _bf16_to_f32(_f32_to_bf16(h * scale))
            if np.int32(rs[t]) < threshold:
                d = np.float32(0.0)
            ys[t] = _f32_to_bf16(_bf16_to_f32(zs[t]) + d)
        i = stop


# ----------------------------------------------------------------------------------------------
# Drivers: a parallel and a serial twin per element kind (numba caches each by name).
# ----------------------------------------------------------------------------------------------
@numba.njit(parallel=True, **_JIT)
def _dropout_float_par(x, out, offset, k0, k1, threshold, scale):
    n = x.shape[0]
    n_chunks = _n_chunks(n, offset)
    n_workers = max(1, min(n_chunks // _MIN_CHUNKS_PER_ITEM, _WORK_ITEMS))
    for w in prange(n_workers):  # a contiguous run of chunks per work item, one buffer each
        words = np.empty(4 * _BLOCKS_PER_CHUNK, dtype=np.uint32)
        for c in range(n_chunks * w // n_workers, n_chunks * (w + 1) // n_workers):
            i0, i1, first_block, n_blocks, lane0 = _chunk_span(c, n, offset)
            _philox_fill(words, first_block, n_blocks, k0, k1)
            _apply_float(x, out, words.view(np.uint16), i0, i1, lane0, threshold, scale)


@numba.njit(**_JIT)
def _dropout_float_ser(x, out, offset, k0, k1, threshold, scale):
    n = x.shape[0]
    words = np.empty(4 * _BLOCKS_PER_CHUNK, dtype=np.uint32)
    for c in range(_n_chunks(n, offset)):
        i0, i1, first_block, n_blocks, lane0 = _chunk_span(c, n, offset)
        _philox_fill(words, first_block, n_blocks, k0, k1)
        _apply_float(x, out, words.view(np.uint16), i0, i1, lane0, threshold, scale)


@numba.njit(parallel=True, **_JIT)
def _dropout_f16_par(x, out, offset, k0, k1, threshold, scale):
    n = x.shape[0]
    n_chunks = _n_chunks(n, offset)
    n_workers = max(1, min(n_chunks // _MIN_CHUNKS_PER_ITEM, _WORK_ITEMS))
    for w in prange(n_workers):  # a contiguous run of chunks per work item, one buffer each
        words = np.empty(4 * _BLOCKS_PER_CHUNK, dtype=np.uint32)
        for c in range(n_chunks * w // n_workers, n_chunks * (w + 1) // n_workers):
            i0, i1, first_block, n_blocks, lane0 = _chunk_span(c, n, offset)
            _philox_fill(words, first_block, n_blocks, k0, k1)
            _apply_f16(x, out, words.view(np.uint16), i0, i1, lane0, threshold, scale)


@numba.njit(**_JIT)
def _dropout_f16_ser(x, out, offset, k0, k1, threshold, scale):
    n = x.shape[0]
    words = np.empty(4 * _BLOCKS_PER_CHUNK, dtype=np.uint32)
    for c in range(_n_chunks(n, offset)):
        i0, i1, first_block, n_blocks, lane0 = _chunk_span(c, n, offset)
        _philox_fill(words, first_block, n_blocks, k0, k1)
        _apply_f16(x, out, words.view(np.uint16), i0, i1, lane0, threshold, scale)


@numba.njit(parallel=True, **_JIT)
def _dropout_bf16_par(x, out, offset, k0, k1, threshold, scale):
    n = x.shape[0]
    n_chunks = _n_chunks(n, offset)
    n_workers = max(1, min(n_chunks // _MIN_CHUNKS_PER_ITEM, _WORK_ITEMS))
    for w in prange(n_workers):  # a contiguous run of chunks per work item, one buffer each
        words = np.empty(4 * _BLOCKS_PER_CHUNK, dtype=np.uint32)
        for c in range(n_chunks * w // n_workers, n_chunks * (w + 1) // n_workers):
            i0, i1, first_block, n_blocks, lane0 = _chunk_span(c, n, offset)
            _philox_fill(words, first_block, n_blocks, k0, k1)
            _apply_bf16(x, out, words.view(np.uint16), i0, i1, lane0, threshold, scale)


@numba.njit(**_JIT)
def _dropout_bf16_ser(x, out, offset, k0, k1, threshold, scale):
    n = x.shape[0]
    words = np.empty(4 * _BLOCKS_PER_CHUNK, dtype=np.uint32)
    for c in range(_n_chunks(n, offset)):
        i0, i1, first_block, n_blocks, lane0 = _chunk_span(c, n, offset)
        _philox_fill(words, first_block, n_blocks, k0, k1)
        _apply_bf16(x, out, words.view(np.uint16), i0, i1, lane0, threshold, scale)


@numba.njit(parallel=True, **_JIT)
def _mask_par(out, offset, k0, k1, threshold):
    n = out.shape[0]
    n_chunks = _n_chunks(n, offset)
    n_workers = max(1, min(n_chunks // _MIN_CHUNKS_PER_ITEM, _WORK_ITEMS))
    for w in prange(n_workers):  # a contiguous run of chunks per work item, one buffer each
        words = np.empty(4 * _BLOCKS_PER_CHUNK, dtype=np.uint32)
        for c in range(n_chunks * w // n_workers, n_chunks * (w + 1) // n_workers):
            i0, i1, first_block, n_blocks, lane0 = _chunk_span(c, n, offset)
            _philox_fill(words, first_block, n_blocks, k0, k1)
            _apply_mask(out, words.view(np.uint16), i0, i1, lane0, threshold)


@numba.njit(**_JIT)
def _mask_ser(out, offset, k0, k1, threshold):
    n = out.shape[0]
    words = np.empty(4 * _BLOCKS_PER_CHUNK, dtype=np.uint32)
    for c in range(_n_chunks(n, offset)):
        i0, i1, first_block, n_blocks, lane0 = _chunk_span(c, n, offset)
        _philox_fill(words, first_block, n_blocks, k0, k1)
        _apply_mask(out, words.view(np.uint16), i0, i1, lane0, threshold)


@numba.njit(parallel=True, **_JIT)
def _lanes_par(out, offset, k0, k1, threshold):  # threshold unused: the drivers share a signature
    n = out.shape[0]
    n_chunks = _n_chunks(n, offset)
    n_workers = max(1, min(n_chunks // _MIN_CHUNKS_PER_ITEM, _WORK_ITEMS))
    for w in prange(n_workers):  # a contiguous run of chunks per work item, one buffer each
        words = np.empty(4 * _BLOCKS_PER_CHUNK, dtype=np.uint32)
        for c in range(n_chunks * w // n_workers, n_chunks * (w + 1) // n_workers):
            i0, i1, first_block, n_blocks, lane0 = _chunk_span(c, n, offset)
            _philox_fill(words, first_block, n_blocks, k0, k1)
            _apply_lanes(out, words.view(np.uint16), i0, i1, lane0)


@numba.njit(**_JIT)
def _lanes_ser(out, offset, k0, k1, threshold):
    n = out.shape[0]
    words = np.empty(4 * _BLOCKS_PER_CHUNK, dtype=np.uint32)
    for c in range(_n_chunks(n, offset)):
        i0, i1, first_block, n_blocks, lane0 = _chunk_span(c, n, offset)
        _philox_fill(words, first_block, n_blocks, k0, k1)
        _apply_lanes(out, words.view(np.uint16), i0, i1, lane0)


@numba.njit(parallel=True, **_JIT)
def _bda_float_par(x, bias, res, out, offset, k0, k1, threshold, scale):
    n = x.shape[0]
    n_chunks = _n_chunks(n, offset)
    n_workers = max(1, min(n_chunks // _MIN_CHUNKS_PER_ITEM, _WORK_ITEMS))
    for w in prange(n_workers):  # a contiguous run of chunks per work item, one buffer each
        words = np.empty(4 * _BLOCKS_PER_CHUNK, dtype=np.uint32)
        for c in range(n_chunks * w // n_workers, n_chunks * (w + 1) // n_workers):
            i0, i1, first_block, n_blocks, lane0 = _chunk_span(c, n, offset)
            _philox_fill(words, first_block, n_blocks, k0, k1)
            _bda_float(x, bias, res, out, words.view(np.uint16), i0, i1, lane0, threshold, scale)


@numba.njit(parallel=True, **_JIT)
def _bda_f16_par(x, bias, res, out, offset, k0, k1, threshold, scale):
    n = x.shape[0]
    n_chunks = _n_chunks(n, offset)
    n_workers = max(1, min(n_chunks // _MIN_CHUNKS_PER_ITEM, _WORK_ITEMS))
    for w in prange(n_workers):  # a contiguous run of chunks per work item, one buffer each
        words = np.empty(4 * _BLOCKS_PER_CHUNK, dtype=np.uint32)
        for c in range(n_chunks * w // n_workers, n_chunks * (w + 1) // n_workers):
            i0, i1, first_block, n_blocks, lane0 = _chunk_span(c, n, offset)
            _philox_fill(words, first_block, n_blocks, k0, k1)
            _bda_f16(x, bias, res, out, words.view(np.uint16), i0, i1, lane0, threshold, scale)


@numba.njit(parallel=True, **_JIT)
def _bda_bf16_par(x, bias, res, out, offset, k0, k1, threshold, scale):
    n = x.shape[0]
    n_chunks = _n_chunks(n, offset)
    n_workers = max(1, min(n_chunks // _MIN_CHUNKS_PER_ITEM, _WORK_ITEMS))
    for w in prange(n_workers):  # a contiguous run of chunks per work item, one buffer each
        words = np.empty(4 * _BLOCKS_PER_CHUNK, dtype=np.uint32)
        for c in range(n_chunks * w // n_workers, n_chunks * (w + 1) // n_workers):
            i0, i1, first_block, n_blocks, lane0 = _chunk_span(c, n, offset)
            _philox_fill(words, first_block, n_blocks, k0, k1)
            _bda_bf16(x, bias, res, out, words.view(np.uint16), i0, i1, lane0, threshold, scale)


@numba.njit(**_JIT)
def _bda_float_ser(x, bias, res, out, offset, k0, k1, threshold, scale):
    n = x.shape[0]
    words = np.empty(4 * _BLOCKS_PER_CHUNK, dtype=np.uint32)
    for c in range(_n_chunks(n, offset)):
        i0, i1, first_block, n_blocks, lane0 = _chunk_span(c, n, offset)
        _philox_fill(words, first_block, n_blocks, k0, k1)
        _bda_float(x, bias, res, out, words.view(np.uint16), i0, i1, lane0, threshold, scale)


@numba.njit(**_JIT)
def _bda_f16_ser(x, bias, res, out, offset, k0, k1, threshold, scale):
    n = x.shape[0]
    words = np.empty(4 * _BLOCKS_PER_CHUNK, dtype=np.uint32)
    for c in range(_n_chunks(n, offset)):
        i0, i1, first_block, n_blocks, lane0 = _chunk_span(c, n, offset)
        _philox_fill(words, first_block, n_blocks, k0, k1)
        _bda_f16(x, bias, res, out, words.view(np.uint16), i0, i1, lane0, threshold, scale)


@numba.njit(**_JIT)
def _bda_bf16_ser(x, bias, res, out, offset, k0, k1, threshold, scale):
    n = x.shape[0]
    words = np.empty(4 * _BLOCKS_PER_CHUNK, dtype=np.uint32)
    for c in range(_n_chunks(n, offset)):
        i0, i1, first_block, n_blocks, lane0 = _chunk_span(c, n, offset)
        _philox_fill(words, first_block, n_blocks, k0, k1)
        _bda_bf16(x, bias, res, out, words.view(np.uint16), i0, i1, lane0, threshold, scale)


#: One chooser per thread count: a twin's speed at 2 threads says nothing about it at 4.
_CHOOSERS: dict[int, PathChooser] = {}


def _run_sized(
    parallel, serial, n: int, arrays: tuple, offset: int, seed: int, threshold: int, *scale
) -> None:
    """Runs the serial twin below ``PARALLEL_MIN`` elements, else the twin
    :func:`dropkit.kernels.threads.run_twins` picks."""
    if n < PARALLEL_MIN:
        _run(serial, arrays, offset, seed, threshold, *scale)
        return
    dtype = arrays[0].dtype
    run_twins(
        parallel,
        serial,
        n,
        dtype,
        lambda driver: _run(driver, arrays, offset, seed, threshold, *scale),
        lambda driver: (driver, dtype) in _ENTRIES,
        _CHOOSERS,
    )


# ----------------------------------------------------------------------------------------------
# torch-facing wrappers
# ----------------------------------------------------------------------------------------------
def _as_numpy(t: torch.Tensor) -> np.ndarray:
    """A flat zero-copy NumPy view: float32/float64 as is, float16/bfloat16 as uint16 bits."""
    if t.requires_grad:
        t = t.detach()
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.view(torch.int16).numpy().view(np.uint16).reshape(-1)
    return t.numpy().reshape(-1)


_ENTRIES: dict[tuple[object, np.dtype], object] = {}


def _run(driver, arrays: tuple, offset: int, seed: int, threshold: int, *scale) -> None:
    """Calls a driver, skipping numba's per-call type dispatch after the first call.

    The first call per (driver, dtype) goes through the dispatcher with exactly typed NumPy
    scalars (compiling or loading the cache); afterwards the compiled overload's entry point is
    called directly with Python numbers, which it converts to the same int64/uint64/int32/float
    types. About 1 µs instead of 4 µs per call: it matters for small activations.
    """
    key = (driver, arrays[0].dtype)
    entry = _ENTRIES.get(key)
    k0, k1 = seed & 0xFFFFFFFF, seed >> 32
    if entry is not None:
        entry(*arrays, offset, k0, k1, threshold, *scale)
        return
    typed = (np.int64(offset), np.uint64(k0), np.uint64(k1), np.int32(threshold), *scale)
    _first_call(driver, (*arrays, *typed), key)


def _first_call(driver, args: tuple, key: tuple) -> None:
    """Calls ``driver`` through numba's dispatcher (compiling or loading the cache) with exactly
    typed arguments, then keeps the overload it chose under ``key`` in :data:`_ENTRIES`."""
    driver(*args)
    signature = tuple(driver.typeof_pyval(a) for a in args)
    for sig, compiled in driver.overloads.items():
        if tuple(sig) == signature:
            _ENTRIES[key] = compiled.entry_point
            break


#: Outputs at least this large are allocated with transparent huge pages where the OS allows it.
HUGE_PAGE_MIN_BYTES = 8 << 20
_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14


def _load_madvise():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _load_madvise() if sys.platform.startswith("linux") else None


def empty_like(x: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(x)``, asking Linux for transparent huge pages when it is large (the
    kernels' outputs; public for the benchmarks).

    Example:
        >>> empty_like(torch.ones(2, 3)).shape
        torch.Size([2, 3])
    """
    return _advise_huge_pages(torch.empty_like(x))


def _advise_huge_pages(out: torch.Tensor) -> torch.Tensor:
    """Asks Linux to back a fresh, not yet touched tensor with transparent huge pages.

    A fresh multi-megabyte tensor comes from ``mmap`` and costs one page fault per 4 KiB page at
    first touch, as much CPU time as the dropout kernel itself at 2^25 floats; with
    ``MADV_HUGEPAGE`` (honoured when /sys/kernel/mm/transparent_hugepage/enabled is ``always`` or
    ``madvise``) it is one fault per 2 MiB. Only the advice changes: the tensor is an ordinary one.
    """
    nbytes = out.numel() * out.element_size()
    if _madvise is not None and nbytes >= HUGE_PAGE_MIN_BYTES:
        ptr = out.data_ptr()
        start = -(-ptr // _HUGE_PAGE) * _HUGE_PAGE
        end = (ptr + nbytes) // _HUGE_PAGE * _HUGE_PAGE
        if end > start:
            _madvise(start, end - start, _MADV_HUGEPAGE)  # advice only: failure is harmless
    return out


def scale_arg(dtype: torch.dtype, scale: float) -> np.floating:
    """``scale`` as the drivers take it for a ``dtype`` tensor: torch's opmath multiplies
    reduced and single floats by a Python scalar in float32, doubles in float64.

    Example:
        >>> scale_arg(torch.float16, 2.0).dtype
        dtype('float32')
    """
    return np.float64(scale) if dtype == torch.float64 else np.float32(scale)


#: The dropout drivers (parallel twin, serial twin) per dtype: numba's (jitted) dispatchers over
#: flat NumPy views, ``(x, out, offset, k0, k1, threshold, scale)``; float32 and float64 share a pair
#: (numba compiles one overload per element type), float16/bfloat16 run on their uint16 bits.
DROPOUT_DRIVERS = {
    torch.float32: (_dropout_float_par, _dropout_float_ser),
    torch.float64: (_dropout_float_par, _dropout_float_ser),
    torch.float16: (_dropout_f16_par, _dropout_f16_ser),
    torch.bfloat16: (_dropout_bf16_par, _dropout_bf16_ser),
}
#: bias + dropout + residual, likewise: ``(x, bias, residual, out, offset, k0, k1, threshold, scale)``.
BDA_DRIVERS = {
    torch.float32: (_bda_float_par, _bda_float_ser),
    torch.float64: (_bda_float_par, _bda_float_ser),
    torch.float16: (_bda_f16_par, _bda_f16_ser),
    torch.bfloat16: (_bda_bf16_par, _bda_bf16_ser),
}
#: The bare keep mask: ``(out, offset, k0, k1, threshold)``, out a NumPy bool array.
MASK_DRIVERS = (_mask_par, _mask_ser)
_NP = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.float16: np.uint16,
    torch.bfloat16: np.uint16,
}
_TYPED = (np.int64(0), np.uint64(0), np.uint64(0), np.int32(0))  # offset, k0, k1, threshold


def warmup_calls(kind: object) -> list[tuple[object, tuple]]:
    """(driver, arguments) for the serial then the parallel driver that serve ``kind`` (a torch
    dtype: dropout; ``("bda", dtype)``; ``"mask"``), with exactly the argument types the wrappers
    here pass (one-element arrays): what :mod:`dropkit.kernels.warmup` compiles and looks up in
    numba's cache.

    Example:
        >>> [driver.__name__ for driver, _ in warmup_calls("mask")]
        ['_mask_ser', '_mask_par']
    """
    if kind == "mask":
        out = np.zeros(1, dtype=np.bool_)
        return [(driver, (out, *_TYPED)) for driver in (_mask_ser, _mask_par)]
    if isinstance(kind, tuple):
        dtype = kind[1]
        arrays = tuple(np.zeros(1, dtype=_NP[dtype]) for _ in range(4))
        parallel, serial = BDA_DRIVERS[dtype]
    else:
        dtype = kind
        arrays = (np.zeros(1, dtype=_NP[dtype]), np.zeros(1, dtype=_NP[dtype]))
        parallel, serial = DROPOUT_DRIVERS[dtype]
    scale = (scale_arg(dtype, 1.0),)
    return [(driver, (*arrays, *_TYPED, *scale)) for driver in (serial, parallel)]


def serial_entry(kind: object):
    """The compiled entry point of the serial driver serving ``kind`` (a dtype's dropout, or
    ``"mask"``), compiled or loaded from numba's cache on the first call.

    For the kernels' small-tensor lane (:mod:`dropkit.kernels.small`), whose callers checked every
    argument: it is called with the flat NumPy views and Python numbers, which it converts to the
    compiled signature's types exactly as the typed NumPy scalars of the checked path (no numba
    type dispatch, about 1 µs instead of 4). Same compiled loop, so the same bits.
    """
    driver, args = warmup_calls(kind)[0]
    key = (driver, args[0].dtype)
    if key not in _ENTRIES:
        _first_call(driver, args, key)
    return _ENTRIES.get(key, driver)


def dropout_forward_out(
    x: torch.Tensor, out: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> torch.Tensor:
    """Writes dropout of ``x`` into ``out`` (which may be ``x`` itself) and returns ``out``.

    ``out[k] = x[k] * scale`` if lane ``offset + k`` of the stream is ``>= threshold``, else 0.

    Args:
        x: contiguous CPU tensor, float16/bfloat16/float32/float64.
        out: contiguous tensor of ``x``'s shape and dtype.
        seed: 64-bit seed in [0, 2**64).
        offset: stream position of ``x``'s first element; ``offset + numel <= 2**63``.
        threshold: keep threshold in [0, 65536] (65536 drops everything).
        scale: factor for kept elements.

    Returns:
        ``out``.

    Example:
        >>> x = torch.ones(4)
        >>> dropout_forward_out(x, x, seed=0, offset=0, threshold=32768, scale=2.0)
        tensor([2., 0., 2., 2.])
    """
    check_cpu_tensor(x, "x")
    check_cpu_tensor(out, "out", x.dtype)
    if out.shape != x.shape:
        raise ValueError(f"out must have x's shape {tuple(x.shape)}, got {tuple(out.shape)}")
    return _dropout_into(x, out, seed, offset, threshold, scale)


def _dropout_into(
    x: torch.Tensor, out: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> torch.Tensor:
    n = x.numel()
    check_stream(n, seed, offset, threshold)
    if n == 0:
        return out
    parallel, serial = DROPOUT_DRIVERS[x.dtype]
    x_np = _as_numpy(x)
    out_np = x_np if out is x else _as_numpy(out)
    _run_sized(
        parallel, serial, n, (x_np, out_np), offset, seed, threshold, scale_arg(x.dtype, scale)
    )
    return out


def dropout_forward(
    x: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> torch.Tensor:
    """Dropout of a contiguous CPU tensor with the counter-based mask (one read, one write).

    ``y[k] = x[k] * scale`` if ``r16(offset + k) >= threshold`` else ``0``, where ``r16`` is the
    Philox4x32-10 16-bit-lane stream keyed by ``seed`` (see :mod:`dropkit.reference.philox`).

    Args:
        x: contiguous CPU tensor, float16/bfloat16/float32/float64.
        seed: 64-bit seed in [0, 2**64).
        offset: stream position of ``x``'s first element.
        threshold: keep threshold in [0, 65536].
        scale: factor for kept elements, normally ``1 / (1 - threshold / 65536)``.

    Returns:
        A new tensor of ``x``'s shape and dtype.

    Shape:
        any; elements are taken in row-major order.

    Example:
        >>> dropout_forward(torch.ones(2, 4), seed=0, offset=0, threshold=32768, scale=2.0)
        tensor([[2., 0., 2., 2.],
                [2., 2., 2., 2.]])
    """
    check_cpu_tensor(x, "x")
    return _dropout_into(x, empty_like(x), seed, offset, threshold, scale)


def dropout_backward(
    grad: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> torch.Tensor:
    """Gradient of :func:`dropout_forward`: regenerates the mask, ``grad_x = grad * mask * scale``.

    Example:
        >>> dropout_backward(torch.ones(4), seed=0, offset=0, threshold=32768, scale=2.0)
        tensor([2., 0., 2., 2.])
    """
    check_cpu_tensor(grad, "grad")
    return _dropout_into(grad, empty_like(grad), seed, offset, threshold, scale)


def keep_mask(
    n: int, seed: int, offset: int, threshold: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The keep mask (True = kept) of ``n`` elements at stream ``offset``, as a bool tensor.

    Example:
        >>> keep_mask(4, seed=0, offset=0, threshold=32768)
        tensor([ True, False,  True,  True])
    """
    if torch.device(device).type != "cpu":
        raise ValueError(f"device must be cpu for the numba kernels, got {device}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    check_stream(n, seed, offset, threshold)
    out = _advise_huge_pages(torch.empty(n, dtype=torch.bool))
    if n == 0:
        return out
    _run_sized(_mask_par, _mask_ser, n, (out.numpy(),), offset, seed, threshold)
    return out


def random_uint16(n: int, seed: int, offset: int) -> torch.Tensor:
    """The raw 16-bit stream at positions ``offset .. offset + n - 1`` (int32 tensor, for tests).

    Example:
        >>> random_uint16(2, seed=0, offset=0).tolist()
        [59605, 26151]
    """
    check_stream(n, seed, offset, 0)
    out = np.empty(n, dtype=np.uint16)
    if n:
        _run_sized(_lanes_par, _lanes_ser, n, (out,), offset, seed, 0)
    return torch.from_numpy(out.astype(np.int32))


def bias_dropout_add(
    x: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor,
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
) -> torch.Tensor:
    """``residual + dropout(x + bias)`` in one pass (the transformer block's residual branch).

    Rounds like torch eager ``residual + torch.where(mask, (x + bias) * scale, 0)``: each of the
    three operations is computed in float32 (float64) and rounded to the dtype.

    Args:
        x: contiguous CPU tensor (..., H).
        bias: contiguous tensor (H,) of the same dtype, broadcast over the last dim.
        residual: contiguous tensor of ``x``'s shape and dtype.
        seed, offset, threshold, scale: as in :func:`dropout_forward`.

    Returns:
        A new tensor of ``x``'s shape and dtype.

    Example:
        >>> bias_dropout_add(torch.zeros(1, 4), torch.ones(4), torch.ones(1, 4), 0, 0, 32768, 2.0)
        tensor([[3., 1., 3., 3.]])
    """
    check_cpu_tensor(x, "x")
    check_cpu_tensor(bias, "bias", x.dtype)
    check_cpu_tensor(residual, "residual", x.dtype)
    check_bias_residual(x, bias, residual)
    n = x.numel()
    check_stream(n, seed, offset, threshold)
    out = empty_like(x)
    if n == 0:
        return out
    arrays = (_as_numpy(x), _as_numpy(bias), _as_numpy(residual), _as_numpy(out))
    parallel, serial = BDA_DRIVERS[x.dtype]
    _run_sized(parallel, serial, n, arrays, offset, seed, threshold, scale_arg(x.dtype, scale))
    return out
