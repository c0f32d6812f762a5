"""The regression study's grid: 20 dropout networks trained side by side against one at a time.

The (p, τ) grid of Gal & Ghahramani's protocol is 4 rates × 5 precisions = 20 MLPs [10, 50, 1]
per split. ``dropkit.regression.train_dropout_ensemble`` trains them as one batched model (one
weight tensor per layer with a member dim, one baddbmm per layer, one Adam); the peer is the plain
loop a researcher writes: 20 × ``dropkit.train.fit`` of a ``dropkit.MLP`` with torch's Adam (the
same epochs, batch 128, learning rate 10⁻³). Data: scikit-learn's diabetes, the fit part of one
split (318 rows, standardised).

Both variants are timed in interleaved rounds (CPU time of this process by default: steadier than
wall time on a shared machine) and the table gives medians and the ratio.

Run:
    .venv/bin/python benchmarks/bench_regression.py               # 5 rounds, 20 epochs, 1 thread
    .venv/bin/python benchmarks/bench_regression.py --clock wall
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

import dropkit
from dropkit import uncertainty as U
from dropkit.regression import (
    DEFAULT_RATES,
    TAU_FACTORS,
    load_regression_data,
    train_dropout_ensemble,
)
from dropkit.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    data = load_regression_data("diabetes")
    rows = np.random.default_rng(0).permutation(len(data.y))[:318]
    x = (data.x[rows] - data.x[rows].mean(0)) / data.x[rows].std(0)
    y = (data.y[rows] - data.y[rows].mean()) / data.y[rows].std()
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    grid = [(p, tau) for p in DEFAULT_RATES for tau in TAU_FACTORS]
    n = len(y)

    def batched() -> None:
        decays = [
            U.weight_decay_from_tau(t, p, n, length_scale=1e-2, convention="paper") for p, t in grid
        ]
        train_dropout_ensemble(x, y, [p for p, _ in grid], decays, epochs=args.epochs, seed=0)

    def one_at_a_time() -> None:
        for p, tau in grid:
            torch.manual_seed(0)
            net = dropkit.MLP([x.shape[1], 50, 1], p=[p, p])
            wd = U.weight_decay_from_tau(tau, p, n, length_scale=1e-2, convention="torch")
            fit(
                net,
                (x, y[:, None]),
                epochs=args.epochs,
                lr=1e-3,
                batch_size=128,
                weight_decay=wd,
                task="regression",
                seed=0,
            )

    variants = {"batched (train_dropout_ensemble)": batched, "20 × fit(dropkit.MLP)": one_at_a_time}
    for fn in variants.values():  # warm-up: imports, kernels, allocator
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = clock()
            fn()
            times[name].append(clock() - start)

    steps = args.epochs * -(-n // 128)
    base = statistics.median(times["20 × fit(dropkit.MLP)"])
    print(
        f"{len(grid)} networks [10, 50, 1], {n} rows, {args.epochs} epochs ({steps} steps each), "
        f"{args.clock} time, {args.rounds} rounds, torch {torch.__version__}, {args.threads} "
        f"thread(s), {platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    print(f"{'variant':<36} {'median s':>9} {'ms / network-step':>18} {'vs loop':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        per = 1000 * median / (len(grid) * steps)
        print(f"{name:<36} {median:9.3f} {per:18.3f} {base / median:7.2f}×")


if __name__ == "__main__":
    main()
