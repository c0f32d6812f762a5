r"""Choosing dropout rates: the overfitting gap, rate search with Optuna, ablation and sensitivity.

The seeds' practical half, in four tools:

- **Overfitting gap.** A model overfits when A_train − A_val > ε (:func:`gap`), or, with losses,
  when L_val − L_train > ε (:func:`loss_gap`). :class:`OverfitMonitor` records both per epoch in
  any training loop and flags the first epoch where the gap passes ε.
- **Rate search.** p* = argmin over p ∈ {0.1, 0.2, 0.3, 0.4, 0.5} of L_val(p) (the seeds' grid,
  Optuna's ``GridSampler``), or one rate per dropout module with TPE and a median pruner fed the
  validation loss after every epoch (:class:`RateSearch`, :func:`search_rates`). The study lives in
  a SQLite file by default, so a search that is interrupted resumes where it stopped; an RDB URL
  (PostgreSQL) lets worker processes on many machines share it (:mod:`dropkit.worker`).
- **Ablation.** With and without dropout, and one layer at a time (:func:`ablation`).
- **Sensitivity.** The validation metric against p, mean ± standard deviation over seeds
  (:func:`sensitivity`).
- **Regression with MC dropout.** (p, τ) by validation MC log-likelihood, Gal & Ghahramani's
  protocol (:func:`search_p_tau`).

Every tool works with the built-in trainer (:func:`dropkit.train.fit`, give ``train=(x, y)`` or a
DataLoader and ``val=``) or with your own functions:

- ``build_model()`` → a fresh ``nn.Module``; its dropout modules (found by
  :func:`dropkit.is_dropout_module`) get their rates set through ``module.p``.
- ``train_fn(model, report)`` trains it; call ``report(epoch)`` after each epoch to let the pruner
  see the validation metric (it raises ``optuna.TrialPruned`` when the trial should stop, so let it
  propagate). A ``train_fn(model)`` with one parameter is accepted too (no pruning then).
- ``eval_fn(model)`` → the validation loss (a float), or a mapping of metrics holding ``metric``.

Results come back as plain records (lists of dicts) and every ``plot_*`` function takes an
``ax`` (to draw into) and/or a ``path`` (to write a PNG with matplotlib's Agg canvas).

The package, one module per concern (each imports only the ones above it in this list):

- :mod:`~dropkit.tune.rates`: a model's dropout modules by path, and setting their rates;
- :mod:`~dropkit.tune.storage`: SQLite / PostgreSQL / MySQL storages and their checks;
- :mod:`~dropkit.tune.trainer`: training one configuration (the built-in trainer or yours);
- :mod:`~dropkit.tune.trials`: running a study's trials, and its results as records;
- :mod:`~dropkit.tune.search`: :class:`RateSearch`, :func:`search_rates`, :func:`builtin_search`;
- :mod:`~dropkit.tune.sweeps`: :func:`ablation`, :func:`sensitivity`, :func:`summarize`;
- :mod:`~dropkit.tune.overfit`: :func:`gap`, :func:`loss_gap`, :class:`OverfitMonitor`;
- :mod:`~dropkit.tune.p_tau`: :func:`search_p_tau` for regression;
- :mod:`~dropkit.tune.plots`: the ``plot_*`` functions.
"""

from dropkit.tune.overfit import Gap, OverfitMonitor, gap, loss_gap
from dropkit.tune.p_tau import PTauSearch, search_p_tau
from dropkit.tune.plots import plot_ablation, plot_curves, plot_search, plot_sensitivity
from dropkit.tune.rates import dropout_layers, set_rates
from dropkit.tune.search import DEFAULT_GRID, RateSearch, builtin_search, search_rates
from dropkit.tune.storage import DEFAULT_STORAGE, resolve_storage
from dropkit.tune.sweeps import ablation, sensitivity, summarize
from dropkit.tune.trials import SearchResult, load_search, run_trials

__all__ = [
    "DEFAULT_GRID",
    "DEFAULT_STORAGE",
    "Gap",
    "gap",
    "loss_gap",
    "OverfitMonitor",
    "dropout_layers",
    "set_rates",
    "resolve_storage",
    "RateSearch",
    "SearchResult",
    "search_rates",
    "load_search",
    "builtin_search",
    "PTauSearch",
    "search_p_tau",
    "run_trials",
    "ablation",
    "sensitivity",
    "summarize",
    "plot_curves",
    "plot_search",
    "plot_ablation",
    "plot_sensitivity",
]
