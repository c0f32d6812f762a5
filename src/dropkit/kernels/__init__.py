"""Counter-based dropout kernels: the same Philox4x32-10 mask bits on every device.

One function per operation, dispatched on the tensor's device:

* CPU: :mod:`dropkit.kernels.cpu` (numba, parallel, cached);
* CUDA: :mod:`dropkit.kernels.gpu` (Triton, calling ``tl.randint4x``), when triton is installed;
* any other device (or CUDA without triton): :mod:`dropkit.kernels.fallback`, the same generator
  in torch ops, slower but bit-identical.

The contract (spelled out in :mod:`dropkit.reference.philox` and ``docs/kernels.md``): element ``k``
of a call at stream ``offset`` is kept iff the 16-bit lane ``offset + k`` of the Philox4x32-10
stream keyed by the 64-bit ``seed`` is ``>= threshold``, ``threshold = floor(p * 65536 + 1/2)``;
kept elements become ``x * scale`` (rounded as torch rounds it), dropped ones 0.

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

from dropkit.kernels import cpu, fallback, warmup
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
# Public, device-dispatched API
# ----------------------------------------------------------------------------------------------
def dropout_forward(
    x: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> torch.Tensor:
    """Counter-based dropout of a contiguous tensor: ``y = x * scale`` where kept, else 0.

    Element ``k`` (row-major) is kept iff ``r16(offset + k) >= threshold`` with ``r16`` the
    16-bit-lane Philox4x32-10 stream keyed by ``seed``. Reads ``x`` once and writes ``y`` once.

    Args:
        x: contiguous float16/bfloat16/float32/float64 tensor.
        seed: 64-bit seed in [0, 2**64).
        offset: stream position of ``x``'s first element (``offset + numel <= 2**63``).
        threshold: keep threshold in [0, 65536], from :func:`threshold_from_p`.
        scale: factor for kept elements, 1/(1 − p) (:func:`dropkit.ops.dropout_scale`) for inverted dropout.

    Returns:
        A new tensor of ``x``'s shape, dtype and device.

    Example:
        >>> dropout_forward(torch.ones(3, dtype=torch.float64), 7, 2**40, 0, 1.0)
        tensor([1., 1., 1.], dtype=torch.float64)
    """
    return _backend(x.device, x.dtype).dropout_forward(x, seed, offset, threshold, scale)


def dropout_forward_out(
    x: torch.Tensor, out: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> torch.Tensor:
    """:func:`dropout_forward` written into ``out`` (may be ``x`` itself, for in-place dropout).

    Example:
        >>> x = torch.ones(4)
        >>> _ = dropout_forward_out(x, x, 0, 0, 32768, 2.0)
        >>> x
        tensor([2., 0., 2., 2.])
    """
    backend = _backend(x.device, x.dtype)
    if not hasattr(backend, "dropout_forward_out"):  # the torch fallback has no out= form
        return out.copy_(backend.dropout_forward(x, seed, offset, threshold, scale))
    return backend.dropout_forward_out(x, out, seed, offset, threshold, scale)


def dropout_backward(
    grad: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> torch.Tensor:
    """Gradient of :func:`dropout_forward` w.r.t. ``x``: the regenerated mask times ``scale``.

    Example:
        >>> dropout_backward(torch.ones(4), 0, 0, 32768, 2.0)
        tensor([2., 0., 2., 2.])
    """
    return _backend(grad.device, grad.dtype).dropout_backward(grad, seed, offset, threshold, scale)


def keep_mask(
    n: int, seed: int, offset: int, threshold: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The keep mask (True = kept) of ``n`` stream positions from ``offset``: bool tensor (n,).

    Example:
        >>> keep_mask(4, 0, 0, 32768, "cpu")
        tensor([ True, False,  True,  True])
    """
    return _backend(torch.device(device), "mask").keep_mask(n, seed, offset, threshold, device)


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
