"""Overfitting gap, monitor, rate search (grid, per-layer, resume), ablation, sensitivity, plots."""

from __future__ import annotations

import math
import os

import optuna
import pytest
import torch
from torch import nn

import dropkit
from dropkit.data import load_mnist1d, split_train_val
from dropkit.train import evaluate, fit
from dropkit.tune import (
    DEFAULT_GRID,
    OverfitMonitor,
    RateSearch,
    ablation,
    builtin_search,
    dropout_layers,
    gap,
    load_search,
    loss_gap,
    plot_ablation,
    plot_curves,
    plot_search,
    plot_sensitivity,
    resolve_storage,
    search_rates,
    sensitivity,
    set_rates,
    summarize,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: one intra-op thread avoids OpenMP spin-waiting on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mnist_small():
    """300 MNIST-1D training examples and 75 validation examples, generated locally."""
    ds = load_mnist1d(num_samples=375, train_split=0.8)
    x_train, y_train, x_val, y_val = split_train_val(ds.x_train, ds.y_train, 0.25, seed=0)
    return (x_train, y_train), (x_val, y_val)


def _sqlite(tmp_path, name="study.db"):
    return f"sqlite:///{tmp_path / name}"


# ---------------------------------------------------------------- gap -------------------------


def test_gap_is_train_minus_val_accuracy_and_flags_above_epsilon():
    g = gap(0.90, 0.60, epsilon=0.05)  # the seeds' example
    assert math.isclose(g.gap, 0.30) and g.overfitting and bool(g)
    assert not gap(0.80, 0.78, epsilon=0.05).overfitting
    assert not gap(0.75, 0.75, epsilon=0.0).overfitting  # strict: gap must exceed epsilon
    assert gap(0.5, 0.7).gap < 0  # validation better than training: no overfitting
    assert gap(0.9, 0.6).as_dict()["metric"] == "accuracy"


def test_loss_gap_is_val_minus_train_loss():
    g = loss_gap(0.2, 0.9, epsilon=0.5)
    assert math.isclose(g.gap, 0.7) and g.overfitting and g.metric == "loss"
    assert not loss_gap(0.5, 0.55, epsilon=0.1)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: gap(90, 60), ValueError),  # percentages
        (lambda: gap(0.9, float("nan")), ValueError),
        (lambda: gap(0.9, 0.6, epsilon=-0.1), ValueError),
        (lambda: gap("0.9", 0.6), TypeError),
        (lambda: loss_gap(float("inf"), 1.0), ValueError),
        (lambda: OverfitMonitor(metric="f1"), ValueError),
        (lambda: OverfitMonitor(patience=0), ValueError),
    ],
)
def test_gap_bad_input_is_refused(call, error):
    with pytest.raises(error):
        call()


def test_monitor_flags_the_first_epoch_the_gap_passes_epsilon_with_patience():
    monitor = OverfitMonitor(epsilon=0.1, patience=2)
    for train_acc, val_acc in [(0.5, 0.5), (0.8, 0.6), (0.8, 0.75), (0.9, 0.7), (0.95, 0.7)]:
        monitor.update(train_acc=train_acc, val_acc=val_acc)
    # epoch 2 passes but epoch 3 does not: the first run of 2 epochs over epsilon starts at 4.
    assert monitor.flagged_epoch == 4
    assert [r["over"] for r in monitor.records] == [False, True, False, True, True]


def test_monitor_needs_the_values_of_its_metric():
    with pytest.raises(ValueError, match="train_acc and val_acc"):
        OverfitMonitor().update(train_loss=0.1, val_loss=0.2)
    loss_monitor = OverfitMonitor(metric="loss", epsilon=0.2)
    assert loss_monitor.update(train_loss=0.1, val_loss=0.5)
    assert loss_monitor.flagged_epoch == 1


