"""Counter-based uniform and Gaussian noise: one entry per operation, dispatched on the device.

* CPU: :mod:`dropkit.kernels.noise_cpu` (numba); on a fresh install, while numba compiles a
  kind's code in the background (:mod:`dropkit.kernels.warmup`), that kind is served by
  :mod:`dropkit.kernels.noise_fallback` with noise_cpu's argument checks (same bits, no wait);
* CUDA with triton: :mod:`dropkit.kernels.noise_gpu`;
* any other device: :mod:`dropkit.kernels.noise_fallback` (torch ops, needs float64).

All three give the bits of :mod:`dropkit.reference.noise` (the contract: 32-bit words of the
Philox4x32-10 stream; uniform ``float32(w >> 8) · 2^-24``; Box–Muller with fixed float64
polynomials for ln, cos, sin and a Newton square root), so a noise tensor is a pure function of
``(seed, offset)`` on every device, and backward can regenerate it instead of storing it.

Example:
    >>> import torch
    >>> normal(4, seed=1, offset=0, device="cpu").shape
    torch.Size([4])
"""

from __future__ import annotations

from types import ModuleType

import torch

from dropkit.kernels import backend_name, noise_cpu, noise_fallback, warmup

__all__ = ["uniform", "normal", "gaussian_multiply"]

_gpu: list = []


def _cuda() -> ModuleType | None:
    if not _gpu:
        try:
            from dropkit.kernels import noise_gpu
        except ImportError:
            noise_gpu = None
        _gpu.append(noise_gpu)
    return _gpu[0]


def _backend(device: torch.device, kind: object = None) -> ModuleType | type:
    """The implementation serving ``device``; on CPU, for a ``kind`` of
    :data:`dropkit.kernels.warmup.NOISE_KINDS` whose numba code is still being compiled in the
    background, :class:`dropkit.kernels.warmup.ColdNoise` (noise_cpu's API and checks)."""
    name = backend_name(device)
    if name == "numba":
        if kind is None or kind in warmup.READY or warmup.numba_ready(kind):
            return noise_cpu
        return warmup.ColdNoise
    if name == "triton":
        gpu = _cuda()
        if gpu is not None:
            return gpu
    return noise_fallback


def uniform(n: int, seed: int, offset: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform [0, 1) float32 noise (n,) at stream positions ``offset .. offset + n − 1``.

    Example:
        >>> uniform(2, seed=0, offset=0).tolist()
        [0.3990464210510254, 0.8805201649665833]
    """
    device = torch.device(device)
    backend = _backend(device, ("uniform", torch.float32))
    if backend is noise_cpu or backend is warmup.ColdNoise:
        return backend.uniform(n, seed, offset)
    return backend.uniform(n, seed, offset, device)


def normal(
    n: int,
    seed: int,
    offset: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise (n,), float32 or float64, Box–Muller on the word pairs.

    Example:
        >>> normal(2, seed=0, offset=0, dtype=torch.float64).dtype
        torch.float64
    """
    device = torch.device(device)
    backend = _backend(device, ("normal", dtype))
    if backend is noise_cpu or backend is warmup.ColdNoise:
        return backend.normal(n, seed, offset, dtype)
    return backend.normal(n, seed, offset, device, dtype)


def gaussian_multiply(x: torch.Tensor, seed: int, offset: int, std: float) -> torch.Tensor:
    """Fused Gaussian dropout ``x · (1 + std · z)`` of a contiguous float32/float64 tensor.

    Example:
        >>> gaussian_multiply(torch.ones(2), seed=0, offset=0, std=0.0)
        tensor([1., 1.])
    """
    device = getattr(x, "device", torch.device("cpu"))
    return _backend(device, ("multiply", getattr(x, "dtype", None))).gaussian_multiply(
        x, seed, offset, std
    )
