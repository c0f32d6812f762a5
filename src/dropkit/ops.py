"""The mask path every dropkit layer goes through.

Public contract (used by functional.py and every layer; keep these signatures):

- ``keep_probability(p)``: the keep probability the kernels actually use for drop rate ``p``
  (p quantised to the kernels' threshold resolution); scales must use this value so outputs
  stay unbiased.
- ``dropout_elementwise(x, p, scale, generator=None, inplace=False)``: y = m ⊙ x · scale with
  m ~ Bernoulli(keep_probability(p)) drawn per element; differentiable (grad = m · scale).
- ``keep_mask(shape, p, device, generator=None)``: a bool tensor of ``shape``, True where kept,
  each entry ~ Bernoulli(keep_probability(p)); used for broadcast (shared) masks.

This first version is the torch fallback; the counter-based kernels replace the bodies.
"""

from __future__ import annotations

import torch


def keep_probability(p: float) -> float:
    return 1.0 - p


def keep_mask(shape, p: float, device, generator: torch.Generator | None = None) -> torch.Tensor:
    keep = keep_probability(p)
    u = torch.rand(tuple(shape), device=device, generator=generator)
    return u < keep


def dropout_elementwise(
    x: torch.Tensor,
    p: float,
    scale: float,
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    mask = keep_mask(x.shape, p, x.device, generator)
    factor = mask.to(x.dtype) * scale
    if inplace:
        return x.mul_(factor)
    return x * factor