def test_monitor_in_fit_detects_an_overfitting_mlp_and_can_stop_it(mnist_small):
    train, val = mnist_small
    torch.manual_seed(0)
    monitor = OverfitMonitor(epsilon=0.1)
    history = fit(
        dropkit.MLP([40, 128, 128, 10], p=0.0),
        train,
        val,
        epochs=20,
        lr=3e-3,
        batch_size=50,
        on_epoch=monitor,
    )
    assert len(monitor.records) == history.epochs == 20
    assert monitor.records[-1]["train_acc"] == history.train_acc[-1]
    # 300 examples and 23k weights: the network memorises its training set.
    assert history.train_acc[-1] > 0.95 and monitor.overfitting
    first = next(r["epoch"] for r in monitor.records if r["gap"] > 0.1)
    assert monitor.flagged_epoch == first
    # stop=True ends training at the flagged epoch.
    torch.manual_seed(0)
    stopper = OverfitMonitor(epsilon=0.1, stop=True)
    stopped = fit(
        dropkit.MLP([40, 128, 128, 10], p=0.0),
        train,
        val,
        epochs=20,
        lr=3e-3,
        batch_size=50,
        on_epoch=stopper,
    )
    assert stopped.epochs == stopper.flagged_epoch == first


# ---------------------------------------------------------------- rates -----------------------


def test_dropout_layers_and_set_rates():
    net = dropkit.MLP([4, 8, 8, 2], p=0.3)
    assert list(dropout_layers(net)) == ["input_dropout", "dropout1", "dropout2"]
    set_rates(net, {"dropout1": 0.1, "dropout2": 0.4})
    assert (net.dropout1.p, net.dropout2.p) == (0.1, 0.4)
    with pytest.raises(KeyError, match="dropout1"):
        set_rates(net, {"fc1": 0.1})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        set_rates(net, {"dropout1": 0.2, "dropout2": 1.5})
    assert net.dropout1.p == 0.1  # nothing changed on the error
    torch_net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
    assert set_rates(torch_net, {"1": 0.25})[1].p == 0.25


# ---------------------------------------------------------------- search ----------------------


def test_grid_search_with_builtin_trainer_tries_the_seeds_grid_and_picks_argmin(
    mnist_small, tmp_path
):
    train, val = mnist_small
    result = search_rates(
        lambda: dropkit.MLP([40, 64, 64, 10], p=0.0),
        train=train,
        val=val,
        layers=["dropout1", "dropout2"],
        epochs=3,
        lr=3e-3,
        storage=_sqlite(tmp_path),
    )
    assert sorted(r["p"] for r in result.records) == list(DEFAULT_GRID)
    assert all(r["state"] == "COMPLETE" for r in result.records)
    values = {r["p"]: r["value"] for r in result.records}
    assert result.best_p == min(values, key=values.get)
    assert result.best_value == values[result.best_p]
    assert result.best_rates == {"dropout1": result.best_p, "dropout2": result.best_p}
    row = result.records[0]
    assert row["value"] == row["val_loss"] and 0.0 <= row["val_acc"] <= 1.0
    assert row["rates"]["dropout1"] == row["p"] and row["epochs_reported"] == 3
    # The study is in the SQLite file: a fresh reader sees the same trials.
    again = load_search(_sqlite(tmp_path), "dropkit-grid")
    assert again.best_p == result.best_p and len(again.records) == 5
    assert result.as_dict()["counts"] == {"COMPLETE": 5}


def _rates_objective_fns(target=0.3, calls=None):
    """train/eval functions whose validation loss is a known function of the rates."""

    def loss_of(model):
        return sum((m.p - target) ** 2 for m in dropout_layers(model).values())

    def train_fn(model, report):
        if calls is not None:
            calls.append({k: m.p for k, m in dropout_layers(model).items()})
        for epoch in range(4):
            report(epoch)  # intermediate values: the final loss plus a decaying term

    def eval_fn(model):
        return loss_of(model)

    return train_fn, eval_fn


def test_per_layer_search_uses_tpe_and_median_pruning_with_user_functions(tmp_path):
    train_fn, eval_fn = _rates_objective_fns()
    storage = resolve_storage(":memory:")
    search = RateSearch(
        lambda: dropkit.MLP([4, 8, 8, 2]),
        train_fn,
        eval_fn,
        mode="per_layer",
        low=0.0,
        high=0.6,
        n_startup_trials=4,
        seed=1,
    )
    study = search.create_study(storage, "per-layer", n_trials=24)
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    assert isinstance(study.pruner, optuna.pruners.MedianPruner)
    result = search.run(24, storage=storage, study_name="per-layer")
    counts = result.counts()
    assert counts.get("COMPLETE", 0) + counts.get("PRUNED", 0) == 24
    assert counts.get("PRUNED", 0) >= 1  # the median pruner stopped worse-than-median trials
    pruned = [r for r in result.records if r["state"] == "PRUNED"]
    assert all(1 <= r["epochs_reported"] < 4 for r in pruned)
    assert set(result.best_rates) == {"input_dropout", "dropout1", "dropout2"}
    assert all(0.0 <= p <= 0.6 for p in result.best_rates.values())
    complete = [r["value"] for r in result.records if r["state"] == "COMPLETE"]
    assert result.best_value == min(complete)
    # TPE beats the 4 random start-up trials on this smooth objective.
    assert result.best_value < min(r["value"] for r in result.records[:4] if r["value"] is not None)


