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
"""

from __future__ import annotations

import contextlib
import inspect as _pyinspect
import math
import numbers
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState
from torch import nn

from dropkit._validate import check_positive_int, check_probability
from dropkit.layers.base import is_dropout_module
from dropkit.train import History, fit

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

#: The seeds' grid: p* = argmin over these of L_val(p).
DEFAULT_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)
#: Where a search is stored when no storage is given: a SQLite file in the working directory.
DEFAULT_STORAGE = "sqlite:///dropkit-tune.db"
_RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# --------------------------------------------------------------------------------------------
# Overfitting gap
# --------------------------------------------------------------------------------------------


def _check_real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number, got {value!r} of type {type(value).__name__}"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def _check_accuracy(value: object, name: str) -> float:
    value = _check_real(value, name)
    if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{name} must be a fraction in [0, 1], got {value!r} (divide percentages by 100)"
        )
    return value


def _check_epsilon(epsilon: object) -> float:
    epsilon = _check_real(epsilon, "epsilon")
    if epsilon < 0:
        raise ValueError(f"epsilon must be a number >= 0, got {epsilon!r}")
    return epsilon


@dataclass(frozen=True)
class Gap:
    """One measurement of the generalisation gap.

    ``gap`` is A_train − A_val for accuracies (``metric="accuracy"``) and L_val − L_train for
    losses (``metric="loss"``): in both cases positive means the model does better on the data it
    was trained on. ``overfitting`` is ``gap > epsilon``.
    """

    metric: str
    train: float
    val: float
    gap: float
    epsilon: float
    overfitting: bool

    def __bool__(self) -> bool:
        return self.overfitting

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for JSON and tables)."""
        return {
            "metric": self.metric,
            "train": self.train,
            "val": self.val,
            "gap": self.gap,
            "epsilon": self.epsilon,
            "overfitting": self.overfitting,
        }


def gap(train_acc: float, val_acc: float, epsilon: float = 0.05) -> Gap:
    r"""The seeds' overfitting test on accuracies: A_train − A_val > ε.

    Args:
        train_acc: accuracy on the training set, a fraction in [0, 1] (measure it in eval mode,
            as :func:`dropkit.train.fit` does, so both sides see the same network).
        val_acc: accuracy on held-out data, a fraction in [0, 1].
        epsilon: the threshold ε ≥ 0 (default 0.05, five points of accuracy).

    Returns:
        A :class:`Gap`; it is truthy when the model overfits.

    Raises:
        TypeError: an argument is not a real number.
        ValueError: an accuracy outside [0, 1] (percentages must be divided by 100), a negative
            or non-finite ε.

    Example:
        >>> from dropkit.tune import gap
        >>> g = gap(0.90, 0.60, epsilon=0.05)   # the seeds' example: a 30-point gap
        >>> round(g.gap, 2), g.overfitting
        (0.3, True)
        >>> bool(gap(0.82, 0.80))
        False
    """
    train_acc = _check_accuracy(train_acc, "train_acc")
    val_acc = _check_accuracy(val_acc, "val_acc")
    epsilon = _check_epsilon(epsilon)
    value = train_acc - val_acc
    return Gap("accuracy", train_acc, val_acc, value, epsilon, value > epsilon)


def loss_gap(train_loss: float, val_loss: float, epsilon: float = 0.1) -> Gap:
    r"""The loss-based twin of :func:`gap`: L_val − L_train > ε.

    Useful for regression (no accuracy) and earlier than the accuracy gap: the validation loss
    starts rising while accuracies still agree. ε is in the loss's units (nats for
    cross-entropy, squared target units for mean squared error).

    Args:
        train_loss: mean loss on the training set (eval mode).
        val_loss: mean loss on held-out data.
        epsilon: the threshold ε ≥ 0 (default 0.1).

    Returns:
        A :class:`Gap` with ``metric="loss"``.

    Raises:
        TypeError: an argument is not a real number.
        ValueError: a non-finite loss, a negative or non-finite ε.

    Example:
        >>> from dropkit.tune import loss_gap
        >>> g = loss_gap(0.20, 0.95)
        >>> round(g.gap, 2), g.overfitting
        (0.75, True)
    """
    train_loss = _check_real(train_loss, "train_loss")
    val_loss = _check_real(val_loss, "val_loss")
    epsilon = _check_epsilon(epsilon)
    value = val_loss - train_loss
    return Gap("loss", train_loss, val_loss, value, epsilon, value > epsilon)


