r"""``dropkit study``: the main job, end to end, on MNIST-1D or a user's table.

One call runs the seeds' whole practical story on a real data set and writes a report:

1. **Baseline.** An MLP without dropout is trained on a training split and watched by
   :class:`dropkit.tune.OverfitMonitor` on a validation split: the gap A_train − A_val grows past ε.
2. **One rate.** The seeds' grid p ∈ {0.1, …, 0.5} on the hidden layers
   (:class:`dropkit.tune.RateSearch`, grid mode, stored in a SQLite file in the report).
3. **Sensitivity.** The validation metric and the gap against p, with error bars over seeds
   (:func:`dropkit.tune.sensitivity`, the grid search's seed added as one more seed).
   The one rate chosen is the largest p whose mean validation metric is within one standard
   error of the best (Breiman's one-standard-error rule: the most regularised model the
   validation data cannot tell apart from the best).
4. **Per layer.** One rate per dropout module (input and each hidden layer) with TPE and a
   median pruner, warm-started at the one-rate choice. Its rates replace the one rate only when
   they beat it on validation by more than that standard error (the best of several noisy trials
   is biased upwards).
5. **Ablation.** The chosen rates with and without dropout, and one layer at a time
   (:func:`dropkit.tune.ablation`).
6. **Final models.** Baseline and chosen dropout retrained on the whole training set for a few
   seeds, each tested once on the test set; the report gives the mean and std over seeds
   (train/test curves are recorded for the report, never used for a choice).
7. **MC dropout.** T stochastic passes of the dropout model (:func:`dropkit.mc.predict`) against
   weight-scaling inference: NLL, Brier score, ECE and AUROC of the uncertainty for spotting
   errors (:mod:`dropkit.uncertainty`).

Every choice uses the validation split (a seeded share of the training data); the test set is used
only to report the final models. Everything is seeded by ``seed``: two runs with the same seed give
the same numbers.

The package: :mod:`~dropkit.study.config` (settings, result, data), :mod:`~dropkit.study.steps`
(one function per step), :mod:`~dropkit.study.pipeline` (:func:`run_study`, the steps in order),
:mod:`~dropkit.study.figures` and :mod:`~dropkit.study.summary` (the terminal table).
"""

from dropkit.study.config import PAPER_MLP_TEST_ACC as PAPER_MLP_TEST_ACC
from dropkit.study.config import StudyConfig, StudyResult, load_study_data
from dropkit.study.pipeline import json_ready, run_study
from dropkit.study.steps import one_standard_error_rate
from dropkit.study.summary import format_summary

# The name report.json's cleaner had when the study was one module.
_clean = json_ready

__all__ = [
    "StudyConfig",
    "StudyResult",
    "run_study",
    "load_study_data",
    "one_standard_error_rate",
    "format_summary",
]
