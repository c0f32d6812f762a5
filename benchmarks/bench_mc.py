"""Monte-Carlo dropout: batched ``dropkit.mc.predict`` against a Python loop of T forward passes.

For an MLP (MNIST-1D sized: 40 → 256 → 256 → 10, dropout on the hidden layers), a small 1-D CNN
(two conv blocks, then dropout and a dense head) and a tiny Hugging Face GPT-2 built from its config
(2 layers, 4 heads, width 64, 32 tokens; attention and residual dropout 0.1, sdpa attention; its
attention dropout is functional, found and sampled by ``predict``), T = 100 samples of N rows:

- ``loop``: ``with mc_dropout(model): [model(x) for _ in range(T)]`` — the plain way;
- ``predict(batched=False)``: dropkit's loop mode (T plain forward passes, per-sample seeding);
- ``predict``: batched, trunk computed once, chunked to the default memory budget.

Prints medians (ms), the speed-up of ``predict`` over the plain loop, and the largest difference
between ``predict`` and ``predict(batched=False)`` for the same seed (the masks are identical; the
difference is matmul rounding over more rows).

``--hf-train`` instead times one training step (forward, backward, AdamW) of a small GPT-2
(4 layers, width 128, 8 × 64 tokens, every dropout 0.1) with torch's attention dropout (sdpa) and
after ``convert_dropout`` (dropout modules and attention dropout through dropkit's kernel).

Run: ``.venv/bin/python benchmarks/bench_mc.py`` (``--quick`` for fewer repeats; ``--models gpt2``
for the GPT-2 rows only; ``--hf-train`` for the training step).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

import dropkit
from dropkit.mc import mc_dropout, mc_plan, predict


class SmallCNN(nn.Sequential):
    """Conv(1→32, 5) → ReLU → Conv(32→32, 5) → ReLU → MaxPool(2) → flatten → Dropout → FC 128 → ReLU
    → Dropout → FC 10, on (N, 1, 40) inputs."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(
            nn.Conv1d(1, 32, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(32, 32, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Flatten(),
            dropkit.Dropout(p),
            nn.Linear(32 * 20, 128),
            nn.ReLU(),
            dropkit.Dropout(p),
            nn.Linear(128, 10),
        )


class ResidualCNN(nn.Module):
    """The CNN as a custom forward (not a Sequential): the trunk is found with torch.fx."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 32, 5, padding=2)
        self.conv2 = nn.Conv1d(32, 32, 5, padding=2)
        self.drop = dropkit.Dropout(p)
        self.fc1 = nn.Linear(32 * 40, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        h = h + torch.relu(self.conv2(h))
        h = self.drop(h.flatten(1))
        return self.fc2(self.drop(torch.relu(self.fc1(h))))


def median_ms(fns: list, repeats: int) -> list[float]:
    """Median wall time of each function; the functions take turns, so load spikes hit all alike."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            bucket.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(bucket) for bucket in times]


class TinyGPT2(nn.Module):
    """A tiny transformers GPT-2 (from its config, no download) returning the logits."""

    def __init__(self, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            n_layer=2, n_head=4, n_embd=64, vocab_size=256, n_positions=64, attn_pdrop=0.1,
            resid_pdrop=0.1, embd_pdrop=0.1, bos_token_id=0, eos_token_id=0,
            attn_implementation=attn_implementation,
        )  # fmt: skip
        self.gpt2 = GPT2LMHeadModel(config)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.gpt2(ids, use_cache=False).logits


def plain_loop(model: nn.Module, x: torch.Tensor, T: int) -> torch.Tensor:
    # Example inputs let mc_dropout find GPT-2's functional attention dropout (no-op for the rest).
    with torch.no_grad(), mc_dropout(model, x):
        return torch.stack([model(x) for _ in range(T)])


def hf_train_step(repeats: int) -> None:
    """One GPT-2 training step with torch's attention dropout and with dropkit's."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from dropkit.convert import convert_dropout

    def build(convert: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        config = GPT2Config(
            n_layer=4, n_head=4, n_embd=128, vocab_size=512, n_positions=128, attn_pdrop=0.1,
            resid_pdrop=0.1, embd_pdrop=0.1, bos_token_id=0, eos_token_id=0,
            attn_implementation="sdpa",
        )  # fmt: skip
        model = GPT2LMHeadModel(config).train()
        if convert:
            convert_dropout(model)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-4)

    ids = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(0))
    runs = {name: build(name == "dropkit") for name in ("torch sdpa", "dropkit")}

    def step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        model(ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()

    times = median_ms([lambda m=m, o=o: step(m, o) for m, o in runs.values()], repeats)
    print("GPT-2 training step (4 layers, width 128, 8 × 64 tokens, dropout 0.1 everywhere)")
    for (name, _), t in zip(runs.items(), times, strict=True):
        print(f"  {name:<12} {t:8.1f} ms")
    print(f"  dropkit / torch: {times[1] / times[0]:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=100)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1, 8, 32, 128, 256], help="batch sizes N"
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["mlp", "cnn", "fx", "gpt2"],
        choices=["mlp", "cnn", "fx", "gpt2"],
        help="which models (default: all four)",
    )
    parser.add_argument(
        "--hf-train", action="store_true", help="time a GPT-2 training step instead"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 9
    if args.hf_train:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        hf_train_step(repeats)
        return
    torch.manual_seed(0)
    models = {
        name: model
        for key, (name, model) in {
            "mlp": (
                "MLP 40-256-256-10",
                (dropkit.MLP([40, 256, 256, 10], p=[0.0, 0.5, 0.5]), (40,)),
            ),
            "cnn": ("CNN (Sequential)", (SmallCNN(), (1, 40))),
            "fx": ("CNN (custom, fx)", (ResidualCNN(), (1, 40))),
            "gpt2": ("GPT-2 tiny (HF)", (TinyGPT2() if "gpt2" in args.models else None, None)),
        }.items()
        if key in args.models
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"T = {args.T}; times are medians of {repeats} runs in ms\n")
    header = f"{'model':<20} {'N':>5} {'plan':>10} {'loop':>9} {'loop mode':>10} {'predict':>9} {'speed-up':>9} {'max |Δ|':>9}"
    print(header, flush=True)
    print("-" * len(header))
    for name, (model, feature_shape) in models.items():
        for n in args.sizes:
            if feature_shape is None:  # token ids
                x = torch.randint(0, 256, (n, 32), generator=torch.Generator().manual_seed(n))
            else:
                x = torch.randn(n, *feature_shape)
            plan = mc_plan(model, x).strategy
            t_loop, t_loop_mode, t_batched = median_ms(
                [
                    lambda model=model, x=x: plain_loop(model, x, args.T),
                    lambda model=model, x=x: predict(model, x, args.T, seed=0, batched=False),
                    lambda model=model, x=x: predict(model, x, args.T, seed=0),
                ],
                repeats,
            )
            diff = (
                (
                    predict(model, x, args.T, seed=0)
                    - predict(model, x, args.T, seed=0, batched=False)
                )
                .abs()
                .max()
            )
            print(
                f"{name:<20} {n:>5} {plan:>10} {t_loop:>9.1f} {t_loop_mode:>10.1f} {t_batched:>9.1f} "
                f"{t_loop / t_batched:>8.1f}× {float(diff):>9.1e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