def test_interrupted_search_resumes_where_it_stopped_and_loses_nothing(tmp_path):
    storage = _sqlite(tmp_path, "resume.db")
    calls: list[dict] = []
    train_fn, eval_fn = _rates_objective_fns(calls=calls)

    def interrupted(model, report):
        if len(calls) == 2:
            calls.append({})
            raise KeyboardInterrupt  # Ctrl-C in the third trial
        train_fn(model, report)

    build = lambda: dropkit.MLP([4, 8, 2], p=0.0)  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        search_rates(
            build, interrupted, eval_fn, layers=["dropout1"], storage=storage, study_name="s"
        )
    before = load_search(storage, "s")
    assert before.counts() == {"COMPLETE": 2, "FAIL": 1}
    done_before = {
        r["trial"]: (r["p"], r["value"]) for r in before.records if r["state"] == "COMPLETE"
    }

    calls.clear()
    after = search_rates(
        build, train_fn, eval_fn, layers=["dropout1"], storage=storage, study_name="s"
    )
    assert len(calls) == 3  # only the missing grid points were trained
    assert after.counts() == {"COMPLETE": 5, "FAIL": 1}
    assert sorted(r["p"] for r in after.records if r["state"] == "COMPLETE") == list(DEFAULT_GRID)
    for number, (p, value) in done_before.items():  # finished trials kept, unchanged
        row = next(r for r in after.records if r["trial"] == number)
        assert (row["p"], row["value"], row["state"]) == (p, value, "COMPLETE")
    assert after.best_p == 0.3
    # Running it again finds the study complete and trains nothing.
    calls.clear()
    search_rates(build, train_fn, eval_fn, layers=["dropout1"], storage=storage, study_name="s")
    assert calls == []


def test_loading_a_study_for_another_search_is_refused(tmp_path):
    storage = _sqlite(tmp_path)
    train_fn, eval_fn = _rates_objective_fns()
    build = lambda: dropkit.MLP([4, 8, 2])  # noqa: E731
    search_rates(build, train_fn, eval_fn, grid=[0.1, 0.2], storage=storage, study_name="x")
    with pytest.raises(ValueError, match="another search"):
        search_rates(build, train_fn, eval_fn, grid=[0.3, 0.4], storage=storage, study_name="x")


