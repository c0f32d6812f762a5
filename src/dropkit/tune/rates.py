"""A model's dropout modules by path, and setting their rates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

from dropkit._validate import check_probability
from dropkit.layers.base import is_dropout_module

__all__ = ["dropout_layers", "set_rates", "check_layers"]


def dropout_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's dropout modules by path (``named_modules`` order, the order they are built).

    Example:
        >>> import dropkit
        >>> list(dropout_layers(dropkit.MLP([4, 8, 8, 2], p=0.3)))
        ['input_dropout', 'dropout1', 'dropout2']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if name and is_dropout_module(m)}


def set_rates(model: nn.Module, rates: Mapping[str, float]) -> nn.Module:
    """Sets ``module.p`` for each path in ``rates`` (checked first: nothing changes on an error).

    Raises:
        KeyError: a path that is not a dropout module of ``model``.
        ValueError / TypeError: a rate outside [0, 1] or not a number.

    Example:
        >>> import dropkit
        >>> net = set_rates(dropkit.MLP([4, 8, 2], p=0.5), {"dropout1": 0.2})
        >>> net.dropout1.p
        0.2
    """
    layers = dropout_layers(model)
    checked = {}
    for path, value in rates.items():
        if path not in layers:
            raise KeyError(
                f"{path!r} is not a dropout module of the model; its dropout modules are {list(layers)}"
            )
        checked[path] = check_probability(
            value, f"rate of {path}", allow_one=getattr(layers[path], "allow_one", True)
        )
    for path, value in checked.items():
        layers[path].p = value
    return model


def check_layers(layers: Iterable[str] | None, available: list[str]) -> list[str]:
    """``layers`` as a list after checking it names some of the ``available`` dropout module
    paths (None: all of them).

    Example:
        >>> check_layers(["fc"], ["dropout1", "dropout2"])
        Traceback (most recent call last):
            ...
        ValueError: layers must name dropout modules of the model ['dropout1', 'dropout2'], got ['fc']
    """
    if layers is None:
        return list(available)
    if isinstance(layers, str):
        raise TypeError(f"layers must be a list of dropout module paths, got the string {layers!r}")
    layers = list(layers)
    if not layers or any(path not in available for path in layers):
        raise ValueError(f"layers must name dropout modules of the model {available}, got {layers}")
    return layers
