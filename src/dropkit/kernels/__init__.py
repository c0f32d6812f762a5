"""Counter-based dropout kernels: the same Philox4x32-10 mask bits on every device.

One public function per operation; each picks its implementation itself, per call:

* a CPU tensor of fewer than ``PARALLEL_MIN`` elements: the **small-tensor lane**
  (:mod:`dropkit.kernels.small`), numba's compiled serial loop entered directly;
* other CPU tensors: :mod:`dropkit.kernels.cpu` (numba, parallel above ``PARALLEL_MIN``, cached);
  on a fresh install, while numba compiles a kind's code in the background, that kind is served by
  :class:`dropkit.kernels.warmup.ColdCPU` (the torch fallback with the CPU kernels' checks, the
  same bits, no wait);
* CUDA: :mod:`dropkit.kernels.gpu` (Triton, calling ``tl.randint4x``), when triton is installed;
* any other device (or CUDA without triton): :mod:`dropkit.kernels.fallback`, the same generator
  in torch ops, slower but bit-identical.

The noise operations have the same shape in :mod:`dropkit.kernels.noise`; the C++ autograd node
for small CPU tensors is :mod:`dropkit.kernels.native`.

The contract (spelled out in ``docs/kernels.md``, restated independently by
:mod:`dropkit.reference.philox`): element ``k`` of a call at stream ``offset`` (``k`` in the
row-major order of the tensor's logical shape) is kept iff the 16-bit lane ``offset + k`` of the
Philox4x32-10 stream keyed by the 64-bit ``seed`` is ``>= threshold``,
``threshold = floor(p * 65536 + 1/2)``; kept elements become ``x * scale`` (rounded as torch rounds
it), dropped ones 0.

Callers (``dropkit.ops``) own the seeds, offsets and autograd; these functions are pure: the same
arguments give the same bits, and nothing is stored between forward and backward.

Example:
    >>> import torch
    >>> t = threshold_from_p(0.5)
    >>> dropout_forward(torch.ones(4), seed=0, offset=0, threshold=t, scale=scale_from_threshold(t))
    tensor([2., 0., 2., 2.])
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import torch

from dropkit.kernels import cpu, fallback, small, warmup
from dropkit.kernels.philox import (
    THRESHOLD_RANGE,
    keep_probability_from_threshold,
    scale_from_threshold,
    threshold_from_p,
)

__all__ = [
    "HAS_TRITON",
    "THRESHOLD_RANGE",
    "backend_name",
    "bias_dropout_add",
    "bias_dropout_add_backward",
    "dropout_backward",
    "dropout_forward",
    "dropout_forward_out",
    "keep_mask",
    "keep_probability_from_threshold",
    "scale_from_threshold",
    "threshold_from_p",
]

#: Whether triton is importable (the CUDA kernels need it; nothing else does).
HAS_TRITON = importlib.util.find_spec("triton") is not None

_gpu_module: ModuleType | None = None


def _gpu() -> ModuleType | None:
    """dropkit.kernels.gpu, imported on first CUDA use (so importing dropkit never needs triton).

    None when triton is missing or fails to import (then CUDA tensors take the torch fallback).
    """
    global _gpu_module, HAS_TRITON
    if _gpu_module is None and HAS_TRITON:
        try:
            from dropkit.kernels import gpu
        except ImportError:
            HAS_TRITON = False
            return None
        _gpu_module = gpu
    return _gpu_module


def backend_name(device: torch.device | str) -> str:
    """Which implementation serves ``device``: ``"numba"``, ``"triton"`` or ``"torch"``.

    Example:
        >>> backend_name("cpu")
        'numba'
    """
    kind = torch.device(device).type
    if kind == "cpu":
        return "numba"
    if kind == "cuda" and HAS_TRITON:
        return "triton"
    return "torch"


def _backend(device: torch.device, kind: object = None) -> ModuleType:
    """The module serving ``device``. On CPU, for a ``kind`` whose numba code is still being
    compiled in the background (a fresh install, see :mod:`dropkit.kernels.warmup`), the torch
    fallback with the CPU kernels' checks: same bits, no wait."""
    name = backend_name(device)
    if name == "numba":
        if kind is None or kind in warmup.READY or warmup.numba_ready(kind):
            return cpu
        return warmup.ColdCPU  # type: ignore[return-value]
    if name == "triton":
        gpu = _gpu()
        if gpu is not None:
            return gpu
    return fallback


