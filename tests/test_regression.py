"""Regression with MC dropout: the batched trainer, the (p, τ) search, the protocol and its CLI."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from dropkit import cli, regression, tune
from dropkit import data as D


def _linear_problem(n: int, d: int = 6, noise: float = 0.5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    y = x @ (w / w.norm()) + noise * torch.randn(n, generator=g)
    return x, y


# --------------------------------------------------------------------------------------------
# The batched trainer
# --------------------------------------------------------------------------------------------


def test_each_member_trains_as_if_it_were_alone() -> None:
    x, y = _linear_problem(200)
    rates, decays = [0.01, 0.1, 0.3], [1e-4, 1e-3, 0.0]
    together = regression.train_dropout_ensemble(x, y, rates, decays, hidden=[8], epochs=5, seed=3)
    for i in range(3):
        (alone,) = regression.train_dropout_ensemble(
            x, y, [rates[i]], [decays[i]], hidden=[8], epochs=5, seed=3
        )
        for a, b in zip(together[i].parameters(), alone.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_members_share_their_start_and_differ_by_p_and_weight_decay() -> None:
    x, y = _linear_problem(200)
    nets = regression.train_dropout_ensemble(x, y, [0.05, 0.05], [0.0, 0.0], hidden=[8], epochs=3)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.equal(a, b)
    nets = regression.train_dropout_ensemble(x, y, [0.05, 0.05], [0.0, 1.0], hidden=[8], epochs=3)
    assert nets[1].fc1.weight.norm() < nets[0].fc1.weight.norm()


def test_the_trained_networks_are_dropkit_mlps_that_fit_the_data() -> None:
    x, y = _linear_problem(600, noise=0.1)
    (net,) = regression.train_dropout_ensemble(x, y, [0.01], [1e-6], hidden=[32], epochs=60)
    assert net.rates == [0.01, 0.01] and not net.training
    with torch.no_grad():
        residual = net(x)[:, 0] - y
    assert residual.square().mean().sqrt() < 0.2  # noise 0.1; y has std ≈ 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rates": [1.0], "weight_decays": [0.0]}, "rates\\[0\\]"),
        ({"rates": [0.1], "weight_decays": [-1.0]}, "weight_decays\\[0\\]"),
        ({"rates": [0.1, 0.2], "weight_decays": [0.0]}, "equal length"),
        ({"y": torch.tensor([0.0, float("nan")] * 5)}, "NaN"),
    ],
)
def test_the_trainer_refuses_bad_arguments(kwargs, match) -> None:
    args = {"x": torch.zeros(10, 2), "y": torch.zeros(10), "rates": [0.1], "weight_decays": [0.0]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        regression.train_dropout_ensemble(**args, epochs=1)


# --------------------------------------------------------------------------------------------
# The (p, τ) search
# --------------------------------------------------------------------------------------------


def test_search_chooses_the_known_p_and_tau() -> None:
    # y = x·w/‖w‖ + 0.5 ε: the noise precision is τ* = 4. Input dropout at p = 0.5 adds a
    # prediction variance of order ‖w‖² = 1, four times the noise, so p = 0.01 is right.
    x, y = _linear_problem(1500, noise=0.5)
    taus = [4.0 * f for f in (1 / 16, 1 / 4, 1, 4, 16)]
    found = tune.search_p_tau(
        (x[:1000], y[:1000]),
        (x[1000:], y[1000:]),
        rates=[0.01, 0.5],
        taus=taus,
        hidden=[32],
        epochs=30,
        T=100,
    )
    assert (found.best["p"], found.best["tau"]) == (0.01, 4.0)
    assert (found.best_weight_scaling["p"], found.best_weight_scaling["tau"]) == (0.01, 4.0)
    assert len(found.records) == 10 and found.tau0 is None
    # The weight decay of each grid point is the paper's λ = l² (1 − p) / (2 N τ).
    r = found.records[3]
    assert math.isclose(r["weight_decay"], 1e-4 * (1 - r["p"]) / (2 * 1000 * r["tau"]))


def test_the_derived_tau_grid_centres_on_the_inverse_noise_variance() -> None:
    x, y = _linear_problem(1500, noise=0.5)
    found = tune.search_p_tau(
        (x[:1000], y[:1000]), (x[1000:], y[1000:]), rates=[0.01], hidden=[32], epochs=30, T=20
    )
    # τ₀ = 1 / residual variance on 500 validation rows: 4 within a few binomial-style errors.
    assert 4.0 / 1.5 < found.tau0 < 4.0 * 1.5
    np.testing.assert_allclose(found.taus, [found.tau0 * f for f in regression.TAU_FACTORS])
    assert sorted({r["tau_factor"] for r in found.records}) == list(regression.TAU_FACTORS)


# --------------------------------------------------------------------------------------------
# Task detection and label checks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels, task, words",
    [
        (["cat", "dog", "cat"], "classification", "text"),
        (["0.5", "1.25", "2"], "regression", "non-integer"),
        ([str(i % 3) for i in range(30)], "classification", "3 distinct integer values"),
    ],
)
def test_detect_task_says_which_rule_decided(labels, task, words) -> None:
    found, rule = D.detect_task(labels)
    assert found == task and words in rule


def test_many_distinct_integers_are_ambiguous() -> None:
    labels = [str(i) for i in range(45)]
    with pytest.raises(ValueError, match="--task regression or --task classification"):
        D.detect_task(labels, label="y")


@pytest.mark.parametrize(
    "labels, match",
    [
        (["1", "nan", "2"], "row 2: missing value 'nan'"),
        (["1", "", "2"], "row 2: missing value"),
        (["1", "inf", "2"], "row 2: infinite value 'inf'"),
        (["1", "high", "2"], "'high' is not a number"),
        (["3.5", "3.5", "3.5"], "constant \\(every row is 3.5\\)"),
    ],
)
def test_regression_target_refuses_bad_labels(labels, match) -> None:
    with pytest.raises(ValueError, match=match):
        D.regression_target(labels, label="y")


def test_a_continuous_label_is_refused_as_classes_with_the_rule_and_the_way_out(tmp_path) -> None:
    rows = ["a,y"] + [f"{i},{0.37 * i:.2f}" for i in range(45)]
    (tmp_path / "t.csv").write_text("\n".join(rows))
    with pytest.raises(ValueError) as err:
        D.load_table(tmp_path / "t.csv", label="y")
    text = str(err.value)
    assert "non-integer numeric labels are a continuous target" in text
    assert "--task regression" in text


# --------------------------------------------------------------------------------------------
# The CLI: bad input is one line, exit 2, nothing written
# --------------------------------------------------------------------------------------------


def _csv(path, labels, features: int = 3) -> str:
    rng = np.random.default_rng(0)
    lines = [",".join([f"f{i}" for i in range(features)] + ["y"])]
    for label in labels:
        lines.append(",".join([f"{v:.4f}" for v in rng.normal(size=features)] + [label]))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _continuous(n: int) -> list[str]:
    return [f"{v:.3f}" for v in np.random.default_rng(1).normal(size=n)]


def _run_bad(tmp_path, capsys, *args: str) -> str:
    out = tmp_path / "report"
    before = set(os.listdir(tmp_path))
    status = cli.main(["study", "--no-progress", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert status == cli.EXIT_BAD_INPUT, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dropkit study: error: ")
    assert not out.exists()
    assert set(os.listdir(tmp_path)) == before, "a bad input must write nothing"
    return lines[0]


@pytest.mark.parametrize(
    "bad, needle",
    [("nan", "missing value 'nan'"), ("", "missing value"), ("inf", "infinite value 'inf'")],
)
def test_a_nan_or_inf_label_is_one_line(tmp_path, capsys, bad, needle) -> None:
    labels = _continuous(60)
    labels[17] = bad
    path = _csv(tmp_path / "t.csv", labels)
    line = _run_bad(tmp_path, capsys, "--data", path, "--label", "y", "--task", "regression")
    assert needle in line and "row 18" in line and "'y'" in line


def test_a_constant_label_is_one_line(tmp_path, capsys) -> None:
    path = _csv(tmp_path / "t.csv", ["2.5"] * 60)
    line = _run_bad(tmp_path, capsys, "--data", path, "--label", "y", "--task", "regression")
    assert "constant" in line and "nothing to regress" in line


def test_too_few_rows_for_the_splits_is_one_line(tmp_path, capsys) -> None:
    path = _csv(tmp_path / "t.csv", _continuous(12))
    line = _run_bad(tmp_path, capsys, "--data", path, "--label", "y")
    assert "12 rows, too few" in line and f"at least {regression.MIN_ROWS}" in line


def test_more_splits_than_distinct_test_sets_is_one_line(tmp_path, capsys) -> None:
    path = _csv(tmp_path / "t.csv", _continuous(20))  # C(20, 2) = 190 test sets
    line = _run_bad(tmp_path, capsys, "--data", path, "--label", "y", "--splits", "191")
    assert "only 190 different test sets" in line and "--splits 191" in line


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--grid", "0,0.1"], "--grid: dropout rates must be in (0, 1), got 0.0 at position 0"),
        (["--grid", "0.1,1.5"], "got 1.5 at position 1"),
        (["--tau", "1,-2"], "--tau: precisions τ must be positive finite numbers, got -2.0"),
        (["--tau", "inf"], "got inf at position 0"),
        (["--splits", "1"], "--splits must be at least 2"),
        (["--mc-samples", "0"], "--mc-samples"),
        (["--trials", "3"], "--trials applies to classification studies only"),
    ],
)
def test_a_bad_regression_flag_is_one_line(tmp_path, capsys, flags, needle) -> None:
    line = _run_bad(tmp_path, capsys, "--data", "diabetes", *flags)
    assert needle in line


def test_a_continuous_label_with_task_classification_names_task_regression(tmp_path, capsys):
    path = _csv(tmp_path / "t.csv", _continuous(60))
    line = _run_bad(tmp_path, capsys, "--data", path, "--label", "y", "--task", "classification")
    assert "--task regression" in line and "rule" in line and "non-integer" in line


def test_text_labels_with_task_regression_are_one_line(tmp_path, capsys) -> None:
    path = _csv(tmp_path / "t.csv", ["low", "high"] * 30)
    line = _run_bad(tmp_path, capsys, "--data", path, "--label", "y", "--task", "regression")
    assert "'low' is not a number" in line


def test_ambiguous_integer_labels_ask_for_the_task(tmp_path, capsys) -> None:
    path = _csv(tmp_path / "t.csv", [str(i) for i in range(60)])
    line = _run_bad(tmp_path, capsys, "--data", path, "--label", "y")
    assert "--task regression or --task classification" in line


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--task", "regression"], "--task regression needs --data"),
        (["--data", "diabetes", "--task", "classification"], "use --task regression"),
        (["--splits", "3"], "--splits applies to regression studies only"),
    ],
)
def test_task_conflicts_are_one_line(tmp_path, capsys, flags, needle) -> None:
    assert needle in _run_bad(tmp_path, capsys, *flags)


# --------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------


def _tiny_flags() -> list[str]:
    return ["--splits", "2", "--epochs", "3", "--mc-samples", "8", "--grid", "0.01,0.1"]


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("regression")
    path = folder / "t.csv"
    rng = np.random.default_rng(5)
    x = rng.normal(size=(80, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=80)
    lines = ["a,b,c,target"] + [
        ",".join(f"{v:.5f}" for v in (*row, t)) for row, t in zip(x, y, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    out = folder / "report"
    status = cli.main(
        ["study", "--no-progress", "--data", str(path), "--label", "target", "--out", str(out)]
        + _tiny_flags()
    )
    assert status == 0
    return out, str(path)


def test_a_continuous_label_runs_the_regression_study(tiny_report, capsys) -> None:
    out, _ = tiny_report
    numbers = json.loads((out / "report.json").read_text())
    assert numbers["task"] == "regression" and "non-integer" in numbers["task_rule"]
    for model in ("mc_dropout", "weight_scaling", "weight_scaling_same_network"):
        m = numbers["models"][model]
        assert m["test_rmse"] > 0 and math.isfinite(m["test_log_likelihood"])
        assert len(m["test_rmse_per_split"]) == 2 and m["test_rmse_se"] >= 0
        assert set(m["coverage"]) == {"0.5", "0.9", "0.95"}
    assert len(numbers["splits"]) == 2
    assert {r["p"] for r in numbers["splits"][0]["validation"]} == {0.01, 0.1}
    assert sorted(os.listdir(out / "figures")) == [
        "calibration.png",
        "errorbars.png",
        "grid.png",
        "predicted.png",
    ]
    page = (out / "index.html").read_text()
    assert "dropkit study (regression)" in page and "Per split" in page


def test_the_same_seed_gives_the_same_numbers(tiny_report, tmp_path) -> None:
    out, path = tiny_report
    again = tmp_path / "again"
    args = ["study", "--no-progress", "--data", path, "--label", "target", "--out", str(again)]
    assert cli.main(args + _tiny_flags()) == 0
    first = json.loads((out / "report.json").read_text())
    second = json.loads((again / "report.json").read_text())
    first.pop("timing"), second.pop("timing")
    assert first == second


def test_test_log_likelihood_is_in_the_targets_units() -> None:
    # Scaling the target by 10 moves every log-likelihood by −log 10 and the RMSE by ×10.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 3))
    y = x[:, 0] + 0.5 * rng.normal(size=60)
    cfg = regression.RegressionConfig(
        splits=2, epochs=3, mc_samples=8, rates=(0.05,), taus=(1.0, 4.0), progress=False
    )
    base = regression.run_regression_study(cfg, dataset=regression.RegressionData("a", x, y))
    scaled = regression.run_regression_study(
        cfg, dataset=regression.RegressionData("b", x, 10 * y + 3)
    )
    for model in regression.MODELS:
        a, b = base.numbers["models"][model], scaled.numbers["models"][model]
        assert math.isclose(b["test_rmse"], 10 * a["test_rmse"], rel_tol=1e-4)
        assert math.isclose(
            b["test_log_likelihood"], a["test_log_likelihood"] - math.log(10), abs_tol=1e-4
        )


@pytest.mark.slow
def test_quick_diabetes_study_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "report"
    assert (
        cli.main(["study", "--no-progress", "--quick", "--data", "diabetes", "--out", str(out)])
        == 0
    )
    summary = capsys.readouterr().out
    assert "dropkit study (regression): diabetes, 442 rows" in summary
    numbers = json.loads((out / "report.json").read_text())
    assert numbers["config"]["splits"] == 3 and numbers["config"]["epochs"] == 40
    mc = numbers["models"]["mc_dropout"]
    # Diabetes: the target's std is 77; any fit that learnt something beats predicting the mean.
    assert mc["test_rmse"] < 65
    assert -6.0 < mc["test_log_likelihood"] < -5.0
    assert 0.8 < mc["coverage"]["0.95"] <= 1.0
