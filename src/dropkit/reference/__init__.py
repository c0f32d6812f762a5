"""NumPy references of dropkit's rules, for tests (as oracles) and for learners.

The modules of this folder import only NumPy and the standard library: no torch, no numba, no
other dropkit module. Importing them as ``dropkit.reference`` still runs ``dropkit/__init__.py``
first, which loads torch and numba; to read or run a reference without torch, load its file on
its own (``importlib.util.spec_from_file_location``), as tests/test_imports.py does.
"""

from dropkit.reference.mlp import ReferenceMLP, draw_mask, softmax_cross_entropy
from dropkit.reference.philox import (
    keep_mask_reference,
    philox4x32_10,
    random_uint16,
    threshold_from_p,
)

__all__ = [
    "ReferenceMLP",
    "draw_mask",
    "softmax_cross_entropy",
    "keep_mask_reference",
    "philox4x32_10",
    "random_uint16",
    "threshold_from_p",
]
