"""Counter-based noise layers against the torch-RNG formulas they replaced, in one run.

Two tables:

1. **Saved bytes per noise element** for each stochastic layer's training forward, before (the
   same maths drawing ``torch.randn``/``torch.rand`` from torch's global RNG, as dropkit did until
   issue 15) and after (``dropkit.noise``: the noise regenerated in backward from an 8-byte seed).
   Counted with ``torch.autograd.graph.saved_tensors_hooks``, each storage once.
2. **Gaussian dropout speed**: dropkit's fused kernel (``dropkit.functional.gaussian_dropout``)
   against ``x * (1 + std * torch.randn_like(x))``, forward and forward + backward, eager and
   ``torch.compile`` (inductor), median of repeats. Ratio = peer time / dropkit time (above 1:
   dropkit faster).

Run: ``python benchmarks/bench_noise.py`` (``--quick`` for fewer repeats, ``--device cuda``).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import dropkit
from dropkit.functional import learned as FL

EPS = 1e-8


def saved_bytes(fn: Callable[[], torch.Tensor]) -> tuple[int, int]:
    """(bytes autograd saves for backward, each storage once; numel of the output)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out.numel()


# ---- the layers' training rules as they were, on torch's global RNG -------------------------
def before_rules(device: str) -> dict[str, tuple[Callable, Callable]]:
    """name -> (before, after) closures on the same inputs (requires_grad where the layer has it)."""
    g = torch.Generator().manual_seed(0)

    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(device).requires_grad_()

    x = leaf(256, 512)
    w = leaf(256, 512, scale=0.05)
    b = leaf(256)
    log_alpha = torch.full((512,), -1.0, device=device, requires_grad=True)
    log_alpha_w = torch.full((256, 512), -1.0, device=device, requires_grad=True)
    log_sigma2 = torch.full((256, 512), -4.0, device=device, requires_grad=True)
    xc = leaf(32, 16, 16, 16)
    wc = leaf(32, 16, 3, 3, scale=0.1)
    log_sigma2_c = torch.full((32, 16, 3, 3), -4.0, device=device, requires_grad=True)
    p_logit = torch.tensor(-1.0, device=device, requires_grad=True)
    standout_w = leaf(512, 512, scale=0.05)
    std = math.sqrt(0.3 / 0.7)

    def gaussian_before():
        return x * (1.0 + std * torch.randn_like(x))

    def variational_before():
        s = torch.exp(0.5 * log_alpha.clamp(max=0.0))
        return x * (1.0 + s * torch.randn_like(x))

    def variational_linear_before():
        mean = F.linear(x, w, b)
        var = F.linear(x * x, torch.exp(log_alpha_w.clamp(max=0.0)) * w * w)
        return mean + torch.sqrt(var + EPS) * torch.randn_like(mean)

    def svdo_before():
        mean = F.linear(x, w, b)
        var = F.linear(x * x, torch.exp(log_sigma2))
        return mean + torch.sqrt(var + EPS) * torch.randn_like(mean)

    def svdo_conv_before():
        mean = F.conv2d(xc, wc, None, 1, 1)
        var = F.conv2d(xc * xc, torch.exp(log_sigma2_c), None, 1, 1)
        return mean + torch.sqrt(var + EPS) * torch.randn_like(mean)

    def concrete_before():
        p = torch.sigmoid(p_logit)
        u = torch.rand_like(x)
        eps = 1e-7
        logit = (
            torch.log(p + eps)
            - torch.log(1 - p + eps)
            + torch.log(u + eps)
            - torch.log(1 - u + eps)
        )
        return x * (1 - torch.sigmoid(logit / 0.1)) / (1 - p)

    def standout_before():
        keep = torch.sigmoid(F.linear(x, standout_w))
        a = torch.relu(x)
        mask = (torch.rand_like(keep) < keep).to(a.dtype)
        return a * (keep + (mask - keep).detach())

    def standout_after():
        keep = torch.sigmoid(F.linear(x, standout_w))
        return FL.standout(torch.relu(x), keep)

    return {
        "GaussianDropout": (gaussian_before, lambda: dropkit.functional.gaussian_dropout(x, 0.3)),
        "VariationalDropout": (variational_before, lambda: FL.variational_dropout(x, log_alpha)),
        "VariationalLinear": (
            variational_linear_before,
            lambda: FL.variational_linear(x, w, b, log_alpha_w),
        ),
        "LinearSVDO": (svdo_before, lambda: FL.sparse_variational_linear(x, w, log_sigma2, b)),
        "Conv2dSVDO": (
            svdo_conv_before,
            lambda: FL.sparse_variational_conv2d(xc, wc, log_sigma2_c, padding=1),
        ),
        "ConcreteDropout": (
            concrete_before,
            lambda: FL.concrete_dropout(x, torch.sigmoid(p_logit)),
        ),
        "Standout": (standout_before, standout_after),
    }


