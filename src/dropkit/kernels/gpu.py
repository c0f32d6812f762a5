"""Triton GPU kernels of dropkit's counter-based dropout (Philox4x32-10 via ``tl.randint4x``).

Same bits as :mod:`dropkit.reference.philox` and :mod:`dropkit.kernels.cpu`: Philox block ``b``
is ``tl.randint4x(seed, b)`` (counter ``(b lo, b hi, 0, 0)``, key ``(seed lo, seed hi)``), and the
16-bit lane ``l`` of a block is the low (``l`` even) or high half of output word ``l // 2``. Element
``k`` at stream ``offset`` reads lane ``offset + k`` and is kept iff that lane ``>= threshold``.

Each program owns ``BLOCK`` stream positions aligned to the Philox blocks, viewed as a
``(BLOCK // 8, 8)`` tile: row ``b`` is one ``tl.randint4x`` call whose four words are broadcast
along the row, so each Philox call is computed once and feeds eight contiguous elements (a
coalesced load and store per row; when ``offset % 8 == 0`` the kernel is specialised so these are
128-bit vector accesses). ``x * scale`` is computed in float32 (float64 for float64) and rounded
once to the dtype, round-to-nearest-even, with FMA contraction disabled so the fused
bias + dropout + residual kernel rounds each operation as torch eager does. bfloat16 tensors are
passed as int16 bits and converted in the kernel with the same exact bit operations as the CPU
kernel (float32 -> bfloat16 round-to-nearest-even, NaN -> 0x7FC0).

Importing this module needs triton; :mod:`dropkit.kernels` imports it only for CUDA tensors. The
functions take contiguous CUDA tensors, or CPU tensors when ``TRITON_INTERPRET=1`` was set before
this module was imported (Triton's interpreter; how the tests run these kernels without a GPU).
"""

from __future__ import annotations

import os
import struct

import torch
import triton
import triton.language as tl

from dropkit.kernels._checks import check_bias_residual, check_cuda_tensor, check_stream
from dropkit.kernels.philox import LANES_PER_BLOCK

__all__ = [
    "INTERPRETED",
    "bias_dropout_add",
    "dropout_backward",
    "dropout_forward",
    "dropout_forward_out",
    "keep_mask",
]


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)  # triton >= 3.3; older versions read the variable
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


#: True when this module's kernels were built for Triton's CPU interpreter (TRITON_INTERPRET=1).
INTERPRETED = _interpreting()

_BLOCK = 4096
_NUM_WARPS = 8


@triton.jit
def _lanes(seed, first_block, pid, BLOCK: tl.constexpr):
    """(BLOCK // 8, 8) tile of 16-bit lanes (uint32) of this program's Philox blocks."""
    ROWS: tl.constexpr = BLOCK // 8
    rows = tl.arange(0, ROWS)
    block = first_block + pid * ROWS + rows.to(tl.int64)
    c0, c1, c2, c3 = tl.randint4x(seed, block)
    lane = tl.arange(0, 8)[None, :]
    word_index = lane // 2
    word = tl.where(
        word_index == 0,
        c0.to(tl.uint32, bitcast=True)[:, None],
        tl.where(
            word_index == 1,
            c1.to(tl.uint32, bitcast=True)[:, None],
            tl.where(
                word_index == 2,
                c2.to(tl.uint32, bitcast=True)[:, None],
                c3.to(tl.uint32, bitcast=True)[:, None],
            ),
        ),
    )
    return (word >> ((lane % 2) * 16).to(tl.uint32)) & 0xFFFF


@triton.jit
def _element_index(pid, lane_shift, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):
    """(BLOCK // 8, 8) tile of element indices k = position - offset (int64; may be < 0).

    ALIGNED (offset % 8 == 0, the usual case) drops ``lane_shift`` at compile time, so Triton
    sees rows of 8 contiguous, 8-aligned elements and emits vector loads and stores.
    """
    ROWS: tl.constexpr = BLOCK // 8
    rows = tl.arange(0, ROWS)[:, None].to(tl.int64)
    lane = tl.arange(0, 8)[None, :].to(tl.int64)
    if ALIGNED:
        k = pid * BLOCK + rows * 8 + lane
    else:
        k = pid * BLOCK + rows * 8 + lane - lane_shift
    return k


