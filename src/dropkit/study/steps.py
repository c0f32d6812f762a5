"""The study's steps, each a function of what it reads that returns what it found.

Every step reads one :class:`StudyInputs` (the resolved settings, the data and its split, the
model's layout, the search storage) and the earlier steps' outputs it needs, and returns its own
part of the report's numbers; :func:`dropkit.study.run_study` calls them in order.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from dropkit import data as _data
from dropkit import tune
from dropkit.models import MLP
from dropkit.study.config import PAPER_MLP_TEST_ACC, StudyConfig
from dropkit.train import History, fit

# --------------------------------------------------------------------------------------------
# What every step reads
# --------------------------------------------------------------------------------------------


@dataclass
class StudyInputs:
    """The resolved settings, the data split into fit and validation parts, and the model's layout.

    ``all_layers`` are the MLP's dropout modules (input and hidden); ``hidden_layers`` the ones the
    one-rate search sets. ``seeds`` are the sensitivity analysis's seeds, ``cfg.seed`` first.
    """

    cfg: StudyConfig
    ds: _data.Dataset
    fit: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    n_classes: int
    sizes: list[int]
    storage: Any
    all_layers: list[str]
    hidden_layers: list[str]
    seeds: list[int]
    log: TextIO | None = None

    @property
    def direction(self) -> str:
        return "maximize" if self.cfg.metric == "val_acc" else "minimize"

    @property
    def train_kw(self) -> dict[str, Any]:
        return dict(epochs=self.cfg.epochs, lr=self.cfg.lr, batch_size=self.cfg.batch_size)

    @property
    def n_val(self) -> int:
        return int(self.val[0].shape[0])

    def build_model(self) -> nn.Module:
        return MLP(self.sizes, p=0.0)

    def say(self, text: str) -> None:
        if self.log is not None:
            print(text, file=self.log, flush=True)


def prepare(
    cfg: StudyConfig, ds: _data.Dataset, workdir: str | os.PathLike, log: TextIO | None
) -> StudyInputs:
    """Splits the training data into fit and validation parts, lays out the MLP, opens the storage."""
    x_fit, y_fit, x_val, y_val = _data.split_train_val(
        ds.x_train, ds.y_train, cfg.val_fraction, seed=cfg.seed
    )
    n_classes = int(max(ds.n_classes, int(ds.y_train.max()) + 1, int(ds.y_test.max()) + 1))
    sizes = [ds.n_features, *cfg.hidden, n_classes]
    # One SQLite file holds both searches; opened once (creating its tables is the slow part).
    storage = tune.resolve_storage(os.path.abspath(os.path.join(os.fspath(workdir), "search.db")))
    all_layers = list(tune.dropout_layers(MLP(sizes, p=0.0)))
    return StudyInputs(
        cfg=cfg,
        ds=ds,
        fit=(x_fit, y_fit),
        val=(x_val, y_val),
        n_classes=n_classes,
        sizes=sizes,
        storage=storage,
        all_layers=all_layers,
        hidden_layers=[name for name in all_layers if name != "input_dropout"],
        seeds=[cfg.seed + i for i in range(cfg.seeds)],
        log=log,
    )


def describe(s: StudyInputs) -> dict[str, Any]:
    """The report's first numbers: the settings, the data's sizes and the model's layout."""
    cfg, ds = s.cfg, s.ds
    return {
        "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
        "data": {
            "name": ds.name,
            "source": cfg.data or "MNIST-1D, generated locally (mnist1d.make_dataset, seed 42)",
            "n_train": int(ds.x_train.shape[0]),
            "n_fit": int(s.fit[0].shape[0]),
            "n_val": s.n_val,
            "n_test": int(ds.x_test.shape[0]),
            "n_features": ds.n_features,
            "n_classes": s.n_classes,
        },
        "model": {
            "sizes": s.sizes,
            "dropout_layers": s.all_layers,
            "searched_one_rate": s.hidden_layers,
        },
    }


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "run") -> Any:
    """A tqdm bar on stderr for one step (disabled: draws nothing)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=f"{desc:<26}",
        unit=unit,
        disable=not enabled,
        file=sys.stderr,
        leave=True,
        dynamic_ncols=True,
    )


def search_record(result: tune.SearchResult) -> dict[str, Any]:
    """A search's record without run-dependent fields (timings, the temporary storage path)."""
    out = result.as_dict()
    out["storage"] = "search.db"
    out["records"] = [
        {k: v for k, v in r.items() if k not in ("duration_s", "error")} for r in out["records"]
    ]
    return out


