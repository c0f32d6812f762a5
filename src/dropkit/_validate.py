"""The one validator: probabilities, scalings, shapes and dtypes, checked at every public boundary.

Every error names the argument, the value it got and what is allowed, and is raised before any work
is done, so nothing is half-done. ``ValueError`` means a bad value of the right kind, ``TypeError``
a value of the wrong kind (a string for a rate, an integer tensor for an input).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import torch

__all__ = [
    "SCALINGS",
    "MAX_SEED",
    "check_probability",
    "check_open_rate",
    "check_open_unit",
    "check_rates",
    "check_taus",
    "check_scaling",
    "check_choice",
    "check_bool",
    "check_training",
    "check_real",
    "check_positive_finite",
    "check_float_tensor",
    "check_float_dtype",
    "check_rank",
    "check_min_rank",
    "check_positive_int",
    "check_nonneg_int",
    "check_int_range",
    "check_seed",
    "check_seeds",
    "check_int_tuple",
    "check_shape",
    "check_generator",
    "check_noise_shape",
    "normalize_dims",
    "check_mask_shape",
]

SCALINGS = ("inverted", "inference")

#: The largest seed a user may give: NumPy's legacy generator and Optuna's samplers take 32 bits.
MAX_SEED = 2**32 - 1


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
    :func:`check_bool` with the name ``training`` (checked on every forward call, so the common
    case returns first).

    Example:
        >>> check_training("no")
        Traceback (most recent call last):
            ...
        TypeError: training must be a bool (True or False), got 'no' of type str
    """
    if training is True or training is False:
        return training
    return check_bool(training, name)


