"""nn.Module forms, grouped by what they drop."""

from dropkit.layers.base import DropoutBase, is_dropout_module
from dropkit.layers.channel import Dropout1d, Dropout2d, Dropout3d
from dropkit.layers.elementwise import AlphaDropout, Dropout, GaussianDropout

__all__ = [
    "DropoutBase",
    "is_dropout_module",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "GaussianDropout",
]
