"""Sparse variational dropout on scikit-learn's digits: accuracy and weight sparsity vs a plain MLP.

Molchanov, Ashukha & Vetrov 2017 report that sparse variational dropout prunes most weights of
LeNet-300-100 at no loss of accuracy. This script checks the same claim on the bundled 8×8 digits
(1797 images; no download): a 64-300-100-10 MLP trained plainly (Adam, cross-entropy) against the
same architecture built from ``dropkit.LinearSVDO`` trained with the ELBO (N · NLL + KL, KL warm-up),
pruned at log α > 3 in eval. Seeds are fixed, so each run prints the same figures.

Run:
    .venv/bin/python benchmarks/bench_sparse_vd.py
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import dropkit

SIZES = (64, 300, 100, 10)


def digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits scaled to [0, 1], a stratified 75/25 train/test split."""
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x / 16.0, y, test_size=0.25, random_state=seed, stratify=y
    )
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.int64)  # noqa: E731
    return as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te)


def mlp(layer: type[nn.Module]) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
        mods.append(layer(a, b))
        if i < len(SIZES) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    seed: int,
    lr: float,
    loss_fn: nn.Module,
    batch_size: int = 128,
    warmup: bool = False,
    final_lr_ratio: float = 1.0,
) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # Linear learning-rate decay from lr to final_lr_ratio · lr over the run.
    decay = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda epoch: 1.0 - (1.0 - final_lr_ratio) * epoch / epochs
    )
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        decay.step()
        if warmup:
            loss_fn.step()  # KL warm-up counted in epochs


def run(epochs_plain: int = 100, epochs_svdo: int = 200, seed: int = 0) -> dict[str, float]:
    """Trains both models; returns test accuracies, the SVDO model's sparsity and the timings."""
    torch.manual_seed(seed)
    x_tr, y_tr, x_te, y_te = digits(seed)
    n = x_tr.shape[0]

    torch.manual_seed(seed)
    plain = mlp(nn.Linear)
    t0 = time.perf_counter()
    train(plain, x_tr, y_tr, epochs_plain, seed, 1e-3, nn.CrossEntropyLoss())
    t_plain = time.perf_counter() - t0

    torch.manual_seed(seed)
    svdo = mlp(dropkit.LinearSVDO)
    # Molchanov et al.: the KL weight rises linearly from 0 to 1 over the first epochs (here half
    # the run); the full ELBO (weight 1) is optimised after that.
    elbo = dropkit.ELBOLoss(svdo, n_data=n, warmup_steps=epochs_svdo // 2)
    t0 = time.perf_counter()
    # log σ² starts at −10 and must climb to log θ² + 3 for a weight to be pruned: a larger step
    # (3e-3, decayed linearly to 3e-5) and smaller batches than the plain model's get there in
    # 200 epochs; larger steps prune as much but lose accuracy.
    train(
        svdo,
        x_tr,
        y_tr,
        epochs_svdo,
        seed,
        3e-3,
        elbo,
        batch_size=32,
        warmup=True,
        final_lr_ratio=0.01,
    )
    t_svdo = time.perf_counter() - t0

    return {
        "plain_acc": accuracy(plain, x_te, y_te),
        "svdo_acc": accuracy(svdo, x_te, y_te),
        "sparsity": dropkit.sparsity(svdo),
        "plain_s": t_plain,
        "svdo_s": t_svdo,
        "n_train": n,
        "n_test": x_te.shape[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs-plain", type=int, default=100)
    parser.add_argument("--epochs-svdo", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    r = run(args.epochs_plain, args.epochs_svdo, args.seed)
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, 1 thread"
    )
    print(
        f"digits: {r['n_train']} train / {r['n_test']} test, MLP {'-'.join(map(str, SIZES))}, seed {args.seed}"
    )
    print(f"{'model':<28}{'test acc':>10}{'sparsity':>10}{'train s':>10}")
    print(f"{'plain MLP (Adam)':<28}{r['plain_acc']:>10.4f}{0.0:>10.4f}{r['plain_s']:>10.1f}")
    print(
        f"{'LinearSVDO MLP (ELBO)':<28}{r['svdo_acc']:>10.4f}{r['sparsity']:>10.4f}{r['svdo_s']:>10.1f}"
    )
    drop = 100 * (r["plain_acc"] - r["svdo_acc"])
    print(
        f"accuracy change: {-drop:+.2f} points; compression {1 / max(1e-9, 1 - r['sparsity']):.1f}x"
    )


if __name__ == "__main__":
    main()