def test_search_result_names_its_storage_url_with_the_password_hidden(tmp_path):
    # Optuna wraps an RDB storage in a cache without a URL: the result used to say "_CachedStorage".
    storage = _sqlite(tmp_path)
    train_fn, eval_fn = _rates_objective_fns()
    found = search_rates(_build, train_fn, eval_fn, grid=[0.2], storage=storage, study_name="s")
    assert found.storage == storage
    assert load_search(storage, "s").storage == storage
    assert search_rates(_build, train_fn, eval_fn, grid=[0.2], storage=":memory:").storage == (
        "InMemoryStorage"
    )
    from dropkit.tune.storage import mask_url

    assert mask_url("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"


def test_too_many_grid_trials_are_refused_before_a_storage_file_is_created(tmp_path):
    train_fn, eval_fn = _rates_objective_fns()
    path = tmp_path / "never.db"
    with pytest.raises(ValueError, match="too many"):
        RateSearch(_build, train_fn, eval_fn, grid=[0.1]).run(2, storage=path)
    assert not path.exists()


def test_only_a_grid_search_runs_out_of_points(tmp_path):
    train_fn, eval_fn = _rates_objective_fns()
    grid = RateSearch(_build, train_fn, eval_fn, grid=[0.1, 0.2])
    storage = resolve_storage(":memory:")
    study = grid.create_study(storage)
    assert not grid.is_exhausted(study)
    grid.run(storage=storage)
    assert grid.is_exhausted(study)
    per_layer = RateSearch(_build, train_fn, eval_fn, mode="per_layer")
    assert not per_layer.is_exhausted(per_layer.create_study(":memory:"))


def test_builtin_search_is_stored_and_a_worker_rebuilds_it_from_the_study(tmp_path):
    from dropkit.worker import run_worker

    storage = _sqlite(tmp_path)
    search = builtin_search("digits", hidden=[8], epochs=1, grid=[0.1, 0.3], layers=["dropout1"])
    search.create_study(storage, "digits-grid")
    ran = run_worker(storage, "digits-grid")  # no objective: rebuilt from the study's attributes
    assert ran == 2
    result = load_search(storage, "digits-grid")
    assert result.counts() == {"COMPLETE": 2} and sorted(result.best_rates) == ["dropout1"]


def test_worker_cli_reports_a_missing_study_with_exit_code_2(tmp_path, capsys):
    from dropkit.worker import main

    resolve_storage(tmp_path / "w.db")  # an empty Optuna storage
    code = main(["--storage", str(tmp_path / "w.db"), "--study", "nope"])
    assert code == 2
    assert "no study 'nope'" in capsys.readouterr().err


def _worker_error(capsys, *argv: str) -> str:
    from dropkit.worker import main

    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dropkit tune-worker: error: "), captured.err
    return lines[0]


def test_worker_without_create_never_creates_a_storage_file_or_a_study(tmp_path, capsys):
    target = "tests._tune_targets:QUICK_GRID"
    missing = tmp_path / "typo.db"
    line = _worker_error(capsys, "--storage", str(missing), "--study", "s", "--objective", target)
    assert f"storage file {str(missing)!r} does not exist" in line and "--create" in line
    assert os.listdir(tmp_path) == []
    resolve_storage(tmp_path / "w.db")
    line = _worker_error(
        capsys, "--storage", str(tmp_path / "w.db"), "--study", "s", "--objective", target
    )
    assert "no study 's'" in line and "--create" in line
    assert optuna.get_all_study_names(resolve_storage(tmp_path / "w.db")) == []
    # Asked to, it creates the file, the study, and runs the study's trials.
    from dropkit.worker import main

    argv = ["--storage", str(tmp_path / "new.db"), "--study", "s", "--objective", target]
    assert main([*argv, "--create"]) == 0
    assert load_search(tmp_path / "new.db", "s").counts() == {"COMPLETE": 2}


def test_worker_adds_no_tables_to_an_unrelated_sqlite_file(tmp_path, capsys):
    import sqlite3

    path = tmp_path / "notes.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
    before = path.read_bytes()
    line = _worker_error(capsys, "--storage", str(path), "--study", "s")
    assert "is not an Optuna storage (its tables are ['notes'])" in line and "--create" in line
    assert path.read_bytes() == before


@pytest.mark.parametrize("damage", ["garbage", "truncated", "schema"])
def test_worker_reports_a_damaged_sqlite_study_file_in_one_line(tmp_path, capsys, damage):
    import sqlite3

    path = tmp_path / "s.db"
    from tests._tune_targets import QUICK_GRID

    QUICK_GRID.create_study(path, "s")
    if damage == "garbage":
        path.write_bytes(os.urandom(8192))
    elif damage == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        with sqlite3.connect(path) as db:
            db.execute("DROP TABLE trial_values")
            db.execute("CREATE TABLE trial_values (x INTEGER)")
    line = _worker_error(capsys, "--storage", str(path), "--study", "s")
    expected = {
        "garbage": "is not a sound SQLite database (file is not a database)",
        "truncated": "is not a sound SQLite database",
        "schema": "is a damaged Optuna storage: table 'trial_values' lacks columns",
    }[damage]
    assert expected in line


def test_worker_reports_a_storage_failing_mid_run_in_one_line(monkeypatch, capsys):
    import sqlalchemy.exc

    from dropkit import worker

    def failing(*args, **kwargs):
        cause = sqlalchemy.exc.DatabaseError("SELECT", {}, Exception("disk image is malformed"))
        raise optuna.exceptions.StorageInternalError(
            "An exception is raised during the commit."
        ) from cause

    monkeypatch.setattr(worker, "run_worker", failing)
    line = _worker_error(capsys, "--storage", "x.db", "--study", "s")
    assert "storage 'x.db' failed: DatabaseError:" in line and "disk image is malformed" in line


def test_bare_postgresql_url_uses_the_installed_driver():
    from dropkit.tune.storage import _with_installed_driver

    url = "postgresql://u:pw@host:5/db"
    only = lambda *names: set(names).__contains__  # noqa: E731
    assert (
        _with_installed_driver(url, "", only("psycopg2")) == "postgresql+psycopg2://u:pw@host:5/db"
    )
    assert (
        _with_installed_driver(url, "", only("psycopg", "psycopg2")) == url
    )  # SQLAlchemy 2.1's own
    assert _with_installed_driver("mysql://u@h/db", "", only("pymysql")) == "mysql+pymysql://u@h/db"
    named = "postgresql+psycopg2://u@h/db"
    assert _with_installed_driver(named, "", only("psycopg2")) == named
    with pytest.raises(
        ConnectionError, match=r"driver 'psycopg2' \(module psycopg2\) is not installed"
    ):
        _with_installed_driver(named, "shown", only("psycopg"))


def test_postgresql_url_without_driver_connects_with_psycopg2_when_that_is_installed():
    import psycopg2  # noqa: F401  # the dev extra installs it: a missing one fails, never skips

    # Nothing listens on port 1: the error must be about the connection, not a missing driver.
    with pytest.raises(ConnectionError) as info:
        resolve_storage("postgresql://u@127.0.0.1:1/db")
    message = str(info.value)
    assert "driver is not installed" not in message and "OperationalError" in message
    assert "\n" not in message


def test_mysql_url_without_a_driver_names_mysql_packages(monkeypatch):
    import dropkit.tune.storage

    real = dropkit.tune.storage._importable
    mysql = ("MySQLdb", "pymysql", "mysql.connector")
    monkeypatch.setattr(dropkit.tune.storage, "_importable", lambda m: m not in mysql and real(m))
    with pytest.raises(ConnectionError) as info:
        resolve_storage("mysql://u@127.0.0.1:1/db")
    message = str(info.value)
    assert "no mysql driver is installed" in message
    assert "PyMySQL (for mysql+pymysql://)" in message and "psycopg" not in message


# ---------------------------------------------------------------- bad input -------------------


def _build():
    return dropkit.MLP([4, 8, 2], p=0.0)


def test_empty_grid_is_refused_before_any_trial():
    train_fn, eval_fn = _rates_objective_fns()
    with pytest.raises(ValueError, match="empty grid"):
        RateSearch(_build, train_fn, eval_fn, grid=[])


def test_rate_outside_unit_interval_is_refused():
    train_fn, eval_fn = _rates_objective_fns()
    with pytest.raises(ValueError, match=r"grid\[1\].*\[0, 1\].*1.5"):
        RateSearch(_build, train_fn, eval_fn, grid=[0.1, 1.5])
    with pytest.raises(ValueError, match="high"):
        RateSearch(_build, train_fn, eval_fn, mode="per_layer", high=-0.1)
    with pytest.raises(ValueError, match=r"grid\[1\].*-0.2"):
        sensitivity(_build, train_fn, eval_fn, rates=[0.1, -0.2])


def test_a_failing_train_function_marks_the_trial_failed_and_leaves_the_study_usable(tmp_path):
    storage = _sqlite(tmp_path)
    train_fn, eval_fn = _rates_objective_fns()

    def broken(model, report):
        if model.dropout1.p == 0.3:
            raise RuntimeError("out of memory at p=0.3")
        train_fn(model, report)

    kwargs = {"layers": ["dropout1"], "storage": storage, "study_name": "f"}
    # Default: the error is raised after the trial is recorded FAIL with its message.
    with pytest.raises(RuntimeError, match="out of memory"):
        search_rates(_build, broken, eval_fn, **kwargs)
    result = load_search(storage, "f")
    failed = [r for r in result.records if r["state"] == "FAIL"]
    assert len(failed) == 1 and failed[0]["p"] == 0.3
    assert failed[0]["error"] == "RuntimeError: out of memory at p=0.3"
    # With catch=, failing trials are recorded and the search goes on.
    result = search_rates(_build, broken, eval_fn, catch=(RuntimeError,), **kwargs)
    counts = result.counts()
    assert counts["COMPLETE"] == 4 and counts["FAIL"] >= 2
    assert result.best_p in (0.2, 0.4)
    # The study is not corrupted: a fixed train function completes it.
    result = search_rates(_build, train_fn, eval_fn, **kwargs)
    assert result.counts()["COMPLETE"] == 5 and result.best_p == 0.3


def test_unreachable_storage_url_is_a_clear_error_naming_the_url():
    url = "postgresql+psycopg2://dropkit:secret@127.0.0.1:9/nowhere"
    with pytest.raises(ConnectionError) as info:
        resolve_storage(url)
    message = str(info.value)
    assert "postgresql+psycopg2://dropkit:***@127.0.0.1:9/nowhere" in message
    assert "secret" not in message and "Allowed" in message
    with pytest.raises(ValueError, match="scheme 'redis'.*allowed"):
        resolve_storage("redis://localhost:6379/0")
    with pytest.raises(ValueError, match="does not exist"):
        resolve_storage("/no/such/folder/study.db")


def test_bad_search_arguments_are_refused():
    train_fn, eval_fn = _rates_objective_fns()
    with pytest.raises(ValueError, match="mode"):
        RateSearch(_build, train_fn, eval_fn, mode="random")
    with pytest.raises(ValueError, match="layers must name"):
        RateSearch(_build, train_fn, eval_fn, layers=["fc1"])
    with pytest.raises(ValueError, match="no dropout module"):
        RateSearch(lambda: nn.Linear(3, 3), train_fn, eval_fn)
    with pytest.raises(ValueError, match="train= and val="):
        RateSearch(_build)
    with pytest.raises(ValueError, match="too many"):
        RateSearch(_build, train_fn, eval_fn).create_study(":memory:", n_trials=6)


_DATA = (torch.zeros(8, 4), torch.zeros(8, dtype=torch.long))  # never trained on: checks only


@pytest.mark.parametrize(
    "settings, error, message",
    [
        ({"epochs": 0}, ValueError, "epochs must be an integer >= 1, got 0"),
        ({"epochs": 2.5}, TypeError, "epochs must be an integer >= 1, got 2.5 of type float"),
        ({"lr": 0}, ValueError, "lr must be a number > 0, got 0.0"),
        ({"lr": "fast"}, TypeError, "lr must be a real number, got 'fast' of type str"),
        ({"lr": math.inf}, ValueError, "lr must be a finite number, got inf"),
        ({"batch_size": -4}, ValueError, "batch_size must be an integer >= 1, got -4"),
        ({"weight_decay": -1e-4}, ValueError, "weight_decay must be a number >= 0, got -0.0001"),
        (
            {"task": "clf"},
            ValueError,
            "task must be one of 'classification', 'regression', got 'clf'",
        ),
        ({"metric": "acc"}, ValueError, "metric must be one of 'val_loss', 'val_acc' .*built-in"),
        ({"metric": "val_acc", "task": "regression"}, ValueError, "needs task='classification'"),
        ({"build_model": "mlp"}, TypeError, "build_model must be a callable"),
        ({"train_fn": 3, "eval_fn": len}, TypeError, "train_fn must be callable, got 3"),
        ({"eval_fn": len}, ValueError, "eval_fn was given without train_fn"),
        (
            {"train_fn": len, "eval_fn": len, "metric": None},
            TypeError,
            "metric must be a non-empty",
        ),
    ],
)
def test_training_settings_are_checked_once_with_their_name_value_and_what_is_allowed(
    settings, error, message
):
    from dropkit.tune.trainer import TrainSpec

    kwargs = {"build_model": _build, "train": _DATA, "val": _DATA, **settings}
    with pytest.raises(error, match=message):
        TrainSpec(**kwargs)
    # The public entry points build the same spec from the same keywords, before any training.
    for entry in (RateSearch, ablation, sensitivity):
        with pytest.raises(error, match=message):
            entry(**kwargs)


def test_train_spec_is_frozen_and_normalises_its_numbers():
    import dataclasses

    from dropkit.tune.trainer import TrainSpec

    spec = TrainSpec(_build, train=_DATA, val=_DATA, lr=1, weight_decay=0)
    assert spec.lr == 1.0 and isinstance(spec.lr, float) and isinstance(spec.weight_decay, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.lr = 0.5
    search = RateSearch(_build, train=_DATA, val=_DATA, grid=[0.1], epochs=1)
    assert isinstance(search.trainer, TrainSpec) and search.trainer.epochs == 1


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda: RateSearch(_build, train=_DATA, val=_DATA, seed=-1),
            ValueError,
            r"seed must be an int in \[0, 4294967295\].*-1",
        ),
        (
            lambda: RateSearch(_build, train=_DATA, val=_DATA, mode="random"),
            ValueError,
            "mode must be one of 'grid', 'per_layer', got 'random'",
        ),
        (
            lambda: RateSearch(_build, train=_DATA, val=_DATA, direction="up"),
            ValueError,
            "direction must be one of 'minimize', 'maximize', got 'up'",
        ),
        (
            lambda: RateSearch(_build, train=_DATA, val=_DATA, layers="dropout1"),
            TypeError,
            "layers must be a list",
        ),
        (
            lambda: ablation(_build, train=_DATA, val=_DATA, seeds=[0, True]),
            TypeError,
            r"seeds\[1\] must be an int",
        ),
        (
            lambda: ablation(_build, train=_DATA, val=_DATA, seeds=[-3]),
            ValueError,
            r"seeds\[0\] must be an int in \[0, 4294967295\]",
        ),
        (
            lambda: ablation(_build, train=_DATA, val=_DATA, seeds=7),
            TypeError,
            "seeds must be a sequence",
        ),
        (
            lambda: ablation(_build, train=_DATA, val=_DATA, one_at_a_time="all"),
            ValueError,
            "one_at_a_time must be one of 'without', 'only', 'both', got 'all'",
        ),
        (
            lambda: sensitivity(_build, train=_DATA, val=_DATA, layers=["fc"]),
            ValueError,
            "layers must name dropout modules",
        ),
        (lambda: OverfitMonitor(stop=1), TypeError, "stop must be a bool"),
        (
            lambda: OverfitMonitor(metric="f1"),
            ValueError,
            "metric must be one of 'accuracy', 'loss', got 'f1'",
        ),
    ],
)
def test_search_and_sweep_arguments_are_refused_with_name_value_and_what_is_allowed(
    call, error, message
):
    with pytest.raises(error, match=message):
        call()


