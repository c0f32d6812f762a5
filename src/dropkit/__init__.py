"""dropkit: dropout for PyTorch — every variant, exact semantics, counter-based fused kernels.

Public names are re-exported here; nothing else lives in this file.
"""

import sys as _sys

from dropkit import (
    convert,
    diagnostics,
    functional,
    mc,
    ops,
    rng,
    schedules,
    uncertainty,
)
from dropkit.convert import convert_dropout
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
from dropkit.layers.learned import (
    ConcreteDropout,
    Conv2dSVDO,
    ELBOLoss,
    LinearSVDO,
    Standout,
    VariationalDropout,
    VariationalLinear,
    concrete_regularization,
    kl_divergence,
    sparsity,
)
from dropkit.layers.sequence import EmbeddingDropout, LockedDropout
from dropkit.layers.structured import (
    AttentionDropout,
    DropBlock2d,
    DropBlock3d,
    DropHead,
    DropPath,
    drop_path_rates,
)
from dropkit.layers.weights import (
    DropConnectConv1d,
    DropConnectConv2d,
    DropConnectConv3d,
    DropConnectLinear,
    WeightDrop,
)
from dropkit.mc import is_stochastic_module, mc_dropout
from dropkit.models import MLP, fold_dropout_scaling
from dropkit.schedules import DropoutScheduler

# The diagnostics module was called ``dropkit.inspect``; a file of that name shadowed the standard
# library's ``inspect`` whenever src/dropkit was on sys.path (``import torch`` then crashed). The old
# name stays as an alias, for attribute access and for ``import dropkit.inspect`` /
# ``from dropkit.inspect import audit``, without a file named inspect.py.
inspect = diagnostics
_sys.modules.setdefault(__name__ + ".inspect", diagnostics)

# The functional forms were three files, functional.py, functional_variants.py (structured, weight
# and sequence variants) and functional_learned.py; they are now the package dropkit.functional, one
# module per kind as in dropkit.layers. The old names stay as aliases, without files:
# ``dropkit.functional_learned`` is dropkit.functional.learned, ``dropkit.functional_variants`` the
# package (it holds every name the old module had).
functional_variants = functional
functional_learned = functional.learned
_sys.modules.setdefault(__name__ + ".functional_variants", functional_variants)
_sys.modules.setdefault(__name__ + ".functional_learned", functional_learned)

__version__ = "0.1.0"

__all__ = [
    "ops",
    "rng",
    "mc",
    "mc_dropout",
    "is_stochastic_module",
    "uncertainty",
    "diagnostics",
    "convert",
    "convert_dropout",
    "functional_variants",
    "schedules",
    "DropBlock2d",
    "DropBlock3d",
    "DropPath",
    "drop_path_rates",
    "DropHead",
    "AttentionDropout",
    "DropConnectLinear",
    "DropConnectConv1d",
    "DropConnectConv2d",
    "DropConnectConv3d",
    "WeightDrop",
    "LockedDropout",
    "EmbeddingDropout",
    "DropoutScheduler",
    "functional_learned",
    "ConcreteDropout",
    "concrete_regularization",
    "VariationalDropout",
    "VariationalLinear",
    "LinearSVDO",
    "Conv2dSVDO",
    "kl_divergence",
    "sparsity",
    "ELBOLoss",
    "Standout",
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
