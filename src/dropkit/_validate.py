"""The one validator: probabilities, scalings, shapes and dtypes, checked at every public boundary.

Every error names the argument, the value it got and what is allowed, and is raised before any work
is done, so nothing is half-done. ``ValueError`` means a bad value of the right kind, ``TypeError``
a value of the wrong kind (a string for a rate, an integer tensor for an input).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

__all__ = [
    "SCALINGS",
    "check_probability",
    "check_scaling",
    "check_training",
    "check_float_tensor",
    "check_rank",
    "check_positive_int",
    "check_generator",
    "check_noise_shape",
    "normalize_dims",
    "check_mask_shape",
]

SCALINGS = ("inverted", "inference")


def check_probability(p: object, name: str = "p", *, allow_one: bool = True) -> float:
    """Returns ``p`` as a float after checking it is a real number in [0, 1] (or [0, 1)).

    Accepts Python and NumPy real numbers and one-element real tensors; refuses bools (a bool is an
    int in Python, but ``p=True`` is always a mistake), strings, None, complex numbers and NaN.

    Args:
        p: the probability to check.
        name: the argument's name, used in the error message.
        allow_one: whether p = 1 is allowed (False where the rule is undefined at 1).

    Raises:
        TypeError: p is not a real number.
        ValueError: p is NaN or outside [0, 1] ([0, 1) when ``allow_one`` is False).

    Example:
        >>> check_probability(0.25)
        0.25
        >>> check_probability(1.5)
        Traceback (most recent call last):
            ...
        ValueError: dropout probability p must be a number in [0, 1], got 1.5
    """
    if type(p) is float and 0.0 <= p < 1.0:  # the common case, checked on every forward call
        return p
    interval = "[0, 1]" if allow_one else "[0, 1)"
    if isinstance(p, torch.Tensor):
        if p.numel() != 1 or p.dtype == torch.bool or p.is_complex():
            raise TypeError(
                f"dropout probability {name} must be a number in {interval}, got a tensor of "
                f"shape {tuple(p.shape)} and dtype {p.dtype}"
            )
        if p.requires_grad:
            # The rate is read as a number here, so a gradient for it would silently be lost.
            raise TypeError(
                f"dropout probability {name} must be a number in {interval}, got a tensor that "
                f"requires grad ({p.item()!r}); this rate is not learned: pass a float or "
                "p.detach() (ConcreteDropout and VariationalDropout learn their rate)"
            )
        p = p.item()
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(
            f"dropout probability {name} must be a number in {interval}, "
            f"got {p!r} of type {type(p).__name__}"
        )
    value = float(p)
    if math.isnan(value) or value < 0.0 or value > 1.0 or (not allow_one and value == 1.0):
        raise ValueError(f"dropout probability {name} must be a number in {interval}, got {p!r}")
    return value


def check_training(training: object, name: str = "training") -> bool:
    """Returns ``training`` after checking it is a bool, as torch's functional dropout does.

    A string such as ``"no"`` is truthy, so it would silently mean training mode.

    Example:
        >>> check_training("no")
        Traceback (most recent call last):
            ...
        TypeError: training must be a bool (True or False), got 'no' of type str
    """
    if training is True or training is False:
        return training
    if isinstance(training, np_bool_types()):
        return bool(training)
    raise TypeError(
        f"{name} must be a bool (True or False), got {training!r} of type {type(training).__name__}"
    )


def np_bool_types() -> tuple[type, ...]:
    """NumPy's bool scalar type, when NumPy is installed (``model.training`` is a Python bool)."""
    try:
        import numpy as np
    except ImportError:
        return ()
    return (np.bool_,)


def check_scaling(scaling: object, name: str = "scaling") -> str:
    """Returns ``scaling`` after checking it is ``"inverted"`` or ``"inference"``.

    Example:
        >>> check_scaling("inference")
        'inference'
        >>> check_scaling("standard")
        Traceback (most recent call last):
            ...
        ValueError: scaling must be one of 'inverted', 'inference', got 'standard'
    """
    if scaling in SCALINGS and isinstance(scaling, str):
        return scaling
    allowed = ", ".join(repr(s) for s in SCALINGS)
    if not isinstance(scaling, str):
        raise TypeError(
            f"{name} must be a string, one of {allowed}, got {scaling!r} of type {type(scaling).__name__}"
        )
    raise ValueError(f"{name} must be one of {allowed}, got {scaling!r}")


