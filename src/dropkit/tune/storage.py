r"""Where a study lives: SQLite files, PostgreSQL/MySQL URLs, and the checks before Optuna opens them.

:func:`resolve_storage` turns a path, a URL, ``":memory:"`` or an optuna storage into an optuna
storage, failing fast with one line: a URL with another scheme, a folder that does not exist, a
missing driver, a damaged SQLite file or Optuna schema, and (``create=False``, ``dropkit
tune-worker`` without ``--create``) a missing file or a database without Optuna's tables.
:func:`mask_url` hides a URL's password in every message; :func:`quiet` silences Optuna's
INFO logs and experimental warnings for the duration of a call.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna

from dropkit._validate import check_positive_int

__all__ = ["DEFAULT_STORAGE", "resolve_storage", "mask_url", "storage_label", "quiet"]

#: Where a search is stored when no storage is given: a SQLite file in the working directory.
DEFAULT_STORAGE = "sqlite:///dropkit-tune.db"
_RDB_SCHEMES = ("sqlite", "postgresql", "mysql")


def mask_url(url: str) -> str:
    """``url`` with its password hidden (``***``); returned unchanged when it does not parse.

    Example:
        >>> mask_url("postgresql+psycopg2://user:secret@db-host/dropkit")
        'postgresql+psycopg2://user:***@db-host/dropkit'
    """
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def storage_label(storage: optuna.storages.BaseStorage) -> str:
    """How a storage is named in results and messages: its URL, password hidden, or its type.

    Example:
        >>> storage_label(optuna.storages.InMemoryStorage())
        'InMemoryStorage'
    """
    url = getattr(storage, "url", None)
    return mask_url(url) if url else type(storage).__name__


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
    shown = mask_url(url)
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
        with quiet():
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
    """Optuna's RDB tables and their columns (empty when this optuna does not expose them).

    The one place dropkit reads Optuna's private API: Optuna publishes no description of its
    schema, and without one a damaged database surfaces as a traceback from deep inside a trial.
    An Optuna that moves the models turns the schema check off (an empty schema), nothing else.
    """
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
    with quiet():
        return cls(max_retry=max_retry)


@contextlib.contextmanager
def quiet(verbose: bool = False) -> Iterator[None]:
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
