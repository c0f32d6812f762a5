"""dropkit's serial dropout loops as C-callable functions, for ``native.cpp``.

Compiled (or loaded from numba's disk cache) when this module is imported; only
:mod:`dropkit.kernels.native` imports it. Same loops as :mod:`dropkit.kernels.cpu`, so same bits.
"""

from __future__ import annotations

import torch
from numba import carray, cfunc, types

from dropkit.kernels.cpu import DROPOUT_DRIVERS

# The serial dropout drivers (numba dispatchers, called from the cfuncs below by numba itself).
_dropout_float_ser = DROPOUT_DRIVERS[torch.float32][1]
_dropout_f16_ser = DROPOUT_DRIVERS[torch.float16][1]
_dropout_bf16_ser = DROPOUT_DRIVERS[torch.bfloat16][1]


def _signature(element: types.Type, scale: types.Type) -> types.Type:
    pointer = types.CPointer(element)
    return types.void(
        pointer, pointer, types.int64, types.int64, types.uint64, types.uint64, types.int32, scale
    )


@cfunc(_signature(types.float32, types.float32), cache=True, nopython=True)
def dropout_f32(x, out, n, offset, k0, k1, threshold, scale):  # pragma: no cover - compiled
    _dropout_float_ser(carray(x, (n,)), carray(out, (n,)), offset, k0, k1, threshold, scale)


@cfunc(_signature(types.float64, types.float64), cache=True, nopython=True)
def dropout_f64(x, out, n, offset, k0, k1, threshold, scale):  # pragma: no cover - compiled
    _dropout_float_ser(carray(x, (n,)), carray(out, (n,)), offset, k0, k1, threshold, scale)


# float16 and bfloat16 travel as their uint16 bits (numba has neither type); the scale is float32,
# as torch's opmath multiplies reduced floats in float32.
@cfunc(_signature(types.uint16, types.float32), cache=True, nopython=True)
def dropout_f16(x, out, n, offset, k0, k1, threshold, scale):  # pragma: no cover - compiled
    _dropout_f16_ser(carray(x, (n,)), carray(out, (n,)), offset, k0, k1, threshold, scale)


@cfunc(_signature(types.uint16, types.float32), cache=True, nopython=True)
def dropout_bf16(x, out, n, offset, k0, k1, threshold, scale):  # pragma: no cover - compiled
    _dropout_bf16_ser(carray(x, (n,)), carray(out, (n,)), offset, k0, k1, threshold, scale)
