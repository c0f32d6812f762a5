"""MNIST-1D MLP training step with and without dropout: dropkit vs torch.nn.Dropout vs none.

The model is the MNIST-1D paper's small MLP, 40 → 100 → 100 → 10 with ReLU, and a dropout layer
after each hidden activation (two layers, p = 0.5 by default); batch 100, cross-entropy, Adam.
One step = forward + backward + optimizer step on a batch drawn from the generated MNIST-1D
training set. Each dropout layer sees a (100, 100) activation: 10^4 elements, where per-call
overhead, not bandwidth, decides the cost.

The variants are timed in interleaved rounds (none, torch, dropkit, none, torch, …) so that load
from other processes hits them alike, and every step is timed on its own: the table gives each
variant's median step (robust to the preemptions of a shared machine) and its overhead over the
median no-dropout step.

A fourth variant, ``dropkit-serial``, is dropkit with its CPU kernels forced serial
(``dropkit.kernels.cpu.set_max_threads(1)``): dropkit's kernels follow ``torch.get_num_threads()``,
and this row shows that they never make a step slower than running them on one thread would. With
``--batch 1000`` each activation has 10^5 elements, above the size where the parallel kernels may
run (``PARALLEL_MIN`` = 2^16); ``--threads 1 2`` makes one table per torch thread count.

Run:
    .venv/bin/python benchmarks/bench_training.py            # 15 rounds x 200 steps, 1 thread
    .venv/bin/python benchmarks/bench_training.py --clock cpu   # CPU time, steadier on a busy machine
    .venv/bin/python benchmarks/bench_training.py --threads 1 2 --batch 1000 --steps 8 --rounds 40

On a busy machine use short blocks (``--steps 8``) and many rounds at 2 threads: OpenMP barriers
make step times heavy-tailed there, and load that shifts between two long blocks shows up as a
difference between variants (at load 17, 50-step blocks put dropkit 44% behind dropkit-serial in
one run; 8-step blocks in the next minutes put it 12% ahead).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numba
import torch
from torch import nn

import dropkit
from dropkit.data import load_mnist1d
from dropkit.kernels import cpu, native


def make_model(dropout: str, p: float) -> nn.Sequential:
    """The MLP with ``dropout`` in {"none", "torch", "dropkit"} after each hidden activation."""

    def drop() -> nn.Module:
        if dropout == "torch":
            return nn.Dropout(p)
        if dropout in ("dropkit", "dropkit-serial"):
            return dropkit.Dropout(p)
        return nn.Identity()

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(40, 100),
        nn.ReLU(),
        drop(),
        nn.Linear(100, 100),
        nn.ReLU(),
        drop(),
        nn.Linear(100, 10),
    )


class Trainer:
    """One model, its optimizer and a cycling batch order over the training set."""

    def __init__(
        self, dropout: str, p: float, x: torch.Tensor, y: torch.Tensor, batch: int
    ) -> None:
        self.serial = dropout == "dropkit-serial"
        self.model = make_model(dropout, p).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-2)
        self.loss = nn.CrossEntropyLoss()
        self.x, self.y, self.batch = x, y, batch
        self.order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
        self.position = 0

    def step(self) -> None:
        if self.position + self.batch > len(self.order):
            self.position = 0
        idx = self.order[self.position : self.position + self.batch]
        self.position += self.batch
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.model(self.x[idx]), self.y[idx]).backward()
        self.optimizer.step()

    def time_steps(self, steps: int, clock=time.perf_counter) -> list[float]:
        """Seconds taken by each of ``steps`` steps."""
        times = []
        cpu.set_max_threads(1 if self.serial else None)
        try:
            for _ in range(steps):
                start = clock()
                self.step()
                times.append(clock() - start)
        finally:
            cpu.set_max_threads(None)
        return times


def run(args: argparse.Namespace, threads: int, data) -> None:
    """Times every variant at ``threads`` torch threads and prints one table."""
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(threads)
    variants = ["none", "torch", "dropkit", "dropkit-serial"]
    trainers = {v: Trainer(v, args.p, data.x_train, data.y_train, args.batch) for v in variants}
    for trainer in trainers.values():  # warm-up: numba loading, allocator, Adam state
        trainer.time_steps(50)

    times: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            times[v].extend(trainers[v].time_steps(args.steps, clock))

    try:
        load = f"{os.getloadavg()[0]:.2f}"
    except OSError:
        load = "?"
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
        f"load {load}, python {platform.python_version()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()} (dropkit kernels {cpu.kernel_threads()}, numba layer "
        f"{numba.config.THREADING_LAYER}), {args.clock} clock"
    )
    print(f"dropkit's C++ autograd node: {native.status()}")
    print(
        f"MNIST-1D MLP 40-100-100-10, batch {args.batch} ({args.batch * 100} elements per dropout), "
        f"Adam, two dropout layers p={args.p}; {args.rounds} interleaved rounds x {args.steps} "
        "steps; median step"
    )
    print(f"{'variant':<15} {'us/step':>9} {'vs none':>9} {'per dropout layer (fwd+bwd)':>29}")
    base = statistics.median(times["none"])
    for v in variants:
        step = statistics.median(times[v])
        per_layer = (step - base) / 2 * 1e6
        layer = f"{per_layer:8.1f} us" if v != "none" else ""
        print(f"{v:<15} {step * 1e6:9.1f} {(step / base - 1) * 100:+8.1f}% {layer:>29}")
    ratio = statistics.median(times["torch"]) / statistics.median(times["dropkit"])
    serial = statistics.median(times["dropkit-serial"]) / statistics.median(times["dropkit"])
    print(
        f"dropkit step is {ratio:.2f}x faster than torch.nn.Dropout's (target: dropout adds <= 10%); "
        f"forced-serial / dropkit = {serial:.2f} (>= 1: following torch's threads never loses)"
    )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=200, help="steps per variant per round")
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1],
        help="torch intra-op threads, one table each (default 1: a 100x100 layer gains nothing "
        "from more, and on a shared machine OpenMP barriers make multi-thread step times noisy)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter; cpu: this process's CPU time (steadier on a shared machine; "
        "use with --threads 1)",
    )
    args = parser.parse_args()
    data = load_mnist1d()
    for threads in args.threads:
        run(args, threads, data)


if __name__ == "__main__":
    main()
