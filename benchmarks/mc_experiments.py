"""Monte-Carlo dropout on real data that ships with packages (issue 5, item 5).

1. Classification — MNIST-1D (generated locally) and scikit-learn's digits, following Gal &
   Ghahramani's protocol: for each of 5 seeds, the training set is split 80/20 into train and
   validation (a different split per seed); an MLP (two hidden layers of 256 ReLU units, dropout p
   before each hidden-to-hidden and hidden-to-output layer) is trained with Adam for a fixed number
   of epochs for every p in a grid; on the validation split, p is chosen by the NLL of the MC
   predictive (T = 100 samples averaged); the chosen network is then scored on the test set by MC
   dropout and by weight scaling (the deterministic eval-mode network). Prints, for every p and for
   the chosen one, test NLL / ECE (15 bins) / accuracy / Brier — mean ± standard error over seeds —
   and the paired differences MC − weight scaling (± standard error of the paired difference);
   also weight scaling with *its own* p chosen by its validation NLL, so neither inference rule
   gets a p tuned for the other.
2. Regression — scikit-learn's diabetes, following Gal & Ghahramani's UCI protocol: random 90/10
   train/test splits; inputs and targets standardised on the training split; an MLP with one hidden
   layer of 50 ReLU units, dropout on its input and hidden layer; weight decay set from τ and p by
   reg = l² (1 − p) / (2 N τ) with l = 10⁻²; (p, τ) chosen by MC log-likelihood on a validation
   split (20 % of the training split), then retrained on the whole training split. Test RMSE of
   the MC mean and MC test log-likelihood (logsumexp over T samples, in the target's units), mean ±
   standard error over splits; weight-scaling RMSE (and its log-likelihood with the same τ) for
   comparison. τ enters training only through reg (≈ 1e-7 here), so each p is trained once at
   τ = 1 and τ is chosen on that model's validation samples; the final model uses the chosen pair.

Run: ``.venv/bin/python benchmarks/mc_experiments.py`` (two worker processes, one torch thread
each; about 5 minutes on 2 CPU cores); ``--quick`` runs a smaller version; ``--parts`` picks
experiments; ``--figures DIR`` writes reliability diagrams and uncertainty histograms (chosen p,
seed 0) as PNG.
"""

from __future__ import annotations

import argparse
import functools
import math
import multiprocessing
import time
from pathlib import Path

import numpy as np
import torch

import dropkit
from dropkit import uncertainty as U
from dropkit.data import load_diabetes, load_digits, load_mnist1d, split_train_val
from dropkit.mc import predict
from dropkit.train import fit

print = functools.partial(print, flush=True)  # noqa: A001 - progress shows up when piped


def mean_se(values: list[float], digits: int = 4) -> str:
    arr = np.asarray(values, dtype=np.float64)
    se = arr.std(ddof=1) / math.sqrt(len(arr)) if len(arr) > 1 else float("nan")
    return f"{arr.mean():.{digits}f} ± {se:.{digits}f}"


def paired(mc: list[float], ws: list[float], lower_is_better: bool = True) -> str:
    """MC − WS per seed: mean ± SE, and a verdict at 2 standard errors."""
    d = np.asarray(mc, dtype=np.float64) - np.asarray(ws, dtype=np.float64)
    se = d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    gain = -d.mean() if lower_is_better else d.mean()
    verdict = "MC better" if gain > 2 * se else ("MC worse" if gain < -2 * se else "tie (±2 SE)")
    return f"{d.mean():+.4f} ± {se:.4f}  {verdict}"


# ------------------------------------------------------------------------------------------------
# Classification
# ------------------------------------------------------------------------------------------------
CLASSIFICATION = {"mnist1d": load_mnist1d, "digits": load_digits}
HIDDEN_CLS = [256, 256]
P_GRID = [0.05, 0.1, 0.2, 0.3, 0.5]
EPOCHS = {"mnist1d": 60, "digits": 100}
METRICS = (("nll", True), ("ece", True), ("accuracy", False), ("brier", True))


