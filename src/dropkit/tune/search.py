r"""Rate search: the seeds' grid p* = argmin L_val(p), or one rate per dropout module with TPE.

:class:`RateSearch` says what to train, which rates to try and how to score them; it creates (or
resumes) an Optuna study and runs it with :func:`dropkit.tune.trials.run_trials`.
:func:`search_rates` is its one-call form, :func:`builtin_search` a search of a
:class:`dropkit.MLP` on an embedded data set that workers rebuild from the study alone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState
from torch import nn

from dropkit._validate import check_choice, check_positive_int, check_probability, check_seed
from dropkit.tune.rates import check_layers
from dropkit.tune.storage import mask_url, quiet, resolve_storage
from dropkit.tune.trainer import TrainSpec
from dropkit.tune.trials import SearchResult, result_from_study, run_trials, trial_p

__all__ = ["DEFAULT_GRID", "RateSearch", "search_rates", "builtin_search", "check_grid"]

#: The seeds' grid: p* = argmin over these of L_val(p).
DEFAULT_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)


def check_grid(grid: Iterable[float]) -> tuple[float, ...]:
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Iterable):
        raise TypeError(f"grid must be a sequence of rates in [0, 1], got {grid!r}")
    values = tuple(check_probability(p, f"grid[{i}]") for i, p in enumerate(grid))
    if not values:
        raise ValueError("grid must hold at least one rate in [0, 1], got an empty grid")
    if len(set(values)) != len(values):
        raise ValueError(f"grid must not repeat a rate, got {list(values)}")
    return tuple(sorted(values))


class RateSearch:
    r"""A dropout-rate search: what to train, which rates to try, how to score them.

    ``mode="grid"`` is the seeds' selection p* = argmin over p ∈ ``grid`` of L_val(p): one rate
    ``p`` shared by the dropout modules in ``layers`` (default: all), every grid point tried once
    (Optuna's ``GridSampler``, no pruning). ``mode="per_layer"`` tunes one rate per dropout module,
    each in [``low``, ``high``] (or ``ranges[path]``), with TPE and a ``MedianPruner`` that stops a
    trial whose validation metric after an epoch is worse than the median of earlier trials at
    the same epoch.

    Every trial builds a fresh model with ``torch.manual_seed(seed)`` and trains it with the same
    seed, so trials differ only in their rates (common random numbers). The objective is the
    validation metric after the last epoch (``val_loss`` by default, minimised). The training
    settings (``build_model`` to ``metric`` below, rates and seed aside) are checked once into a
    :class:`dropkit.tune.trainer.TrainSpec`, kept as :attr:`trainer`.

    Args:
        build_model: ``build_model()`` → a fresh nn.Module holding dropout modules.
        train_fn: ``train_fn(model, report)`` (see the module docstring); None uses the built-in
            trainer on ``train`` and ``val``.
        eval_fn: ``eval_fn(model)`` → float or mapping of metrics; needed with ``train_fn``.
        train, val: (x, y) tensors or DataLoaders for the built-in trainer.
        mode: ``"grid"`` or ``"per_layer"``.
        grid: the rates tried in grid mode (default :data:`DEFAULT_GRID`).
        layers: dropout module paths whose rates are searched (default: all of the model's).
        low, high, ranges: the per-layer search box.
        epochs, lr, batch_size, weight_decay, task: the built-in trainer's settings.
        metric: the metric minimised (or maximised with ``direction="maximize"``).
        direction: ``"minimize"`` or ``"maximize"``.
        seed: the seed of every trial's model and training; also seeds the sampler.
        n_startup_trials: trials before TPE and the pruner start acting (per-layer mode).

    Example:
        >>> import torch, dropkit
        >>> from dropkit.tune import RateSearch
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(64, 6, generator=g), torch.randint(0, 2, (64,), generator=g)
        >>> search = RateSearch(lambda: dropkit.MLP([6, 16, 2], p=0.0), train=(x, y), val=(x, y),
        ...                     grid=[0.1, 0.5], layers=["dropout1"], epochs=2)
        >>> result = search.run(storage=":memory:")
        >>> sorted(r["p"] for r in result.records), result.best_p in (0.1, 0.5)
        ([0.1, 0.5], True)
    """

    def __init__(
        self,
        build_model: Callable[[], nn.Module],
        train_fn: Callable[..., Any] | None = None,
        eval_fn: Callable[[nn.Module], Any] | None = None,
        *,
        train: Any = None,
        val: Any = None,
        mode: str = "grid",
        grid: Sequence[float] = DEFAULT_GRID,
        layers: Sequence[str] | None = None,
        low: float = 0.0,
        high: float = 0.5,
        ranges: Mapping[str, tuple[float, float]] | None = None,
        epochs: int = 10,
        lr: float = 1e-3,
        batch_size: int = 100,
        weight_decay: float = 0.0,
        task: str = "classification",
        metric: str = "val_loss",
        direction: str = "minimize",
        seed: int = 0,
        n_startup_trials: int = 5,
    ) -> None:
        check_choice(mode, "mode", ("grid", "per_layer"))
        check_choice(direction, "direction", ("minimize", "maximize"))
        self.mode = mode
        self.grid = check_grid(grid)
        self.low = check_probability(low, "low")
        self.high = check_probability(high, "high")
        if self.low > self.high:
            raise ValueError(f"low must be <= high, got low={low!r}, high={high!r}")
        self.ranges = {}
        for path, bounds in (ranges or {}).items():
            lo, hi = (check_probability(b, f"ranges[{path!r}]") for b in bounds)
            if lo > hi:
                raise ValueError(
                    f"ranges[{path!r}] must be (low, high) with low <= high, got {bounds!r}"
                )
            self.ranges[path] = (lo, hi)
        self.trainer = TrainSpec(
            build_model,
            train_fn,
            eval_fn,
            train=train,
            val=val,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            weight_decay=weight_decay,
            task=task,
            metric=metric,
        )
        self.metric = metric
        self.direction = direction
        self.seed = check_seed(seed)  # Optuna's samplers take a 32-bit seed
        self.n_startup_trials = check_positive_int(n_startup_trials, "n_startup_trials", minimum=0)
        # Build one model now: the paths are checked before any trial runs.
        layers = check_layers(layers, list(self.trainer.built_rates(self.seed)))
        unknown = [p for p in self.ranges if p not in layers]
        if unknown:
            raise ValueError(f"ranges names {unknown}, which are not searched layers {layers}")
        self.layers = layers
        self.spec: dict[str, Any] | None = None  # set by builtin_search: lets workers rebuild it

    # -- the objective ------------------------------------------------------------------
    def suggest(self, trial: optuna.Trial) -> dict[str, float]:
        """The rates of one trial, by dropout module path."""
        if self.mode == "grid":
            p = trial.suggest_float("p", self.grid[0], self.grid[-1])
            return {path: p for path in self.layers}
        return {
            path: trial.suggest_float(f"p:{path}", *self.ranges.get(path, (self.low, self.high)))
            for path in self.layers
        }

    def objective(self, trial: optuna.Trial) -> float:
        """Trains the trial's configuration and returns its validation metric.

        A failure is recorded on the trial (user attribute ``error``) before it propagates, so
        Optuna marks the trial FAIL with the reason and the study stays consistent.
        """
        rates = self.suggest(trial)
        trial.set_user_attr("rates", rates)

        def report(epoch: int, value: float) -> None:
            trial.report(float(value), int(epoch))
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}: {self.metric}={value:.4g}")

        try:
            metrics = self.trainer.run(rates, self.seed, report)
        except optuna.TrialPruned:
            raise
        except BaseException as err:
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
            raise
        trial.set_user_attr("metrics", {k: v for k, v in metrics.items() if _jsonable(v)})
        value = metrics[self.metric]
        if not math.isfinite(value):
            raise FloatingPointError(f"{self.metric} is {value} for rates {rates}")
        return value

    # -- studies ------------------------------------------------------------------------
    def _spec_summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "metric": self.metric,
            "direction": self.direction,
            "layers": list(self.layers),
            "grid": list(self.grid) if self.mode == "grid" else None,
            "box": [self.low, self.high] if self.mode == "per_layer" else None,
        }

    def _requeue_failed_points(self, study: optuna.Study) -> None:
        """Queues again the grid points whose every trial failed (GridSampler counts a failed
        point as visited and would never return to it)."""
        trials = study.get_trials(deepcopy=False)
        alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        covered = {trial_p(t) for t in trials if t.state in alive}
        failed = {trial_p(t) for t in trials if t.state == TrialState.FAIL}
        with quiet():
            for p in sorted(x for x in failed - covered if x is not None):
                study.enqueue_trial({"p": p})

    def is_exhausted(self, study: optuna.Study) -> bool:
        """Whether nothing is left to try: in grid mode, every grid point has been attempted
        (finished, pruned or failed); a per-layer (TPE) search never runs out."""
        if self.mode != "grid":
            return False
        attempted = {trial_p(t) for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        return set(self.grid) <= attempted

    def default_n_trials(self) -> int:
        """len(grid) in grid mode, 20 per-layer."""
        return len(self.grid) if self.mode == "grid" else 20

    def _trials_wanted(self, n_trials: int | None) -> int:
        n_trials = (
            self.default_n_trials()
            if n_trials is None
            else check_positive_int(n_trials, "n_trials")
        )
        if self.mode == "grid" and n_trials > len(self.grid):
            raise ValueError(
                f"grid mode runs each of the {len(self.grid)} grid rates once; n_trials={n_trials} is too many"
            )
        return n_trials

    def create_study(
        self,
        storage: str | os.PathLike | optuna.storages.BaseStorage | None = None,
        study_name: str | None = None,
        n_trials: int | None = None,
        **storage_kwargs: Any,
    ) -> optuna.Study:
        """Creates the study, or loads it when it exists (to resume or to join as a worker).

        The study records what it searches (and ``n_trials``); loading it for a different search
        raises ValueError instead of mixing two searches in one study.
        """
        n_trials = self._trials_wanted(n_trials)
        storage_obj = resolve_storage(storage, **storage_kwargs)
        name = study_name or f"dropkit-{self.mode}"
        if self.mode == "grid":
            sampler: optuna.samplers.BaseSampler = optuna.samplers.GridSampler(
                {"p": list(self.grid)}, seed=self.seed
            )
            pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
        else:
            sampler = optuna.samplers.TPESampler(
                seed=self.seed, n_startup_trials=self.n_startup_trials
            )
            pruner = optuna.pruners.MedianPruner(
                n_startup_trials=self.n_startup_trials, n_warmup_steps=1
            )
        with quiet():
            study = optuna.create_study(
                storage=storage_obj,
                sampler=sampler,
                pruner=pruner,
                study_name=name,
                direction=self.direction,
                load_if_exists=True,
            )
        summary = self._spec_summary()
        existing = study.user_attrs.get("dropkit_search")
        if existing is None:
            study.set_user_attr("dropkit_search", summary)
            study.set_user_attr("n_trials", n_trials)
            if self.spec is not None:
                study.set_user_attr("dropkit_builtin", self.spec)
        elif {k: existing.get(k) for k in summary} != summary:
            raise ValueError(
                f"study {name!r} in {mask_url(getattr(storage_obj, 'url', '')) or 'storage'} was created for "
                f"another search ({existing}); this search is {summary}. Pass another study_name"
            )
        if self.mode == "grid":
            self._requeue_failed_points(study)
        return study

    def run(
        self,
        n_trials: int | None = None,
        *,
        storage: str | os.PathLike | optuna.storages.BaseStorage | None = None,
        study_name: str | None = None,
        catch: tuple[type[Exception], ...] = (),
        timeout: float | None = None,
        progress: Any = None,
        **storage_kwargs: Any,
    ) -> SearchResult:
        """Runs (or resumes) the search until the study holds ``n_trials`` finished trials.

        Args:
            n_trials: finished trials wanted in the study (default :meth:`default_n_trials`).
            storage: see :func:`resolve_storage` (default: the SQLite file
                :data:`DEFAULT_STORAGE`, so an interrupted search resumes).
            study_name: default ``"dropkit-grid"`` / ``"dropkit-per_layer"``.
            catch: exception types that mark a trial FAIL and go on with the next one. By
                default a failing ``train_fn`` stops the search: its trial is recorded FAIL
                with the error (user attribute ``error``), then the exception is raised; the
                study stays usable and a later run resumes it.
            timeout: stop starting trials after this many seconds.
            progress: a tqdm-like bar, advanced once per trial.
        """
        self._trials_wanted(n_trials)  # before the storage is opened (or a SQLite file created)
        storage_obj = resolve_storage(storage, **storage_kwargs)
        study = self.create_study(storage_obj, study_name, n_trials)
        target = int(study.user_attrs.get("n_trials", n_trials or self.default_n_trials()))
        if n_trials is not None:
            target = check_positive_int(n_trials, "n_trials")
        run_trials(
            study,
            self.objective,
            target,
            catch=tuple(catch),
            timeout=timeout,
            progress=progress,
            exhausted=self.is_exhausted,
        )
        return result_from_study(study, storage_obj)


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def search_rates(
    build_model: Callable[[], nn.Module],
    train_fn: Callable[..., Any] | None = None,
    eval_fn: Callable[[nn.Module], Any] | None = None,
    *,
    n_trials: int | None = None,
    storage: str | os.PathLike | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    catch: tuple[type[Exception], ...] = (),
    timeout: float | None = None,
    progress: Any = None,
    **search: Any,
) -> SearchResult:
    r"""Searches dropout rates; a one-call form of :class:`RateSearch` ``(...).run(...)``.

    Keyword arguments other than those listed go to :class:`RateSearch` (``train``, ``val``,
    ``mode``, ``grid``, ``layers``, ``epochs``, …).

    Example:
        >>> import torch, dropkit
        >>> from dropkit.tune import search_rates
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(60, 4, generator=g), torch.randint(0, 2, (60,), generator=g)
        >>> def train_fn(model, report):
        ...     dropkit.train.fit(model, (x, y), epochs=2, on_epoch=lambda e, h: report(e))
        >>> def eval_fn(model):
        ...     return dropkit.train.evaluate(model, (x, y))[0]
        >>> result = search_rates(lambda: dropkit.MLP([4, 8, 8, 2]), train_fn, eval_fn,
        ...                       mode="per_layer", n_trials=3, storage=":memory:")
        >>> sorted(result.best_rates), result.counts()
        (['dropout1', 'dropout2', 'input_dropout'], {'COMPLETE': 3})
    """
    return RateSearch(build_model, train_fn, eval_fn, **search).run(
        n_trials,
        storage=storage,
        study_name=study_name,
        catch=catch,
        timeout=timeout,
        progress=progress,
    )


_DATASETS = ("mnist1d", "digits", "diabetes")


def builtin_search(
    dataset: str = "mnist1d",
    hidden: Sequence[int] = (100, 100),
    *,
    num_samples: int | None = None,
    val_fraction: float = 0.2,
    data_seed: int = 0,
    **search: Any,
) -> RateSearch:
    r"""A :class:`RateSearch` of a :class:`dropkit.MLP` on an embedded data set, rebuildable anywhere.

    The training set of ``dataset`` (``"mnist1d"``, ``"digits"`` or ``"diabetes"``) is split into
    train and validation (``val_fraction``, ``data_seed``); the MLP has layers
    ``[n_features, *hidden, n_outputs]``. Its description is stored in the study, so a worker
    joins with only the storage URL and the study name (``dropkit tune-worker``).

    Args:
        dataset: the embedded data set.
        hidden: hidden layer widths.
        num_samples: MNIST-1D examples to generate (default the paper's 5000; smaller is faster).
        val_fraction, data_seed: the train/validation split.
        **search: :class:`RateSearch` keywords (``mode``, ``grid``, ``epochs``, ``lr``, …) — plain
            values only, since they are stored in the study.

    Example:
        >>> from dropkit.tune import builtin_search
        >>> s = builtin_search("digits", hidden=[16], epochs=1, grid=[0.2])
        >>> s.layers, s.run(storage=":memory:").counts()
        (['input_dropout', 'dropout1'], {'COMPLETE': 1})
    """
    from dropkit import data as _data
    from dropkit.models import MLP

    check_choice(dataset, "dataset", _DATASETS)
    hidden = [check_positive_int(h, f"hidden[{i}]") for i, h in enumerate(hidden)]
    for key, value in search.items():
        if callable(value) or key in ("build_model", "train_fn", "eval_fn", "train", "val"):
            raise TypeError(
                f"builtin_search stores its settings in the study; {key}= is not allowed"
            )
    if dataset == "mnist1d":
        ds = _data.load_mnist1d(num_samples=num_samples) if num_samples else _data.load_mnist1d()
    elif dataset == "digits":
        ds = _data.load_digits()
    else:
        ds = _data.load_diabetes()
    x_train, y_train, x_val, y_val = _data.split_train_val(
        ds.x_train, ds.y_train, val_fraction, data_seed
    )
    n_out = ds.n_classes if ds.task == "classification" else 1
    sizes = [ds.n_features, *hidden, n_out]
    search.setdefault("task", ds.task)
    result = RateSearch(
        lambda: MLP(sizes, p=0.0), train=(x_train, y_train), val=(x_val, y_val), **search
    )
    result.spec = {
        "dataset": dataset,
        "hidden": hidden,
        "num_samples": num_samples,
        "val_fraction": val_fraction,
        "data_seed": data_seed,
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in search.items()},
    }
    return result