# ---------------------------------------------------------------- ablation / sensitivity ------


def test_ablation_compares_with_and_without_dropout_and_one_layer_at_a_time(mnist_small, tmp_path):
    train, val = mnist_small
    rows = ablation(
        lambda: dropkit.MLP([40, 64, 64, 10], p=[0.1, 0.5, 0.5]),
        train=train,
        val=val,
        seeds=[0, 1],
        one_at_a_time="both",
        epochs=3,
        lr=3e-3,
    )
    configs = [r["config"] for r in rows[::2]]
    assert configs == [
        "all",
        "none",
        "without:input_dropout",
        "without:dropout1",
        "without:dropout2",
        "only:input_dropout",
        "only:dropout1",
        "only:dropout2",
    ]
    by = {(r["config"], r["seed"]): r for r in rows}
    assert by[("none", 0)]["rates"] == {"input_dropout": 0.0, "dropout1": 0.0, "dropout2": 0.0}
    assert by[("without:dropout1", 0)]["rates"] == {
        "input_dropout": 0.1,
        "dropout1": 0.0,
        "dropout2": 0.5,
    }
    assert by[("only:dropout2", 1)]["rates"] == {
        "input_dropout": 0.0,
        "dropout1": 0.0,
        "dropout2": 0.5,
    }
    # Same seed, same initial weights and batches: only dropout differs, and it changes the result.
    assert by[("all", 0)]["val_loss"] != by[("none", 0)]["val_loss"]
    # Dropout regularises: the training loss (eval mode) is higher with it than without.
    assert by[("all", 0)]["train_loss"] > by[("none", 0)]["train_loss"]
    summary = summarize(rows, by="config", metric="val_loss")
    assert [s["n"] for s in summary] == [2] * 8
    out = tmp_path / "ablation.png"
    plot_ablation(rows, path=out)
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_ablation_with_user_functions_and_its_bad_input():
    train_fn, eval_fn = _rates_objective_fns(target=0.0)
    rows = ablation(lambda: dropkit.MLP([4, 8, 2], p=[0.2, 0.4]), train_fn, eval_fn)
    by = {r["config"]: r["val_loss"] for r in rows}
    assert by["none"] == 0.0 and math.isclose(by["all"], 0.2**2 + 0.4**2)
    assert math.isclose(by["without:dropout1"], 0.2**2)
    with pytest.raises(ValueError, match="nothing to ablate"):
        ablation(lambda: dropkit.MLP([4, 8, 2], p=0.0), train_fn, eval_fn)
    with pytest.raises(ValueError, match="at least one seed"):
        ablation(lambda: dropkit.MLP([4, 8, 2], p=0.5), train_fn, eval_fn, seeds=[])


