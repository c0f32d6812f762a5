"""A study's trials: running them until enough are finished, and reading them back as plain data.

:func:`run_trials` is the loop every searcher and worker runs (it counts the whole study, so a
resumed search or a late worker runs only what is missing); :class:`SearchResult` is what a
study holds, as records; :func:`load_search` reads a stored study.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from dropkit._validate import check_positive_int
from dropkit.tune.storage import quiet, resolve_storage, storage_label

__all__ = ["SearchResult", "result_from_study", "run_trials", "trial_p", "load_search"]

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class SearchResult:
    """What a rate search found, as plain data.

    Attributes:
        study_name, storage: where the study lives (the URL's password hidden).
        mode: ``"grid"`` (one rate) or ``"per_layer"``.
        metric, direction: the objective and whether it is minimised or maximised.
        best_rates: the best trial's rate per dropout module path.
        best_p: the best shared rate (grid mode), else None.
        best_value: the best trial's objective.
        records: one dict per trial (``trial``, ``state``, ``value``, ``p``, ``rates``, the
            metrics the trial stored, ``epochs_reported``, ``error``, ``retry_of``).
    """

    study_name: str
    storage: str
    mode: str
    metric: str
    direction: str
    best_rates: dict[str, float]
    best_p: float | None
    best_value: float | None
    best_trial: int | None
    records: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Number of trials per state (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
        out: dict[str, int] = {}
        for row in self.records:
            out[row["state"]] = out.get(row["state"], 0) + 1
        return out

    def as_dict(self) -> dict[str, Any]:
        """Everything as JSON-ready plain data."""
        return {
            "study_name": self.study_name,
            "storage": self.storage,
            "mode": self.mode,
            "metric": self.metric,
            "direction": self.direction,
            "best_rates": dict(self.best_rates),
            "best_p": self.best_p,
            "best_value": self.best_value,
            "best_trial": self.best_trial,
            "counts": self.counts(),
            "records": [dict(r) for r in self.records],
        }

    def plot(self, ax: Any = None, path: str | os.PathLike | None = None) -> Any:
        """See :func:`dropkit.tune.plot_search`."""
        from dropkit.tune.plots import plot_search  # plots sits above trials: imported on use

        return plot_search(self, ax=ax, path=path)


def result_from_study(study: optuna.Study, storage: optuna.storages.BaseStorage) -> SearchResult:
    """The records of ``study``, which lives in ``storage`` (named in the result, password hidden).

    The storage is passed in rather than read from the study: Optuna keeps it in a private
    attribute, wrapped in a cache that hides the URL.
    """
    spec = study.user_attrs.get("dropkit_search", {})
    mode = spec.get("mode", "custom")
    metric = spec.get("metric", "value")
    direction = (
        "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
    )
    records = []
    for t in study.get_trials(deepcopy=False):
        rates = dict(t.user_attrs.get("rates", {})) or {
            k[len("p:") :]: v for k, v in t.params.items() if k.startswith("p:")
        }
        row = {
            "trial": t.number,
            "state": t.state.name,
            "value": t.value if t.state == TrialState.COMPLETE else None,
            "p": t.params.get("p"),
            "rates": rates,
            "epochs_reported": len(t.intermediate_values),
            "intermediate": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
            "error": t.user_attrs.get("error"),
            "retry_of": t.system_attrs.get("failed_trial"),
            "duration_s": t.duration.total_seconds() if t.duration is not None else None,
        }
        for key, value in t.user_attrs.get("metrics", {}).items():
            row.setdefault(key, value)
        records.append(row)
    best = None
    with contextlib.suppress(ValueError):
        best = study.best_trial
    best_rates = {}
    if best is not None:
        best_rates = next(r["rates"] for r in records if r["trial"] == best.number)
    return SearchResult(
        study_name=study.study_name,
        storage=storage_label(storage),
        mode=mode,
        metric=metric,
        direction=direction,
        best_rates=dict(best_rates),
        best_p=best.params.get("p") if best is not None else None,
        best_value=best.value if best is not None else None,
        best_trial=best.number if best is not None else None,
        records=records,
    )


class _Collect:
    """An Optuna callback that appends each finished trial to a list."""

    def __init__(self, into: list) -> None:
        self.into = into

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.into.append(trial)


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int,
    *,
    catch: tuple[type[Exception], ...] = (),
    timeout: float | None = None,
    wait_for_running: bool = True,
    max_failures: int = 5,
    poll_s: float = 0.5,
    progress: Any = None,
    exhausted: Callable[[optuna.Study], bool] | None = None,
) -> int:
    r"""Runs trials until the study holds ``n_trials`` finished (COMPLETE or PRUNED) trials.

    ``n_trials`` counts the whole study, not this call: a resumed search or a worker that joins
    late runs only what is missing, so an interrupted search loses nothing. Trials re-queued by
    the heartbeat (their worker died) are run first. When enough trials are finished but some are
    still RUNNING elsewhere, the worker waits (with ``wait_for_running``) until they finish or are
    declared dead and re-queued, so a killed worker's trial is always re-run.

    Args:
        study: the study (its sampler and pruner decide the rates).
        objective: Optuna objective.
        n_trials: finished trials wanted in the study.
        catch: exception types that fail a trial without stopping the loop (the trial is marked
            FAIL with its error). Any other exception fails the trial and is raised.
        timeout: stop starting trials after this many seconds.
        wait_for_running: see above.
        max_failures: raise RuntimeError after this many caught failures in a row.
        poll_s: seconds between checks while waiting for other workers' trials.
        progress: an object with ``update(n)`` (a tqdm bar), advanced once per trial run here.
        exhausted: ``exhausted(study)`` True means nothing is left to try (a grid whose every
            point has been attempted): stop even with fewer finished trials.

    Returns:
        The number of trials this call ran.
    """
    n_trials = check_positive_int(n_trials, "n_trials")
    start = time.monotonic()
    ran, failures = 0, 0
    with quiet():
        while True:
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in _FINISHED for t in trials)
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if timeout is not None and time.monotonic() - start > timeout:
                break
            done = finished >= n_trials or (exhausted is not None and exhausted(study))
            if done and waiting == 0:
                if running == 0 or not wait_for_running:
                    break
                optuna.storages.fail_stale_trials(study)
                time.sleep(poll_s)
                continue
            last: list[optuna.trial.FrozenTrial] = []
            study.optimize(objective, n_trials=1, catch=catch, callbacks=[_Collect(last)])
            ran += 1
            if progress is not None and hasattr(progress, "update"):
                progress.update(1)
            if last and last[0].state == TrialState.FAIL:
                failures += 1
                if failures >= max_failures:
                    raise RuntimeError(
                        f"{failures} trials in a row failed in study {study.study_name!r}; "
                        f"last error: {last[0].user_attrs.get('error')}"
                    )
            else:
                failures = 0
    return ran


def trial_p(trial: optuna.trial.FrozenTrial) -> float | None:
    """The shared rate of a grid trial, also for a queued trial that has not started."""
    if "p" in trial.params:
        return trial.params["p"]
    return trial.system_attrs.get("fixed_params", {}).get("p")


def load_search(
    storage: str | os.PathLike | optuna.storages.BaseStorage, study_name: str
) -> SearchResult:
    """The :class:`SearchResult` of a stored study (e.g. one that workers are filling).

    Raises:
        KeyError: no study of that name in the storage.
    """
    storage_obj = resolve_storage(storage)
    with quiet():
        try:
            study = optuna.load_study(study_name=study_name, storage=storage_obj)
        except KeyError as err:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage_obj)]
            raise KeyError(f"no study {study_name!r} in this storage; it holds {names}") from err
    return result_from_study(study, storage_obj)