class OverfitMonitor:
    r"""Records train/validation curves per epoch and flags the epoch where the gap passes ε.

    Feed it from any loop with :meth:`update`, or hand it to :func:`dropkit.train.fit` as
    ``on_epoch=monitor`` (it reads the last entry of the history). For each epoch it records
    both gaps, A_train − A_val and L_val − L_train; the one named by ``metric`` is tested against ε.
    The flagged epoch is the first epoch e with gap > ε at e, e + 1, …, e + patience − 1.

    Args:
        epsilon: the threshold ε (default 0.05 for ``metric="accuracy"``, 0.1 for ``"loss"``).
        metric: ``"accuracy"`` (A_train − A_val) or ``"loss"`` (L_val − L_train).
        patience: how many consecutive epochs the gap must exceed ε (default 1).
        stop: when used as ``on_epoch``, return True (stop training) once the gap is flagged.

    Example:
        >>> from dropkit.tune import OverfitMonitor
        >>> monitor = OverfitMonitor(epsilon=0.05)
        >>> for train_acc, val_acc in [(0.60, 0.58), (0.75, 0.71), (0.85, 0.72), (0.95, 0.71)]:
        ...     _ = monitor.update(train_acc=train_acc, val_acc=val_acc)
        >>> monitor.flagged_epoch
        3
        >>> [round(r["gap"], 2) for r in monitor.records]
        [0.02, 0.04, 0.13, 0.24]
    """

    def __init__(
        self,
        epsilon: float | None = None,
        *,
        metric: str = "accuracy",
        patience: int = 1,
        stop: bool = False,
    ) -> None:
        if metric not in ("accuracy", "loss"):
            raise ValueError(f"metric must be 'accuracy' or 'loss', got {metric!r}")
        if epsilon is None:
            epsilon = 0.05 if metric == "accuracy" else 0.1
        self.epsilon = _check_epsilon(epsilon)
        self.metric = metric
        self.patience = check_positive_int(patience, "patience")
        self.stop = bool(stop)
        self.records: list[dict[str, Any]] = []
        self.flagged_epoch: int | None = None
        self._run = 0

    @property
    def overfitting(self) -> bool:
        """True once an epoch has been flagged."""
        return self.flagged_epoch is not None

    def update(
        self,
        train_loss: float | None = None,
        val_loss: float | None = None,
        train_acc: float | None = None,
        val_acc: float | None = None,
        *,
        epoch: int | None = None,
    ) -> bool:
        """Records one epoch; returns True when the gap is flagged (at this or an earlier epoch).

        Epochs are numbered from 1; ``epoch`` defaults to one more than the last recorded. The
        values the metric needs (accuracies or losses) must be given.
        """
        if epoch is None:
            epoch = self.records[-1]["epoch"] + 1 if self.records else 1
        epoch = check_positive_int(epoch, "epoch")
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": None if train_loss is None else _check_real(train_loss, "train_loss"),
            "val_loss": None if val_loss is None else _check_real(val_loss, "val_loss"),
            "train_acc": None if train_acc is None else _check_accuracy(train_acc, "train_acc"),
            "val_acc": None if val_acc is None else _check_accuracy(val_acc, "val_acc"),
        }
        have_acc = row["train_acc"] is not None and row["val_acc"] is not None
        have_loss = row["train_loss"] is not None and row["val_loss"] is not None
        if self.metric == "accuracy" and not have_acc:
            raise ValueError("OverfitMonitor(metric='accuracy') needs train_acc and val_acc")
        if self.metric == "loss" and not have_loss:
            raise ValueError("OverfitMonitor(metric='loss') needs train_loss and val_loss")
        row["gap"] = row["train_acc"] - row["val_acc"] if have_acc else None
        row["loss_gap"] = row["val_loss"] - row["train_loss"] if have_loss else None
        tested = row["gap"] if self.metric == "accuracy" else row["loss_gap"]
        row["over"] = tested > self.epsilon
        self.records.append(row)
        self._run = self._run + 1 if row["over"] else 0
        if self.flagged_epoch is None and self._run >= self.patience:
            self.flagged_epoch = self.records[-self.patience]["epoch"]
        return self.overfitting

    def __call__(self, epoch: int, history: History) -> bool:
        """The ``on_epoch`` hook of :func:`dropkit.train.fit`: records the history's last epoch."""
        self.update(
            train_loss=history.train_loss[-1],
            val_loss=history.val_loss[-1] if history.val_loss else None,
            train_acc=history.train_acc[-1],
            val_acc=history.val_acc[-1] if history.val_acc else None,
            epoch=epoch + 1,
        )
        return self.stop and self.overfitting

    def plot(self, ax: Any = None, path: str | os.PathLike | None = None) -> Any:
        """Draws the curves and marks the flagged epoch; see :func:`plot_curves`."""
        return plot_curves(self.records, flagged_epoch=self.flagged_epoch, ax=ax, path=path)


# --------------------------------------------------------------------------------------------
# Dropout modules and their rates
# --------------------------------------------------------------------------------------------


def dropout_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's dropout modules by path (``named_modules`` order, the order they are built).

    Example:
        >>> import dropkit
        >>> list(dropout_layers(dropkit.MLP([4, 8, 8, 2], p=0.3)))
        ['input_dropout', 'dropout1', 'dropout2']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return {name: m for name, m in model.named_modules() if name and is_dropout_module(m)}


def set_rates(model: nn.Module, rates: Mapping[str, float]) -> nn.Module:
    """Sets ``module.p`` for each path in ``rates`` (checked first: nothing changes on an error).

    Raises:
        KeyError: a path that is not a dropout module of ``model``.
        ValueError / TypeError: a rate outside [0, 1] or not a number.

    Example:
        >>> import dropkit
        >>> net = set_rates(dropkit.MLP([4, 8, 2], p=0.5), {"dropout1": 0.2})
        >>> net.dropout1.p
        0.2
    """
    layers = dropout_layers(model)
    checked = {}
    for path, value in rates.items():
        if path not in layers:
            raise KeyError(
                f"{path!r} is not a dropout module of the model; its dropout modules are {list(layers)}"
            )
        checked[path] = check_probability(
            value, f"rate of {path}", allow_one=getattr(layers[path], "allow_one", True)
        )
    for path, value in checked.items():
        layers[path].p = value
    return model


# --------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------


