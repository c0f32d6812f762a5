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
"""

from __future__ import annotations

import io
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from dropkit import data as _data
from dropkit import tune
from dropkit._validate import check_positive_int
from dropkit.models import MLP
from dropkit.train import History, fit

__all__ = [
    "StudyConfig",
    "StudyResult",
    "run_study",
    "load_study_data",
    "one_standard_error_rate",
    "format_summary",
]

#: The MNIST-1D paper's MLP test accuracy (Greydanus 2020, table 1), the baseline's reference.
PAPER_MLP_TEST_ACC = 0.68


@dataclass
class StudyConfig:
    r"""Settings of one ``dropkit study`` run; ``None`` fields take the mode's default.

    Defaults follow the MNIST-1D paper's MLP (two hidden layers of 100 ReLU units, Adam with
    learning rate 10⁻², batches of 100). ``quick`` shrinks epochs, trials, seeds and MC samples so
    the run finishes in well under a minute; the pipeline is the same.

    Args:
        data: a CSV or NPZ file (see :func:`dropkit.data.load_table`); None for MNIST-1D.
        label: the label column of ``data``.
        seed: seeds the data split, every model, the searches and the MC samples.
        quick: the fast variant.
        epochs: training epochs of every model (default 100, quick 25).
        hidden: hidden layer widths.
        lr, batch_size: the trainer's settings.
        val_fraction: share of the training data held out for validation (every choice uses it).
        grid: the rates of the one-rate search (the seeds' grid).
        trials: per-layer TPE trials (default 10, quick 3).
        seeds: seeds of the sensitivity analysis, the grid search's included (default 2, quick 1).
        final_seeds: seeds of the final models; test numbers are their mean (default 3, quick 1).
        mc_samples: T, the number of MC dropout passes (default 100, quick 30).
        metric: the validation metric that chooses rates: ``"val_acc"`` (maximised) or
            ``"val_loss"`` (minimised, the seeds' p* = argmin L_val(p)).
        epsilon: the overfitting threshold ε on A_train − A_val.
        progress: draw tqdm progress bars on stderr.
    """

    data: str | None = None
    label: str = "label"
    seed: int = 0
    quick: bool = False
    epochs: int | None = None
    hidden: tuple[int, ...] = (100, 100)
    lr: float = 1e-2
    batch_size: int = 100
    val_fraction: float = 0.2
    grid: tuple[float, ...] = tune.DEFAULT_GRID
    trials: int | None = None
    seeds: int | None = None
    final_seeds: int | None = None
    mc_samples: int | None = None
    metric: str = "val_acc"
    epsilon: float = 0.05
    progress: bool = True

    def resolved(self) -> StudyConfig:
        """A copy with every ``None`` replaced by the mode's default, every field checked."""
        quick = bool(self.quick)
        out = StudyConfig(**asdict(self))
        out.epochs = check_positive_int(
            self.epochs if self.epochs is not None else (25 if quick else 100), "epochs"
        )
        out.trials = check_positive_int(
            self.trials if self.trials is not None else (3 if quick else 10), "trials"
        )
        out.seeds = check_positive_int(
            self.seeds if self.seeds is not None else (1 if quick else 2), "seeds"
        )
        out.final_seeds = check_positive_int(
            self.final_seeds if self.final_seeds is not None else (1 if quick else 3), "final_seeds"
        )
        out.mc_samples = check_positive_int(
            self.mc_samples if self.mc_samples is not None else (30 if quick else 100), "mc_samples"
        )
        out.hidden = tuple(check_positive_int(h, "hidden") for h in self.hidden)
        if not out.hidden:
            raise ValueError("hidden must hold at least one layer width, got none")
        out.batch_size = check_positive_int(self.batch_size, "batch_size")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.metric not in ("val_acc", "val_loss"):
            raise ValueError(f"metric must be 'val_acc' or 'val_loss', got {self.metric!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        # Seeds seed .. seed + k − 1 seed NumPy's legacy generator and Optuna's samplers: 32 bits.
        largest = 2**32 - max(out.seeds, out.final_seeds)
        if self.seed > largest:
            raise ValueError(
                f"seed must be an int in [0, {largest}] (seeds up to seed + "
                f"{max(out.seeds, out.final_seeds) - 1} are used, and they are 32-bit), got {self.seed}"
            )
        out.grid = tuple(float(p) for p in self.grid)
        return out


@dataclass
class StudyResult:
    """What :func:`run_study` found: every number (``numbers``, JSON-ready) and the figures.

    ``figures`` maps a figure's name to ``(title, caption, png_bytes)``, in report order.
    """

    numbers: dict[str, Any]
    figures: dict[str, tuple[str, str, bytes]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def load_study_data(config: StudyConfig) -> _data.Dataset:
    """The study's data set: MNIST-1D (4000 train / 1000 test) or the user's table.

    Raises before any work (FileNotFoundError, ValueError) on a missing, empty or malformed file
    and on a data set too small for train, validation and test parts.

    Example:
        >>> d = load_study_data(StudyConfig())
        >>> d.name, tuple(d.x_train.shape), tuple(d.x_test.shape)
        ('mnist1d', (4000, 40), (1000, 40))
    """
    if config.data is None:
        return _data.load_mnist1d()
    dataset = _data.load_table(config.data, label=config.label, seed=config.seed)
    n_train = int(dataset.x_train.shape[0])
    n_val = int(round(n_train * config.val_fraction))
    if n_val < 1 or n_train - n_val < 2:
        raise ValueError(
            f"data file {config.data!r}: {n_train} training rows are too few to split into "
            f"train and validation parts (val_fraction={config.val_fraction})"
        )
    return dataset


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _bar(total: int, desc: str, enabled: bool, unit: str = "run") -> Any:
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


def _png(draw: Callable[[Any], None], size: tuple[float, float] = (6.4, 4.0)) -> bytes:
    """Draws into a fresh Agg figure and returns its PNG bytes (no pyplot state, no metadata)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    draw(fig)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, metadata={"Software": None})
    return buffer.getvalue()


def _clean(value: Any) -> Any:
    """JSON-ready copy: NaN/inf → None, tuples → lists, numpy/torch scalars → Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _search_dict(result: tune.SearchResult) -> dict[str, Any]:
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
# The pipeline
# --------------------------------------------------------------------------------------------


def run_study(
    config: StudyConfig,
    workdir: str | os.PathLike,
    *,
    dataset: _data.Dataset | None = None,
    log: TextIO | None = None,
) -> StudyResult:
    r"""Runs the study and returns its numbers and figures; the Optuna studies go to ``workdir``.

    The report itself is written by :func:`dropkit.report.write_report` (the CLI does both, and
    writes atomically). ``workdir`` must exist; it receives ``search.db``, the SQLite file holding
    the grid and per-layer searches (load them with :func:`dropkit.tune.load_search`).

    Args:
        config: the settings (``None`` fields take the mode's defaults).
        workdir: folder for the search storage.
        dataset: the data (default :func:`load_study_data`).
        log: where one line per step goes (default: nowhere).

    Returns:
        A :class:`StudyResult`.

    Example:
        >>> import tempfile, torch
        >>> from dropkit.data import Dataset
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(120, 4, generator=g); y = (x[:, 0] > 0).long()
        >>> ds = Dataset("toy", x[:100], y[:100], x[100:], y[100:], n_classes=2)
        >>> cfg = StudyConfig(quick=True, epochs=2, trials=2, seeds=1, mc_samples=4,
        ...                   hidden=(8,), progress=False)
        >>> result = run_study(cfg, tempfile.mkdtemp(), dataset=ds)
        >>> sorted(result.numbers["final"])
        ['baseline', 'dropout']
    """
    cfg = config.resolved()
    started = time.perf_counter()
    timing: dict[str, float] = {}
    ds = dataset if dataset is not None else load_study_data(cfg)
    if ds.task != "classification":
        raise ValueError(f"dropkit study handles classification data, got task {ds.task!r}")
    timing["data_s"] = time.perf_counter() - started

    def say(text: str) -> None:
        if log is not None:
            print(text, file=log, flush=True)

    x_fit, y_fit, x_val, y_val = _data.split_train_val(
        ds.x_train, ds.y_train, cfg.val_fraction, seed=cfg.seed
    )
    n_classes = int(max(ds.n_classes, int(ds.y_train.max()) + 1, int(ds.y_test.max()) + 1))
    sizes = [ds.n_features, *cfg.hidden, n_classes]
    direction = "maximize" if cfg.metric == "val_acc" else "minimize"
    train_kw = dict(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size)
    # One SQLite file holds both searches; opened once (creating its tables is the slow part).
    storage = tune.resolve_storage(os.path.abspath(os.path.join(os.fspath(workdir), "search.db")))

    def build_model() -> nn.Module:
        return MLP(sizes, p=0.0)

    all_layers = list(tune.dropout_layers(build_model()))
    hidden_layers = [name for name in all_layers if name != "input_dropout"]
    seeds = [cfg.seed + i for i in range(cfg.seeds)]
    numbers: dict[str, Any] = {
        "config": {k: v for k, v in asdict(cfg).items() if k != "progress"},
        "data": {
            "name": ds.name,
            "source": cfg.data or "MNIST-1D, generated locally (mnist1d.make_dataset, seed 42)",
            "n_train": int(ds.x_train.shape[0]),
            "n_fit": int(x_fit.shape[0]),
            "n_val": int(x_val.shape[0]),
            "n_test": int(ds.x_test.shape[0]),
            "n_features": ds.n_features,
            "n_classes": n_classes,
        },
        "model": {"sizes": sizes, "dropout_layers": all_layers, "searched_one_rate": hidden_layers},
    }

    # 1. Baseline: no dropout, the gap on validation --------------------------------------
    t0 = time.perf_counter()
    monitor = tune.OverfitMonitor(epsilon=cfg.epsilon)
    torch.manual_seed(cfg.seed)
    baseline_split = build_model()
    with _bar(cfg.epochs, "1/7 baseline (no dropout)", cfg.progress, "epoch") as bar:
        history = fit(
            baseline_split,
            (x_fit, y_fit),
            (x_val, y_val),
            **train_kw,
            seed=cfg.seed,
            on_epoch=monitor,
            progress=bar,
        )
    last = monitor.records[-1]
    numbers["baseline"] = {
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
    timing["baseline_s"] = time.perf_counter() - t0
    say(
        f"baseline: train acc {history.train_acc[-1]:.3f}, val acc {history.val_acc[-1]:.3f}, "
        f"gap flagged at epoch {monitor.flagged_epoch}"
    )

    # 2. One rate on the hidden layers: the seeds' grid -------------------------------------
    t0 = time.perf_counter()
    grid_search = tune.RateSearch(
        build_model,
        train=(x_fit, y_fit),
        val=(x_val, y_val),
        mode="grid",
        grid=cfg.grid,
        layers=hidden_layers,
        **train_kw,
        metric=cfg.metric,
        direction=direction,
        seed=cfg.seed,
    )
    with _bar(len(cfg.grid), "2/7 one-rate grid search", cfg.progress) as bar:
        grid = grid_search.run(storage=storage, study_name="one-rate-grid", progress=bar)
    numbers["grid_search"] = _search_dict(grid)
    timing["grid_search_s"] = time.perf_counter() - t0
    say(f"grid search: p* = {grid.best_p} ({cfg.metric} {grid.best_value:.4f})")

    # 3. Sensitivity: the grid's seed plus more seeds, p = 0 included ------------------------
    t0 = time.perf_counter()
    sens_rows: list[dict[str, Any]] = [
        {
            "p": 0.0,
            "seed": cfg.seed,
            "rates": dict.fromkeys(all_layers, 0.0),
            "train_acc": history.train_acc[-1],
            "val_acc": history.val_acc[-1],
            "train_loss": history.train_loss[-1],
            "val_loss": history.val_loss[-1],
            "gap": last["gap"],
            "loss_gap": last["loss_gap"],
        }
    ]
    for r in grid.records:
        if r["state"] == "COMPLETE":
            sens_rows.append(
                {
                    "p": r["p"],
                    "seed": cfg.seed,
                    "rates": r["rates"],
                    **{k: r.get(k) for k in ("train_acc", "val_acc", "train_loss", "val_loss")},
                    "gap": r.get("gap"),
                    "loss_gap": r.get("loss_gap"),
                }
            )
    extra_seeds = seeds[1:]
    if extra_seeds:
        rates = (0.0, *cfg.grid)
        with _bar(len(rates) * len(extra_seeds), "3/7 sensitivity over seeds", cfg.progress) as bar:
            sens_rows += tune.sensitivity(
                build_model,
                train=(x_fit, y_fit),
                val=(x_val, y_val),
                rates=rates,
                seeds=extra_seeds,
                layers=hidden_layers,
                **train_kw,
                metric=cfg.metric,
                progress=bar,
            )
    sens_rows.sort(key=lambda r: (r["p"], r["seed"]))
    numbers["sensitivity"] = {
        "seeds": seeds,
        "records": sens_rows,
        "val_acc": tune.summarize(sens_rows, by="p", metric="val_acc"),
        "val_loss": tune.summarize(sens_rows, by="p", metric="val_loss"),
        "gap": tune.summarize(sens_rows, by="p", metric="gap"),
    }
    timing["sensitivity_s"] = time.perf_counter() - t0

    # The one rate: Breiman's one-standard-error rule on the sensitivity means (every seed).
    sign = 1.0 if direction == "maximize" else -1.0
    p_best, p_one_se, noise = one_standard_error_rate(
        [s for s in numbers["sensitivity"][cfg.metric] if s["p"] in cfg.grid],
        cfg.metric,
        int(x_val.shape[0]),
    )
    one_rate = {name: (p_one_se if name in hidden_layers else 0.0) for name in all_layers}
    say(f"one rate: p_best = {p_best}, one-SE p = {p_one_se} (noise {noise:.4f})")

    # 4. Per-layer rates with TPE, warm-started at the one-rate choice ------------------------
    t0 = time.perf_counter()
    per_layer_search = tune.RateSearch(
        build_model,
        train=(x_fit, y_fit),
        val=(x_val, y_val),
        mode="per_layer",
        layers=all_layers,
        low=0.0,
        high=0.5,
        # The seeds' advice: inputs take lighter dropout (about 0.2) than hidden units.
        ranges={"input_dropout": (0.0, 0.2)} if "input_dropout" in all_layers else None,
        **train_kw,
        metric=cfg.metric,
        direction=direction,
        seed=cfg.seed,
        n_startup_trials=max(1, min(5, cfg.trials // 3)),
    )
    study = per_layer_search.create_study(storage, "per-layer-tpe", cfg.trials)
    # Trial 0 is the one-rate choice: TPE starts from it, and it is the bar to beat.
    study.enqueue_trial({f"p:{name}": rate for name, rate in one_rate.items()})
    with _bar(cfg.trials, "4/7 per-layer TPE search", cfg.progress) as bar:
        per_layer = per_layer_search.run(
            cfg.trials, storage=storage, study_name="per-layer-tpe", progress=bar
        )
    numbers["per_layer_search"] = _search_dict(per_layer)
    timing["per_layer_search_s"] = time.perf_counter() - t0
    start_value = next(
        (r["value"] for r in per_layer.records if r["trial"] == 0 and r["value"] is not None),
        None,
    )
    # The per-layer rates replace the one rate only when they beat it (same seed, same data) by
    # more than the noise: the best of several noisy trials is biased upwards.
    if (
        per_layer.best_value is not None
        and start_value is not None
        and sign * (per_layer.best_value - start_value) > noise
    ):
        chosen_rates, chosen_from = dict(per_layer.best_rates), "per_layer"
    else:
        chosen_rates, chosen_from = one_rate, "one_rate"
    numbers["chosen"] = {
        "rates": chosen_rates,
        "from": chosen_from,
        "metric": cfg.metric,
        "grid_best_p": grid.best_p,
        "grid_best_value": grid.best_value,
        "p_best": p_best,
        "p_one_se": p_one_se,
        "noise": noise,
        "one_rate_value": start_value,
        "per_layer_best_value": per_layer.best_value,
        "rule": (
            "one rate: the largest p whose mean validation metric over seeds is within one "
            "standard error of the best (Breiman's one-SE rule); per-layer rates replace it "
            "only when better than it on validation by more than that standard error"
        ),
    }
    say(f"chosen rates ({chosen_from}): {chosen_rates}")

    # 5. Ablation of the chosen rates --------------------------------------------------------
    t0 = time.perf_counter()
    active = [k for k, v in chosen_rates.items() if v > 0]

    def build_chosen() -> nn.Module:
        return tune.set_rates(build_model(), chosen_rates)

    with _bar(2 + len(active), "5/7 ablation", cfg.progress) as bar:
        ablation_rows = tune.ablation(
            build_chosen,
            train=(x_fit, y_fit),
            val=(x_val, y_val),
            seeds=(cfg.seed,),
            one_at_a_time="without",
            **train_kw,
            metric=cfg.metric,
            progress=bar,
        )
    numbers["ablation"] = {
        "records": ablation_rows,
        "val_acc": tune.summarize(ablation_rows, by="config", metric="val_acc"),
        "val_loss": tune.summarize(ablation_rows, by="config", metric="val_loss"),
    }
    timing["ablation_s"] = time.perf_counter() - t0

    # 6. Final models on the whole training set, tested once per seed -----------------------
    t0 = time.perf_counter()
    final_seeds = [cfg.seed + i for i in range(cfg.final_seeds)]
    final: dict[str, Any] = {}
    final_models: dict[str, nn.Module] = {}
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "dropout": []}
    with _bar(2 * cfg.epochs * len(final_seeds), "6/7 final models", cfg.progress, "epoch") as bar:
        for seed in final_seeds:
            for name, rates in (
                ("baseline", dict.fromkeys(all_layers, 0.0)),
                ("dropout", chosen_rates),
            ):
                torch.manual_seed(seed)
                model = tune.set_rates(build_model(), rates)
                h = fit(
                    model,
                    (ds.x_train, ds.y_train),
                    (ds.x_test, ds.y_test),
                    **train_kw,
                    seed=seed,
                    progress=bar,
                )
                runs[name].append({"seed": seed, **_final_metrics(h, model)})
                if seed == cfg.seed:
                    final_models[name] = model
    for name, rows in runs.items():
        final[name] = {
            "rates": rows[0]["rates"],
            "seeds": final_seeds,
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
    numbers["final"] = final
    timing["final_s"] = time.perf_counter() - t0

    # 7. MC dropout against weight scaling ---------------------------------------------------
    t0 = time.perf_counter()
    numbers["mc_dropout"], mc_arrays = _mc_study(
        final_models["dropout"], ds.x_test, ds.y_test, cfg.mc_samples, cfg.seed, cfg.progress
    )
    timing["mc_dropout_s"] = time.perf_counter() - t0

    base, drop = final["baseline"], final["dropout"]
    numbers["checks"] = {
        "seeds": final_seeds,
        "baseline_overfits": base["gap"] > cfg.epsilon,
        "dropout_shrinks_gap": drop["gap"] < base["gap"],
        "dropout_keeps_test_acc": drop["test_acc"] >= base["test_acc"],
        "gap_reduction": base["gap"] - drop["gap"],
        "test_acc_change": drop["test_acc"] - base["test_acc"],
        "dropout_better_or_equal_per_seed": [
            d["test_acc"] >= b["test_acc"]
            for b, d in zip(runs["baseline"], runs["dropout"], strict=True)
        ],
    }
    if ds.name == "mnist1d" and cfg.data is None:
        numbers["checks"]["paper_mlp_test_acc"] = PAPER_MLP_TEST_ACC
        numbers["checks"]["baseline_within_3_points_of_paper"] = (
            abs(base["test_acc"] - PAPER_MLP_TEST_ACC) <= 0.03
        )

    # Figures --------------------------------------------------------------------------------
    t0 = time.perf_counter()
    figures = _figures(numbers, sens_rows, ablation_rows, per_layer, mc_arrays, cfg)
    timing["figures_s"] = time.perf_counter() - t0
    timing["total_s"] = time.perf_counter() - started
    numbers["environment"] = {
        "dropkit": _version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    numbers = _clean(numbers)
    numbers["timing"] = {k: round(v, 2) for k, v in timing.items()}
    return StudyResult(numbers=numbers, figures=figures)


def _version() -> str:
    from dropkit import __version__

    return __version__


# --------------------------------------------------------------------------------------------
# MC dropout
# --------------------------------------------------------------------------------------------


def _mc_study(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, T: int, seed: int, progress: bool
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """MC dropout's predictive distribution against weight scaling, on the test set.

    :func:`dropkit.uncertainty.evaluate_mc_classifier` draws the T passes with
    :func:`dropkit.mc.predict` (batched, seeded) and scores both inference rules.
    """
    from dropkit import uncertainty

    if not any(float(m.p) > 0 for m in tune.dropout_layers(model).values()):
        return {"skipped": "the chosen rates are all 0: nothing to sample"}, {}
    with _bar(1, "7/7 MC dropout", progress) as bar:
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


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _figures(
    numbers: dict[str, Any],
    sens_rows: list[dict[str, Any]],
    ablation_rows: list[dict[str, Any]],
    per_layer: tune.SearchResult,
    mc_arrays: dict[str, np.ndarray],
    cfg: StudyConfig,
) -> dict[str, tuple[str, str, bytes]]:
    figures: dict[str, tuple[str, str, bytes]] = {}
    final = numbers["final"]

    def curves(fig: Any) -> None:
        acc_ax, loss_ax = fig.subplots(1, 2)
        for name, color in (("baseline", "C3"), ("dropout", "C0")):
            curve = final[name]["curve"]
            epochs = [r["epoch"] for r in curve]
            label = "no dropout" if name == "baseline" else "chosen dropout"
            for key, style in (("train", "-"), ("test", "--")):
                acc_ax.plot(
                    epochs,
                    [r[f"{key}_acc"] for r in curve],
                    style,
                    color=color,
                    label=f"{label}, {key}",
                )
                loss_ax.plot(epochs, [r[f"{key}_loss"] for r in curve], style, color=color)
        acc_ax.set_xlabel("epoch")
        acc_ax.set_ylabel("accuracy")
        acc_ax.legend(fontsize="small")
        acc_ax.set_title("accuracy: the gap is the space between lines")
        loss_ax.set_xlabel("epoch")
        loss_ax.set_ylabel("cross-entropy")
        loss_ax.set_title("loss")

    figures["curves"] = (
        "Learning curves with and without dropout",
        f"Final models on the whole training set, seed {cfg.seed}. Solid: training set (eval "
        "mode); dashed: test set, recorded for this picture only (no choice looks at it).",
        _png(curves, (11.0, 4.2)),
    )

    def gap_per_p(fig: Any) -> None:
        ax = fig.add_subplot()
        tune.plot_sensitivity(sens_rows, metric="gap", ax=ax, label="A_train − A_val")
        ax.axhline(cfg.epsilon, color="C3", linestyle=":", label=f"ε = {cfg.epsilon:g}")
        ax.set_ylabel("gap A_train − A_val")
        ax.set_title("overfitting gap per dropout rate")
        ax.legend(fontsize="small")

    figures["gap"] = (
        "Gap per dropout rate",
        f"A_train − A_val on the validation split, mean ± std over seeds {numbers['sensitivity']['seeds']}.",
        _png(gap_per_p),
    )

    def sensitivity(fig: Any) -> None:
        acc_ax, loss_ax = fig.subplots(1, 2)
        tune.plot_sensitivity(sens_rows, metric="val_acc", ax=acc_ax)
        tune.plot_sensitivity(sens_rows, metric="val_loss", ax=loss_ax)
        chosen = numbers["chosen"]
        for ax in (acc_ax, loss_ax):
            ax.axvline(
                chosen["p_best"], color="C7", linestyle=":", label=f"best p = {chosen['p_best']:g}"
            )
            ax.axvline(
                chosen["p_one_se"],
                color="C3",
                linestyle="--",
                label=f"one-SE p = {chosen['p_one_se']:g}",
            )
            ax.legend(fontsize="small")

    figures["sensitivity"] = (
        "Sensitivity to the dropout rate",
        "Validation accuracy and loss against the hidden layers' rate p (p = 0 is no dropout), "
        "mean ± std over seeds.",
        _png(sensitivity, (11.0, 4.2)),
    )

    figures["per_layer"] = (
        "Per-layer search",
        f"Objective ({cfg.metric}) of each TPE trial; pruned trials at their last reported value.",
        _png(lambda fig: tune.plot_search(per_layer, ax=fig.add_subplot())),
    )

    def ablation_figure(fig: Any) -> None:
        ax = tune.plot_ablation(ablation_rows, metric="val_acc", ax=fig.add_subplot())
        # Zoom on the bars' range: accuracies differ by points, not from zero.
        values = [r["val_acc"] for r in ablation_rows if r.get("val_acc") is not None]
        if values:
            low, high = min(values), max(values)
            margin = max(0.02, 0.5 * (high - low))
            ax.set_ylim(max(0.0, low - margin), min(1.0, high + margin))

    if any(r["config"] != "all" for r in ablation_rows) and ablation_rows:
        figures["ablation"] = (
            "Ablation",
            "Validation accuracy of the chosen rates ('all'), no dropout ('none') and each layer's "
            "dropout removed in turn.",
            _png(ablation_figure, (7.0, 4.2)),
        )

    if mc_arrays:
        y = mc_arrays["y"]

        def reliability(fig: Any) -> None:
            from dropkit import uncertainty

            uncertainty.reliability_diagram(
                {
                    "weight scaling": mc_arrays["weight_scaling_probs"],
                    f"MC dropout, T={cfg.mc_samples}": mc_arrays["mc_probs"],
                },
                y,
                ax=fig.add_subplot(),
            )

        figures["reliability"] = (
            "Reliability diagram",
            "Accuracy against confidence in 15 equal-width bins on the test set, for the dropout "
            "model with weight scaling (one deterministic pass) and with MC dropout; the diagonal "
            "is perfect calibration.",
            _png(reliability, (5.6, 5.0)),
        )

        def histogram(fig: Any) -> None:
            from dropkit import uncertainty

            ent_ax, mi_ax = fig.subplots(1, 2)
            for ax, key, label in (
                (ent_ax, "entropy", "predictive entropy (nats)"),
                (mi_ax, "bald", "mutual information, BALD (nats)"),
            ):
                uncertainty.uncertainty_histogram(
                    mc_arrays[key],
                    mc_arrays["correct"],
                    ax=ax,
                    xlabel=label,
                    title=label.split(" (")[0],
                )

        figures["uncertainty"] = (
            "Uncertainty of right and wrong predictions",
            "MC dropout on the test set: wrong predictions should sit at higher uncertainty. AUROC: "
            "how well the uncertainty ranks errors above right answers.",
            _png(histogram, (11.0, 4.2)),
        )
    return figures


# --------------------------------------------------------------------------------------------
# Terminal summary
# --------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "   —  " if value is None else f"{100 * value:5.1f}%"


def _rates(rates: dict[str, float]) -> str:
    return "/".join(f"{v:.2f}".rstrip("0").rstrip(".") if v else "0" for v in rates.values())


def format_summary(numbers: dict[str, Any], report_dir: str | None = None) -> str:
    """The terminal summary table of a study's numbers.

    Example:
        >>> numbers = {"data": {"name": "toy", "n_train": 80, "n_test": 20, "n_features": 4,
        ...                     "n_classes": 2, "n_fit": 64, "n_val": 16},
        ...            "config": {"seed": 0, "metric": "val_acc"},
        ...            "final": {k: {"rates": {"input_dropout": 0.0, "dropout1": r}, "train_acc": 1.0,
        ...                          "test_acc": 0.8, "gap": 0.2, "test_loss": 0.5}
        ...                      for k, r in (("baseline", 0.0), ("dropout", 0.2))},
        ...            "chosen": {"from": "one_rate"}, "mc_dropout": {}}
        >>> print(format_summary(numbers).splitlines()[0])
        dropkit study: toy, 80 train (64 fit / 16 validation) / 20 test, 4 features, 2 classes, seed 0
    """
    d, final = numbers["data"], numbers["final"]
    seeds = final["baseline"].get("seeds")
    lines = [
        f"dropkit study: {d['name']}, {d['n_train']} train ({d['n_fit']} fit / {d['n_val']} "
        f"validation) / {d['n_test']} test, {d['n_features']} features, {d['n_classes']} classes, "
        f"seed {numbers['config']['seed']}",
        "",
        f"{'model':<24} {'rates (in/h…)':<16} {'train':>7} {'test':>7} {'± std':>6} {'gap':>6} "
        f"{'test NLL':>9}",
    ]
    rows = [
        ("baseline, no dropout", final["baseline"]),
        (f"dropout ({numbers['chosen']['from'].replace('_', ' ')})", final["dropout"]),
    ]
    for label, row in rows:
        std = row.get("test_acc_std") if seeds and len(seeds) > 1 else None
        lines.append(
            f"{label:<24} {_rates(row['rates']):<16} {_pct(row['train_acc']):>7} "
            f"{_pct(row['test_acc']):>7} {'' if std is None else f'{100 * std:5.1f}':>6} "
            f"{100 * row['gap']:6.1f} {row['test_loss']:9.3f}"
        )
    if seeds and len(seeds) > 1:
        lines.append(f"(train, test, gap and NLL: mean over seeds {', '.join(map(str, seeds))})")
    mc = numbers.get("mc_dropout", {})
    if mc.get("mc"):
        ws, m = mc["weight_scaling"], mc["mc"]
        lines += [
            "",
            f"{'dropout model, seed ' + str(mc['seed']):<24} {'test':>7} {'NLL':>7} {'Brier':>7} {'ECE':>7}",
            f"{'  weight scaling':<24} {_pct(ws['acc']):>7} {ws['nll']:7.3f} {ws['brier']:7.3f} "
            f"{_pct(ws['ece']):>7}",
            f"{'  MC dropout, T=' + str(mc['T']):<24} {_pct(m['acc']):>7} {m['nll']:7.3f} "
            f"{m['brier']:7.3f} {_pct(m['ece']):>7}",
        ]
    lines.append("")
    checks = numbers.get("checks", {})
    if checks:
        lines.append(
            f"gap {100 * final['baseline']['gap']:.1f} → {100 * final['dropout']['gap']:.1f} points; "
            f"test accuracy {100 * final['baseline']['test_acc']:.1f}% → "
            f"{100 * final['dropout']['test_acc']:.1f}%"
        )
    chosen = numbers.get("chosen", {})
    if "p_one_se" in chosen:
        lines.append(
            f"one rate: best p = {chosen['p_best']:g}, one-SE p = {chosen['p_one_se']:g}; chosen "
            f"({chosen['from'].replace('_', ' ')}): "
            + ", ".join(f"{k}={v:.3g}" for k, v in chosen["rates"].items())
        )
    if mc.get("auroc_entropy") is not None:
        lines.append(
            f"MC dropout uncertainty spots errors: AUROC {mc['auroc_entropy']:.3f} (entropy), "
            f"{mc['auroc_bald']:.3f} (BALD)"
        )
    if "timing" in numbers:
        lines.append(f"time {numbers['timing']['total_s']:.0f} s")
    if report_dir is not None:
        lines.append(f"report: {os.path.join(report_dir, 'index.html')}")
    return "\n".join(lines)
