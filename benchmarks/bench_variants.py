"""Structured, weight-level and sequence variants against plain-torch peers, in one run.

Each row times dropkit's module and a peer written the usual way in plain torch (timm-style
DropBlock and drop-path with ``torch.bernoulli``, AWD-LSTM's ``LockedDropout`` and
``embedded_dropout``, a Python loop for per-sample DropConnect), forward + backward, median of
repeats, on the CPU (or ``--device cuda``). Ratio = peer time / dropkit time (above 1: dropkit
faster).

Run: ``python benchmarks/bench_variants.py`` (``--quick`` for fewer repeats).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import dropkit


def timed_pair(
    ours: Callable[[], object], peer: Callable[[], object], repeats: int, device: str
) -> tuple[float, float]:
    """Median times of two functions, run alternately so load changes hit both alike."""
    ours()  # warm-up (kernel compilation, allocator)
    peer()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((ours, times[0]), (peer, times[1])):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def fwd_bwd(
    layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        out = layer(x)
        out = out[0] if isinstance(out, tuple) else out
        out.sum().backward()
        return out

    return run


# ---- plain-torch peers ---------------------------------------------------------------------


def timm_drop_block(x: torch.Tensor, p: float, block: int) -> torch.Tensor:
    n, c, h, w = x.shape
    gamma = p / block**2 * h * w / ((h - block + 1) * (w - block + 1))
    seeds = torch.bernoulli(
        torch.full((n, c, h - block + 1, w - block + 1), gamma, device=x.device)
    )
    seeds = F.pad(seeds, [block - 1] * 4)
    keep = 1 - F.max_pool2d(seeds, block, stride=1)
    return x * keep * (keep.numel() / keep.sum().clamp_min(1))


def timm_drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    keep = 1 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


def awd_locked_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p) / (1 - p)
    return x * mask


def awd_embedded_dropout(embed: nn.Embedding, words: torch.Tensor, p: float) -> torch.Tensor:
    w = embed.weight
    mask = w.new_empty((w.size(0), 1)).bernoulli_(1 - p).expand_as(w) / (1 - p)
    return F.embedding(words, mask * w, embed.padding_idx)


def loop_per_sample_linear(x: torch.Tensor, layer: nn.Linear, p: float) -> torch.Tensor:
    keep = 1 - p
    rows = []
    for n in range(x.shape[0]):
        w = layer.weight * torch.bernoulli(torch.full_like(layer.weight, keep)) / keep
        rows.append(F.linear(x[n : n + 1], w, layer.bias))
    return torch.cat(rows)


def loop_per_sample_conv(x: torch.Tensor, layer: nn.Conv2d, p: float) -> torch.Tensor:
    keep = 1 - p
    outs = []
    for n in range(x.shape[0]):
        w = layer.weight * torch.bernoulli(torch.full_like(layer.weight, keep)) / keep
        outs.append(F.conv2d(x[n : n + 1], w, layer.bias, padding=1))
    return torch.cat(outs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    device, repeats = args.device, (5 if args.quick else 21)
    torch.manual_seed(0)

    def act(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, requires_grad=True)

    rows: list[tuple[str, str, float, float]] = []

    def compare(name: str, peer_name: str, ours: Callable, peer: Callable) -> None:
        rows.append((name, peer_name, *timed_pair(ours, peer, repeats, device)))

    x = act(32, 64, 28, 28)
    block = dropkit.DropBlock2d(0.1, 5)
    compare("DropBlock2d(0.1, 5) 32x64x28x28", "timm-style bernoulli", fwd_bwd(block, x),
            fwd_bwd(lambda t: timm_drop_block(t, 0.1, 5), x))  # fmt: skip

    x = act(256, 197, 384)
    path = dropkit.DropPath(0.1)
    compare("DropPath(0.1) 256x197x384", "timm drop_path", fwd_bwd(path, x),
            fwd_bwd(lambda t: timm_drop_path(t, 0.1), x))  # fmt: skip

    x = act(70, 64, 400)
    locked = dropkit.LockedDropout(0.3)
    compare("LockedDropout(0.3) 70x64x400", "AWD-LSTM LockedDropout", fwd_bwd(locked, x),
            fwd_bwd(lambda t: awd_locked_dropout(t, 0.3), x))  # fmt: skip

    emb = dropkit.EmbeddingDropout(100_000, 400, p=0.1).to(device)
    plain_emb = nn.Embedding(100_000, 400).to(device)
    words = torch.randint(0, 100_000, (70, 64), device=device)
    compare("EmbeddingDropout V=100k D=400", "AWD embedded_dropout", fwd_bwd(emb, words),
            fwd_bwd(lambda w: awd_embedded_dropout(plain_emb, w, 0.1), words))  # fmt: skip

    dc = dropkit.DropConnectLinear(256, 256, p=0.5, per_sample=True).to(device)
    x = act(64, 256)
    compare("DropConnectLinear per-sample 64x256", "Python loop per sample", fwd_bwd(dc, x),
            fwd_bwd(lambda t: loop_per_sample_linear(t, dc, 0.5), x))  # fmt: skip

    dcc = dropkit.DropConnectConv2d(16, 32, 3, padding=1, p=0.5, per_sample=True).to(device)
    x = act(32, 16, 16, 16)
    compare("DropConnectConv2d per-sample 32x16x16x16", "Python loop per sample", fwd_bwd(dcc, x),
            fwd_bwd(lambda t: loop_per_sample_conv(t, dcc, 0.5), x))  # fmt: skip

    lstm = nn.LSTM(128, 256, num_layers=2).to(device)
    wd = dropkit.WeightDrop(lstm, p=0.5)
    x = act(35, 32, 128)
    compare("WeightDrop(LSTM 2x256) 35x32", "plain nn.LSTM (no drop)", fwd_bwd(wd, x),
            fwd_bwd(lstm, x))  # fmt: skip

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {device}")  # fmt: skip
    print(
        f"forward + backward, median of {repeats} alternating runs; ratio = peer / dropkit (>1: dropkit faster)\n"
    )
    print(f"{'dropkit':44s} {'ms':>8s}   {'peer':28s} {'ms':>8s} {'ratio':>6s}")
    for name, peer_name, ours, peer in rows:
        print(
            f"{name:44s} {ours * 1e3:8.2f}   {peer_name:28s} {peer * 1e3:8.2f} {peer / ours:6.2f}"
        )


if __name__ == "__main__":
    main()