@functools.cache
def _dataset(name: str):
    return CLASSIFICATION[name]()


def _train_and_score(job: tuple[str, int, float, int, int, bool]) -> dict:
    """One (data set, seed, p): train on the seed's train split, score validation and test."""
    name, seed, p, epochs, T, keep_arrays = job
    torch.set_num_threads(1)
    data = _dataset(name)
    x_tr, y_tr, x_val, y_val = split_train_val(
        data.x_train, data.y_train, val_fraction=0.2, seed=seed
    )
    torch.manual_seed(seed)
    net = dropkit.MLP([data.n_features, *HIDDEN_CLS, data.n_classes], p=[0.0, p, p])
    fit(net, (x_tr, y_tr), epochs=epochs, lr=1e-3, batch_size=100, seed=seed)
    val_mc = torch.softmax(predict(net, x_val, T, seed=seed + 1000).double(), -1).mean(0)
    with torch.no_grad():
        val_ws = torch.softmax(net.eval()(x_val).double(), -1)
    report = U.evaluate_mc_classifier(net, data.x_test, data.y_test, T=T, seed=seed)
    out = {
        "name": name,
        "seed": seed,
        "p": p,
        "val_nll_mc": U.nll(val_mc.numpy(), y_val.numpy()),
        "val_nll_ws": U.nll(val_ws.numpy(), y_val.numpy()),
        "mc": report["mc"],
        "ws": report["weight_scaling"],
        "gap": report["gap"],
    }
    if keep_arrays:
        out["arrays"] = {k: report[k] for k in ("mc_probs", "ws_probs", "entropy", "correct")}
    return out


