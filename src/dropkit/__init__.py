"""dropkit: dropout for PyTorch — every variant, exact semantics, counter-based fused kernels.

Public names are re-exported here; nothing else lives in this file.
"""

from dropkit import functional
from dropkit.layers import (
    AlphaDropout,
    Dropout,
    Dropout1d,
    Dropout2d,
    Dropout3d,
    DropoutBase,
    GaussianDropout,
    is_dropout_module,
)
from dropkit.models import MLP, fold_dropout_scaling

__version__ = "0.1.0"

__all__ = [
    "functional",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "GaussianDropout",
    "DropoutBase",
    "is_dropout_module",
    "MLP",
    "fold_dropout_scaling",
]
