r"""Looking inside: what each dropout module does to its activations, and a checklist audit.

Two tools for the seeds' common pitfalls (dropout left on at inference, scale mismatch,
over-regularisation, dropout on the output layer):

- :func:`activation_stats` (built on :class:`ActivationRecorder`, forward hooks you can also use in
  your own loop) records, per dropout module, the mean and variance of its input and output in
  train and in eval mode, the fraction of units it dropped and its gain (``activations.py``).
- :func:`audit` inspects a model (and optionally one batch) and returns :class:`Finding` records,
  each with the module's path and a suggested fix. It runs :data:`AUDIT_CHECKS`, a table of small
  checks (:class:`AuditCheck`), each a function of an :class:`AuditContext` (``checklist.py``).

``_model.py`` holds what both read and run: weight layers, feeding a batch, call order, the
functional-dropout tracker.
"""

from dropkit.diagnostics.activations import ActivationRecorder, ActivationStats, activation_stats
from dropkit.diagnostics.checklist import (
    AUDIT_CHECKS,
    USUAL_RATES,
    AuditCheck,
    AuditContext,
    DropoutLayer,
    Finding,
    audit,
    dead_dropout_findings,
)

__all__ = [
    "ActivationRecorder",
    "ActivationStats",
    "activation_stats",
    "Finding",
    "audit",
    "dead_dropout_findings",
    "USUAL_RATES",
    "AUDIT_CHECKS",
    "AuditCheck",
    "AuditContext",
    "DropoutLayer",
]
