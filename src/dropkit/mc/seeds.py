"""Seeds of MC sampling: the per-sample stream key, the seed of a call, torch's global RNG state.

Sample t's masks are a function of (``seed``, t) alone (see :mod:`dropkit.mc`): elementwise dropout
calls use the counter-based stream ``mix_seed(seed, k)`` of the k-th call, every other stochastic
module a per-sample ``torch.Generator`` seeded by ``mix_seed(seed, SAMPLE_TAG + t)``. Modules that
draw from torch's global generators see them re-seeded per sample (:func:`reseed_globals`), and
every public entry point leaves the global state as it found it (:func:`saved_global_rng`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from dropkit import rng
from dropkit._validate import check_int_range

# Per-sample generators are keyed apart from the per-call elementwise streams (k < 2^62).
SAMPLE_TAG = 1 << 62
_MASK64 = (1 << 64) - 1


def sample_seed(seed: object) -> int:
    """The key of a predict call's streams: ``seed`` checked to be 64 bits, or drawn for None.

    A drawn seed is one draw from torch's global generator (the only change predict makes to it).
    """
    if seed is None:
        return rng.draw_seed()
    return check_int_range(seed, "seed", 0, _MASK64, note="64 bits, or None to draw one")


def reseed_globals(seed: int, device: torch.device) -> None:
    """Seeds torch's global CPU generator (and ``device``'s CUDA one) for one sample's module."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)


@contextlib.contextmanager
def saved_global_rng(device: torch.device) -> Iterator[None]:
    """Puts torch's global CPU (and ``device``'s CUDA) RNG state back as it was on exit."""
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)