def classification(
    names: list[str], seeds: list[int], T: int, workers: int, epoch_scale: float
) -> list[dict]:
    jobs = [
        (name, seed, p, max(1, round(EPOCHS[name] * epoch_scale)), T, seed == seeds[0])
        for name in names
        for seed in seeds
        for p in P_GRID
    ]
    if workers <= 1:
        return [_train_and_score(job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(_train_and_score, jobs, chunksize=1)


def report_classification(
    name: str, results: list[dict], seeds: list[int], T: int, figures: Path | None
) -> None:
    runs = {(r["seed"], r["p"]): r for r in results if r["name"] == name}
    print(
        f"\n{name}: MLP {HIDDEN_CLS}, dropout p on both hidden layers, {EPOCHS[name]} epochs, "
        f"{len(seeds)} seeds "
        f"(train/validation split and training seed), T = {T}; mean ± standard error over seeds"
    )
    print("  per p (test set; paired difference MC − WS):")
    print(
        f"  {'p':>5} {'val NLL MC':>16} {'NLL WS':>16} {'NLL MC':>16} {'ΔNLL':>30} {'ECE WS':>16} {'ECE MC':>16} {'ΔECE':>30}"
    )
    for p in P_GRID:
        rows = [runs[(s, p)] for s in seeds]
        col = lambda m, k, rows=rows: [r[m][k] for r in rows]  # noqa: E731
        print(
            f"  {p:>5} {mean_se([r['val_nll_mc'] for r in rows]):>16} "
            f"{mean_se(col('ws', 'nll')):>16} {mean_se(col('mc', 'nll')):>16} "
            f"{paired(col('mc', 'nll'), col('ws', 'nll')):>30} "
            f"{mean_se(col('ws', 'ece')):>16} {mean_se(col('mc', 'ece')):>16} "
            f"{paired(col('mc', 'ece'), col('ws', 'ece')):>30}"
        )
    chosen_mc = [min(P_GRID, key=lambda p, s=s: runs[(s, p)]["val_nll_mc"]) for s in seeds]
    chosen_ws = [min(P_GRID, key=lambda p, s=s: runs[(s, p)]["val_nll_ws"]) for s in seeds]
    mc_rows = [runs[(s, p)] for s, p in zip(seeds, chosen_mc, strict=True)]
    ws_rows = [runs[(s, p)] for s, p in zip(seeds, chosen_ws, strict=True)]
    print(f"  p chosen by validation NLL of the MC predictive, per seed: {chosen_mc}")
    print(f"  p chosen by validation NLL of weight scaling, per seed:    {chosen_ws}")
    print(
        f"  {'metric':<9} {'WS (same net)':>16} {'MC':>16} {'MC − WS, same network':>32} "
        f"{'WS (own p)':>16} {'MC − WS (own p)':>32}"
    )
    for metric, lower in METRICS:
        mc = [r["mc"][metric] for r in mc_rows]
        ws_same = [r["ws"][metric] for r in mc_rows]
        ws_own = [r["ws"][metric] for r in ws_rows]
        print(
            f"  {metric:<9} {mean_se(ws_same):>16} {mean_se(mc):>16} "
            f"{paired(mc, ws_same, lower):>32} {mean_se(ws_own):>16} {paired(mc, ws_own, lower):>32}"
        )
    gap = lambda k: mean_se([r["gap"][k] for r in mc_rows], 3)  # noqa: E731
    print(
        f"  weight scaling vs MC at the chosen p: TV(MC arithmetic mean, WS) {gap('tv_arithmetic')}, "
        f"TV(geometric mean of the samples, WS) {gap('tv_geometric')}, argmax agreement "
        f"{gap('agreement')}"
    )
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        first = mc_rows[0]
        arrays, labels = first["arrays"], _dataset(name).y_test.numpy()
        U.reliability_diagram(
            {
                "weight scaling": arrays["ws_probs"],
                f"MC dropout (T={T})": arrays["mc_probs"],
            },
            labels,
            path=figures / f"mc_reliability_{name}.png",
            title=f"{name}, p = {first['p']} (chosen on validation), seed {first['seed']}: reliability",
        )
        U.uncertainty_histogram(
            arrays["entropy"],
            arrays["correct"],
            path=figures / f"mc_entropy_{name}.png",
            title=f"{name}, p = {first['p']}: MC predictive entropy",
        )


# ------------------------------------------------------------------------------------------------
# Regression: Gal & Ghahramani's UCI protocol on diabetes
# ------------------------------------------------------------------------------------------------
LENGTH_SCALE = 1e-2
HIDDEN = 50


def train_regressor(x, y, p: float, tau: float, epochs: int, seed: int) -> torch.nn.Module:
    n = x.shape[0]
    # Gal & Ghahramani (their UCI code): reg = l² (1 − p) / (2 N τ) on the loss mean (y − ŷ)² + reg ‖W‖²;
    # Adam's coupled weight_decay wd adds wd·W to the gradient, i.e. (wd / 2) ‖W‖² in the loss.
    reg = LENGTH_SCALE**2 * (1 - p) / (2 * n * tau)
    torch.manual_seed(seed)
    net = dropkit.MLP([x.shape[1], HIDDEN, 1], p=[p, p])
    fit(
        net,
        (x, y),
        epochs=epochs,
        lr=1e-3,
        batch_size=32,
        weight_decay=2 * reg,
        task="regression",
        seed=seed,
    )
    return net


def mc_regression(net, x, T: int, seed: int) -> np.ndarray:
    return predict(net, x, T=T, seed=seed)[..., 0].numpy()


def regression(
    splits: int, T: int, epochs: int, p_grid: list[float], tau_grid: list[float]
) -> dict[str, list]:
    rows: dict[str, list] = {}
    for split in range(splits):
        data = load_diabetes(test_fraction=0.1, seed=split)
        y_mean, y_std = float(data.y_train.mean()), float(data.y_train.std())
        norm = lambda y, m=y_mean, s=y_std: (y - m) / s  # noqa: E731
        x_tr, y_tr, x_val, y_val = split_train_val(
            data.x_train, data.y_train, val_fraction=0.2, seed=split
        )
        best = None
        for p in p_grid:
            # τ enters training only through reg = l²(1 − p)/(2Nτ) ≈ 1e-7 here, a negligible weight
            # decay: train once per p (at τ = 1) and choose τ on the same validation samples.
            net = train_regressor(x_tr, norm(y_tr), p, 1.0, epochs, seed=split)
            samples = mc_regression(net, x_val, T, seed=split)
            for tau in tau_grid:
                ll = U.gaussian_log_likelihood(samples, norm(y_val).numpy(), tau)
                if best is None or ll > best[0]:
                    best = (ll, p, tau)
        _, p, tau = best
        net = train_regressor(data.x_train, norm(data.y_train), p, tau, epochs, seed=split)
        samples = mc_regression(net, data.x_test, T, seed=split) * y_std + y_mean
        y_test = data.y_test.numpy()
        with torch.no_grad():
            ws = net.eval()(data.x_test)[:, 0].numpy() * y_std + y_mean
        rows.setdefault("rmse_mc", []).append(U.rmse(samples.mean(0), y_test))
        rows.setdefault("rmse_ws", []).append(U.rmse(ws, y_test))
        # τ is a precision of the standardised target: in the target's units it is τ / std².
        rows.setdefault("ll_mc", []).append(
            U.gaussian_log_likelihood(samples, y_test, tau / y_std**2)
        )
        rows.setdefault("ll_ws", []).append(
            U.gaussian_log_likelihood(ws[None], y_test, tau / y_std**2)
        )
        rows.setdefault("chosen", []).append((p, tau))
        print(
            f"  split {split}: p = {p}, τ = {tau}: RMSE MC {rows['rmse_mc'][-1]:.2f}, "
            f"WS {rows['rmse_ws'][-1]:.2f}, test LL {rows['ll_mc'][-1]:.3f}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds, epochs and samples")
    parser.add_argument("--figures", type=Path, default=None, help="write PNG figures here")
    parser.add_argument(
        "--parts", nargs="+", default=["mnist1d", "digits", "diabetes"], help="which experiments"
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds for classification (>= 5)")
    parser.add_argument(
        "--T", type=int, default=None, help="MC samples (default 100; 50 with --quick)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="worker processes (1 torch thread each)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    seeds = list(range(3 if args.quick else args.seeds))
    T = args.T if args.T is not None else (50 if args.quick else 100)
    if T < 1:
        parser.error(f"--T must be >= 1, got {T}")
    names = [part for part in args.parts if part in CLASSIFICATION]
    if names:
        results = classification(names, seeds, T, args.workers, 0.5 if args.quick else 1.0)
        for name in names:
            report_classification(name, results, seeds, T, args.figures)
        print(f"  ({time.perf_counter() - start:.0f} s so far)")

    if "diabetes" not in args.parts:
        print(f"\ntotal {time.perf_counter() - start:.0f} s")
        return
    splits = 5 if args.quick else 10
    epochs = 100 if args.quick else 200
    p_grid = [0.005, 0.01, 0.05, 0.1]
    tau_grid = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0]
    print(
        f"\ndiabetes (Gal & Ghahramani UCI protocol): {splits} random 90/10 splits, MLP 10-50-1, "
        f"{epochs} epochs, p ∈ {p_grid}, τ ∈ {tau_grid} chosen on a 20% validation split, T = {T}"
    )
    rows = regression(splits, T, epochs, p_grid, tau_grid)
    print(f"test RMSE (MC mean)          {mean_se(rows['rmse_mc'])}")
    print(f"test RMSE (weight scaling)   {mean_se(rows['rmse_ws'])}")
    print(f"test log-likelihood (MC)     {mean_se(rows['ll_mc'])}")
    print(f"test log-likelihood (WS, τ)  {mean_se(rows['ll_ws'])}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