def check_bool(value: object, name: str) -> bool:
    """Returns ``value`` after checking it is a bool (Python's or NumPy's).

    An int or a string is refused: ``"no"`` is truthy, and ``per_sample=1`` is likely a mistake
    for an integer argument.

    Example:
        >>> check_bool(True, "batch_first")
        True
        >>> check_bool(1, "batch_first")
        Traceback (most recent call last):
            ...
        TypeError: batch_first must be a bool (True or False), got 1 of type int
    """
    if value is True or value is False:
        return value
    if isinstance(value, np_bool_types()):
        return bool(value)
    raise TypeError(
        f"{name} must be a bool (True or False), got {value!r} of type {type(value).__name__}"
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

    :func:`check_choice` among :data:`SCALINGS` (checked on every forward call, so the common case
    returns first).

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
    return check_choice(scaling, name, SCALINGS)


def check_choice(
    value: object, name: str, allowed: Sequence[str], *, why: str | None = None
) -> str:
    """Returns ``value`` after checking it is one of the strings ``allowed``.

    ``why`` says in the message what the choice is about.

    Raises:
        TypeError: value is not a string.
        ValueError: value is a string not in ``allowed``.

    Example:
        >>> check_choice("row", "mode", ("row", "batch"))
        'row'
        >>> check_choice("col", "mode", ("row", "batch"))
        Traceback (most recent call last):
            ...
        ValueError: mode must be one of 'row', 'batch', got 'col'
    """
    if isinstance(value, str) and value in allowed:
        return value
    shown = ", ".join(repr(a) for a in allowed) + (f" ({why})" if why else "")
    if not isinstance(value, str):
        raise TypeError(
            f"{name} must be a string, one of {shown}, got {value!r} of type {type(value).__name__}"
        )
    raise ValueError(f"{name} must be one of {shown}, got {value!r}")


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


def check_real(value: object, name: str, *, positive: bool = False, nonneg: bool = False) -> float:
    """Returns ``value`` as a float after checking it is a finite real number (not a bool).

    Args:
        value: the number to check (Python or NumPy real).
        name: the argument's name, used in the error message.
        positive: refuse values <= 0.
        nonneg: refuse values < 0.

    Raises:
        TypeError: value is not a real number.
        ValueError: value is NaN or infinite, or breaks ``positive`` / ``nonneg``.

    Example:
        >>> check_real(2, "alpha")
        2.0
        >>> check_real(0.0, "temperature", positive=True)
        Traceback (most recent call last):
            ...
        ValueError: temperature must be a number > 0, got 0.0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number, got {value!r} of type {type(value).__name__}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0.0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    if nonneg and value < 0.0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return value


def check_positive_finite(value: object, name: str) -> float:
    """Returns ``value`` as a float after checking it is a real number in (0, ∞).

    Example:
        >>> check_positive_finite(0.5, "tau")
        0.5
        >>> check_positive_finite(float("inf"), "tau")
        Traceback (most recent call last):
            ...
        ValueError: tau must be a positive finite number, got inf
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a positive finite number, got {value!r} of type {type(value).__name__}"
        )
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_open_unit(value: object, name: str) -> float:
    """Returns ``value`` as a float after checking it is a real number in the open interval (0, 1).

    For levels and fractions (a confidence level, a held-out share), where 0 and 1 are degenerate.

    Example:
        >>> check_open_unit(0.9, "level")
        0.9
        >>> check_open_unit(1.0, "level")
        Traceback (most recent call last):
            ...
        ValueError: level must be a number in (0, 1), got 1.0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a number in (0, 1), got {value!r} of type {type(value).__name__}"
        )
    if not 0.0 < value < 1.0:  # NaN fails both comparisons
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def check_open_rate(
    value: object, name: str = "p", *, upper: float = 1.0, reason: str | None = None
) -> float:
    """Returns a dropout rate as a float after checking it is in (0, 1) (or (0, ``upper``]).

    Where a rate is stored as its logit, 0 and 1 have none. The value is first checked as a
    probability (:func:`check_probability`: its type and [0, 1]); ``reason`` says in the message
    why the ends are refused.

    Example:
        >>> check_open_rate(0.25, upper=0.5)
        0.25
        >>> check_open_rate(0.0, reason="its logit is learned")
        Traceback (most recent call last):
            ...
        ValueError: p must be in (0, 1) (its logit is learned), got 0.0
    """
    p = check_probability(value, name)
    if p <= 0.0 or p >= 1.0 or p > upper:
        bound = f"(0, {upper}]" if upper < 1.0 else "(0, 1)"
        why = f" ({reason})" if reason else ""
        raise ValueError(f"{name} must be in {bound}{why}, got {value!r}")
    return p


def _entries(values: object, name: str, what: str) -> tuple[object, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(
            f"{name} must be a sequence of {what}, got {values!r} of type {type(values).__name__}"
        )
    return tuple(values)


def check_rates(rates: object, name: str) -> tuple[float, ...]:
    """Returns a non-empty list of distinct dropout rates, each in (0, 1), as a tuple of floats.

    Example:
        >>> check_rates([0.1, 0.5], "rates")
        (0.1, 0.5)
        >>> check_rates([0.1, 1.0], "rates")
        Traceback (most recent call last):
            ...
        ValueError: rates: dropout rates must be in (0, 1), got 1.0 at position 1
    """
    values = _entries(rates, name, "dropout rates in (0, 1)")
    if not values:
        raise ValueError(f"{name} must hold at least one dropout rate, got none")
    for i, p in enumerate(values):
        if isinstance(p, bool) or not isinstance(p, numbers.Real):
            raise TypeError(
                f"{name}: dropout rates must be numbers in (0, 1), got {p!r} of type "
                f"{type(p).__name__} at position {i}"
            )
        if not 0.0 < p < 1.0:
            raise ValueError(f"{name}: dropout rates must be in (0, 1), got {p!r} at position {i}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat a rate, got {list(values)}")
    return tuple(float(p) for p in values)


def check_taus(taus: object, name: str) -> tuple[float, ...]:
    """Returns a non-empty list of distinct precisions τ, each positive and finite, as floats.

    Example:
        >>> check_taus([1, 2.5], "taus")
        (1.0, 2.5)
        >>> check_taus([1.0, -2.0], "taus")
        Traceback (most recent call last):
            ...
        ValueError: taus: precisions τ must be positive finite numbers, got -2.0 at position 1
    """
    values = _entries(taus, name, "precisions τ > 0")
    if not values:
        raise ValueError(f"{name} must hold at least one precision τ, got none")
    for i, tau in enumerate(values):
        if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
            raise TypeError(
                f"{name}: precisions τ must be positive finite numbers, got {tau!r} of type "
                f"{type(tau).__name__} at position {i}"
            )
        if not (math.isfinite(tau) and tau > 0):
            raise ValueError(
                f"{name}: precisions τ must be positive finite numbers, got {tau!r} at position {i}"
            )
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must not repeat a value, got {list(values)}")
    return tuple(float(t) for t in values)


def check_nonneg_int(value: object, name: str) -> int:
    """Returns ``value`` as an int after checking it is an integer (not a bool) >= 0.

    Example:
        >>> check_nonneg_int(-1, "t")
        Traceback (most recent call last):
            ...
        ValueError: t must be an integer >= 0, got -1
    """
    return check_positive_int(value, name, minimum=0)


def check_int_range(
    value: object, name: str, low: int, high: int, *, note: str | None = None
) -> int:
    """Returns ``value`` as an int after checking it is an integer (not a bool) in [low, high].

    ``note`` says in the message where the bounds come from.

    Example:
        >>> check_int_range(0, "--threads", 1, 8, note="the CPU cores this process may use")
        Traceback (most recent call last):
            ...
        ValueError: --threads must be an int in [1, 8] (the CPU cores this process may use), got 0
    """
    allowed = f"an int in [{low}, {high}]" + (f" ({note})" if note else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {allowed}, got {value!r} of type {type(value).__name__}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def check_seed(seed: object, name: str = "seed") -> int:
    """Returns a user's seed as an int after checking it is in [0, :data:`MAX_SEED`] (32 bits).

    Example:
        >>> check_seed(2**32, "--seed")
        Traceback (most recent call last):
            ...
        ValueError: --seed must be an int in [0, 4294967295] (32 bits), got 4294967296
    """
    return check_int_range(seed, name, 0, MAX_SEED, note="32 bits")


def check_int_tuple(
    value: object, name: str, length: int, *, per: str = "spatial dim"
) -> tuple[int, ...]:
    """Returns an int (repeated ``length`` times) or ``length`` ints as a tuple, each >= 1.

    Example:
        >>> check_int_tuple(3, "block_size", 2)
        (3, 3)
        >>> check_int_tuple((3, 3, 3), "block_size", 2)
        Traceback (most recent call last):
            ...
        ValueError: block_size must be an int or 2 ints (one per spatial dim), got (3, 3, 3)
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (check_positive_int(value, name),) * length
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) != length:
            raise ValueError(
                f"{name} must be an int or {length} ints (one per {per}), got {tuple(value)!r}"
            )
        return tuple(check_positive_int(v, name) for v in value)
    raise TypeError(
        f"{name} must be an int or a sequence of {length} ints, got {value!r} "
        f"of type {type(value).__name__}"
    )


