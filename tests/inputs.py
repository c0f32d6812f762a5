"""Inputs whose kept units can be read off a dropout's output.

A test that reads the kept units as ``y != 0`` (or the dropped ones as ``y == 0``) needs an input
with no zeros of its own: a zero input is a zero output whether its unit was kept or dropped, so
it reads as dropped, and a statistical test miscounts or, worse, an input zero hides a bug.
float32 ``torch.randn`` does return exact zeros, two at a time (a zero radius in torch's
Box-Muller pairs elements j and j + 8): about one in 2^23 draws, 6 in 16 draws of 2^22 (seeds
0-15), and a fresh-clone CI run failed on two. ``torch.rand`` draws from [0, 1), 0 included.
"""

from __future__ import annotations

import torch


def without_zeros(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its exact zeros replaced by 1, in place (also on a leaf that requires grad);
    returns ``x``. Every other value, and the number of draws taken from the generator, is
    unchanged, so a seeded test sees the same numbers as before."""
    with torch.no_grad():
        x.masked_fill_(x == 0, 1.0)
    return x


def randn_without_zeros(*size, **kwargs) -> torch.Tensor:
    """``torch.randn(*size, **kwargs)`` with its exact zeros replaced by 1."""
    return without_zeros(torch.randn(*size, **kwargs))