def test_sensitivity_gives_metric_per_rate_with_spread_over_seeds(mnist_small, tmp_path):
    train, val = mnist_small
    rows = sensitivity(
        lambda: dropkit.MLP([40, 64, 10], p=0.0),
        train=train,
        val=val,
        rates=[0.0, 0.3, 0.6],
        seeds=[0, 1, 2],
        layers=["dropout1"],
        epochs=2,
        lr=3e-3,
    )
    assert len(rows) == 9 and {r["p"] for r in rows} == {0.0, 0.3, 0.6}
    assert all(r["rates"] == {"input_dropout": 0.0, "dropout1": r["p"]} for r in rows)
    summary = summarize(rows, by="p", metric="val_loss")
    for s in summary:
        values = [r["val_loss"] for r in rows if r["p"] == s["p"]]
        assert s["n"] == 3 and math.isclose(s["mean"], sum(values) / 3)
        assert s["std"] > 0  # different seeds, different results: the error bars are real
        assert math.isclose(s["sem"], s["std"] / math.sqrt(3))
    path = tmp_path / "sens.png"
    plot_sensitivity(rows, path=path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="empty grid"):
        sensitivity(lambda: dropkit.MLP([40, 64, 10]), train=train, val=val, rates=[])


def test_plots_draw_into_a_given_axes_or_write_a_png(tmp_path):
    from matplotlib.figure import Figure

    monitor = OverfitMonitor()
    for a, b in [(0.5, 0.5), (0.9, 0.6)]:
        monitor.update(train_loss=1 - a, val_loss=1 - b, train_acc=a, val_acc=b)
    fig = Figure()
    ax = fig.add_subplot()
    assert monitor.plot(ax=ax) is ax and len(ax.lines) >= 2
    plot_curves(monitor.records, path=tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC
    train_fn, eval_fn = _rates_objective_fns()
    result = search_rates(_build, train_fn, eval_fn, layers=["dropout1"], storage=":memory:")
    plot_search(result, path=tmp_path / "search.png")
    assert (tmp_path / "search.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="at least one epoch"):
        plot_curves([])


def test_optuna_logging_is_left_as_the_user_set_it():
    before = optuna.logging.get_verbosity()
    train_fn, eval_fn = _rates_objective_fns()
    search_rates(_build, train_fn, eval_fn, grid=[0.1], storage=":memory:")
    assert optuna.logging.get_verbosity() == before


def test_evaluate_matches_search_records(mnist_small):
    train, val = mnist_small
    search = RateSearch(
        lambda: dropkit.MLP([40, 32, 10], p=0.0), train=train, val=val, grid=[0.2], epochs=2
    )
    row = search.run(storage=":memory:").records[0]
    model = search.trainer.model({p: 0.2 for p in search.layers}, 0)
    fit(model, train, val, epochs=2, seed=0)
    assert math.isclose(evaluate(model, val)[0], row["val_loss"], rel_tol=1e-6)


@pytest.mark.parametrize(
    "settings, error, message",
    [
        ({"rates": []}, ValueError, "rates must hold at least one dropout rate"),
        ({"rates": [0.1, 0.1]}, ValueError, "rates must not repeat a rate"),
        ({"rates": [0.0]}, ValueError, r"dropout rates must be in \(0, 1\), got 0.0 at position 0"),
        ({"taus": [1.0, -2.0]}, ValueError, "precisions τ must be positive finite numbers"),
        ({"seed": -1}, ValueError, r"seed must be an int in \[0, 4294967295\]"),
        ({"T": 0}, ValueError, "T must be an integer >= 1"),
    ],
)
def test_p_tau_search_arguments_are_refused_before_any_training(settings, error, message):
    from dropkit.tune import search_p_tau

    data = (torch.zeros(6, 2), torch.zeros(6))
    kwargs = {"rates": [0.1], "taus": [1.0], "epochs": 1, "T": 2, **settings}
    with pytest.raises(error, match=message):
        search_p_tau(data, data, **kwargs)