def _final_metrics(history: History, model: nn.Module) -> dict:
    train_acc, test_acc = history.train_acc[-1], history.val_acc[-1]
    return {
        "train_loss": history.train_loss[-1],
        "train_acc": train_acc,
        "test_loss": history.val_loss[-1],
        "test_acc": test_acc,
        "gap": train_acc - test_acc,
        "rates": {k: float(m.p) for k, m in tune.dropout_layers(model).items()},
        "curve": [
            {
                "epoch": r["epoch"],
                "train_loss": r["train_loss"],
                "train_acc": r["train_acc"],
                "test_loss": r["val_loss"],
                "test_acc": r["val_acc"],
            }
            for r in history.as_records()
        ],
    }


def one_standard_error_rate(
    summary: Sequence[Mapping[str, Any]], metric: str, n_val: int
) -> tuple[float, float, float]:
    r"""Breiman's one-standard-error rule for a dropout rate: (p_best, p_chosen, standard error).

    p_best has the best mean validation metric over seeds; the chosen p is the *largest* rate
    whose mean is within one standard error of p_best's — the most regularised model that the
    validation data cannot tell apart from the best. The standard error is the seeds' sem at
    p_best and, for accuracy, at least the binomial sqrt(a(1 − a)/n_val) of one validation score.

    Args:
        summary: rows of :func:`dropkit.tune.summarize` by ``"p"`` (``p``, ``mean``, ``sem``, ``n``).
        metric: ``"val_acc"`` (higher is better) or ``"val_loss"`` (lower is better).
        n_val: validation examples.

    Example:
        >>> rows = [{"p": 0.1, "mean": 0.656, "sem": 0.003, "n": 2},
        ...         {"p": 0.2, "mean": 0.646, "sem": 0.007, "n": 2},
        ...         {"p": 0.3, "mean": 0.634, "sem": 0.008, "n": 2}]
        >>> p_best, p_chosen, se = one_standard_error_rate(rows, "val_acc", 800)
        >>> p_best, p_chosen, round(se, 4)
        (0.1, 0.2, 0.0168)
    """
    if metric not in ("val_acc", "val_loss"):
        raise ValueError(f"metric must be 'val_acc' or 'val_loss', got {metric!r}")
    rows = {float(r["p"]): r for r in summary if r.get("mean") is not None}
    if not rows:
        raise ValueError("summary holds no rate with a mean; run the sensitivity analysis first")
    sign = 1.0 if metric == "val_acc" else -1.0
    p_best = max(rows, key=lambda p: (sign * rows[p]["mean"], -p))
    best = rows[p_best]
    noise = float(best.get("sem") or 0.0) if best.get("n", 1) > 1 else 0.0
    if metric == "val_acc":
        acc = float(best["mean"])
        noise = max(noise, math.sqrt(max(acc * (1.0 - acc), 0.0) / max(int(n_val), 1)))
    p_chosen = max(p for p in rows if sign * (best["mean"] - rows[p]["mean"]) <= noise)
    return p_best, p_chosen, noise


# --------------------------------------------------------------------------------------------
# 1. Baseline
# --------------------------------------------------------------------------------------------


def train_baseline(s: StudyInputs) -> dict[str, Any]:
    """Step 1: an MLP without dropout, watched for the train − validation gap passing ε."""
    cfg = s.cfg
    monitor = tune.OverfitMonitor(epsilon=cfg.epsilon)
    torch.manual_seed(cfg.seed)
    model = s.build_model()
    with progress_bar(cfg.epochs, "1/7 baseline (no dropout)", cfg.progress, "epoch") as bar:
        history = fit(
            model, s.fit, s.val, **s.train_kw, seed=cfg.seed, on_epoch=monitor, progress=bar
        )
    last = monitor.records[-1]
    s.say(
        f"baseline: train acc {history.train_acc[-1]:.3f}, val acc {history.val_acc[-1]:.3f}, "
        f"gap flagged at epoch {monitor.flagged_epoch}"
    )
    return {
        "train_acc": history.train_acc[-1],
        "val_acc": history.val_acc[-1],
        "train_loss": history.train_loss[-1],
        "val_loss": history.val_loss[-1],
        "gap": last["gap"],
        "loss_gap": last["loss_gap"],
        "epsilon": cfg.epsilon,
        "overfitting": tune.gap(last["train_acc"], last["val_acc"], cfg.epsilon).overfitting,
        "flagged_epoch": monitor.flagged_epoch,
        "curve": monitor.records,
    }


