"""The small-tensor lane: CPU tensors below ``PARALLEL_MIN`` elements, straight into numba's loop.

For the 10^4-element activations of a small MLP the serial numba loop takes a few microseconds,
less than the checked path around it (argument checks, NumPy views, the serial/parallel choice,
numba's type dispatch: about 12 µs per call). So :mod:`dropkit.kernels` calls the compiled entry
point of the serial loop directly for a contiguous CPU tensor of fewer than :data:`LIMIT` elements
once numba serves its dtype (on a fresh install, after :mod:`dropkit.kernels.warmup` has compiled
it; the torch fallback serves meanwhile): about 3 µs per call plus the loop. Same compiled loop,
same argument types (the entry point converts Python numbers to the compiled signature's types
exactly as the typed NumPy scalars of the checked path), so the same bits.

This module holds the lane's state; the lane itself is inlined in the entry points of
:mod:`dropkit.kernels` (a Python call is a measurable part of the cost here).
:mod:`dropkit.kernels.native`'s C++ autograd node serves the same tensors (:func:`accepts`).

Example:
    >>> import torch
    >>> accepts(torch.ones(10, 10)), accepts(torch.ones(LIMIT))
    (True, False)
"""

from __future__ import annotations

import torch

from dropkit.kernels import cpu, warmup

__all__ = ["ENTRIES", "LIMIT", "MASK", "READY", "accepts", "enter"]

#: The lane takes tensors of fewer elements than this (above it the parallel loops may run).
LIMIT = cpu.PARALLEL_MIN
#: dtype (dropout) or :data:`MASK` -> the compiled entry point of its serial loop; a kind is here
#: once numba serves it in this process. Read on the hot path.
ENTRIES: dict[object, object] = {}
#: The kind of the bare keep mask.
MASK = "mask"
#: The warm-up kinds numba serves in this process (:data:`dropkit.kernels.warmup.READY`, the same
#: set): a dtype in it passes the lane's readiness test without a call. Read on the hot path.
READY = warmup.READY


def enter(kind: object) -> object:
    """Adds ``kind`` (a dtype, or :data:`MASK`) to the lane: its serial loop's entry point, compiled
    or loaded now. For the entry points of :mod:`dropkit.kernels`, after numba served ``kind``."""
    entry = ENTRIES.get(kind)
    if entry is None:
        entry = ENTRIES[kind] = cpu.serial_entry(kind)
    return entry


def accepts(x: torch.Tensor) -> bool:
    """Whether the lane serves ``x``: a contiguous CPU tensor of 1 to ``LIMIT - 1`` elements, of a
    float dtype whose numba code may run in this process now (asking starts the background
    warm-up on a fresh install, see :func:`dropkit.kernels.warmup.numba_ready`)."""
    dtype = x.dtype
    return (
        x.is_cpu
        and 0 < x.numel() < LIMIT
        and dtype in cpu.DROPOUT_DRIVERS
        and x.is_contiguous()
        and (dtype in READY or warmup.numba_ready(dtype))
    )
