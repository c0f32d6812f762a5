"""The one validator: probabilities, scalings, shapes and dtypes, checked at every public boundary.

Every error names the argument, the value it got and what is allowed, and is raised before any work
is done, so nothing is half-done.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

SCALINGS = ("inverted", "inference")


def check_probability(p: object, name: str = "p", *, allow_one: bool = True) -> float:
    """Returns ``p`` as a float after checking it is a real number in [0, 1] (or [0, 1))."""
    if isinstance(p, torch.Tensor):
        if p.numel() != 1:
            raise TypeError(f"{name} must be a number in [0, 1], got a tensor of shape {tuple(p.shape)}")
        p = p.item()
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1], got {p!r} of type {type(p).__name__}")
    value = float(p)
    upper = "1]" if allow_one else "1)"
    if math.isnan(value) or value < 0.0 or value > 1.0 or (not allow_one and value == 1.0):
        raise ValueError(f"{name} must be a number in [0, {upper}, got {p!r}")
    return value


def check_scaling(scaling: object) -> str:
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    return scaling  # type: ignore[return-value]


def check_float_tensor(x: object, name: str = "input") -> torch.Tensor:
    """Dropout is defined on real floating-point tensors; integer, bool and complex are refused."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {x.dtype}"
        )
    return x


def check_rank(x: torch.Tensor, allowed: Sequence[int], what: str, name: str = "input") -> None:
    if x.dim() not in allowed:
        shapes = " or ".join(f"{r}-D" for r in allowed)
        raise ValueError(f"{what} expects {name} of rank {shapes}, got a {x.dim()}-D tensor of shape {tuple(x.shape)}")


def check_positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} of type {type(value).__name__}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def normalize_dims(dims: object, ndim: int, name: str = "shared_dims") -> tuple[int, ...]:
    """Turns an int or a sequence of ints into sorted, non-negative, unique dims of an ndim tensor."""
    if dims is None:
        return ()
    if isinstance(dims, numbers.Integral) and not isinstance(dims, bool):
        dims = (int(dims),)
    if not isinstance(dims, Sequence) or not all(
        isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in dims
    ):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {dims!r}")
    out = []
    for d in dims:
        if not -ndim <= d < ndim:
            raise ValueError(
                f"{name} entries must be in [{-ndim}, {ndim - 1}] for a {ndim}-D input, got {dims!r}"
            )
        out.append(int(d) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat a dimension, got {dims!r}")
    return tuple(sorted(out))


def check_mask_shape(mask_shape: Sequence[int], shape: torch.Size, name: str = "noise_shape") -> tuple[int, ...]:
    """A mask shape must broadcast to the input's shape: each dim equal to the input's or 1."""
    mask_shape = tuple(int(s) for s in mask_shape)
    ok = len(mask_shape) <= len(shape) and all(
        m == s or m == 1 for m, s in zip(reversed(mask_shape), reversed(tuple(shape)))
    )
    if not ok:
        raise ValueError(
            f"{name} {mask_shape} does not broadcast to the input's shape {tuple(shape)}: "
            "each dim must equal the input's or be 1"
        )
    return (1,) * (len(shape) - len(mask_shape)) + mask_shape
