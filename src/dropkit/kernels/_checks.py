"""Argument checks shared by every kernel backend (numba, Triton, torch, the cold-start stand-ins):
one home and one wording for each check."""

from __future__ import annotations

import torch

from dropkit.kernels.philox import THRESHOLD_RANGE

#: The element types every kernel handles.
SUPPORTED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_seed_offset(n: int, seed: int, offset: int) -> None:
    if not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    if not isinstance(offset, int) or offset < 0 or offset + n > 2**63:
        raise ValueError(
            f"offset must be an integer >= 0 with offset + numel <= 2**63, got {offset!r} "
            f"for {n} elements"
        )


def check_stream(n: int, seed: int, offset: int, threshold: int) -> None:
    """``seed`` in [0, 2^64), ``offset + n <= 2^63``, ``threshold`` in [0, 65536]."""
    _check_seed_offset(n, seed, offset)
    if not isinstance(threshold, int) or not 0 <= threshold <= THRESHOLD_RANGE:
        raise ValueError(f"threshold must be an integer in [0, 65536], got {threshold!r}")


def check_noise_stream(n: int, seed: int, offset: int) -> None:
    """The noise kernels' stream: ``n >= 0``, ``seed`` in [0, 2^64), ``offset + n <= 2^63``."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    _check_seed_offset(n, seed, offset)


def check_tensor(
    t: torch.Tensor,
    name: str,
    dtype: torch.dtype | None,
    device_ok: bool,
    device_error: str,
) -> None:
    """A contiguous tensor of a supported dtype (``dtype`` if given) on the backend's device.

    ``device_ok`` is the caller's device test on ``t``; ``device_error`` the message's tail when it
    fails (e.g. "a CPU tensor for the numba kernels, got device cuda:0").
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not device_ok:
        raise ValueError(f"{name} must be {device_error}")
    if t.dtype not in SUPPORTED:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got strides {t.stride()}")


def check_bias_residual(x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor) -> None:
    """``bias`` of shape (x.shape[-1],) and ``residual`` of x's shape (bias + dropout + add)."""
    if x.dim() == 0 or bias.dim() != 1 or bias.shape[0] != x.shape[-1]:
        raise ValueError(
            f"bias must have shape (x.shape[-1],) = ({x.shape[-1] if x.dim() else '?'},), "
            f"got {tuple(bias.shape)}"
        )
    if residual.shape != x.shape:
        raise ValueError(
            f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}"
        )


def check_cpu_tensor(t: torch.Tensor, name: str, dtype: torch.dtype | None = None) -> None:
    """:func:`check_tensor` for the numba kernels: a CPU tensor."""
    check_tensor(
        t,
        name,
        dtype,
        isinstance(t, torch.Tensor) and t.device.type == "cpu",
        f"a CPU tensor for the numba kernels, got device {getattr(t, 'device', None)}",
    )


def check_cuda_tensor(
    t: torch.Tensor, name: str, dtype: torch.dtype | None = None, *, interpreted: bool = False
) -> None:
    """:func:`check_tensor` for the Triton kernels: a CUDA tensor (any device when ``interpreted``,
    i.e. under ``TRITON_INTERPRET=1``)."""
    check_tensor(
        t,
        name,
        dtype,
        interpreted or (isinstance(t, torch.Tensor) and t.device.type == "cuda"),
        f"a CUDA tensor for the Triton kernels, got {getattr(t, 'device', None)}",
    )
