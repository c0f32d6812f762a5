"""Monte-Carlo dropout on real data that ships with packages (issue 5, item 5).

1. Classification — MNIST-1D (generated locally) and scikit-learn's digits: an MLP trained with
   dropout in two regimes (the seeds' rates 0.2/0.5 for 50 epochs; light dropout 0.1 on the hidden
   layers for 100 epochs, where the deterministic network over-fits), evaluated by weight scaling
   (the deterministic eval-mode network) and by MC dropout (T samples averaged). Prints accuracy, NLL, Brier score, ECE (15 bins) and the AUROC of the
   predictive entropy for spotting misclassified inputs, mean ± standard error over training
   seeds, plus the MC − weight-scaling gap.
2. Regression — scikit-learn's diabetes, following Gal & Ghahramani's UCI protocol: random 90/10
   train/test splits; inputs and targets standardised on the training split; an MLP with one hidden
   layer of 50 ReLU units, dropout on its input and hidden layer; weight decay set from τ and p by
   reg = l² (1 − p) / (2 N τ) with l = 10⁻²; (p, τ) chosen by MC log-likelihood on a validation
   split (20 % of the training split), then retrained on the whole training split. Test RMSE of
   the MC mean and MC test log-likelihood (logsumexp over T samples, in the target's units), mean ±
   standard error over splits; weight-scaling RMSE (and its log-likelihood with the same τ) for
   comparison. τ enters training only through reg (≈ 1e-7 here), so each p is trained once at
   τ = 1 and τ is chosen on that model's validation samples; the final model uses the chosen pair.

Run: ``.venv/bin/python benchmarks/mc_experiments.py`` (about 3–4 minutes on 2 CPU cores);
``--quick`` runs a smaller version; ``--figures DIR`` writes reliability diagrams and uncertainty
histograms as PNG.
"""

from __future__ import annotations

import argparse
import functools
import math
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


def mean_se(values: list[float]) -> str:
    arr = np.asarray(values, dtype=np.float64)
    se = arr.std(ddof=1) / math.sqrt(len(arr)) if len(arr) > 1 else float("nan")
    return f"{arr.mean():.4f} ± {se:.4f}"


# ------------------------------------------------------------------------------------------------
# Classification
# ------------------------------------------------------------------------------------------------
CLASSIFICATION = {"mnist1d": load_mnist1d, "digits": load_digits}
HIDDEN_CLS = [256, 256]
# Two regimes: the seeds' rates (0.2 input, 0.5 hidden), a strong regulariser on these small data
# sets; and light dropout trained long, where the deterministic network over-fits.
SETTINGS = {
    "seeds' rates": ([0.2, 0.5, 0.5], 50),
    "light dropout, long": ([0.0, 0.1, 0.1], 100),
}


def classification(
    name: str, setting: str, seeds: list[int], T: int, figures: Path | None
) -> dict[str, list]:
    data = CLASSIFICATION[name]()
    rates, epochs = SETTINGS[setting]
    rows: dict[str, list] = {}
    for seed in seeds:
        torch.manual_seed(seed)
        net = dropkit.MLP([data.n_features, *HIDDEN_CLS, data.n_classes], p=rates)
        fit(net, (data.x_train, data.y_train), epochs=epochs, lr=1e-3, batch_size=100, seed=seed)
        report = U.evaluate_mc_classifier(net, data.x_test, data.y_test, T=T, seed=seed)
        for method in ("weight_scaling", "mc"):
            for metric, value in report[method].items():
                rows.setdefault(f"{method}.{metric}", []).append(value)
        for metric, value in report["gap"].items():
            rows.setdefault(f"gap.{metric}", []).append(value)
        if figures is not None and seed == seeds[0]:
            figures.mkdir(parents=True, exist_ok=True)
            tag = f"{name}_p{rates[-1]}"
            labels = data.y_test.numpy()
            U.reliability_diagram(
                {"weight scaling": report["ws_probs"], f"MC dropout (T={T})": report["mc_probs"]},
                labels,
                path=figures / f"mc_reliability_{tag}.png",
                title=f"{name}, rates {rates}: reliability",
            )
            U.uncertainty_histogram(
                report["entropy"],
                report["correct"],
                path=figures / f"mc_entropy_{tag}.png",
                title=f"{name}, rates {rates}: MC entropy",
            )
    return rows


def print_classification(
    name: str, setting: str, rows: dict[str, list], n_seeds: int, T: int
) -> None:
    rates, epochs = SETTINGS[setting]
    print(
        f"\n{name}, {setting}: MLP {HIDDEN_CLS}, rates {rates}, {epochs} epochs, "
        f"{n_seeds} training seeds, T = {T}; mean ± standard error"
    )
    print(f"{'metric':<16} {'weight scaling':>20} {'MC dropout':>20}   MC better?")
    for metric, lower_is_better in (
        ("accuracy", False),
        ("nll", True),
        ("brier", True),
        ("ece", True),
        ("auroc_entropy", False),
    ):
        ws, mc = rows[f"weight_scaling.{metric}"], rows[f"mc.{metric}"]
        better = np.mean(mc) <= np.mean(ws) if lower_is_better else np.mean(mc) >= np.mean(ws)
        print(f"{metric:<16} {mean_se(ws):>20} {mean_se(mc):>20}   {'yes' if better else 'no'}")
    print(
        "gap (MC vs weight scaling): TV(arithmetic mean, WS) "
        f"{mean_se(rows['gap.tv_arithmetic'])}, TV(geometric mean, WS) {mean_se(rows['gap.tv_geometric'])}, "
        f"argmax agreement {mean_se(rows['gap.agreement'])}"
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
    parser.add_argument("--quick", action="store_true", help="fewer seeds, splits and samples")
    parser.add_argument("--figures", type=Path, default=None, help="write PNG figures here")
    parser.add_argument(
        "--parts", nargs="+", default=["mnist1d", "digits", "diabetes"], help="which experiments"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    seeds = [0, 1] if args.quick else [0, 1, 2]
    T = 50 if args.quick else 100
    for name in [part for part in args.parts if part in CLASSIFICATION]:
        for setting in SETTINGS:
            rows = classification(name, setting, seeds, T, args.figures)
            print_classification(name, setting, rows, len(seeds), T)

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