def _mask_url(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _storage_url(storage: str | os.PathLike | None) -> str:
    if storage is None:
        return DEFAULT_STORAGE
    text = os.fspath(storage)
    if not isinstance(text, str) or not text:
        raise ValueError(f"storage must be a non-empty path or URL, got {storage!r}")
    if "://" not in text:
        path = Path(text).expanduser().resolve()
        if not path.parent.is_dir():
            raise ValueError(
                f"storage {text!r}: the folder {str(path.parent)!r} does not exist (a storage is a "
                f"SQLite file path, an RDB URL such as postgresql+psycopg2://user@host/db, or ':memory:')"
            )
        return f"sqlite:///{path}"
    return text


def resolve_storage(
    storage: str | os.PathLike | optuna.storages.BaseStorage | None = None,
    *,
    heartbeat_interval: int | None = 10,
    grace_period: int | None = None,
    max_retry: int | None = 3,
    create: bool = True,
) -> optuna.storages.BaseStorage:
    r"""Opens the storage a study lives in, failing fast with a clear message.

    ``None`` is :data:`DEFAULT_STORAGE`, a SQLite file in the working directory; a path (no
    ``://``) is a SQLite file; ``":memory:"`` keeps the study in this process; a URL with scheme
    ``sqlite``, ``postgresql[+driver]`` or ``mysql[+driver]`` is an RDB that several workers can
    share; an optuna storage object is returned as is.

    A ``postgresql://`` or ``mysql://`` URL that names no driver gets an installed one:
    SQLAlchemy's default for the backend when it is installed (psycopg under SQLAlchemy 2.1),
    else the first installed of psycopg2, psycopg, pg8000 (PostgreSQL) or mysqlclient, PyMySQL,
    mysql-connector (MySQL). An existing database is checked before Optuna touches it: a SQLite
    file must pass SQLite's ``quick_check``, and Optuna's tables must be all there with their
    columns, or none of them (an empty or unrelated database).

    RDB storages get Optuna's heartbeat: every running trial writes a heartbeat each
    ``heartbeat_interval`` seconds, and a trial silent for ``grace_period`` seconds (its worker
    died) is marked FAIL by the next worker that starts a trial, which re-queues it with the same
    rates (up to ``max_retry`` times).

    Args:
        storage: see above.
        heartbeat_interval: seconds between heartbeats; None turns the heartbeat off.
        grace_period: seconds of silence before a running trial counts as dead (default
            3 × heartbeat_interval).
        max_retry: how many times a dead trial is re-queued (None: forever).
        create: whether Optuna may create its storage: a new SQLite file, or its tables in a
            database that holds none of them. False (``dropkit tune-worker`` without
            ``--create``) refuses both, so a typo never leaves a new file or tables behind.

    Raises:
        ValueError: a URL with another scheme, a path whose folder does not exist, a damaged
            SQLite file or Optuna schema, or (``create=False``) a missing file or a database
            without Optuna's tables.
        ConnectionError: the database cannot be reached, or no driver for it is installed (the
            message names the URL, password hidden, and the packages that would serve).

    Example:
        >>> from dropkit.tune import resolve_storage
        >>> type(resolve_storage(":memory:")).__name__
        'InMemoryStorage'
    """
    if isinstance(storage, optuna.storages.BaseStorage):
        return storage
    if isinstance(storage, str) and storage == ":memory:":
        return optuna.storages.InMemoryStorage()
    if storage is not None and not isinstance(storage, (str, os.PathLike)):
        raise TypeError(
            f"storage must be a path, a URL, ':memory:' or an optuna storage, got {type(storage).__name__}"
        )
    url = _storage_url(storage)
    shown = _mask_url(url)
    scheme = url.split("://", 1)[0].lower()
    if scheme.split("+", 1)[0] not in _RDB_SCHEMES:
        raise ValueError(
            f"storage URL {shown!r} has scheme {scheme!r}; allowed: a SQLite file path, ':memory:', "
            f"or a URL with scheme sqlite, postgresql[+driver] or mysql[+driver]"
        )
    if heartbeat_interval is not None:
        heartbeat_interval = check_positive_int(heartbeat_interval, "heartbeat_interval")
        grace_period = (
            3 * heartbeat_interval
            if grace_period is None
            else check_positive_int(grace_period, "grace_period")
        )
    url = _with_installed_driver(url, shown)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if scheme.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 5}
    elif scheme.startswith("mysql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 5}
    else:
        engine_kwargs["connect_args"] = {"timeout": 60}
    _check_database(url, shown, engine_kwargs, create=bool(create))
    kwargs: dict[str, Any] = {"engine_kwargs": engine_kwargs}
    if heartbeat_interval is not None:
        kwargs.update(
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=_retry_callback(max_retry),
        )
    try:
        with _quiet():
            return optuna.storages.RDBStorage(url, **kwargs)
    except ImportError as err:
        raise ConnectionError(
            f"cannot open storage {shown!r}: its database driver is not installed ({err}); "
            f"{_driver_hint(scheme)}"
        ) from err
    except Exception as err:
        raise ConnectionError(_unreachable(shown, err)) from err


def _unreachable(shown: str, err: BaseException) -> str:
    return (
        f"cannot open storage {shown!r}: {type(err).__name__}: {_first_line(err)}. "
        f"Allowed: a SQLite file path, ':memory:', or a reachable sqlite/postgresql/mysql URL"
    )


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


#: The SQLAlchemy drivers of each backend dropkit knows: (name in the URL, module, pip package).
_DRIVERS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "postgresql": (
        ("psycopg2", "psycopg2", "psycopg2-binary"),
        ("psycopg", "psycopg", "psycopg[binary]"),
        ("pg8000", "pg8000", "pg8000"),
    ),
    "mysql": (
        ("mysqldb", "MySQLdb", "mysqlclient"),
        ("pymysql", "pymysql", "PyMySQL"),
        ("mysqlconnector", "mysql.connector", "mysql-connector-python"),
    ),
}


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _driver_hint(scheme: str) -> str:
    backend = scheme.split("+", 1)[0].lower()
    if backend not in _DRIVERS:
        return "install the database's SQLAlchemy driver"
    options = " or ".join(
        f"{package} (for {backend}+{name}://)" for name, _, package in _DRIVERS[backend]
    )
    extra = (
        " — pip install 'dropkit[distributed]' gives psycopg2" if backend == "postgresql" else ""
    )
    return f"install one of {options}{extra}"


def _with_installed_driver(
    url: str, shown: str, importable: Callable[[str], bool] | None = None
) -> str:
    """``url`` with an installed driver when it is ``postgresql://`` or ``mysql://`` without one.

    SQLAlchemy maps a bare ``postgresql://`` to its default driver (psycopg 3 since SQLAlchemy
    2.1, psycopg2 before), which need not be the one installed. A URL naming its driver is kept.

    Raises:
        ConnectionError: no driver of the backend is installed, or not the one the URL names;
            the message lists the packages that would serve.

    Example:
        >>> _with_installed_driver("postgresql://u@host/db", "", {"psycopg2"}.__contains__)
        'postgresql+psycopg2://u@host/db'
    """
    importable = importable or _importable
    scheme, rest = url.split("://", 1)
    backend, _, driver = scheme.partition("+")
    drivers = _DRIVERS.get(backend.lower())
    if drivers is None:
        return url
    if driver:
        module = {name: module for name, module, _ in drivers}.get(driver.lower())
        if module is not None and not importable(module):
            raise ConnectionError(
                f"cannot open storage {shown!r}: its driver {driver!r} (module {module}) is not "
                f"installed; {_driver_hint(scheme)}"
            )
        return url
    try:
        from sqlalchemy.engine import make_url

        default = make_url(url).get_dialect().driver
    except Exception:
        default = drivers[0][0]
    for name, module, _ in sorted(drivers, key=lambda d: d[0] != default):
        if importable(module):
            return url if name == default else f"{backend}+{name}://{rest}"
    raise ConnectionError(
        f"cannot open storage {shown!r}: no {backend} driver is installed; {_driver_hint(scheme)}"
    )


def _optuna_schema() -> dict[str, set[str]]:
    """Optuna's RDB tables and their columns (empty when this optuna does not expose them)."""
    try:
        from optuna.storages._rdb.models import BaseModel
    except ImportError:
        return {}
    return {
        name: {c.name for c in table.columns} for name, table in BaseModel.metadata.tables.items()
    }