def memory_table(device: str) -> None:
    print("\nsaved for backward, bytes per noise element (float32; each storage counted once)")
    print(f"{'layer':<20}{'before (torch RNG)':>20}{'after (dropkit.noise)':>24}{'ratio':>8}")
    for name, (before, after) in before_rules(device).items():
        b_bytes, n = saved_bytes(before)
        a_bytes, n_after = saved_bytes(after)
        assert n == n_after, name
        ratio = b_bytes / a_bytes if a_bytes else math.inf
        print(f"{name:<20}{b_bytes / n:>20.2f}{a_bytes / n:>24.2f}{ratio:>10.1f}")


# ---- speed ------------------------------------------------------------------------------
def timed_pair(
    ours: Callable[[], object], peer: Callable[[], object], repeats: int, device: str
) -> tuple[float, float]:
    """Median times of two functions, run alternately so load changes hit both alike."""
    for _ in range(2):
        ours()
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


def randn_gaussian_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    return x * (1.0 + math.sqrt(p / (1.0 - p)) * torch.randn_like(x))


def speed_table(device: str, repeats: int, sizes: list[int]) -> None:
    print(
        "\nGaussian dropout (p = 0.3), float32: dropkit fused kernel vs x * (1 + std * randn_like(x))"
    )
    print(
        f"{'mode':<10}{'pass':<14}{'elements':>10}{'dropkit ms':>12}{'randn_like ms':>15}{'ratio':>8}"
    )
    ours_fn = lambda t: dropkit.functional.gaussian_dropout(t, 0.3)  # noqa: E731
    peer_fn = lambda t: randn_gaussian_dropout(t, 0.3)  # noqa: E731
    for mode in ("eager", "compile"):
        if mode == "compile":
            torch._dynamo.reset()
            ours_fn_m = torch.compile(ours_fn, fullgraph=True)
            peer_fn_m = torch.compile(peer_fn, fullgraph=True)
        else:
            ours_fn_m, peer_fn_m = ours_fn, peer_fn
        for n in sizes:
            x = torch.randn(n, device=device)
            xg = x.clone().requires_grad_()
            for label, ours, peer in (
                ("forward", lambda f=ours_fn_m, t=x: f(t), lambda f=peer_fn_m, t=x: f(t)),
                (
                    "fwd+bwd",
                    lambda f=ours_fn_m, t=xg: f(t).sum().backward(),
                    lambda f=peer_fn_m, t=xg: f(t).sum().backward(),
                ),
            ):
                t_ours, t_peer = timed_pair(ours, peer, repeats, device)
                print(
                    f"{mode:<10}{label:<14}{n:>10}{t_ours * 1e3:>12.3f}{t_peer * 1e3:>15.3f}"
                    f"{t_peer / t_ours:>8.2f}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device")
    repeats = 5 if args.quick else 15
    print(
        f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads, device {args.device}"
    )
    memory_table(args.device)
    speed_table(args.device, repeats, [1 << 16, 1 << 22])


if __name__ == "__main__":
    main()
