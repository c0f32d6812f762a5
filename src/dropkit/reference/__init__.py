"""NumPy references of dropkit's rules, for tests (as oracles) and for learners. Never imports torch."""

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