@triton.jit
def _scale_value(scale_bits, SCALE_F64: tl.constexpr):
    if SCALE_F64:
        scale = scale_bits.to(tl.int64).to(tl.float64, bitcast=True)
    else:
        scale = scale_bits.to(tl.int64).to(tl.int32).to(tl.float32, bitcast=True)
    return scale


@triton.jit
def _bf16_bits_to_f32(bits):
    """bfloat16 (as int16 bits) -> float32: exact, a 16-bit shift."""
    return (bits.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _f32_to_bf16_bits(value):
    """float32 -> bfloat16 bits (int16), round-to-nearest-even; NaN -> 0x7FC0 (c10::BFloat16)."""
    u = value.to(tl.uint32, bitcast=True)
    rounded = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
    rounded = tl.where(value != value, 0x7FC0, rounded)
    return rounded.to(tl.uint16).to(tl.int16, bitcast=True)


@triton.jit
def _load(ptr, k, inside, IS_BF16: tl.constexpr, COMPUTE_F64: tl.constexpr):
    """Loads elements and widens them to the compute type (float32, or float64 for float64)."""
    if IS_BF16:
        value = _bf16_bits_to_f32(tl.load(ptr + k, mask=inside, other=0))
    elif COMPUTE_F64:
        value = tl.load(ptr + k, mask=inside, other=0.0).to(tl.float64)
    else:
        value = tl.load(ptr + k, mask=inside, other=0.0).to(tl.float32)
    return value


@triton.jit
def _round(value, ptr, IS_BF16: tl.constexpr):
    """Rounds a compute-type value to the storage dtype of ``ptr`` (round-to-nearest-even)."""
    if IS_BF16:
        out = _f32_to_bf16_bits(value)
    else:
        out = value.to(ptr.dtype.element_ty)
    return out


@triton.jit
def _widen(stored, IS_BF16: tl.constexpr, COMPUTE_F64: tl.constexpr):
    if IS_BF16:
        value = _bf16_bits_to_f32(stored)
    elif COMPUTE_F64:
        value = stored.to(tl.float64)
    else:
        value = stored.to(tl.float32)
    return value


# Triton turns an int argument equal to 1 into a compile-time constant (and specialises on
# divisibility by 16): for the seed, the stream position and the threshold that would mean a
# recompilation per value and a constexpr where ``.to`` is called, so they are not specialised.
_RUNTIME_INTS = ["seed", "first_block", "lane_shift", "threshold", "scale_bits"]


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _dropout_kernel(
    x_ptr,
    out_ptr,
    n,
    seed,
    first_block,
    lane_shift,
    threshold,
    scale_bits,
    BLOCK: tl.constexpr,
    SCALE_F64: tl.constexpr,
    IS_BF16: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    k = _element_index(pid, lane_shift, BLOCK, ALIGNED)
    inside = (k >= 0) & (k < n)
    r16 = _lanes(seed, first_block, pid, BLOCK)
    keep = r16 >= threshold.to(tl.uint32)
    x = _load(x_ptr, k, inside, IS_BF16, SCALE_F64)
    y = tl.where(keep, x * _scale_value(scale_bits, SCALE_F64), 0.0)
    tl.store(out_ptr + k, _round(y, out_ptr, IS_BF16), mask=inside)


@triton.jit(do_not_specialize=_RUNTIME_INTS[:4])
def _keep_mask_kernel(
    out_ptr, n, seed, first_block, lane_shift, threshold, BLOCK: tl.constexpr, ALIGNED: tl.constexpr
):
    pid = tl.program_id(0).to(tl.int64)
    k = _element_index(pid, lane_shift, BLOCK, ALIGNED)
    inside = (k >= 0) & (k < n)
    r16 = _lanes(seed, first_block, pid, BLOCK)
    tl.store(out_ptr + k, r16 >= threshold.to(tl.uint32), mask=inside)


@triton.jit(do_not_specialize=_RUNTIME_INTS)
def _bias_dropout_add_kernel(
    x_ptr,
    bias_ptr,
    res_ptr,
    out_ptr,
    n,
    h_len,
    seed,
    first_block,
    lane_shift,
    threshold,
    scale_bits,
    BLOCK: tl.constexpr,
    SCALE_F64: tl.constexpr,
    IS_BF16: tl.constexpr,
    ALIGNED: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    k = _element_index(pid, lane_shift, BLOCK, ALIGNED)
    inside = (k >= 0) & (k < n)
    r16 = _lanes(seed, first_block, pid, BLOCK)
    keep = r16 >= threshold.to(tl.uint32)
    x = _load(x_ptr, k, inside, IS_BF16, SCALE_F64)
    b = _load(bias_ptr, k % h_len, inside, IS_BF16, SCALE_F64)
    res = _load(res_ptr, k, inside, IS_BF16, SCALE_F64)
    # Round after each operation, as torch eager's residual + where(mask, (x + bias) * scale, 0).
    h = _widen(_round(x + b, out_ptr, IS_BF16), IS_BF16, SCALE_F64)
    scaled = _widen(
        _round(h * _scale_value(scale_bits, SCALE_F64), out_ptr, IS_BF16), IS_BF16, SCALE_F64
    )
    dropped = tl.where(keep, scaled, 0.0)
    tl.store(out_ptr + k, _round(res + dropped, out_ptr, IS_BF16), mask=inside)


def _scale_bits(dtype: torch.dtype, scale: float) -> tuple[int, bool]:
    """The bits of ``scale`` as float64 (float64 tensors) or float32 (others), and which."""
    if dtype == torch.float64:
        return struct.unpack("<q", struct.pack("<d", scale))[0], True
    return struct.unpack("<i", struct.pack("<f", scale))[0], False


def _storage(t: torch.Tensor) -> torch.Tensor:
    """bfloat16 goes to the kernels as int16 bits: they convert it exactly themselves (Triton's
    interpreter rounds float32 -> bfloat16 incorrectly, so relying on ``.to`` would not be tested)."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def _grid(n: int, offset: int) -> tuple[int]:
    return (triton.cdiv(offset % LANES_PER_BLOCK + n, _BLOCK),)


def _launch_options() -> dict:
    return {} if INTERPRETED else {"num_warps": _NUM_WARPS, "enable_fp_fusion": False}


def dropout_forward_out(
    x: torch.Tensor, out: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> torch.Tensor:
    """Writes dropout of ``x`` into ``out`` (may be ``x``): ``x * scale`` where kept, else 0.

    Args:
        x: contiguous CUDA tensor, float16/bfloat16/float32/float64.
        out: contiguous tensor of ``x``'s shape and dtype.
        seed: 64-bit seed in [0, 2**64).
        offset: stream position of ``x``'s first element; ``offset + numel <= 2**63``.
        threshold: keep threshold in [0, 65536].
        scale: factor for kept elements.

    Returns:
        ``out``.

    Example:
        >>> x = torch.ones(4, device="cuda")  # doctest: +SKIP
        >>> dropout_forward_out(x, x, 0, 0, 32768, 2.0)  # doctest: +SKIP
        tensor([2., 0., 2., 2.], device='cuda:0')
    """
    check_cuda_tensor(x, "x", interpreted=INTERPRETED)
    check_cuda_tensor(out, "out", x.dtype, interpreted=INTERPRETED)
    if out.shape != x.shape:
        raise ValueError(f"out must have x's shape {tuple(x.shape)}, got {tuple(out.shape)}")
    n = x.numel()
    check_stream(n, seed, offset, threshold)
    if n == 0:
        return out
    bits, is_f64 = _scale_bits(x.dtype, scale)
    _dropout_kernel[_grid(n, offset)](
        _storage(x),
        _storage(out),
        n,
        seed,
        offset // LANES_PER_BLOCK,
        offset % LANES_PER_BLOCK,
        threshold,
        bits,
        BLOCK=_BLOCK,
        SCALE_F64=is_f64,
        IS_BF16=x.dtype == torch.bfloat16,
        ALIGNED=offset % LANES_PER_BLOCK == 0,
        **_launch_options(),
    )
    return out


def dropout_forward(
    x: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> torch.Tensor:
    """Counter-based dropout of a contiguous CUDA tensor (one read of ``x``, one write of ``y``).

    ``y[k] = x[k] * scale`` if ``r16(offset + k) >= threshold`` else ``0``.

    Returns:
        A new tensor of ``x``'s shape and dtype.

    Example:
        >>> dropout_forward(torch.ones(4, device="cuda"), 0, 0, 32768, 2.0)  # doctest: +SKIP
        tensor([2., 0., 2., 2.], device='cuda:0')
    """
    check_cuda_tensor(x, "x", interpreted=INTERPRETED)
    return dropout_forward_out(x, torch.empty_like(x), seed, offset, threshold, scale)


def dropout_backward(
    grad: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> torch.Tensor:
    """Gradient of :func:`dropout_forward`: the mask regenerated from ``(seed, offset)`` times scale.

    Example:
        >>> dropout_backward(torch.ones(4, device="cuda"), 0, 0, 32768, 2.0)  # doctest: +SKIP
        tensor([2., 0., 2., 2.], device='cuda:0')
    """
    check_cuda_tensor(grad, "grad", interpreted=INTERPRETED)
    return dropout_forward_out(grad, torch.empty_like(grad), seed, offset, threshold, scale)


def keep_mask(
    n: int, seed: int, offset: int, threshold: int, device: torch.device | str = "cuda"
) -> torch.Tensor:
    """The keep mask (True = kept) of ``n`` positions from ``offset``, a bool tensor on ``device``.

    Example:
        >>> keep_mask(4, 0, 0, 32768, "cuda")  # doctest: +SKIP
        tensor([ True, False,  True,  True], device='cuda:0')
    """
    device = torch.device(device)
    if device.type != "cuda" and not INTERPRETED:
        raise ValueError(f"device must be a CUDA device for the Triton kernels, got {device}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    check_stream(n, seed, offset, threshold)
    out = torch.empty(n, dtype=torch.bool, device=device)
    if n == 0:
        return out
    _keep_mask_kernel[_grid(n, offset)](
        out,
        n,
        seed,
        offset // LANES_PER_BLOCK,
        offset % LANES_PER_BLOCK,
        threshold,
        BLOCK=_BLOCK,
        ALIGNED=offset % LANES_PER_BLOCK == 0,
        **_launch_options(),
    )
    return out


def bias_dropout_add(
    x: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor,
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
) -> torch.Tensor:
    """``residual + dropout(x + bias)`` in one pass; ``bias`` (H,) broadcast over x's last dim.

    Each operation is rounded to the dtype as torch eager rounds it (no FMA contraction).

    Shape:
        x and residual (..., H), bias (H,); output (..., H).

    Example:
        >>> x, r = torch.zeros(1, 4, device="cuda"), torch.ones(1, 4, device="cuda")  # doctest: +SKIP
        >>> bias_dropout_add(x, torch.ones(4, device="cuda"), r, 0, 0, 32768, 2.0)  # doctest: +SKIP
        tensor([[3., 1., 3., 3.]], device='cuda:0')
    """
    check_cuda_tensor(x, "x", interpreted=INTERPRETED)
    check_cuda_tensor(bias, "bias", x.dtype, interpreted=INTERPRETED)
    check_cuda_tensor(residual, "residual", x.dtype, interpreted=INTERPRETED)
    check_bias_residual(x, bias, residual)
    n = x.numel()
    check_stream(n, seed, offset, threshold)
    out = torch.empty_like(x)
    if n == 0:
        return out
    bits, is_f64 = _scale_bits(x.dtype, scale)
    _bias_dropout_add_kernel[_grid(n, offset)](
        _storage(x),
        _storage(bias),
        _storage(residual),
        _storage(out),
        n,
        bias.shape[0],
        seed,
        offset // LANES_PER_BLOCK,
        offset % LANES_PER_BLOCK,
        threshold,
        bits,
        BLOCK=_BLOCK,
        SCALE_F64=is_f64,
        IS_BF16=x.dtype == torch.bfloat16,
        ALIGNED=offset % LANES_PER_BLOCK == 0,
        **_launch_options(),
    )
    return out