def check_min_rank(x: torch.Tensor, minimum: int, what: str, name: str = "input") -> None:
    """Checks ``x.dim() >= minimum``; ``what`` names the function (and the layout) in the message.

    Example:
        >>> check_min_rank(torch.ones(3), 2, "attention_dropout (…, L, S)")
        Traceback (most recent call last):
            ...
        ValueError: attention_dropout (…, L, S) expects input of rank >= 2, got a 1-D tensor of shape (3,)
    """
    if x.dim() < minimum:
        raise ValueError(
            f"{what} expects {name} of rank >= {minimum}, got a {x.dim()}-D tensor of shape "
            f"{tuple(x.shape)}"
        )


def check_shape(shape: object, name: str = "shape") -> list[int]:
    """Returns a tensor shape as a list after checking it is a sequence of ints >= 0.

    Example:
        >>> check_shape((2, 3))
        [2, 3]
        >>> check_shape((2, -1))
        Traceback (most recent call last):
            ...
        TypeError: shape must be a sequence of ints >= 0, got (2, -1)
    """
    entries = (
        tuple(shape)
        if isinstance(shape, Iterable) and not isinstance(shape, (str, bytes))
        else None
    )
    if entries is None or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in entries
    ):
        raise TypeError(f"{name} must be a sequence of ints >= 0, got {shape!r}")
    return [int(s) for s in entries]


def check_float_dtype(dtype: object, name: str = "dtype") -> torch.dtype:
    """Returns ``dtype`` after checking it is a floating-point ``torch.dtype``.

    Example:
        >>> check_float_dtype(torch.int64)
        Traceback (most recent call last):
            ...
        TypeError: dtype must be a floating-point torch.dtype, got torch.int64
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


def check_seeds(seeds: object, name: str = "seeds") -> list[int]:
    """Returns a non-empty sequence of seeds as a list of ints, each checked by :func:`check_seed`.

    Example:
        >>> check_seeds((0, 1, 2))
        [0, 1, 2]
        >>> check_seeds([0, -1])
        Traceback (most recent call last):
            ...
        ValueError: seeds[1] must be an int in [0, 4294967295] (32 bits), got -1
    """
    values = _entries(seeds, name, "seeds (ints)")
    if not values:
        raise ValueError(f"{name} must hold at least one seed, got none")
    return [check_seed(s, f"{name}[{i}]") for i, s in enumerate(values)]