# ----------------------------------------------------------------------------------------------
# Public API: one entry per operation
# ----------------------------------------------------------------------------------------------
# The small-tensor lane (dropkit.kernels.small) is inlined in dropout_forward, dropout_forward_out
# and keep_mask: for a 10^4-element activation one more Python call is a measurable share of the
# whole dropout. Its condition is the checked path's checks (a contiguous CPU tensor of a dtype
# numba serves, seed/offset/threshold ints in range, a float scale), written as plain comparisons;
# anything else, including every bad argument, takes the checked path and its errors.
_LANE = small.ENTRIES
_LIMIT = small.LIMIT
_MASK = small.MASK
_SEED_MAX = (1 << 64) - 1
_STREAM_END = 1 << 63
_F32 = torch.float32
_F64 = torch.float64
_CPU = torch.device("cpu")


def _bits(t: torch.Tensor):
    """float16/bfloat16 as numba sees them: a flat view of their uint16 bits."""
    return t.view(torch.int16).numpy().view("uint16").reshape(-1)


def _checked(op: str, x: torch.Tensor, *args) -> torch.Tensor:
    """``op`` (``dropout_forward`` or ``dropout_backward``) of the module serving ``x``, for any
    layout: a strided or permuted ``x`` gets the mask of its contiguous copy (element ``k`` is the
    ``k``-th in row-major order), and the output keeps ``x``'s memory format, as torch's dropout.
    A small CPU tensor's dtype joins the lane once numba has served it."""
    if not isinstance(x, torch.Tensor):
        name = "grad" if op == "dropout_backward" else "x"
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_contiguous():
        # empty_like keeps a dense permuted layout (channels-last) as torch's dropout does.
        return torch.empty_like(x).copy_(_checked(op, x.contiguous(), *args))
    backend = _backend(x.device, x.dtype)
    y = getattr(backend, op)(x, *args)
    if backend is cpu and 0 < x.numel() < _LIMIT:
        small.enter(x.dtype)
    return y


