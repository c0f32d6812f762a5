r"""Functional dropout: one function per variant, each the single source of its rule.

Every function validates its arguments (see :mod:`dropkit._validate`) before doing any work, picks
the mask's shape, applies the scaling rule and draws the Bernoulli mask through :mod:`dropkit.ops`,
whose counter-based kernels store no mask and give the same bits on every device.

The two scalings of the seeds (Srivastava et al. 2014; the seeds' "standard" and "inverted"
dropout), with m ~ Bernoulli(1 − p) drawn afresh on every call:

=============  ==========================  =====================
scaling        training                    eval
=============  ==========================  =====================
``inverted``   y = m ⊙ x / (1 − p)         y = x
``inference``  y = m ⊙ x                   y = (1 − p) x
=============  ==========================  =====================

The scales are exact, as torch computes them: a kept unit is ``x * (1 / (1 - p))`` and the
"inference" eval output ``x * (1 - p)``, bit for bit. The mask's resolution is a separate property:
the kernels compare a 16-bit random word with ``threshold = round(p · 2^16)``, so a unit is kept with
probability :func:`dropkit.ops.keep_probability` ``= 1 − threshold/2^16``, exactly 1 − p for p on
the 2^-16 grid (0.5, 0.25, 0.1875, …) and within 2^-17 of it otherwise. Off the grid E[y_train]
differs from y_eval by a relative |keep_probability(p) − (1 − p)|/(1 − p) ≤ 2^-17/(1 − p), i.e.
at most 1.6e-5 for p ≤ 0.5 (actual figures: 6.8e-6 at p = 0.1, 4.4e-6 at 0.3, 0 at 0.5, 1.5e-5
at 0.8, 6.1e-5 at 0.9); see :func:`dropkit.ops.keep_probability`.

Masks shared along dimensions use Keras's name, ``noise_shape``: the mask's shape, one entry per
input dim, where ``None`` takes the input's size and ``1`` shares one mask value along that dim
(Flax calls the same thing ``broadcast_dims``; Keras's form also says which dims are kept apart).
Channel dropout (:func:`dropout1d`, :func:`dropout2d`, :func:`dropout3d`) is ``noise_shape`` with the
spatial dims set to 1.

Layout: one module per kind, as :mod:`dropkit.layers` (``layers/channel.py`` holds the modules of
``functional/channel.py``'s functions):

- :mod:`~dropkit.functional.elementwise`: :func:`dropout`, :func:`alpha_dropout`, :func:`gaussian_dropout`
  (the mask rule and its scales live in :mod:`dropkit._masking`, which every kind builds on);
- :mod:`~dropkit.functional.channel`: :func:`dropout1d`, :func:`dropout2d`, :func:`dropout3d`;
- :mod:`~dropkit.functional.structured`: DropBlock, drop-path, DropHead, attention dropout;
- :mod:`~dropkit.functional.weights`: DropConnect (linear, convolution, moment matching);
- :mod:`~dropkit.functional.sequence`: locked (variational RNN) and embedding dropout;
- :mod:`~dropkit.functional.learned`: concrete, variational, sparse variational dropout, Standout.

The modules import neither this package nor each other; this file re-exports their public names.

Papers: Srivastava et al. 2014 (dropout, Gaussian dropout), Tompson et al. 2015 (spatial dropout),
Klambauer et al. 2017 (alpha dropout).
"""

from dropkit.functional.channel import dropout1d, dropout2d, dropout3d
from dropkit.functional.elementwise import (
    ALPHA_PRIME,  # noqa: F401  (an attribute, as before; not in __all__)
    SELU_ALPHA,  # noqa: F401  (an attribute, as before; not in __all__)
    SELU_LAMBDA,  # noqa: F401  (an attribute, as before; not in __all__)
    alpha_dropout,
    alpha_dropout_affine,
    dropout,
    eval_scale,
    gaussian_dropout,
    resolve_noise_shape,
    train_scale,
)
from dropkit.functional.learned import (
    KINGMA_C1,
    KINGMA_C2,
    KINGMA_C3,
    LOG_ALPHA_CLAMP,
    MOLCHANOV_K1,
    MOLCHANOV_K2,
    MOLCHANOV_K3,
    concrete_dropout,
    concrete_dropout_regularizer,
    concrete_regularizer_weights,
    elbo_loss,
    relaxed_bernoulli_mask,
    sparse_variational_conv2d,
    sparse_variational_dropout_kl,
    sparse_variational_linear,
    sparse_variational_log_alpha,
    standout,
    standout_keep_prob,
    variational_dropout,
    variational_dropout_kl,
    variational_linear,
)
from dropkit.functional.sequence import embedding_dropout, locked_dropout
from dropkit.functional.structured import (
    attention_dropout,
    drop_block2d,
    drop_block3d,
    drop_block_gamma,
    drop_head,
    drop_path,
)
from dropkit.functional.weights import (
    drop_connect,
    drop_connect_conv,
    drop_connect_linear,
    drop_connect_linear_moments,
    drop_connect_moment_matching,
)

__all__ = [
    # elementwise (the mask rule and its scales from dropkit._masking)
    "dropout",
    "dropout1d",  # channel
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "gaussian_dropout",
    "resolve_noise_shape",
    "train_scale",
    "eval_scale",
    "alpha_dropout_affine",
    # structured
    "drop_block_gamma",
    "drop_block2d",
    "drop_block3d",
    "drop_path",
    "drop_head",
    "attention_dropout",
    # weights
    "drop_connect",
    "drop_connect_linear",
    "drop_connect_conv",
    "drop_connect_linear_moments",
    "drop_connect_moment_matching",
    # sequence
    "locked_dropout",
    "embedding_dropout",
    # learned
    "relaxed_bernoulli_mask",
    "concrete_dropout",
    "concrete_dropout_regularizer",
    "concrete_regularizer_weights",
    "variational_dropout",
    "variational_linear",
    "variational_dropout_kl",
    "sparse_variational_log_alpha",
    "sparse_variational_linear",
    "sparse_variational_conv2d",
    "sparse_variational_dropout_kl",
    "elbo_loss",
    "standout_keep_prob",
    "standout",
    "KINGMA_C1",
    "KINGMA_C2",
    "KINGMA_C3",
    "MOLCHANOV_K1",
    "MOLCHANOV_K2",
    "MOLCHANOV_K3",
    "LOG_ALPHA_CLAMP",
]