def _check_database(url: str, shown: str, engine_kwargs: dict[str, Any], *, create: bool) -> None:
    """Refuses a damaged database, a damaged Optuna schema and (without ``create``) a new one.

    Optuna's RDBStorage creates a missing SQLite file and adds its tables to any database; a
    damaged file surfaces as a long traceback from deep inside a trial. Checked here first, each
    is one line.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            return
        tables = _sqlite_tables(database, shown, create=create)
    else:
        tables = _rdb_tables(url, shown, engine_kwargs)
    if tables is None:
        return
    schema = _optuna_schema()
    ours = {name: columns for name, columns in tables.items() if name in schema}
    if not ours:
        if not create:
            held = f"its tables are {sorted(tables)}" if tables else "it holds no tables"
            raise ValueError(
                f"storage {shown!r} is not an Optuna storage ({held}); refusing to add Optuna's "
                "tables to it: pass create=True (dropkit tune-worker --create) to do so"
            )
        return
    for name, columns in schema.items():
        missing = sorted(columns - ours.get(name, set()))
        if missing:
            what = f"table {name!r}" if name in ours else "it"
            lacks = f"lacks columns {missing}" if name in ours else f"lacks the table {name!r}"
            raise ValueError(
                f"storage {shown!r} is a damaged Optuna storage: {what} {lacks} (optuna "
                f"{optuna.__version__}); restore it from a copy or use another storage"
            )


def _sqlite_tables(database: str, shown: str, *, create: bool) -> dict[str, set[str]] | None:
    """Table -> columns of an existing SQLite file, after SQLite's own quick_check; None if new."""
    import sqlite3

    path = Path(database).expanduser()
    if not path.exists():
        if not create:
            raise ValueError(
                f"storage file {str(path)!r} does not exist; pass create=True (dropkit "
                "tune-worker --create) to create it, or check the path"
            )
        return None
    if path.is_dir():
        raise ValueError(f"storage {shown!r} is a folder, expected a SQLite file")
    try:
        # Read-only: a check must never create or change the file.
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as db:
            verdict = [row[0] for row in db.execute("PRAGMA quick_check")]
            if verdict != ["ok"]:
                raise sqlite3.DatabaseError(f"quick_check: {'; '.join(map(str, verdict[:3]))}")
            names = [
                row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            return {
                name: {row[1] for row in db.execute(f'PRAGMA table_info("{name}")')}
                for name in names
            }
    except sqlite3.Error as err:
        raise ValueError(
            f"storage {shown!r} is not a sound SQLite database ({_first_line(err)}); restore it "
            "from a copy or use another storage"
        ) from None


def _rdb_tables(url: str, shown: str, engine_kwargs: dict[str, Any]) -> dict[str, set[str]]:
    """Table -> columns of a server database (PostgreSQL, MySQL)."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url, **engine_kwargs)
        try:
            inspector = sqlalchemy.inspect(engine)
            return {
                name: {c["name"] for c in inspector.get_columns(name)}
                for name in inspector.get_table_names()
            }
        finally:
            engine.dispose()
    except ImportError as err:
        raise ConnectionError(
            f"cannot open storage {shown!r}: its database driver is not installed ({err}); "
            f"{_driver_hint(url.split('://', 1)[0])}"
        ) from err
    except Exception as err:
        raise ConnectionError(_unreachable(shown, err)) from err


def _retry_callback(max_retry: int | None) -> Callable:
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if cls is None:  # optuna < 4.9 names it RetryFailedTrialCallback
        cls = optuna.storages.RetryFailedTrialCallback
    with _quiet():
        return cls(max_retry=max_retry)


@contextlib.contextmanager
def _quiet(verbose: bool = False) -> Iterator[None]:
    """Optuna's INFO logs and experimental warnings off for the duration (restored after)."""
    before = optuna.logging.get_verbosity()
    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        optuna.logging.set_verbosity(before)


# --------------------------------------------------------------------------------------------
# Training one configuration
# --------------------------------------------------------------------------------------------


def _n_params(fn: Callable) -> int:
    try:
        params = _pyinspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


@dataclass
class _Trainer:
    """Builds a model, sets its rates, trains it and returns its validation metrics."""

    build_model: Callable[[], nn.Module]
    train_fn: Callable[..., Any] | None = None
    eval_fn: Callable[[nn.Module], Any] | None = None
    train: Any = None
    val: Any = None
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 100
    weight_decay: float = 0.0
    task: str = "classification"
    metric: str = "val_loss"

    def __post_init__(self) -> None:
        if not callable(self.build_model):
            raise TypeError(
                f"build_model must be a callable returning an nn.Module, got {self.build_model!r}"
            )
        if self.train_fn is None:
            if self.eval_fn is not None:
                raise ValueError(
                    "eval_fn was given without train_fn; give both, or neither and train=/val= data"
                )
            if self.train is None or self.val is None:
                raise ValueError(
                    "give train_fn and eval_fn, or train= and val= data ((x, y) tensors or DataLoaders) "
                    "for the built-in trainer"
                )
            if self.metric not in ("val_loss", "val_acc"):
                raise ValueError(
                    f"with the built-in trainer metric must be 'val_loss' or 'val_acc', got {self.metric!r}"
                )
            if self.metric == "val_acc" and self.task != "classification":
                raise ValueError("metric='val_acc' needs task='classification'")
            self.epochs = check_positive_int(self.epochs, "epochs")
        else:
            if not callable(self.train_fn):
                raise TypeError(f"train_fn must be callable, got {self.train_fn!r}")
            if self.eval_fn is None or not callable(self.eval_fn):
                raise ValueError("train_fn needs an eval_fn(model) returning the validation metric")

    def model(self, rates: Mapping[str, float], seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = self.build_model()
        if not isinstance(model, nn.Module):
            raise TypeError(f"build_model() must return an nn.Module, got {type(model).__name__}")
        return set_rates(model, rates)

    def _metrics(self, value: Any) -> dict[str, float]:
        if isinstance(value, Mapping):
            if self.metric not in value:
                raise KeyError(
                    f"eval_fn returned {sorted(value)}, which lacks metric {self.metric!r}"
                )
            return {str(k): float(v) for k, v in value.items()}
        return {self.metric: float(value)}

    def run(
        self,
        rates: Mapping[str, float],
        seed: int,
        report: Callable[[int, float], None] | None = None,
    ) -> dict[str, Any]:
        """Trains one configuration; ``report(epoch, value)`` sees the metric after each epoch."""
        model = self.model(rates, seed)
        if self.train_fn is None:

            def on_epoch(epoch: int, history: History) -> bool:
                if report is not None:
                    value = (
                        history.val_loss[-1] if self.metric == "val_loss" else history.val_acc[-1]
                    )
                    report(epoch, value)
                return False

            history = fit(
                model,
                self.train,
                self.val,
                epochs=self.epochs,
                lr=self.lr,
                batch_size=self.batch_size,
                weight_decay=self.weight_decay,
                task=self.task,
                seed=seed,
                on_epoch=on_epoch,
            )
            out: dict[str, Any] = {
                "train_loss": history.train_loss[-1],
                "val_loss": history.val_loss[-1],
                "train_acc": history.train_acc[-1],
                "val_acc": history.val_acc[-1],
                "epochs": history.epochs,
            }
            out["loss_gap"] = out["val_loss"] - out["train_loss"]
            out["gap"] = out["train_acc"] - out["val_acc"] if out["train_acc"] is not None else None
            return out

        def report_epoch(epoch: int) -> None:
            if report is not None:
                report(int(epoch), self._metrics(self.eval_fn(model))[self.metric])

        if _n_params(self.train_fn) >= 2:
            self.train_fn(model, report_epoch)
        else:
            self.train_fn(model)
        return self._metrics(self.eval_fn(model))


# --------------------------------------------------------------------------------------------
# Rate search
# --------------------------------------------------------------------------------------------


def _check_grid(grid: Iterable[float]) -> tuple[float, ...]:
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Iterable):
        raise TypeError(f"grid must be a sequence of rates in [0, 1], got {grid!r}")
    values = tuple(check_probability(p, f"grid[{i}]") for i, p in enumerate(grid))
    if not values:
        raise ValueError("grid must hold at least one rate in [0, 1], got an empty grid")
    if len(set(values)) != len(values):
        raise ValueError(f"grid must not repeat a rate, got {list(values)}")
    return tuple(sorted(values))


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
        """See :func:`plot_search`."""
        return plot_search(self, ax=ax, path=path)


def _result_from_study(study: optuna.Study) -> SearchResult:
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
    url = getattr(study._storage, "url", None)
    return SearchResult(
        study_name=study.study_name,
        storage=_mask_url(url) if url else type(study._storage).__name__,
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
    with _quiet():
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


def _trial_p(trial: optuna.trial.FrozenTrial) -> float | None:
    """The shared rate of a grid trial, also for a queued trial that has not started."""
    if "p" in trial.params:
        return trial.params["p"]
    return trial.system_attrs.get("fixed_params", {}).get("p")


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
    validation metric after the last epoch (``val_loss`` by default, minimised).

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
        if mode not in ("grid", "per_layer"):
            raise ValueError(f"mode must be 'grid' or 'per_layer', got {mode!r}")
        if direction not in ("minimize", "maximize"):
            raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
        self.mode = mode
        self.grid = _check_grid(grid)
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
        self.trainer = _Trainer(
            build_model,
            train_fn,
            eval_fn,
            train,
            val,
            epochs,
            lr,
            batch_size,
            weight_decay,
            task,
            metric,
        )
        self.metric = metric
        self.direction = direction
        self.seed = int(seed)
        self.n_startup_trials = check_positive_int(n_startup_trials, "n_startup_trials", minimum=0)
        # Build one model now: the paths are checked before any trial runs.
        available = list(_built_rates(build_model, self.seed))
        if not available:
            raise ValueError("the model built by build_model() holds no dropout module to tune")
        if layers is None:
            layers = available
        layers = list(layers)
        unknown = [p for p in layers if p not in available]
        if unknown or not layers:
            raise ValueError(
                f"layers must name dropout modules of the model {available}, got {layers}"
            )
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
        covered = {_trial_p(t) for t in trials if t.state in alive}
        failed = {_trial_p(t) for t in trials if t.state == TrialState.FAIL}
        with _quiet():
            for p in sorted(x for x in failed - covered if x is not None):
                study.enqueue_trial({"p": p})

    def _grid_exhausted(self, study: optuna.Study) -> bool:
        """Every grid point has been attempted (finished, pruned or failed)."""
        attempted = {_trial_p(t) for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        return set(self.grid) <= attempted

    def default_n_trials(self) -> int:
        """len(grid) in grid mode, 20 per-layer."""
        return len(self.grid) if self.mode == "grid" else 20

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
        n_trials = (
            self.default_n_trials()
            if n_trials is None
            else check_positive_int(n_trials, "n_trials")
        )
        if self.mode == "grid" and n_trials > len(self.grid):
            raise ValueError(
                f"grid mode runs each of the {len(self.grid)} grid rates once; n_trials={n_trials} is too many"
            )
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
        with _quiet():
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
                f"study {name!r} in {_mask_url(getattr(storage_obj, 'url', '')) or 'storage'} was created for "
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
        study = self.create_study(storage, study_name, n_trials, **storage_kwargs)
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
            exhausted=self._grid_exhausted if self.mode == "grid" else None,
        )
        return _result_from_study(study)


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


def load_search(
    storage: str | os.PathLike | optuna.storages.BaseStorage, study_name: str
) -> SearchResult:
    """The :class:`SearchResult` of a stored study (e.g. one that workers are filling).

    Raises:
        KeyError: no study of that name in the storage.
    """
    storage_obj = resolve_storage(storage)
    with _quiet():
        try:
            study = optuna.load_study(study_name=study_name, storage=storage_obj)
        except KeyError as err:
            names = [s.study_name for s in optuna.get_all_study_summaries(storage_obj)]
            raise KeyError(f"no study {study_name!r} in this storage; it holds {names}") from err
    return _result_from_study(study)


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

    if dataset not in _DATASETS:
        raise ValueError(f"dataset must be one of {_DATASETS}, got {dataset!r}")
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


# --------------------------------------------------------------------------------------------
# Regression: (p, τ) by validation MC log-likelihood
# --------------------------------------------------------------------------------------------


@dataclass
class PTauSearch:
    """What :func:`search_p_tau` found.

    Attributes:
        records: one dict per grid point: ``p``, ``tau``, ``tau_factor`` (τ / τ₀, None for a given
            grid), ``weight_decay`` (the paper's λ), ``val_log_likelihood`` and ``val_rmse`` (MC
            dropout), ``val_log_likelihood_ws`` and ``val_rmse_ws`` (weight scaling).
        best: the grid point with the highest MC validation log-likelihood (``p``, ``tau``, …).
        best_weight_scaling: the one with the highest weight-scaling validation log-likelihood.
        taus: the τ grid; ``tau0``: its centre 1/s² when derived (None when given).
        rates: the rate grid.
    """

    records: list[dict[str, Any]]
    best: dict[str, Any]
    best_weight_scaling: dict[str, Any]
    taus: tuple[float, ...]
    tau0: float | None
    rates: tuple[float, ...]


def search_p_tau(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    *,
    rates: Sequence[float] = (0.005, 0.01, 0.05, 0.1),
    taus: Sequence[float] | None = None,
    hidden: Sequence[int] = (50,),
    epochs: int = 400,
    batch_size: int = 128,
    lr: float = 1e-3,
    T: int = 1000,
    length_scale: float = 1e-2,
    seed: int = 0,
) -> PTauSearch:
    r"""Chooses dropout rate p and model precision τ by MC predictive log-likelihood on validation.

    Gal & Ghahramani 2016's grid search: for each (p, τ), an MLP [D, *hidden, 1] with dropout p on
    its input and hidden layers is trained on ``train`` with the paper's objective and weight decay
    λ = l² (1 − p) / (2 N τ) (:func:`dropkit.uncertainty.weight_decay_from_tau`,
    ``convention="paper"``), then scored on ``val`` by
    logsumexp_t(−τ/2 (y − ŷ_t)²) − log T − ½ log 2π + ½ log τ over T MC passes
    (:func:`dropkit.mc.predict`, :func:`dropkit.uncertainty.gaussian_log_likelihood`). Every grid
    point trains side by side in one batched model (:func:`dropkit.regression.train_dropout_ensemble`).

    With ``taus=None`` the τ grid comes from the data: a first fit at the grid's middle rate gives
    the validation residual variance s² of its weight-scaled prediction, and the grid is
    τ₀ × {¼, ½, 1, 2, 4} with τ₀ = 1/s².

    Args:
        train, val: (x, y) tensors, x (N, D), y (N,); standardise both on the training part first
            (τ is a precision of ``y`` as given).
        rates: dropout rates in (0, 1).
        taus: precisions τ > 0, or None for the derived grid.
        hidden, epochs, batch_size, lr: the networks and their training.
        T: MC passes per validation score.
        length_scale: prior length-scale l (the authors' code: 10⁻²).
        seed: seeds the networks and the MC samples.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(200, 2, generator=g); y = x[:, 0] + 0.3 * torch.randn(200, generator=g)
        >>> found = search_p_tau((x[:150], y[:150]), (x[150:], y[150:]), rates=[0.01, 0.1],
        ...                      hidden=[16], epochs=20, T=20)
        >>> len(found.records), found.best["p"] in (0.01, 0.1)
        (10, True)
    """
    import numpy as np

    from dropkit import uncertainty as U
    from dropkit.mc import predict
    from dropkit.regression import MC_PASS_BYTES, TAU_FACTORS, train_dropout_ensemble

    (x_train, y_train), (x_val, y_val) = train, val
    rates = [check_probability(p, f"rates[{i}]", allow_one=False) for i, p in enumerate(rates)]
    if not rates or min(rates) <= 0:
        raise ValueError(f"rates must be non-empty dropout rates in (0, 1), got {list(rates)}")
    T = check_positive_int(T, "T")
    n = int(x_train.shape[0])
    y_val_np = torch.as_tensor(y_val).double().numpy()
    common = {"hidden": hidden, "epochs": epochs, "batch_size": batch_size, "lr": lr}

    def decay(p: float, tau: float) -> float:
        return U.weight_decay_from_tau(tau, p, n, length_scale=length_scale, convention="paper")

    tau0 = None
    if taus is None:
        middle = sorted(rates)[len(rates) // 2]
        (first,) = train_dropout_ensemble(
            x_train, y_train, [middle], [decay(middle, 1.0)], seed=seed, **common
        )
        with torch.no_grad():
            residual = first(torch.as_tensor(x_val, dtype=torch.float32))[:, 0].double().numpy()
        tau0 = 1.0 / max(float(np.mean((residual - y_val_np) ** 2)), 1e-12)
        taus = [tau0 * f for f in TAU_FACTORS]
    taus = [float(t) for t in taus]
    for i, t in enumerate(taus):
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"taus must be positive finite precisions, got {t!r} at position {i}")
    grid = [(p, tau) for p in rates for tau in taus]
    nets = train_dropout_ensemble(
        x_train,
        y_train,
        [p for p, _ in grid],
        [decay(p, tau) for p, tau in grid],
        seed=seed + 1,
        **common,
    )
    x_val = torch.as_tensor(x_val, dtype=torch.float32)
    records = []
    for (p, tau), net in zip(grid, nets, strict=True):
        # Passes of up to 64 MiB: T = 1000 samples of a small net in a few passes (4× faster
        # than 1 MiB passes here); the samples do not depend on the chunking.
        samples = predict(net, x_val, T=T, seed=seed, max_memory_bytes=MC_PASS_BYTES)
        samples = samples[..., 0].double().numpy()
        with torch.no_grad():
            ws = net(x_val)[:, 0].double().numpy()
        records.append(
            {
                "p": p,
                "tau": tau,
                "tau_factor": None if tau0 is None else tau / tau0,
                "weight_decay": decay(p, tau),
                "val_log_likelihood": U.gaussian_log_likelihood(samples, y_val_np, tau),
                "val_rmse": U.rmse(samples.mean(0), y_val_np),
                "val_log_likelihood_ws": U.gaussian_log_likelihood(ws[None], y_val_np, tau),
                "val_rmse_ws": U.rmse(ws, y_val_np),
            }
        )
    best = max(records, key=lambda r: r["val_log_likelihood"])
    best_ws = max(records, key=lambda r: r["val_log_likelihood_ws"])
    return PTauSearch(records, dict(best), dict(best_ws), tuple(taus), tau0, tuple(rates))


# --------------------------------------------------------------------------------------------
# Ablation and sensitivity
# --------------------------------------------------------------------------------------------


def _built_rates(build_model: Callable[[], nn.Module], seed: int) -> dict[str, float]:
    """The rates ``build_model()`` gives each dropout module (torch's RNG state left untouched)."""
    if not callable(build_model):
        raise TypeError(
            f"build_model must be a callable returning an nn.Module, got {build_model!r}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model()
    if not isinstance(model, nn.Module):
        raise TypeError(f"build_model() must return an nn.Module, got {type(model).__name__}")
    return {path: float(m.p) for path, m in dropout_layers(model).items()}


def _trainer_and_rates(
    build_model,
    train_fn,
    eval_fn,
    train,
    val,
    epochs,
    lr,
    batch_size,
    weight_decay,
    task,
    metric,
    seed,
) -> tuple[_Trainer, dict[str, float]]:
    """The trainer and the built model's dropout rates that ablation and sensitivity share."""
    trainer = _Trainer(
        build_model,
        train_fn,
        eval_fn,
        train,
        val,
        epochs,
        lr,
        batch_size,
        weight_decay,
        task,
        metric,
    )
    built = _built_rates(build_model, seed)
    if not built:
        raise ValueError("the model built by build_model() holds no dropout module")
    return trainer, built


def _check_seeds(seeds: Iterable[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got none")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"seeds must be ints, got {s!r}")
    return [int(s) for s in seeds]


def ablation(
    build_model: Callable[[], nn.Module],
    train_fn: Callable[..., Any] | None = None,
    eval_fn: Callable[[nn.Module], Any] | None = None,
    *,
    train: Any = None,
    val: Any = None,
    seeds: Iterable[int] = (0,),
    one_at_a_time: str = "without",
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 100,
    weight_decay: float = 0.0,
    task: str = "classification",
    metric: str = "val_loss",
    progress: Any = None,
) -> list[dict[str, Any]]:
    r"""Trains the model with and without dropout, and with one dropout layer changed at a time.

    Configurations, each trained once per seed (same initial weights and batches across
    configurations for a seed):

    - ``"all"``: the rates ``build_model()`` sets;
    - ``"none"``: every dropout rate 0;
    - ``"without:<path>"`` (leave-one-out): that module's rate 0, the others as built;
    - ``"only:<path>"``: that module as built, the others 0 (with ``one_at_a_time="only"`` or
      ``"both"``).

    Only modules with a rate above 0 are varied.

    Returns:
        One dict per (configuration, seed): ``config``, ``seed``, ``rates`` and the metrics
        (``val_loss``, ``val_acc``, ``train_loss``, ``train_acc``, ``gap``, ``loss_gap`` with the
        built-in trainer; what ``eval_fn`` returns otherwise). Aggregate with :func:`summarize`,
        draw with :func:`plot_ablation`.

    Example:
        >>> import torch, dropkit
        >>> from dropkit.tune import ablation
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(40, 4, generator=g), torch.randint(0, 2, (40,), generator=g)
        >>> rows = ablation(lambda: dropkit.MLP([4, 8, 8, 2], p=0.3), train=(x, y), val=(x, y), epochs=1)
        >>> [r["config"] for r in rows]
        ['all', 'none', 'without:dropout1', 'without:dropout2']
    """
    if one_at_a_time not in ("without", "only", "both"):
        raise ValueError(
            f"one_at_a_time must be 'without', 'only' or 'both', got {one_at_a_time!r}"
        )
    seeds = _check_seeds(seeds)
    trainer, built = _trainer_and_rates(
        build_model,
        train_fn,
        eval_fn,
        train,
        val,
        epochs,
        lr,
        batch_size,
        weight_decay,
        task,
        metric,
        seeds[0],
    )
    active = [path for path, p in built.items() if p > 0]
    if not active:
        raise ValueError(
            f"every dropout rate of the model is 0 ({built}); there is nothing to ablate"
        )
    configs: list[tuple[str, dict[str, float]]] = [
        ("all", dict(built)),
        ("none", dict.fromkeys(built, 0.0)),
    ]
    if one_at_a_time in ("without", "both"):
        configs += [(f"without:{path}", {**built, path: 0.0}) for path in active]
    if one_at_a_time in ("only", "both"):
        configs += [
            (f"only:{path}", {**dict.fromkeys(built, 0.0), path: built[path]}) for path in active
        ]
    rows = []
    for name, rates in configs:
        for seed in seeds:
            metrics = trainer.run(rates, seed)
            rows.append({"config": name, "seed": seed, "rates": dict(rates), **metrics})
            if progress is not None and hasattr(progress, "update"):
                progress.update(1)
    return rows


def sensitivity(
    build_model: Callable[[], nn.Module],
    train_fn: Callable[..., Any] | None = None,
    eval_fn: Callable[[nn.Module], Any] | None = None,
    *,
    train: Any = None,
    val: Any = None,
    rates: Iterable[float] = (0.0, *DEFAULT_GRID),
    seeds: Iterable[int] = (0, 1, 2),
    layers: Sequence[str] | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 100,
    weight_decay: float = 0.0,
    task: str = "classification",
    metric: str = "val_loss",
    progress: Any = None,
) -> list[dict[str, Any]]:
    r"""The validation metric as a function of p, once per seed (for error bars).

    For each p in ``rates`` and each seed, the modules in ``layers`` (default: all dropout
    modules) get rate p, the others keep the rates ``build_model()`` gives; the model is trained
    and evaluated. :func:`summarize` with ``by="p"`` gives mean, standard deviation and standard
    error per p; :func:`plot_sensitivity` draws mean ± one standard deviation.

    Returns:
        One dict per (p, seed): ``p``, ``seed``, ``rates`` and the metrics.

    Example:
        >>> import torch, dropkit
        >>> from dropkit.tune import sensitivity, summarize
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(40, 4, generator=g), torch.randint(0, 2, (40,), generator=g)
        >>> rows = sensitivity(lambda: dropkit.MLP([4, 8, 2]), train=(x, y), val=(x, y),
        ...                    rates=[0.0, 0.5], seeds=[0, 1], layers=["dropout1"], epochs=1)
        >>> [(s["p"], s["n"]) for s in summarize(rows, by="p")]
        [(0.0, 2), (0.5, 2)]
    """
    values = _check_grid(rates)
    seeds = _check_seeds(seeds)
    trainer, built = _trainer_and_rates(
        build_model,
        train_fn,
        eval_fn,
        train,
        val,
        epochs,
        lr,
        batch_size,
        weight_decay,
        task,
        metric,
        seeds[0],
    )
    layers = list(built) if layers is None else list(layers)
    unknown = [p for p in layers if p not in built]
    if unknown or not layers:
        raise ValueError(
            f"layers must name dropout modules of the model {list(built)}, got {layers}"
        )
    rows = []
    for p in values:
        config = {**built, **dict.fromkeys(layers, p)}
        for seed in seeds:
            metrics = trainer.run(config, seed)
            rows.append({"p": p, "seed": seed, "rates": dict(config), **metrics})
            if progress is not None and hasattr(progress, "update"):
                progress.update(1)
    return rows


def summarize(
    records: Iterable[Mapping[str, Any]], by: str = "config", metric: str = "val_loss"
) -> list[dict[str, Any]]:
    r"""Groups records by ``by`` and gives mean, standard deviation and standard error of ``metric``.

    std is the sample standard deviation (n − 1; 0 for a single seed), sem = std / √n. Groups
    keep the order of first appearance.

    Example:
        >>> from dropkit.tune import summarize
        >>> rows = [{"p": 0.1, "val_loss": 1.0}, {"p": 0.1, "val_loss": 3.0}, {"p": 0.2, "val_loss": 2.0}]
        >>> summarize(rows, by="p")[0]
        {'p': 0.1, 'metric': 'val_loss', 'mean': 2.0, 'std': 1.4142135623730951, 'sem': 1.0, 'n': 2, 'min': 1.0, 'max': 3.0}
    """
    groups: dict[Any, list[float]] = {}
    for row in records:
        if by not in row:
            raise KeyError(f"record {dict(row)} has no field {by!r}")
        if metric not in row:
            raise KeyError(f"record has no metric {metric!r}; it holds {sorted(row)}")
        value = row[metric]
        groups.setdefault(row[by], [])
        if value is not None:
            groups[row[by]].append(float(value))
    out = []
    for key, values in groups.items():
        n = len(values)
        mean = statistics.fmean(values) if n else math.nan
        std = statistics.stdev(values) if n > 1 else 0.0
        out.append(
            {
                by: key,
                "metric": metric,
                "mean": mean,
                "std": std,
                "sem": std / math.sqrt(n) if n else math.nan,
                "n": n,
                "min": min(values) if n else math.nan,
                "max": max(values) if n else math.nan,
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# Plots (matplotlib's Agg canvas; pyplot's global state is never touched)
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _axes(
    ax: Any, path: str | os.PathLike | None, figsize: tuple[float, float] = (6.0, 4.0)
) -> Iterator[Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=figsize)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    yield ax
    if path is not None:
        fig = ax.figure
        fig.tight_layout()
        fig.savefig(os.fspath(path), format="png", dpi=110)


def plot_curves(
    records: Sequence[Mapping[str, Any]] | History,
    *,
    flagged_epoch: int | None = None,
    ax: Any = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Any:
    """Learning curves (train and validation loss, and accuracy on a second axis when present).

    Args:
        records: :attr:`OverfitMonitor.records`, ``History.as_records()`` or a ``History``.
        flagged_epoch: drawn as a vertical line (the epoch the gap passed ε).
        ax: matplotlib Axes to draw into (default: a new figure).
        path: write the figure as PNG there.

    Returns:
        The Axes drawn into.
    """
    if isinstance(records, History):
        records = records.as_records()
    rows = list(records)
    if not rows:
        raise ValueError("plot_curves needs at least one epoch of records, got none")
    epochs = [r["epoch"] for r in rows]
    with _axes(ax, path) as ax:
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            values = [r.get(key) for r in rows]
            if any(v is not None for v in values):
                ax.plot(
                    epochs,
                    [math.nan if v is None else v for v in values],
                    style,
                    color="C0",
                    label=key,
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if any(r.get("train_acc") is not None for r in rows):
            acc_ax = ax.twinx()
            for key, style in (("train_acc", "-"), ("val_acc", "--")):
                values = [r.get(key) for r in rows]
                acc_ax.plot(
                    epochs,
                    [math.nan if v is None else v for v in values],
                    style,
                    color="C1",
                    label=key,
                )
            acc_ax.set_ylabel("accuracy")
            acc_ax.legend(loc="center right", fontsize="small")
        if flagged_epoch is not None:
            ax.axvline(
                flagged_epoch, color="C3", linestyle=":", label=f"gap > ε at epoch {flagged_epoch}"
            )
        ax.legend(loc="upper right", fontsize="small")
        ax.set_title(title or "learning curves")
    return ax


def plot_search(
    result: SearchResult, *, ax: Any = None, path: str | os.PathLike | None = None
) -> Any:
    """Grid mode: the objective against p (the chosen p* marked). Per-layer: objective per trial.

    Returns:
        The Axes drawn into.
    """
    done = [r for r in result.records if r["state"] == "COMPLETE"]
    if not done:
        raise ValueError(f"study {result.study_name!r} has no COMPLETE trial to plot")
    with _axes(ax, path) as ax:
        if result.mode == "grid":
            done.sort(key=lambda r: r["p"])
            ax.plot([r["p"] for r in done], [r["value"] for r in done], "o-", label=result.metric)
            if result.best_p is not None:
                ax.axvline(
                    result.best_p, color="C3", linestyle=":", label=f"p* = {result.best_p:g}"
                )
            ax.set_xlabel("dropout rate p")
        else:
            ax.plot([r["trial"] for r in done], [r["value"] for r in done], "o", label="complete")
            pruned = [r for r in result.records if r["state"] == "PRUNED" and r["intermediate"]]
            if pruned:
                ax.plot(
                    [r["trial"] for r in pruned],
                    [r["intermediate"][-1] for r in pruned],
                    "x",
                    color="C7",
                    label="pruned (last reported)",
                )
            ax.set_xlabel("trial")
        ax.set_ylabel(result.metric)
        ax.legend(fontsize="small")
        ax.set_title(f"rate search ({result.mode})")
    return ax


def plot_ablation(
    records: Sequence[Mapping[str, Any]],
    metric: str = "val_loss",
    *,
    ax: Any = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """Bars of ``metric`` per ablation configuration, error bars one standard deviation over seeds.

    Returns:
        The Axes drawn into.
    """
    summary = summarize(records, by="config", metric=metric)
    if not summary:
        raise ValueError("plot_ablation needs records, got none")
    with _axes(ax, path, figsize=(max(5.0, 1.1 * len(summary)), 4.0)) as ax:
        names = [s["config"] for s in summary]
        ax.bar(
            range(len(names)),
            [s["mean"] for s in summary],
            yerr=[s["std"] for s in summary],
            capsize=4,
            color="C0",
        )
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize="small")
        ax.set_ylabel(f"{metric} (mean ± std over seeds)")
        ax.set_title("dropout ablation")
    return ax


def plot_sensitivity(
    records: Sequence[Mapping[str, Any]],
    metric: str = "val_loss",
    *,
    ax: Any = None,
    path: str | os.PathLike | None = None,
    label: str | None = None,
) -> Any:
    """``metric`` against p, mean ± one standard deviation over seeds.

    Returns:
        The Axes drawn into.
    """
    summary = sorted(summarize(records, by="p", metric=metric), key=lambda s: s["p"])
    if not summary:
        raise ValueError("plot_sensitivity needs records, got none")
    with _axes(ax, path) as ax:
        ax.errorbar(
            [s["p"] for s in summary],
            [s["mean"] for s in summary],
            yerr=[s["std"] for s in summary],
            fmt="o-",
            capsize=4,
            label=label or metric,
        )
        ax.set_xlabel("dropout rate p")
        ax.set_ylabel(f"{metric} (mean ± std over seeds)")
        ax.legend(fontsize="small")
        ax.set_title("rate sensitivity")
    return ax