# --------------------------------------------------------------------------------------------
# 2. One rate on the hidden layers: the seeds' grid
# --------------------------------------------------------------------------------------------


def search_one_rate(s: StudyInputs) -> tune.SearchResult:
    """Step 2: the grid of one rate on the hidden layers, stored as ``one-rate-grid``."""
    cfg = s.cfg
    grid_search = tune.RateSearch(
        s.build_model,
        train=s.fit,
        val=s.val,
        mode="grid",
        grid=cfg.grid,
        layers=s.hidden_layers,
        **s.train_kw,
        metric=cfg.metric,
        direction=s.direction,
        seed=cfg.seed,
    )
    with progress_bar(len(cfg.grid), "2/7 one-rate grid search", cfg.progress) as bar:
        grid = grid_search.run(storage=s.storage, study_name="one-rate-grid", progress=bar)
    s.say(f"grid search: p* = {grid.best_p} ({cfg.metric} {grid.best_value:.4f})")
    return grid


# --------------------------------------------------------------------------------------------
# 3. Sensitivity, and the one rate it chooses
# --------------------------------------------------------------------------------------------


def sensitivity(
    s: StudyInputs, baseline: Mapping[str, Any], grid: tune.SearchResult
) -> dict[str, Any]:
    """Step 3: the metric and the gap against p over seeds: the baseline (p = 0) and the grid's
    runs for the first seed, new runs for the others."""
    cfg = s.cfg
    rows: list[dict[str, Any]] = [
        {
            "p": 0.0,
            "seed": cfg.seed,
            "rates": dict.fromkeys(s.all_layers, 0.0),
            **{k: baseline[k] for k in ("train_acc", "val_acc", "train_loss", "val_loss")},
            "gap": baseline["gap"],
            "loss_gap": baseline["loss_gap"],
        }
    ]
    for r in grid.records:
        if r["state"] == "COMPLETE":
            rows.append(
                {
                    "p": r["p"],
                    "seed": cfg.seed,
                    "rates": r["rates"],
                    **{k: r.get(k) for k in ("train_acc", "val_acc", "train_loss", "val_loss")},
                    "gap": r.get("gap"),
                    "loss_gap": r.get("loss_gap"),
                }
            )
    extra_seeds = s.seeds[1:]
    if extra_seeds:
        rates = (0.0, *cfg.grid)
        total = len(rates) * len(extra_seeds)
        with progress_bar(total, "3/7 sensitivity over seeds", cfg.progress) as bar:
            rows += tune.sensitivity(
                s.build_model,
                train=s.fit,
                val=s.val,
                rates=rates,
                seeds=extra_seeds,
                layers=s.hidden_layers,
                **s.train_kw,
                metric=cfg.metric,
                progress=bar,
            )
    rows.sort(key=lambda r: (r["p"], r["seed"]))
    return {
        "seeds": s.seeds,
        "records": rows,
        "val_acc": tune.summarize(rows, by="p", metric="val_acc"),
        "val_loss": tune.summarize(rows, by="p", metric="val_loss"),
        "gap": tune.summarize(rows, by="p", metric="gap"),
    }


@dataclass
class OneRate:
    """The one rate the sensitivity means choose (Breiman's one-standard-error rule)."""

    p_best: float
    p_one_se: float
    noise: float
    rates: dict[str, float]


def choose_one_rate(s: StudyInputs, sens: Mapping[str, Any]) -> OneRate:
    """The largest grid rate within one standard error of the best mean (every seed)."""
    p_best, p_one_se, noise = one_standard_error_rate(
        [row for row in sens[s.cfg.metric] if row["p"] in s.cfg.grid], s.cfg.metric, s.n_val
    )
    rates = {name: (p_one_se if name in s.hidden_layers else 0.0) for name in s.all_layers}
    s.say(f"one rate: p_best = {p_best}, one-SE p = {p_one_se} (noise {noise:.4f})")
    return OneRate(p_best, p_one_se, noise, rates)


# --------------------------------------------------------------------------------------------
# 4. Per-layer rates, and the rates the study keeps
# --------------------------------------------------------------------------------------------


