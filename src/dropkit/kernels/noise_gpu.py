"""Triton GPU kernels of dropkit's counter-based uniform and Gaussian noise (``tl.randint4x``).

Same bits as :mod:`dropkit.reference.noise` and :mod:`dropkit.kernels.noise_cpu`: Philox block
``b`` is ``tl.randint4x(seed, b)``, noise stream position ``j`` is its word ``j % 4``. Each program
owns ``BLOCK`` positions viewed as a ``(BLOCK // 4, 4)`` tile, one Philox call per row; the row's
two Box–Muller pairs give its four normals. ln, cos and sin are the reference's float64
polynomials (no libdevice), every operation is an IEEE round-to-nearest one (``div.rn.f64``; the
square root is the reference's Newton sequence) and FMA contraction is off (``enable_fp_fusion=False``), so a GPU draws the same
noise as the CPU. Runs on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests check it).
"""

from __future__ import annotations

import math
import struct

import torch
import triton
import triton.language as tl

from dropkit.kernels._checks import check_cuda_tensor, check_noise_stream
from dropkit.kernels.gpu import INTERPRETED

__all__ = ["uniform", "normal", "gaussian_multiply"]

_BLOCK = 1024
_NUM_WARPS = 4
_WORDS = 4

_LN2: tl.constexpr = tl.constexpr(math.log(2.0))
_SQRT2: tl.constexpr = tl.constexpr(math.sqrt(2.0))
_TWO_PI_2M32: tl.constexpr = tl.constexpr((2.0 * math.pi) * 2.0**-32)
_L3: tl.constexpr = tl.constexpr(1.0 / 3)
_L5: tl.constexpr = tl.constexpr(1.0 / 5)
_L7: tl.constexpr = tl.constexpr(1.0 / 7)
_L9: tl.constexpr = tl.constexpr(1.0 / 9)
_L11: tl.constexpr = tl.constexpr(1.0 / 11)
_L13: tl.constexpr = tl.constexpr(1.0 / 13)
_L15: tl.constexpr = tl.constexpr(1.0 / 15)
_S3: tl.constexpr = tl.constexpr(-1.0 / math.factorial(3))
_S5: tl.constexpr = tl.constexpr(1.0 / math.factorial(5))
_S7: tl.constexpr = tl.constexpr(-1.0 / math.factorial(7))
_S9: tl.constexpr = tl.constexpr(1.0 / math.factorial(9))
_S11: tl.constexpr = tl.constexpr(-1.0 / math.factorial(11))
_S13: tl.constexpr = tl.constexpr(1.0 / math.factorial(13))
_S15: tl.constexpr = tl.constexpr(-1.0 / math.factorial(15))
_S17: tl.constexpr = tl.constexpr(1.0 / math.factorial(17))
_C2: tl.constexpr = tl.constexpr(-1.0 / math.factorial(2))
_C4: tl.constexpr = tl.constexpr(1.0 / math.factorial(4))
_C6: tl.constexpr = tl.constexpr(-1.0 / math.factorial(6))
_C8: tl.constexpr = tl.constexpr(1.0 / math.factorial(8))
_C10: tl.constexpr = tl.constexpr(-1.0 / math.factorial(10))
_C12: tl.constexpr = tl.constexpr(1.0 / math.factorial(12))
_C14: tl.constexpr = tl.constexpr(-1.0 / math.factorial(14))
_C16: tl.constexpr = tl.constexpr(1.0 / math.factorial(16))
_C18: tl.constexpr = tl.constexpr(-1.0 / math.factorial(18))


@triton.jit
def _box_muller(a, b):
    """(r cos θ, r sin θ) in float64 for uint32 words a (radius) and b (angle)."""
    bits = (a.to(tl.float64) + 1.0).to(tl.int64, bitcast=True)
    e = (bits >> 52) - 1023
    m = ((bits & 0xFFFFFFFFFFFFF) | 0x3FF0000000000000).to(tl.float64, bitcast=True)
    big = m > _SQRT2
    m = tl.where(big, m * 0.5, m)
    e = tl.where(big, e + 1, e)
    t = (m - 1.0) / (m + 1.0)
    t2 = t * t
    p = _L13 + t2 * _L15
    p = _L11 + t2 * p
    p = _L9 + t2 * p
    p = _L7 + t2 * p
    p = _L5 + t2 * p
    p = _L3 + t2 * p
    p = 1.0 + t2 * p
    minus_log = (32 - e).to(tl.float64) * _LN2 - (t + t) * p
    y = minus_log * 2.0
    # sqrt by Newton on 1/sqrt (the reference's sequence, identical on every backend).
    g = (0x5FE6EB50C7B537A9 - (y.to(tl.int64, bitcast=True) >> 1)).to(tl.float64, bitcast=True)
    half = 0.5 * y
    g = g * (1.5 - (half * g) * g)
    g = g * (1.5 - (half * g) * g)
    g = g * (1.5 - (half * g) * g)
    g = g * (1.5 - (half * g) * g)
    g = g * (1.5 - (half * g) * g)
    r = y * g
    quadrant = b >> 30
    x = (b & 0x3FFFFFFF).to(tl.float64) * _TWO_PI_2M32
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
    swap = (quadrant & 1) != 0
    base_cos = tl.where(swap, s, c)
    base_sin = tl.where(swap, c, s)
    cos_t = tl.where(((quadrant + 1) & 2) != 0, -base_cos, base_cos)
    sin_t = tl.where(quadrant >= 2, -base_sin, base_sin)
    return r * cos_t, r * sin_t