def dropout_forward(
    x: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> torch.Tensor:
    """Counter-based dropout: ``y = x * scale`` where kept, else 0 (also where ``x`` is inf or NaN).

    Element ``k`` (row-major over ``x``'s logical shape, whatever its strides) is kept iff
    ``r16(offset + k) >= threshold`` with ``r16`` the 16-bit-lane Philox4x32-10 stream keyed by
    ``seed``. Reads ``x`` once and writes ``y`` once (a non-contiguous ``x`` is copied first).

    Args:
        x: float16/bfloat16/float32/float64 tensor, any shape, layout and device.
        seed: 64-bit seed in [0, 2**64).
        offset: stream position of ``x``'s first element (``offset + numel <= 2**63``).
        threshold: keep threshold in [0, 65536], from :func:`threshold_from_p`.
        scale: factor for kept elements, 1/(1 − p) (:func:`dropkit.ops.dropout_scale`) for
            inverted dropout.

    Returns:
        A new tensor of ``x``'s shape, dtype, device and memory format.

    Example:
        >>> dropout_forward(torch.ones(3, dtype=torch.float64), 7, 2**40, 0, 1.0)
        tensor([1., 1., 1.], dtype=torch.float64)
    """
    try:
        dtype = x.dtype
    except AttributeError:  # not a tensor: the checked path says so
        dtype = None
    entry = _LANE.get(dtype)
    if (
        entry is not None
        and x.is_cpu
        and 0 < (n := x.numel()) < _LIMIT
        and x.is_contiguous()
        and type(seed) is int
        and type(offset) is int
        and type(threshold) is int
        and type(scale) is float
        and 0 <= seed <= _SEED_MAX
        and 0 <= offset <= _STREAM_END - n
        and 0 <= threshold <= THRESHOLD_RANGE
    ):
        out = torch.empty_like(x)
        if x.requires_grad:
            x = x.detach()
        k0, k1 = seed & 0xFFFFFFFF, seed >> 32
        if dtype is _F32 or dtype is _F64:
            entry(x.numpy().reshape(-1), out.numpy().reshape(-1), offset, k0, k1, threshold, scale)
        else:
            entry(_bits(x), _bits(out), offset, k0, k1, threshold, scale)
        return out
    return _checked("dropout_forward", x, seed, offset, threshold, scale)


def dropout_forward_out(
    x: torch.Tensor, out: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> torch.Tensor:
    """:func:`dropout_forward` written into ``out`` (may be ``x`` itself, for in-place dropout).

    ``x`` and ``out`` may have any layout (the mask follows ``x``'s logical row-major order; a
    non-contiguous pair goes through a contiguous copy). The kernels write memory directly:
    autograd does not see the write (:func:`dropkit.ops` bumps the version counter).

    Example:
        >>> x = torch.ones(4)
        >>> _ = dropout_forward_out(x, x, 0, 0, 32768, 2.0)
        >>> x
        tensor([2., 0., 2., 2.])
    """
    try:
        dtype = x.dtype
    except AttributeError:  # not a tensor: the checked path says so
        dtype = None
    entry = _LANE.get(dtype)
    if (
        out is x
        and entry is not None
        and x.is_cpu
        and 0 < (n := x.numel()) < _LIMIT
        and x.is_contiguous()
        and type(seed) is int
        and type(offset) is int
        and type(threshold) is int
        and type(scale) is float
        and 0 <= seed <= _SEED_MAX
        and 0 <= offset <= _STREAM_END - n
        and 0 <= threshold <= THRESHOLD_RANGE
    ):
        if x.requires_grad:
            x = x.detach()
        flat = x.numpy().reshape(-1) if dtype is _F32 or dtype is _F64 else _bits(x)
        entry(flat, flat, offset, seed & 0xFFFFFFFF, seed >> 32, threshold, scale)
        return out
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
    if not (x.is_contiguous() and out.is_contiguous()):
        if out.dtype != x.dtype:
            raise TypeError(f"out must have dtype {x.dtype}, got {out.dtype}")
        if out.shape != x.shape:
            raise ValueError(f"out must have x's shape {tuple(x.shape)}, got {tuple(out.shape)}")
        with torch.no_grad():
            return out.copy_(_checked("dropout_forward", x, seed, offset, threshold, scale))
    backend = _backend(x.device, x.dtype)
    if not hasattr(backend, "dropout_forward_out"):  # the torch fallback has no out= form
        return out.copy_(backend.dropout_forward(x, seed, offset, threshold, scale))
    backend.dropout_forward_out(x, out, seed, offset, threshold, scale)
    if backend is cpu and 0 < x.numel() < _LIMIT:
        small.enter(x.dtype)
    return out


def dropout_backward(
    grad: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> torch.Tensor:
    """Gradient of :func:`dropout_forward` w.r.t. ``x``: the regenerated mask times ``scale``,
    i.e. :func:`dropout_forward` of ``grad`` with the same stream (any layout, likewise).

    Example:
        >>> dropout_backward(torch.ones(4), 0, 0, 32768, 2.0)
        tensor([2., 0., 2., 2.])
    """
    return _checked("dropout_backward", grad, seed, offset, threshold, scale)


def keep_mask(
    n: int, seed: int, offset: int, threshold: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The keep mask (True = kept) of ``n`` stream positions from ``offset``: bool tensor (n,).

    Example:
        >>> keep_mask(4, 0, 0, 32768, "cpu")
        tensor([ True, False,  True,  True])
    """
    entry = _LANE.get(_MASK)
    if (
        entry is not None
        and type(n) is int
        and 0 < n < _LIMIT
        and (device == _CPU or device == "cpu")
        and type(seed) is int
        and type(offset) is int
        and type(threshold) is int
        and 0 <= seed <= _SEED_MAX
        and 0 <= offset <= _STREAM_END - n
        and 0 <= threshold <= THRESHOLD_RANGE
    ):
        out = torch.empty(n, dtype=torch.bool)
        entry(out.numpy(), offset, seed & 0xFFFFFFFF, seed >> 32, threshold)
        return out
    backend = _backend(torch.device(device), _MASK)
    mask = backend.keep_mask(n, seed, offset, threshold, device)
    if backend is cpu and 0 < n < _LIMIT:
        small.enter(_MASK)
    return mask


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

    The mask is that of :func:`dropout_forward` on ``x + bias`` at the same ``(seed, offset)``.
    ``x``, ``bias`` and ``residual`` contiguous, of one dtype.

    Shape:
        x and residual (..., H), bias (H,); output (..., H).

    Example:
        >>> bias_dropout_add(torch.zeros(1, 4), torch.ones(4), torch.ones(1, 4), 0, 0, 32768, 2.0)
        tensor([[3., 1., 3., 3.]])
    """
    backend = _backend(x.device, ("bda", x.dtype))
    return backend.bias_dropout_add(x, bias, residual, seed, offset, threshold, scale)


def bias_dropout_add_backward(
    grad: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`bias_dropout_add`: ``(grad_x, grad_bias)``; ``grad_residual = grad``.

    ``grad_x = mask * scale * grad`` (the regenerated mask) and ``grad_bias`` is ``grad_x``
    summed over every dim but the last.

    Example:
        >>> gx, gb = bias_dropout_add_backward(torch.ones(2, 4), 0, 0, 32768, 2.0)
        >>> gb
        tensor([4., 2., 4., 4.])
    """
    grad_x = dropout_backward(grad, seed, offset, threshold, scale)
    grad_bias = grad_x.reshape(-1, grad_x.shape[-1]).sum(0)
    return grad_x, grad_bias
