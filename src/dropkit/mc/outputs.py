"""The T samples of :func:`dropkit.mc.predict`: each pass's output, leaf by leaf, into (T, ...) buffers."""

from __future__ import annotations

import torch

from dropkit.mc.inputs import BatchingError, tree_map


def sample_view(out: object, count: int, rows: int, batched: bool) -> tuple[object, bool]:
    """Each tensor leaf as (count, ...): split (count·N, ...) into (count, N, ...) when batched.

    Returns the view and whether every tensor leaf had N rows (batchable) — with count = 1 a
    leaf of any shape is that sample's value.
    """
    batchable = [True]

    def leaf(path: str, value: object) -> object:
        if not isinstance(value, torch.Tensor):
            return value
        if value.dim() == 0 or value.shape[0] != count * rows:
            batchable[0] = False
            if count == 1:
                return value.unsqueeze(0)
            got = tuple(value.shape) if value.dim() else "a 0-d tensor"
            raise BatchingError(
                f"MC batching: model output{path} has shape {got}, expected dim 0 = samples × rows "
                f"= {count} × {rows}; use predict(..., batched=False)"
            )
        return value.reshape(count, rows, *value.shape[1:]) if batched else value.unsqueeze(0)

    return tree_map(leaf, out), batchable[0]


class Samples:
    """Stores each pass's (transformed) output leaf by leaf into (T, ...) buffers."""

    def __init__(self, T: int) -> None:
        self.T = T
        self.template: object = None
        self.buffers: dict[str, torch.Tensor] = {}
        self.started = False

    def store(self, out: object, first: int, count: int) -> None:
        seen = []

        def leaf(path: str, value: object) -> object:
            if value is None:
                return None
            where = f"model output{path}" if path else "model output"
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"{where} is a {type(value).__name__}, not a tensor: MC samples are stacked "
                    "tensors; drop it with a transform (transform=lambda out: out.logits) or the "
                    "model's own option (use_cache=False)"
                )
            if value.dim() == 0 or value.shape[0] != count:
                raise ValueError(
                    f"{where} after transform has shape {tuple(value.shape)}; transform must keep "
                    f"the leading sample dim ({count} here)"
                )
            if not self.started:
                self.buffers[path] = value.new_empty((self.T, *value.shape[1:]))
            elif path not in self.buffers or self.buffers[path].shape[1:] != value.shape[1:]:
                raise ValueError(
                    f"{where} changed structure or shape between samples ({tuple(value.shape)})"
                )
            self.buffers[path][first : first + count] = value
            seen.append(path)
            return value

        template = tree_map(leaf, out)
        if not self.started:
            if not seen:
                raise TypeError("model output holds no tensor: nothing to sample")
            self.template, self.started = template, True

    def result(self) -> object:
        return tree_map(
            lambda path, value: None if value is None else self.buffers[path], self.template
        )


def all_samples_equal(samples: object) -> bool:
    equal = [True]

    def leaf(path: str, value: object) -> object:
        if isinstance(value, torch.Tensor) and value.shape[0] > 1 and equal[0]:
            # One fused comparison; a NaN anywhere counts as a difference (no warning).
            equal[0] = torch.equal(value, value[:1].expand_as(value))
        return value

    tree_map(leaf, samples)
    return equal[0]
