"""The batch of a forward pass: its inputs as a tree of tensors, repeated for T samples.

MC batching runs T samples as one (T·N, ...) batch: every input tensor whose dim 0 has the N rows
of the first tensor input is repeated sample-major (rows [t·N, (t+1)·N) are copy t), any other
input is shared. :func:`tree_map` walks the tuples, lists, dicts, dataclasses and Hugging Face
``ModelOutput``\\ s that hold inputs and outputs; :class:`BatchingError` says a model does not keep
samples × rows in dim 0, so the remaining samples run as a loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any

import torch
from torch import nn


class BatchingError(ValueError):
    """The model does not keep samples × rows in dim 0: the loop serves these samples."""


def tensor_bytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    return 0


def repeat_rows(value: torch.Tensor, count: int) -> torch.Tensor:
    # Sample-major: rows [t·N, (t+1)·N) are copy t.
    if count == 1:
        return value
    return (
        value.unsqueeze(0)
        .expand(count, *value.shape)
        .reshape(count * value.shape[0], *value.shape[1:])
    )


class Inputs:
    """A forward pass's positional and keyword inputs; tensors with N rows in dim 0 are the batch."""

    def __init__(self, args: tuple, kwargs: dict[str, Any]) -> None:
        self.args, self.kwargs = args, kwargs
        found = _first_tensor(args, "x" if len(args) == 1 else "args") or _first_tensor(kwargs, "")
        if found is None:
            kinds = ", ".join(type(a).__name__ for a in (*args, *kwargs.values())) or "nothing"
            raise TypeError(
                "x must be a torch.Tensor (or the inputs must hold one, with the batch in dim 0), "
                f"got {kinds}"
            )
        path, tensor = found
        if tensor.dim() == 0 or tensor.shape[0] == 0:
            raise ValueError(
                f"{path} must have a batch dim 0 with at least one row, got shape {tuple(tensor.shape)}"
            )
        self.first = tensor
        self.rows = int(tensor.shape[0])
        self.single = len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor)

    def describe(self) -> str:
        if self.single:
            return f"x of shape {tuple(self.first.shape)}"
        parts = [_shape_of(a) for a in self.args]
        parts += [f"{k}={_shape_of(v)}" for k, v in self.kwargs.items()]
        return f"inputs ({', '.join(parts)})"

    def repeated(self, count: int) -> tuple[tuple, dict[str, Any]]:
        def rep(path: str, value: object) -> object:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == self.rows:
                return repeat_rows(value, count)
            return value

        if count == 1:
            return self.args, self.kwargs
        return tree_map(rep, self.args), tree_map(rep, self.kwargs)

    def spec(self) -> tuple:
        leaves: list = []

        def note(path: str, value: object) -> object:
            if isinstance(value, torch.Tensor):
                leaves.append((path, tuple(value.shape), value.dtype, value.device))
            else:
                leaves.append((path, type(value).__name__, value if _hashable(value) else None))
            return value

        tree_map(note, (self.args, self.kwargs))
        return tuple(leaves)


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _shape_of(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    return type(value).__name__


def _first_tensor(value: object, path: str) -> tuple[str, torch.Tensor] | None:
    found: list[tuple[str, torch.Tensor]] = []

    def visit(p: str, leaf: object) -> object:
        if not found and isinstance(leaf, torch.Tensor):
            found.append((p, leaf))
        return leaf

    tree_map(visit, value, path)
    return found[0] if found else None


def tree_map(fn: Callable[[str, object], object], value: object, path: str = "") -> object:
    """Applies ``fn(path, leaf)`` to every leaf and rebuilds the containers around the results."""
    if isinstance(value, Mapping):
        items = {
            k: tree_map(fn, v, f"{path}.{k}" if isinstance(k, str) else f"{path}[{k!r}]")
            for k, v in value.items()
        }
        if is_dataclass(value):  # a Hugging Face ModelOutput: a dataclass that is also a mapping
            return type(value)(**items)
        try:
            return type(value)(items)
        except TypeError:
            return dict(items)
    if is_dataclass(value) and not isinstance(value, type):
        return type(value)(
            **{
                f.name: tree_map(fn, getattr(value, f.name), f"{path}.{f.name}")
                for f in fields(value)
                if f.init
            }
        )
    if isinstance(value, (tuple, list)):
        items_list = [tree_map(fn, v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
            return type(value)(*items_list)
        return type(value)(items_list)
    return fn(path, value)


def device_of(args: tuple, kwargs: dict, model: nn.Module) -> torch.device:
    found = _first_tensor((args, kwargs), "")
    if found is not None:
        return found[1].device
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _one_line(err: BaseException) -> str:
    """The first line of an error: torch and fx append traces and graph dumps on later lines."""
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def with_shape_context(model: nn.Module, inputs: Inputs, call: Callable[[], object]) -> object:
    try:
        return call()
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        if isinstance(err, ValueError) and str(err).startswith(("MC batching", "max_memory")):
            raise
        raise ValueError(
            f"model ({type(model).__name__}) failed on {inputs.describe()}: {_one_line(err)}"
        ) from None