def search_per_layer(s: StudyInputs, one_rate: OneRate) -> tune.SearchResult:
    """Step 4: one rate per dropout module with TPE, trial 0 the one-rate choice."""
    cfg = s.cfg
    per_layer_search = tune.RateSearch(
        s.build_model,
        train=s.fit,
        val=s.val,
        mode="per_layer",
        layers=s.all_layers,
        low=0.0,
        high=0.5,
        # The seeds' advice: inputs take lighter dropout (about 0.2) than hidden units.
        ranges={"input_dropout": (0.0, 0.2)} if "input_dropout" in s.all_layers else None,
        **s.train_kw,
        metric=cfg.metric,
        direction=s.direction,
        seed=cfg.seed,
        n_startup_trials=max(1, min(5, cfg.trials // 3)),
    )
    study = per_layer_search.create_study(s.storage, "per-layer-tpe", cfg.trials)
    # Trial 0 is the one-rate choice: TPE starts from it, and it is the bar to beat.
    study.enqueue_trial({f"p:{name}": rate for name, rate in one_rate.rates.items()})
    with progress_bar(cfg.trials, "4/7 per-layer TPE search", cfg.progress) as bar:
        return per_layer_search.run(
            cfg.trials, storage=s.storage, study_name="per-layer-tpe", progress=bar
        )


def choose_rates(
    s: StudyInputs, grid: tune.SearchResult, one_rate: OneRate, per_layer: tune.SearchResult
) -> dict[str, Any]:
    """The rates the study keeps, and how they were chosen (the report's ``chosen``)."""
    sign = 1.0 if s.direction == "maximize" else -1.0
    start_value = next(
        (r["value"] for r in per_layer.records if r["trial"] == 0 and r["value"] is not None),
        None,
    )
    # The per-layer rates replace the one rate only when they beat it (same seed, same data) by
    # more than the noise: the best of several noisy trials is biased upwards.
    if (
        per_layer.best_value is not None
        and start_value is not None
        and sign * (per_layer.best_value - start_value) > one_rate.noise
    ):
        chosen_rates, chosen_from = dict(per_layer.best_rates), "per_layer"
    else:
        chosen_rates, chosen_from = one_rate.rates, "one_rate"
    s.say(f"chosen rates ({chosen_from}): {chosen_rates}")
    return {
        "rates": chosen_rates,
        "from": chosen_from,
        "metric": s.cfg.metric,
        "grid_best_p": grid.best_p,
        "grid_best_value": grid.best_value,
        "p_best": one_rate.p_best,
        "p_one_se": one_rate.p_one_se,
        "noise": one_rate.noise,
        "one_rate_value": start_value,
        "per_layer_best_value": per_layer.best_value,
        "rule": (
            "one rate: the largest p whose mean validation metric over seeds is within one "
            "standard error of the best (Breiman's one-SE rule); per-layer rates replace it "
            "only when better than it on validation by more than that standard error"
        ),
    }


# --------------------------------------------------------------------------------------------
# 5. Ablation of the chosen rates
# --------------------------------------------------------------------------------------------


def ablate(s: StudyInputs, chosen_rates: Mapping[str, float]) -> dict[str, Any]:
    """Step 5: the chosen rates with and without dropout, and each layer's dropout removed."""
    cfg = s.cfg
    active = [k for k, v in chosen_rates.items() if v > 0]

    def build_chosen() -> nn.Module:
        return tune.set_rates(s.build_model(), chosen_rates)

    with progress_bar(2 + len(active), "5/7 ablation", cfg.progress) as bar:
        rows = tune.ablation(
            build_chosen,
            train=s.fit,
            val=s.val,
            seeds=(cfg.seed,),
            one_at_a_time="without",
            **s.train_kw,
            metric=cfg.metric,
            progress=bar,
        )
    return {
        "records": rows,
        "val_acc": tune.summarize(rows, by="config", metric="val_acc"),
        "val_loss": tune.summarize(rows, by="config", metric="val_loss"),
    }


# --------------------------------------------------------------------------------------------
# 6. Final models, and the study's checks
# --------------------------------------------------------------------------------------------


def train_final(
    s: StudyInputs, chosen_rates: Mapping[str, float]
) -> tuple[dict[str, Any], nn.Module]:
    """Step 6: baseline and chosen dropout retrained on the whole training set, tested once per
    seed. Returns the report's ``final`` (means, stds, each run) and the dropout model of
    ``cfg.seed``."""
    cfg, ds = s.cfg, s.ds
    final_seeds = [cfg.seed + i for i in range(cfg.final_seeds)]
    final_models: dict[str, nn.Module] = {}
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "dropout": []}
    total = 2 * cfg.epochs * len(final_seeds)
    with progress_bar(total, "6/7 final models", cfg.progress, "epoch") as bar:
        for seed in final_seeds:
            for name, rates in (
                ("baseline", dict.fromkeys(s.all_layers, 0.0)),
                ("dropout", chosen_rates),
            ):
                torch.manual_seed(seed)
                model = tune.set_rates(s.build_model(), rates)
                h = fit(
                    model,
                    (ds.x_train, ds.y_train),
                    (ds.x_test, ds.y_test),
                    **s.train_kw,
                    seed=seed,
                    progress=bar,
                )
                runs[name].append({"seed": seed, **_final_metrics(h, model)})
                if seed == cfg.seed:
                    final_models[name] = model
    final = {name: _mean_over_seeds(rows, final_seeds) for name, rows in runs.items()}
    return final, final_models["dropout"]


def _mean_over_seeds(rows: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    return {
        "rates": rows[0]["rates"],
        "seeds": seeds,
        **{
            key: statistics.fmean(r[key] for r in rows)
            for key in ("train_acc", "test_acc", "gap", "train_loss", "test_loss")
        },
        **{
            f"{key}_std": statistics.stdev(r[key] for r in rows) if len(rows) > 1 else 0.0
            for key in ("train_acc", "test_acc", "gap")
        },
        "runs": rows,
        "curve": rows[0]["curve"],
    }


def checks(s: StudyInputs, final: Mapping[str, Any]) -> dict[str, Any]:
    """The study's claims on the final models: the baseline overfits, dropout shrinks the gap and
    keeps test accuracy (and, on MNIST-1D, the baseline is near the paper's MLP)."""
    base, drop = final["baseline"], final["dropout"]
    out = {
        "seeds": base["seeds"],
        "baseline_overfits": base["gap"] > s.cfg.epsilon,
        "dropout_shrinks_gap": drop["gap"] < base["gap"],
        "dropout_keeps_test_acc": drop["test_acc"] >= base["test_acc"],
        "gap_reduction": base["gap"] - drop["gap"],
        "test_acc_change": drop["test_acc"] - base["test_acc"],
        "dropout_better_or_equal_per_seed": [
            d["test_acc"] >= b["test_acc"] for b, d in zip(base["runs"], drop["runs"], strict=True)
        ],
    }
    if s.ds.name == "mnist1d" and s.cfg.data is None:
        out["paper_mlp_test_acc"] = PAPER_MLP_TEST_ACC
        out["baseline_within_3_points_of_paper"] = (
            abs(base["test_acc"] - PAPER_MLP_TEST_ACC) <= 0.03
        )
    return out


# --------------------------------------------------------------------------------------------
# 7. MC dropout
# --------------------------------------------------------------------------------------------


def mc_dropout(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, T: int, seed: int, progress: bool
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Step 7: MC dropout's predictive distribution against weight scaling, on the test set.

    :func:`dropkit.uncertainty.evaluate_mc_classifier` draws the T passes with
    :func:`dropkit.mc.predict` (batched, seeded) and scores both inference rules.
    """
    from dropkit import uncertainty

    if not any(float(m.p) > 0 for m in tune.dropout_layers(model).values()):
        return {"skipped": "the chosen rates are all 0: nothing to sample"}, {}
    with progress_bar(1, "7/7 MC dropout", progress) as bar:
        report = uncertainty.evaluate_mc_classifier(model, x, y, T=T, seed=seed)
        bar.update(1)
    correct = np.asarray(report["correct"], dtype=bool)
    out: dict[str, Any] = {"T": T, "seed": seed}
    for name in ("weight_scaling", "mc"):
        metrics = dict(report[name])
        metrics["acc"] = metrics.pop("accuracy")
        out[name] = metrics
    out["weight_scaling_gap"] = report["gap"]
    arrays: dict[str, np.ndarray] = {
        "y": y.numpy(),
        "mc_probs": report["mc_probs"],
        "weight_scaling_probs": report["ws_probs"],
        "correct": correct,
        "entropy": report["entropy"],
        "bald": report["mutual_information"],
    }
    for key in ("entropy", "bald"):
        values = arrays[key]
        out[f"auroc_{key}"] = (
            uncertainty.misclassification_auroc(values, correct)
            if correct.any() and (~correct).any()
            else None
        )
        out[f"mean_{key}_right"] = float(values[correct].mean()) if correct.any() else None
        out[f"mean_{key}_wrong"] = float(values[~correct].mean()) if (~correct).any() else None
    return out, arrays