@triton.jit
def _tile(seed, first_block, pid, lane_shift, BLOCK: tl.constexpr):
    """This program's Philox words (ROWS,) x 4, the (ROWS, 4) column index and element index."""
    ROWS: tl.constexpr = BLOCK // 4
    rows = tl.arange(0, ROWS)
    block = first_block + pid * ROWS + rows.to(tl.int64)
    c0, c1, c2, c3 = tl.randint4x(seed, block)
    col = tl.arange(0, 4)[None, :]
    k = pid * BLOCK + rows[:, None].to(tl.int64) * 4 + col.to(tl.int64) - lane_shift
    return (
        c0.to(tl.uint32, bitcast=True),
        c1.to(tl.uint32, bitcast=True),
        c2.to(tl.uint32, bitcast=True),
        c3.to(tl.uint32, bitcast=True),
        col,
        k,
    )


@triton.jit
def _pick(col, v0, v1, v2, v3):
    return tl.where(
        col == 0,
        v0[:, None],
        tl.where(col == 1, v1[:, None], tl.where(col == 2, v2[:, None], v3[:, None])),
    )


@triton.jit
def _normals(seed, first_block, pid, lane_shift, BLOCK: tl.constexpr):
    w0, w1, w2, w3, col, k = _tile(seed, first_block, pid, lane_shift, BLOCK)
    z0, z1 = _box_muller(w0, w1)
    z2, z3 = _box_muller(w2, w3)
    return _pick(col, z0, z1, z2, z3), k


_RUNTIME = ["seed", "first_block", "lane_shift", "std_bits"]


@triton.jit(do_not_specialize=_RUNTIME[:3])
def _uniform_kernel(out_ptr, n, seed, first_block, lane_shift, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    w0, w1, w2, w3, col, k = _tile(seed, first_block, pid, lane_shift, BLOCK)
    words = _pick(col, w0, w1, w2, w3)
    u = (words >> 8).to(tl.float32) * 5.9604644775390625e-08  # 2^-24, exact
    tl.store(out_ptr + k, u, mask=(k >= 0) & (k < n))


@triton.jit(do_not_specialize=_RUNTIME[:3])
def _normal_kernel(out_ptr, n, seed, first_block, lane_shift, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    z, k = _normals(seed, first_block, pid, lane_shift, BLOCK)
    tl.store(out_ptr + k, z.to(out_ptr.dtype.element_ty), mask=(k >= 0) & (k < n))


@triton.jit(do_not_specialize=_RUNTIME)
def _multiply_kernel(
    x_ptr, out_ptr, n, seed, first_block, lane_shift, std_bits, BLOCK: tl.constexpr,
    IS_F64: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    z, k = _normals(seed, first_block, pid, lane_shift, BLOCK)
    inside = (k >= 0) & (k < n)
    x = tl.load(x_ptr + k, mask=inside, other=0.0)
    if IS_F64:
        std = std_bits.to(tl.int64).to(tl.float64, bitcast=True)
        y = x * (1.0 + std * z)
    else:
        std = std_bits.to(tl.int64).to(tl.int32).to(tl.float32, bitcast=True)
        y = x * (1.0 + std * z.to(tl.float32))
    tl.store(out_ptr + k, y, mask=inside)


def _device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type != "cuda" and not INTERPRETED:
        raise ValueError(f"device must be a CUDA device for the Triton kernels, got {device}")
    return device


def _launch(n: int, offset: int) -> tuple[tuple[int], dict]:
    grid = (triton.cdiv(offset % _WORDS + n, _BLOCK),)
    options = {} if INTERPRETED else {"num_warps": _NUM_WARPS, "enable_fp_fusion": False}
    return grid, options


def uniform(n: int, seed: int, offset: int, device: torch.device | str = "cuda") -> torch.Tensor:
    """Uniform [0, 1) float32 noise (n,) on ``device``: ``float32(w >> 8) · 2^-24``."""
    check_noise_stream(n, seed, offset)
    out = torch.empty(n, dtype=torch.float32, device=_device(device))
    if n:
        grid, options = _launch(n, offset)
        _uniform_kernel[grid](
            out, n, seed, offset // _WORDS, offset % _WORDS, BLOCK=_BLOCK, **options
        )
    return out


def normal(
    n: int,
    seed: int,
    offset: int,
    device: torch.device | str = "cuda",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise (n,) on ``device``, float32 or float64 (Box–Muller, see reference)."""
    check_noise_stream(n, seed, offset)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    out = torch.empty(n, dtype=dtype, device=_device(device))
    if n:
        grid, options = _launch(n, offset)
        _normal_kernel[grid](
            out, n, seed, offset // _WORDS, offset % _WORDS, BLOCK=_BLOCK, **options
        )
    return out


def gaussian_multiply(x: torch.Tensor, seed: int, offset: int, std: float) -> torch.Tensor:
    """Fused ``y = x · (1 + std · z)`` for a contiguous float32/float64 CUDA tensor."""
    check_cuda_tensor(x, "x", interpreted=INTERPRETED)
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    n = x.numel()
    check_noise_stream(n, seed, offset)
    out = torch.empty_like(x)
    if n:
        is_f64 = x.dtype == torch.float64
        if is_f64:
            bits = struct.unpack("<q", struct.pack("<d", std))[0]
        else:
            bits = struct.unpack("<i", struct.pack("<f", std))[0]
        grid, options = _launch(n, offset)
        _multiply_kernel[grid](
            x, out, n, seed, offset // _WORDS, offset % _WORDS, bits,
            BLOCK=_BLOCK, IS_F64=is_f64, **options,
        )  # fmt: skip
    return out
