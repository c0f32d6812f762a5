r"""A rate-search worker: joins a study by storage URL and study name, and runs trials.

Start one per core or per machine, all pointing at the same RDB (PostgreSQL) URL; each asks the
study for the next rates, trains, and writes the result back, until the study holds the number
of finished trials it was created for. Workers heartbeat while they train: a worker that dies
mid-trial leaves a trial that goes silent, and after the grace period the next worker to start a
trial marks it FAIL and re-queues its rates, so the trial is re-run and nothing finished is lost.

Command line (``python -m dropkit.worker`` or ``dropkit tune-worker``)::

    python -m dropkit.worker --storage postgresql+psycopg2://user:pw@db-host/dropkit \
        --study mnist1d-rates [--objective mypackage.tuning:search] [--n-trials 40] [--create]

A worker joins an existing study: a missing study, a missing SQLite file or a database without
Optuna's tables is an error unless ``--create`` is given (then a ``RateSearch`` objective creates
the study, and Optuna its tables).

Without ``--objective`` the study must have been created by :func:`dropkit.tune.builtin_search`
(an MLP on an embedded data set), whose settings are stored in the study. With it, the target is
``module:attribute`` naming a :class:`dropkit.tune.RateSearch` or a plain Optuna objective
``f(trial) -> float``; the module must be importable on every worker machine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import optuna
import sqlalchemy.exc

from dropkit._validate import check_positive_int
from dropkit.tune import RateSearch, builtin_search, resolve_storage, run_trials
from dropkit.tune.storage import mask_url, quiet

__all__ = ["run_worker", "load_objective", "main"]


def load_objective(target: str) -> Any:
    """Imports ``"package.module:attribute"`` and returns the attribute.

    Raises:
        ValueError: ``target`` is not of the form ``module:attribute``, or the attribute is missing.
        ModuleNotFoundError: the module cannot be imported.

    Example:
        >>> load_objective("dropkit.tune:DEFAULT_GRID")
        (0.1, 0.2, 0.3, 0.4, 0.5)
    """
    if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
        raise ValueError(f"objective must be 'package.module:attribute', got {target!r}")
    module_name, attr = target.split(":")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise ValueError(
            f"module {module_name!r} has no attribute {attr!r} (objective {target!r})"
        ) from err


def run_worker(
    storage: str | os.PathLike | optuna.storages.BaseStorage,
    study_name: str,
    objective: str | RateSearch | Callable[[optuna.Trial], float] | None = None,
    *,
    n_trials: int | None = None,
    heartbeat_interval: int = 10,
    grace_period: int | None = None,
    max_retry: int | None = 3,
    catch: tuple[type[Exception], ...] = (),
    wait_for_running: bool = True,
    create: bool = False,
) -> int:
    r"""Joins the study and runs trials until it holds ``n_trials`` finished trials.

    Args:
        storage: the study's storage: an RDB URL shared by all workers (PostgreSQL for many
            machines), a SQLite file (workers on one machine) or an optuna storage object.
        study_name: the study to join.
        objective: a :class:`~dropkit.tune.RateSearch`, an Optuna objective, a
            ``"module:attribute"`` naming either, or None to rebuild the search the study was
            created with by :func:`~dropkit.tune.builtin_search`.
        n_trials: finished trials wanted in the whole study (default: the number it was created
            for).
        heartbeat_interval, grace_period, max_retry: see :func:`dropkit.tune.resolve_storage`;
            every worker of a study should use the same values.
        catch: exception types that fail a trial without stopping the worker.
        wait_for_running: when enough trials are finished but others still run, wait until they
            finish or are declared dead and re-run (so a killed worker's trial is never dropped).
        create: create what is missing — the SQLite file, Optuna's tables, and the study (for a
            :class:`~dropkit.tune.RateSearch` objective). False joins only an existing study.

    Returns:
        The number of trials this worker ran.

    Raises:
        KeyError: the study does not exist and ``create`` is False or ``objective`` cannot create
            it.
        ValueError: no way to know the objective or ``n_trials``; a damaged storage; (without
            ``create``) a missing SQLite file or a database without Optuna's tables.
        ConnectionError: the storage cannot be reached.
    """
    storage_obj = resolve_storage(
        storage,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        max_retry=max_retry,
        create=create,
    )
    if isinstance(objective, str):
        objective = load_objective(objective)
    if objective is None:
        with quiet():
            try:
                study = optuna.load_study(study_name=study_name, storage=storage_obj)
            except KeyError as err:
                raise KeyError(_missing(study_name, storage_obj)) from err
        spec = study.user_attrs.get("dropkit_builtin")
        if spec is None:
            raise ValueError(
                f"study {study_name!r} was not created by dropkit.tune.builtin_search, so its objective "
                "is unknown here: pass objective='package.module:attribute'"
            )
        objective = builtin_search(**spec)
    if isinstance(objective, RateSearch):
        if not create:
            with quiet():
                try:
                    optuna.load_study(study_name=study_name, storage=storage_obj)
                except KeyError as err:
                    hint = "; pass create=True (--create) to create it"
                    raise KeyError(_missing(study_name, storage_obj) + hint) from err
        study = objective.create_study(storage_obj, study_name, n_trials)
        func: Callable[[optuna.Trial], float] = objective.objective
        exhausted: Callable[[optuna.Study], bool] | None = objective.is_exhausted
    elif callable(objective):
        with quiet():
            try:
                study = optuna.load_study(study_name=study_name, storage=storage_obj)
            except KeyError as err:
                raise KeyError(_missing(study_name, storage_obj)) from err
        func = objective
        exhausted = None
    else:
        raise TypeError(
            f"objective must be a RateSearch, a callable or 'module:attribute', got {objective!r}"
        )
    if n_trials is None:
        n_trials = study.user_attrs.get("n_trials")
        if n_trials is None:
            raise ValueError(
                f"study {study_name!r} does not record how many trials it wants: pass n_trials"
            )
    n_trials = check_positive_int(n_trials, "n_trials")
    return run_trials(
        study,
        func,
        n_trials,
        catch=tuple(catch),
        wait_for_running=wait_for_running,
        exhausted=exhausted,
    )


def _missing(study_name: str, storage: optuna.storages.BaseStorage) -> str:
    with quiet():
        names = [
            s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        ]
    where = mask_url(getattr(storage, "url", "")) or "the storage"
    return f"no study {study_name!r} in {where}; it holds {names}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dropkit tune-worker",
        description="Join a dropout-rate study by storage URL and study name, and run its trials.",
    )
    parser.add_argument(
        "--storage", required=True, help="RDB URL (postgresql+psycopg2://…) or SQLite file"
    )
    parser.add_argument("--study", required=True, help="study name")
    parser.add_argument(
        "--objective", default=None, help="module:attribute of a RateSearch or objective"
    )
    parser.add_argument(
        "--n-trials", type=int, default=None, help="finished trials wanted in the study"
    )
    parser.add_argument(
        "--heartbeat-interval", type=int, default=10, help="seconds between heartbeats"
    )
    parser.add_argument(
        "--grace-period", type=int, default=None, help="seconds before a silent trial is dead"
    )
    parser.add_argument("--max-retry", type=int, default=3, help="re-runs of a dead trial")
    parser.add_argument(
        "--create",
        action="store_true",
        help="create the SQLite file, Optuna's tables and the study (RateSearch objective) if missing",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (0 done, 2 bad input or storage)."""
    args = _parser().parse_args(argv)
    try:
        ran = run_worker(
            args.storage,
            args.study,
            args.objective,
            n_trials=args.n_trials,
            heartbeat_interval=args.heartbeat_interval,
            grace_period=args.grace_period,
            max_retry=args.max_retry,
            create=args.create,
        )
    except (ValueError, KeyError, TypeError, ConnectionError, ModuleNotFoundError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"dropkit tune-worker: error: {' '.join(str(message).split())}", file=sys.stderr)
        return 2
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as err:
        # The storage failed mid-run (a file damaged under the worker, a server gone): one line.
        cause = err.__cause__ or err
        print(
            f"dropkit tune-worker: error: storage {mask_url(str(args.storage))!r} failed: "
            f"{type(cause).__name__}: {' '.join(str(cause).split())[:300]}",
            file=sys.stderr,
        )
        return 2
    print(f"dropkit tune-worker: ran {ran} trials of study {args.study!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
