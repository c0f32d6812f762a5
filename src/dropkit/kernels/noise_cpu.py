"""numba CPU kernels of dropkit's counter-based uniform and Gaussian noise (Philox4x32-10).

The bits are those of :mod:`dropkit.reference.noise` (read its docstring for the contract): noise
stream position ``j`` is 32-bit word ``j % 4`` of Philox block ``j // 4``; uniform noise is
``float32(w >> 8) · 2^-24``; Gaussian noise is Box–Muller on word pairs with ln, cos and sin
evaluated by fixed float64 polynomials (no libm, so the same bits as NumPy, Triton and torch).

As in :mod:`dropkit.kernels.cpu`: the stream is cut into chunks of ``CHUNK`` positions aligned to
the stream, each chunk's Philox blocks are computed into a small buffer (the same jitted
generator, :func:`dropkit.kernels.cpu.philox_fill`), then the element loop reads it. Tensors of
``PARALLEL_MIN`` elements or more may run the ``prange`` twin (same bits), on torch's thread count
and one parallel region at a time (:func:`dropkit.kernels.threads.claim_parallel`); never in a forked
child. No ``fastmath``: contraction into FMAs would change bits.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import prange

from dropkit.kernels._checks import check_cpu_tensor, check_noise_stream
from dropkit.kernels.cpu import philox_fill
from dropkit.kernels.threads import PARALLEL_MIN as cpu_parallel_min
from dropkit.kernels.threads import PathChooser, run_twins

__all__ = [
    "CHUNK",
    "DRIVERS",
    "PARALLEL_MIN",
    "uniform",
    "normal",
    "gaussian_multiply",
    "warmup_calls",
]

#: Stream positions per unit of work (a multiple of 4: whole Philox blocks).
CHUNK = 256
#: Below this many elements the serial loops run (no thread-pool launch): the CPU kernels' value.
PARALLEL_MIN = cpu_parallel_min
_WORDS = 4
_BLOCKS_PER_CHUNK = CHUNK // _WORDS
_WORK_ITEMS = 256
_MIN_CHUNKS_PER_ITEM = 32

# The float64 constants of the Box–Muller sequence (dropkit.reference.noise documents each).
_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)
_TWO_PI_2M32 = (2.0 * math.pi) * 2.0**-32
_RSQRT_MAGIC = 0x5FE6EB50C7B537A9
_L3, _L5, _L7, _L9, _L11, _L13, _L15 = (1.0 / n for n in (3, 5, 7, 9, 11, 13, 15))
_S3, _S5, _S7, _S9, _S11, _S13, _S15, _S17 = (
    (-1.0) ** k / math.factorial(2 * k + 1) for k in range(1, 9)
)
_C2, _C4, _C6, _C8, _C10, _C12, _C14, _C16, _C18 = (
    (-1.0) ** k / math.factorial(2 * k) for k in range(1, 10)
)

_JIT = {"cache": True, "nogil": True, "error_model": "numpy", "boundscheck": False}


@numba.njit(inline="always", **_JIT)
def _box_muller(a, b):
    """(r cos θ, r sin θ) in float64 for the words a (radius) and b (angle); see the reference."""
    bits = np.float64(np.float64(a) + 1.0).view(np.int64)
    e = (bits >> np.int64(52)) - np.int64(1023)
    m = np.int64((bits & np.int64(0xFFFFFFFFFFFFF)) | np.int64(0x3FF0000000000000)).view(np.float64)
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + np.int64(1) if big else e
    t = (m - 1.0) / (m + 1.0)
    t2 = t * t
    p = _L13 + t2 * _L15
    p = _L11 + t2 * p
    p = _L9 + t2 * p
    p = _L7 + t2 * p
    p = _L5 + t2 * p
    p = _L3 + t2 * p
    p = 1.0 + t2 * p
    minus_log = np.float64(np.int64(32) - e) * _LN2 - (t + t) * p
    y = minus_log * 2.0
    # sqrt by Newton on 1/sqrt (the reference's sequence; a sqrt instruction is not on every backend).
    g = np.int64(np.int64(_RSQRT_MAGIC) - (np.float64(y).view(np.int64) >> np.int64(1))).view(
        np.float64
    )
    half = 0.5 * y
    g = g * (1.5 - (half * g) * g)
    g = g * (1.5 - (half * g) * g)
    g = g * (1.5 - (half * g) * g)
    g = g * (1.5 - (half * g) * g)
    g = g * (1.5 - (half * g) * g)
    r = y * g
    quadrant = np.uint32(b) >> np.uint32(30)
    x = np.float64(np.uint32(b) & np.uint32(0x3FFFFFFF)) * _TWO_PI_2M32
    x2 = x * x
    s = _S15 + x2 * _S17
    s = _S13 + x2 * s
    s = _S11 + x2 * s
    s = _S9 + x2 * s
    s = _S7 + x2 * s
    s = _S5 + x2 * s
    s = _S3 + x2 * s
    s = x * (1.0 + x2 * s)
    c = _C16 + x2 * _C18
    c = _C14 + x2 * c
    c = _C12 + x2 * c
    c = _C10 + x2 * c
    c = _C8 + x2 * c
    c = _C6 + x2 * c
    c = _C4 + x2 * c
    c = _C2 + x2 * c
    c = 1.0 + x2 * c
    # Rotate by the quadrant: (c, s), (−s, c), (−c, −s), (s, −c) (selects, no branches).
    swap = (quadrant & np.uint32(1)) != np.uint32(0)
    base_cos = s if swap else c
    base_sin = c if swap else s
    neg_cos = ((quadrant + np.uint32(1)) & np.uint32(2)) != np.uint32(0)  # q = 1 or 2
    neg_sin = quadrant >= np.uint32(2)
    cos_t = -base_cos if neg_cos else base_cos
    sin_t = -base_sin if neg_sin else base_sin
    return r * cos_t, r * sin_t


@numba.njit(inline="always", **_JIT)
def _span(c, n, offset):
    """Elements [i0, i1) of chunk c, their first Philox block and the word of element i0."""
    rel0 = offset % CHUNK
    i0 = max(0, c * CHUNK - rel0)
    i1 = min(n, (c + 1) * CHUNK - rel0)
    lo = offset + i0
    first_block = lo // _WORDS
    n_blocks = (offset + (i1 - 1)) // _WORDS - first_block + 1
    return i0, i1, first_block, n_blocks, lo - first_block * _WORDS


@numba.njit(inline="always", **_JIT)
def _n_chunks(n, offset):
    return (offset % CHUNK + n + CHUNK - 1) // CHUNK


@numba.njit(inline="always", **_JIT)
def _normals(zs, words, n_blocks):
    for i in range(2 * n_blocks):
        z0, z1 = _box_muller(words[2 * i], words[2 * i + 1])
        zs[2 * i] = z0
        zs[2 * i + 1] = z1


# ----------------------------------------------------------------------------------------------
# Element loops of one chunk
# ----------------------------------------------------------------------------------------------
@numba.njit(inline="always", **_JIT)
def _uniform_chunk(out, words, zs, i0, i1, w0, n_blocks, aux):
    ys = out[i0:i1]
    ws = words[w0 : w0 + i1 - i0]
    for t in range(i1 - i0):
        ys[t] = np.float32(ws[t] >> np.uint32(8)) * np.float32(2.0**-24)


@numba.njit(inline="always", **_JIT)
def _normal_chunk(out, words, zs, i0, i1, w0, n_blocks, aux):
    _normals(zs, words, n_blocks)
    ys = out[i0:i1]
    vs = zs[w0 : w0 + i1 - i0]
    for t in range(i1 - i0):
        ys[t] = vs[t]  # float64 -> the output's type, round to nearest even


@numba.njit(inline="always", **_JIT)
def _multiply_chunk(out, words, zs, i0, i1, w0, n_blocks, aux):
    x, std = aux
    _normals(zs, words, n_blocks)
    one = out.dtype.type(1.0)
    xs = x[i0:i1]
    ys = out[i0:i1]
    vs = zs[w0 : w0 + i1 - i0]
    for t in range(i1 - i0):
        z = out.dtype.type(vs[t])
        ys[t] = xs[t] * (one + std * z)


# Drivers: a parallel and a serial twin per kind, written out (numba caches each by its name).
@numba.njit(inline="always", **_JIT)
def _work(kind, out, offset, k0, k1, aux, c_lo, c_hi, words, zs):
    n = out.shape[0]
    for c in range(c_lo, c_hi):
        i0, i1, first_block, n_blocks, w0 = _span(c, n, offset)
        philox_fill(words, first_block, n_blocks, k0, k1)
        if kind == 0:
            _uniform_chunk(out, words, zs, i0, i1, w0, n_blocks, aux)
        elif kind == 1:
            _normal_chunk(out, words, zs, i0, i1, w0, n_blocks, aux)
        else:
            _multiply_chunk(out, words, zs, i0, i1, w0, n_blocks, aux)


@numba.njit(inline="always", **_JIT)
def _buffers():
    return (
        np.empty(_WORDS * _BLOCKS_PER_CHUNK, dtype=np.uint32),
        np.empty(_WORDS * _BLOCKS_PER_CHUNK, dtype=np.float64),
    )


@numba.njit(inline="always", **_JIT)
def _parallel(kind, out, offset, k0, k1, aux):
    n_chunks = _n_chunks(out.shape[0], offset)
    n_workers = max(1, min(n_chunks // _MIN_CHUNKS_PER_ITEM, _WORK_ITEMS))
    for w in prange(n_workers):  # a contiguous run of chunks per work item, one buffer each
        words, zs = _buffers()
        lo, hi = n_chunks * w // n_workers, n_chunks * (w + 1) // n_workers
        _work(kind, out, offset, k0, k1, aux, lo, hi, words, zs)


@numba.njit(parallel=True, **_JIT)
def _uniform_par(out, offset, k0, k1, aux):
    _parallel(0, out, offset, k0, k1, aux)


@numba.njit(**_JIT)
def _uniform_ser(out, offset, k0, k1, aux):
    words, zs = _buffers()
    _work(0, out, offset, k0, k1, aux, 0, _n_chunks(out.shape[0], offset), words, zs)


@numba.njit(parallel=True, **_JIT)
def _normal_par(out, offset, k0, k1, aux):
    _parallel(1, out, offset, k0, k1, aux)


@numba.njit(**_JIT)
def _normal_ser(out, offset, k0, k1, aux):
    words, zs = _buffers()
    _work(1, out, offset, k0, k1, aux, 0, _n_chunks(out.shape[0], offset), words, zs)


@numba.njit(parallel=True, **_JIT)
def _multiply_par(out, offset, k0, k1, aux):
    _parallel(2, out, offset, k0, k1, aux)


@numba.njit(**_JIT)
def _multiply_ser(out, offset, k0, k1, aux):
    words, zs = _buffers()
    _work(2, out, offset, k0, k1, aux, 0, _n_chunks(out.shape[0], offset), words, zs)


_UNIFORM = (_uniform_par, _uniform_ser)
_NORMAL = (_normal_par, _normal_ser)
_MULTIPLY = (_multiply_par, _multiply_ser)
#: The drivers (parallel twin, serial twin) per operation: ``(out, offset, k0, k1, aux)``, ``aux``
#: ``(0,)`` for uniform and normal, ``(x, std)`` for the fused multiply.
DRIVERS = {"uniform": _UNIFORM, "normal": _NORMAL, "multiply": _MULTIPLY}
_NP = {torch.float32: np.float32, torch.float64: np.float64}
_TYPED = (np.int64(0), np.uint64(0), np.uint64(0))  # offset, k0, k1


def warmup_calls(kind: tuple[str, torch.dtype]) -> list[tuple[object, tuple]]:
    """(driver, arguments) for the serial then the parallel driver of a noise ``kind``
    (``("uniform" | "normal" | "multiply", dtype)``) with exactly the argument types the wrappers
    here pass: what :mod:`dropkit.kernels.warmup` compiles and looks up in numba's cache.

    Example:
        >>> [driver.__name__ for driver, _ in warmup_calls(("normal", torch.float64))]
        ['_normal_ser', '_normal_par']
    """
    op, dtype = kind
    out = np.zeros(1, dtype=_NP[dtype])
    if op == "multiply":  # gaussian_multiply's (x, std)
        aux: tuple = (np.zeros(1, dtype=_NP[dtype]), _NP[dtype](0.0))
    else:
        aux = (0,)
    parallel, serial = DRIVERS[op]
    return [(driver, (out, *_TYPED, aux)) for driver in (serial, parallel)]


#: One chooser per thread count, as the Bernoulli kernels keep (a twin's speed at 2 threads says
#: nothing about it at 4).
_CHOOSERS: dict[int, PathChooser] = {}
_WARM: set[tuple[object, str]] = set()


def _run(drivers, out: np.ndarray, offset: int, seed: int, aux: tuple) -> None:
    """The Bernoulli kernels' thread policy (:func:`dropkit.kernels.threads.run_twins`): serial
    below ``PARALLEL_MIN`` elements, with one thread to use (torch's count, 1 in a forked child)
    or while another dropkit parallel region runs; else the faster twin as measured."""
    n = out.shape[0]
    args = (out, np.int64(offset), np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32), aux)
    parallel, serial = drivers
    if n < PARALLEL_MIN:
        serial(*args)
        return
    dtype = str(out.dtype)

    def warm(driver) -> bool:
        if (driver, dtype) in _WARM:
            return True
        _WARM.add((driver, dtype))
        return False

    run_twins(parallel, serial, n, out.dtype, lambda driver: driver(*args), warm, _CHOOSERS)


def uniform(n: int, seed: int, offset: int) -> torch.Tensor:
    """Uniform [0, 1) float32 noise at stream positions ``offset .. offset + n − 1``: tensor (n,).

    Example:
        >>> uniform(2, seed=0, offset=0).tolist()
        [0.3990464210510254, 0.8805201649665833]
    """
    check_noise_stream(n, seed, offset)
    out = torch.empty(n, dtype=torch.float32)
    if n:
        _run(_UNIFORM, out.numpy(), offset, seed, (0,))
    return out


def normal(n: int, seed: int, offset: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise (Box–Muller, see :mod:`dropkit.reference.noise`): tensor (n,).

    Args:
        n: how many values.
        seed: 64-bit seed in [0, 2**64).
        offset: first stream position (``offset + n <= 2**63``).
        dtype: torch.float32 or torch.float64.

    Example:
        >>> normal(3, seed=1, offset=0).shape
        torch.Size([3])
    """
    check_noise_stream(n, seed, offset)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    out = torch.empty(n, dtype=dtype)
    if n:
        _run(_NORMAL, out.numpy(), offset, seed, (0,))
    return out


def gaussian_multiply(x: torch.Tensor, seed: int, offset: int, std: float) -> torch.Tensor:
    """Fused Gaussian dropout ``y = x · (1 + std · z)``, z the Box–Muller noise of ``(seed, offset)``.

    Rounds as torch's ``x * (1.0 + std * z)`` (float32: z and every step in float32). One read of
    x, one write of y, no noise tensor.

    Args:
        x: contiguous CPU float32 or float64 tensor.
        seed, offset: the noise stream.
        std: the noise's standard deviation.

    Example:
        >>> gaussian_multiply(torch.ones(3), seed=0, offset=0, std=0.0)
        tensor([1., 1., 1.])
    """
    check_cpu_tensor(x, "x")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    check_noise_stream(x.numel(), seed, offset)
    out = torch.empty_like(x)
    if x.numel():
        scalar = np.float64 if x.dtype == torch.float64 else np.float32
        x_np = (x.detach() if x.requires_grad else x).numpy().reshape(-1)
        _run(_MULTIPLY, out.numpy().reshape(-1), offset, seed, (x_np, scalar(std)))
    return out