def check_float_tensor(x: object, name: str = "input") -> torch.Tensor:
    """Returns ``x`` after checking it is a real floating-point tensor.

    Dropout is defined on real floating-point tensors; integer, bool and complex tensors are refused
    (scaling an integer by 1/(1 − p) cannot be represented, and torch's own error for it is a
    cast failure deep in the kernel).

    Example:
        >>> check_float_tensor(torch.ones(2, dtype=torch.int64))
        Traceback (most recent call last):
            ...
        TypeError: input must be a floating-point tensor (float16, bfloat16, float32 or float64), got dtype torch.int64
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {x.dtype}"
        )
    return x


def check_rank(
    x: torch.Tensor,
    allowed: Sequence[int],
    what: str,
    name: str = "input",
    *,
    layouts: Sequence[str] | None = None,
) -> None:
    """Checks ``x.dim()`` is one of ``allowed``; ``layouts`` names the shapes in the message.

    Example:
        >>> check_rank(torch.ones(2, 3), (3, 4), "dropout2d", layouts=("(C, H, W)", "(N, C, H, W)"))
        Traceback (most recent call last):
            ...
        ValueError: dropout2d expects input of shape (C, H, W) or (N, C, H, W) (rank 3 or 4), got a 2-D tensor of shape (2, 3)
    """
    if x.dim() in allowed:
        return
    ranks = " or ".join(str(r) for r in allowed)
    if layouts:
        expected = f"of shape {' or '.join(layouts)} (rank {ranks})"
    else:
        expected = f"of rank {ranks}"
    raise ValueError(
        f"{what} expects {name} {expected}, got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
    )


def check_positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    """Returns ``value`` as an int after checking it is an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an integer >= {minimum}, got {value!r} of type {type(value).__name__}"
        )
    if int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_generator(generator: object, name: str = "generator") -> torch.Generator | None:
    """Returns ``generator`` after checking it is None or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{name} must be a torch.Generator or None, got {generator!r} of type "
            f"{type(generator).__name__}"
        )
    return generator


def check_noise_shape(
    noise_shape: object, name: str = "noise_shape"
) -> tuple[int | None, ...] | None:
    """Returns ``noise_shape`` as a tuple after checking each entry is None or an int >= 0.

    Only the entries are checked here (a module checks them at construction); whether the shape
    broadcasts to an input is checked per call by :func:`check_mask_shape`.

    Example:
        >>> check_noise_shape([None, 1, None])
        (None, 1, None)
        >>> check_noise_shape((8, -1))
        Traceback (most recent call last):
            ...
        ValueError: noise_shape entries must be None or non-negative ints, got (8, -1)
    """
    if noise_shape is None:
        return None
    if isinstance(noise_shape, torch.Size):
        noise_shape = tuple(noise_shape)
    if isinstance(noise_shape, (str, bytes)) or not isinstance(noise_shape, Sequence):
        raise TypeError(
            f"{name} must be a sequence of ints or None entries (one per input dim), "
            f"got {noise_shape!r} of type {type(noise_shape).__name__}"
        )
    entries = tuple(noise_shape)
    for entry in entries:
        if entry is None:
            continue
        if isinstance(entry, bool) or not isinstance(entry, numbers.Integral):
            raise TypeError(f"{name} entries must be None or non-negative ints, got {entries!r}")
        if entry < 0:
            raise ValueError(f"{name} entries must be None or non-negative ints, got {entries!r}")
    return tuple(None if e is None else int(e) for e in entries)


def normalize_dims(dims: object, ndim: int, name: str = "shared_dims") -> tuple[int, ...]:
    """Turns an int or a sequence of ints into sorted, non-negative, unique dims of an ndim tensor.

    Example:
        >>> normalize_dims(-1, 3)
        (2,)
        >>> normalize_dims([0, -1], 4)
        (0, 3)
    """
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


def check_mask_shape(
    mask_shape: Sequence[int], shape: torch.Size | Sequence[int], name: str = "noise_shape"
) -> tuple[int, ...]:
    """Checks a mask shape broadcasts to ``shape`` and returns it padded with leading 1s.

    Each of the mask's dims must equal the input's or be 1 (numpy broadcasting, mask side only).

    Example:
        >>> check_mask_shape((4, 1), (2, 4, 5))
        (1, 4, 1)
        >>> check_mask_shape((3, 1), (2, 4, 5))
        Traceback (most recent call last):
            ...
        ValueError: noise_shape (3, 1) does not broadcast to the input's shape (2, 4, 5): each dim must equal the input's or be 1
    """
    mask_shape = tuple(int(s) for s in mask_shape)
    ok = len(mask_shape) <= len(shape) and all(
        m == s or m == 1 for m, s in zip(reversed(mask_shape), reversed(tuple(shape)), strict=False)
    )
    if not ok:
        raise ValueError(
            f"{name} {mask_shape} does not broadcast to the input's shape {tuple(shape)}: "
            "each dim must equal the input's or be 1"
        )
    return (1,) * (len(shape) - len(mask_shape)) + mask_shape
