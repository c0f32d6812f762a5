"""Raw-kernel microbenchmark: dropkit's counter-based dropout against torch, in one run.

For float32 tensors of 2^12 ... 2^25 elements (p = 0.1) it times, as the median of several repeats:

* forward: dropkit's kernel (``dropkit.kernels.dropout_forward``: numba on CPU, Triton on CUDA),
  torch eager ``F.dropout``, ``torch.compile(F.dropout)`` and ``x.clone()`` (the memory-bound floor:
  one read, one write);
* forward + backward: dropkit's forward and backward kernels (backward regenerates the mask), the
  same through dropkit's autograd op when ``dropkit.ops`` provides it, torch eager and compiled
  ``F.dropout`` with ``.backward()``, and two clones (the floor);
* bytes autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``);
* on CUDA also fused bias + dropout + residual against eager ``residual + F.dropout(x + bias)``
  and the copy bandwidth.

Run: ``python benchmarks/bench_kernels.py`` (``--quick`` for a short run, ``--device cuda``,
``--allocator warm`` to time with glibc keeping freed memory, ``--allocator jemalloc`` or
``tcmalloc`` to time with that allocator preloaded).
Ratios are ``torch time / dropkit time`` (above 1: dropkit faster) and ``dropkit / clone``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dropkit import kernels

P = 0.1


#: glibc malloc tunables of ``--allocator warm``: no mmap for large blocks and no trimming of the
#: heap top, so a freed 128 MiB tensor's pages are reused by the next one instead of being unmapped
#: and faulted in again 4 KiB at a time.
WARM_ALLOCATOR = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
#: ``--allocator jemalloc|tcmalloc``: the library names the dynamic linker is asked for, in order,
#: and the Debian/Ubuntu package that installs the first. PyTorch's CPU performance tuning guide
#: recommends either allocator for deep-learning workloads.
PRELOAD_ALLOCATORS = {
    "jemalloc": (("jemalloc",), "libjemalloc2"),
    "tcmalloc": (("tcmalloc_minimal", "tcmalloc"), "libtcmalloc-minimal4"),
}
ALLOCATORS = ("default", "warm", *PRELOAD_ALLOCATORS)
#: jemalloc's settings from Intel's PyTorch CPU guides: the first three are what torch's own launcher
#: (``torch.backends.xeon.run_cpu``) sets; the two decay times of -1 keep freed pages in the process.
#: With jemalloc's defaults (or the first three alone) blocks over 8 MiB went back to the OS and large
#: tensors were page-faulted afresh as with glibc. Used unless ``MALLOC_CONF`` is already set.
JEMALLOC_CONF = (
    "oversize_threshold:1,background_thread:true,metadata_thp:auto,"
    "dirty_decay_ms:-1,muzzy_decay_ms:-1"
)
#: Set in the re-executed benchmark to the allocator it was started for (guards against a loop).
_ALLOCATOR_ENV = "DROPKIT_BENCH_ALLOCATOR"


def find_allocator(name: str) -> str | None:
    """The shared library of allocator ``name`` (``jemalloc`` or ``tcmalloc``) as the dynamic
    linker finds it (e.g. ``libjemalloc.so.2``), or None if it is not installed."""
    import ctypes.util

    for lib in PRELOAD_ALLOCATORS[name][0]:
        found = ctypes.util.find_library(lib)
        if found:
            return found
    return None


def loaded_allocator() -> str | None:
    """``jemalloc`` or ``tcmalloc`` if that allocator is mapped into this process, else None."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return None
    for name, (libs, _) in PRELOAD_ALLOCATORS.items():
        if any(f"lib{lib}.so" in maps for lib in libs):
            return name
    return None


def allocator_info() -> str:
    preloaded = loaded_allocator()
    if preloaded:
        conf = os.environ.get("MALLOC_CONF") if preloaded == "jemalloc" else None
        extra = f", MALLOC_CONF={conf}" if conf else ""
        return f"allocator: {preloaded} (LD_PRELOAD={os.environ.get('LD_PRELOAD', '')}{extra})"
    if os.environ.get("MALLOC_MMAP_MAX_") == "0":
        settings = " ".join(f"{k}={os.environ.get(k)}" for k in WARM_ALLOCATOR)
        return f"allocator: warm (glibc {settings}: freed memory stays in the process)"
    return "allocator: default (glibc: tensors over 32 MiB are mmapped and page-faulted afresh)"


def allocator_env(name: str) -> dict[str, str] | None:
    """The environment to re-run the benchmark under allocator ``name``, or None when this process
    already runs under it. Raises ValueError naming the allocator when it cannot be used."""
    if name not in ALLOCATORS:
        raise ValueError(f"--allocator must be one of {', '.join(ALLOCATORS)}; got {name!r}")
    if name == "default":
        return None
    if os.environ.get(_ALLOCATOR_ENV) == name:
        if name in PRELOAD_ALLOCATORS and loaded_allocator() != name:
            raise ValueError(
                f"--allocator {name}: LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r} did not load "
                f"{name} into the benchmark; check the library or use --allocator warm"
            )
        return None
    env = {**os.environ, _ALLOCATOR_ENV: name}
    if name == "warm":
        env.update(WARM_ALLOCATOR)
        return env
    lib = find_allocator(name)
    if lib is None:
        libs, package = PRELOAD_ALLOCATORS[name]
        raise ValueError(
            f"--allocator {name}: the dynamic linker finds no {name} library (lib{libs[0]}.so); "
            f"install it (Debian/Ubuntu: apt-get install {package}) or use --allocator warm, which "
            "needs nothing"
        )
    env["LD_PRELOAD"] = " ".join(filter(None, [lib, os.environ.get("LD_PRELOAD", "")]))
    if name == "jemalloc":
        env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    return env


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str) -> str:
    import numba

    kernels.keep_mask(1 << 17, 0, 0, 0, "cpu")  # starts numba's thread pool (parallel path)
    lines = [
        f"CPU: {cpu_model()}, {os.cpu_count()} logical cores; torch threads "
        f"{torch.get_num_threads()}, numba threads {numba.get_num_threads()} "
        f"(layer {numba.threading_layer()})",
        f"python {platform.python_version()}, torch {torch.__version__}, numba {numba.__version__}",
        allocator_info(),
    ]
    if device == "cuda":
        lines.append(f"GPU: {torch.cuda.get_device_name()}")
    try:
        load = os.getloadavg()
        lines.append(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    except OSError:
        pass
    return "\n".join(lines)


def measure(
    candidates: dict[str, Callable[[], object]], repeats: int, device: str, min_time: float
) -> dict[str, float]:
    """Median seconds per call of each candidate over ``repeats`` rounds.

    The rounds interleave the candidates (A, B, C, A, B, C, ...), so load from other processes
    hits them alike and the ratios stay meaningful on a busy machine; each timed batch runs a
    candidate enough times to last about ``min_time``.
    """
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    inner = {}
    for name, fn in candidates.items():
        fn()  # warm-up: compilation, allocator, caches
        sync()
        start = time.perf_counter()
        fn()
        sync()
        inner[name] = max(1, int(min_time / max(time.perf_counter() - start, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / inner[name])
    return {name: statistics.median(times) for name, times in samples.items()}


def saved_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward when running ``fn(x)``."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.data_ptr() != x.data_ptr():  # a saved input is not extra memory
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x).sum()
    return total


def fmt_time(seconds: float) -> str:
    if seconds >= 1e-1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


@dataclass
class Setup:
    device: str
    repeats: int
    min_time: float
    seed: int
    threshold: int
    scale: float
    eager: Callable[[torch.Tensor], torch.Tensor]
    compiled: Callable[[torch.Tensor], torch.Tensor] | None
    ops_dropout: Callable[..., torch.Tensor] | None


def bench_size(e: int, s: Setup) -> tuple[list[str], list[str], list[str]]:
    """Table rows (forward, forward + backward, saved bytes) for 2^e float32 elements."""
    n = 1 << e
    x = torch.randn(n, device=s.device)
    grad = torch.randn(n, device=s.device)
    xg = x.clone().requires_grad_(True)

    fwd = {
        "dk": lambda: kernels.dropout_forward(x, s.seed, 0, s.threshold, s.scale),
        "eager": lambda: s.eager(x),
        "clone": lambda: x.clone(),
    }
    if s.compiled:
        fwd["compile"] = lambda: s.compiled(x)
    t = measure(fwd, s.repeats, s.device, s.min_time)
    t_comp = t.get("compile", float("nan"))
    fwd_row = [
        f"2^{e}",
        fmt_time(t["dk"]),
        fmt_time(t["eager"]),
        fmt_time(t_comp),
        fmt_time(t["clone"]),
        f"{t['eager'] / t['dk']:.1f}x",
        f"{t_comp / t['dk']:.1f}x",
        f"{t['dk'] / t['clone']:.2f}",
    ]

    def dk_fwd_bwd() -> None:
        kernels.dropout_forward(x, s.seed, 0, s.threshold, s.scale)
        kernels.dropout_backward(grad, s.seed, 0, s.threshold, s.scale)

    def autograd_fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            xg.grad = None
            fn(xg).backward(grad)

        return run

    ops_fn = (lambda t: s.ops_dropout(t, P, s.scale)) if s.ops_dropout else None
    both = {
        "dk": dk_fwd_bwd,
        "eager": autograd_fwd_bwd(s.eager),
        "clone": lambda: (x.clone(), grad.clone()),
    }
    if ops_fn:
        both["ops"] = autograd_fwd_bwd(ops_fn)
    if s.compiled:
        both["compile"] = autograd_fwd_bwd(s.compiled)
    t = measure(both, s.repeats, s.device, s.min_time)
    t_ops = t.get("ops", float("nan"))
    t_comp = t.get("compile", float("nan"))
    bwd_row = [
        f"2^{e}",
        fmt_time(t["dk"]),
        fmt_time(t_ops),
        fmt_time(t["eager"]),
        fmt_time(t_comp),
        fmt_time(t["clone"]),
        f"{t['eager'] / t['dk']:.1f}x",
        f"{t['eager'] / t_ops:.1f}x",
        f"{t_comp / t_ops:.1f}x",
    ]
    mem_row = [
        f"2^{e}",
        fmt_bytes(saved_bytes(ops_fn, xg)) if ops_fn else "-",
        fmt_bytes(saved_bytes(s.eager, xg)),
        fmt_bytes(saved_bytes(s.compiled, xg)) if s.compiled else "-",
    ]
    return fwd_row, bwd_row, mem_row


def cpu_breakdown(e: int, repeats: int) -> None:
    """CPU time (``time.process_time``, one thread) of the pieces of a 2^e float32 forward."""
    import numba
    import numpy as np

    from dropkit.kernels import cpu

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    n = 1 << e
    x = torch.randn(n)
    out = torch.ones_like(x)  # already touched: no page faults
    x_np, out_np = x.numpy(), out.numpy()
    threshold = kernels.threshold_from_p(P)
    scale = np.float32(kernels.scale_from_threshold(threshold))

    def touch(t: torch.Tensor) -> torch.Tensor:
        t.numpy()[:: 4096 // t.element_size()] = 0  # one write per 4 KiB page
        return t

    pieces = {
        "dropkit forward (public, new output)": lambda: kernels.dropout_forward(
            x, 1, 0, threshold, float(scale)
        ),
        "dropkit kernel into a touched buffer": lambda: cpu.dropout_forward_out(
            x, out, 1, 0, threshold, float(scale)
        ),
        "dropkit mask only (1 byte/element)": lambda: kernels.keep_mask(n, 1, 0, threshold, "cpu"),
        "new tensor + first touch, huge pages": lambda: touch(cpu.empty_like(x)),
        "new tensor + first touch, 4 KiB pages": lambda: touch(torch.empty_like(x)),
        "np.copyto into a touched buffer": lambda: np.copyto(out_np, x_np),
        "x.clone()": lambda: x.clone(),
        "torch eager F.dropout": lambda: F.dropout(x, P, training=True),
    }
    samples: dict[str, list[float]] = {name: [] for name in pieces}
    for fn in pieces.values():
        fn()
    for _ in range(repeats):
        for name, fn in pieces.items():
            start = time.process_time()
            fn()
            samples[name].append(time.process_time() - start)
    rows = [[name, fmt_time(statistics.median(t))] for name, t in samples.items()]
    print(f"CPU time of the pieces of a 2^{e} float32 forward (one thread, median of {repeats})")
    print(table(["piece", "CPU time"], rows))


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="sizes 2^12, 2^16, 2^20, 2^25; 3 repeats"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=None, help="timed batches per measurement")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument(
        "--threads", type=int, default=None, help="threads for torch and numba (default: all cores)"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=None, help="exponents e of 2^e elements to run"
    )
    parser.add_argument(
        "--allocator",
        choices=ALLOCATORS,
        default="default",
        help="warm: rerun under glibc's MALLOC_MMAP_MAX_=0 and a large MALLOC_TRIM_THRESHOLD_, so "
        "freed memory stays in the process and a fresh tensor costs no page faults; jemalloc, "
        "tcmalloc: rerun with that allocator preloaded (LD_PRELOAD; it must be installed; jemalloc "
        "with the MALLOC_CONF of Intel's PyTorch guides unless MALLOC_CONF is set), as "
        "PyTorch's CPU tuning guide recommends; every choice applies to every candidate alike",
    )
    parser.add_argument(
        "--cpu-breakdown",
        action="store_true",
        help="only print the CPU time of the pieces of a 2^25 forward (one thread)",
    )
    return parser


def check_device_and_rerun(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses ``--device cuda`` without a device, and re-executes this program under the chosen
    ``--allocator`` (it does not return then)."""
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device cuda: no CUDA device is available here (torch {torch.__version__}, "
            "torch.cuda.is_available() is False); run it on a GPU machine or use --device cpu"
        )
    try:
        env = allocator_env(args.allocator)
    except ValueError as err:
        parser.error(str(err))
    if env is not None:
        # glibc reads its tunables, and the dynamic linker LD_PRELOAD, at start-up: run this
        # program again (as a module, so `dropkit bench` works too) with them set.
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "dropkit.bench", *sys.argv[1:]], env)


def make_setup(args: argparse.Namespace) -> Setup:
    """The measurement settings and the candidates (torch eager, torch.compile, dropkit's op)."""
    repeats = args.repeats or (3 if args.quick else 7)
    min_time = 0.02 if args.quick else 0.05
    threshold = kernels.threshold_from_p(P)
    scale = kernels.scale_from_threshold(threshold)
    seed = 0x5EED
    ops_dropout = None
    try:
        from dropkit import ops

        ops_dropout = ops.dropout_elementwise
    except (ImportError, AttributeError):
        pass

    eager = lambda t: F.dropout(t, P, training=True)  # noqa: E731
    compiled = None
    if not args.no_compile:
        compiled = torch.compile(lambda t: F.dropout(t, P, training=True))
    return Setup(
        args.device, repeats, min_time, seed, threshold, scale, eager, compiled, ops_dropout
    )


def print_tables(
    fwd_rows: list[list[str]], bwd_rows: list[list[str]], mem_rows: list[list[str]]
) -> None:
    """The forward, forward + backward and saved-bytes tables."""
    print("Forward")
    print(
        table(
            ["n", "dropkit", "eager", "compile", "clone", "eager/dk", "compile/dk", "dk/clone"],
            fwd_rows,
        )
    )
    print("\nForward + backward (dropkit raw kernels; dropkit autograd op via dropkit.ops)")
    print(
        table(
            [
                "n",
                "dk kernels",
                "dk autograd",
                "eager",
                "compile",
                "2 clones",
                "eager/dk kern",
                "eager/dk autograd",
                "compile/dk autograd",
            ],
            bwd_rows,
        )
    )
    print("\nBytes saved for backward")
    print(table(["n", "dropkit", "eager", "compile"], mem_rows))


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    check_device_and_rerun(parser, args)
    if args.cpu_breakdown:
        print(machine_info("cpu"))
        print(f"command: python {' '.join(sys.argv)}\n")
        cpu_breakdown(25, args.repeats or 9)
        return
    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    exps = args.sizes or ([12, 16, 20, 25] if args.quick else [12, 14, 16, 18, 20, 22, 24, 25])

    warnings.filterwarnings("ignore")
    setup = make_setup(args)
    print(machine_info(setup.device))
    print(
        f"float32, p = {P}, median of {setup.repeats} repeats; "
        "ratios: torch / dropkit, dropkit / clone"
    )
    print(f"command: python {' '.join(sys.argv)}\n")

    fwd_rows, bwd_rows, mem_rows = [], [], []
    for e in exps:
        fwd_row, bwd_row, mem_row = bench_size(e, setup)
        fwd_rows.append(fwd_row)
        bwd_rows.append(bwd_row)
        mem_rows.append(mem_row)
        print(f"  done 2^{e}", file=sys.stderr, flush=True)
    print_tables(fwd_rows, bwd_rows, mem_rows)

    if setup.device == "cuda":
        cuda_extras(setup.seed, setup.threshold, setup.scale, setup.repeats, setup.min_time)


def cuda_bandwidth_row(
    e: int, seed: int, threshold: int, scale: float, repeats: int, min_time: float
) -> list[str]:
    n = 1 << e
    x = torch.randn(n, device="cuda")
    t = measure(
        {
            "copy": lambda: x.clone(),
            "fwd": lambda: kernels.dropout_forward(x, seed, 0, threshold, scale),
            "bwd": lambda: kernels.dropout_backward(x, seed, 0, threshold, scale),
        },
        repeats,
        "cuda",
        min_time,
    )

    def gbs(seconds: float) -> str:
        return f"{2 * n * 4 / seconds / 1e9:.0f}"

    return [
        f"2^{e}",
        gbs(t["copy"]),
        gbs(t["fwd"]),
        gbs(t["bwd"]),
        f"{t['copy'] / t['fwd']:.0%}",
        f"{t['copy'] / t['bwd']:.0%}",
    ]


def cuda_bias_dropout_add_row(
    tokens: int, hidden: int, seed: int, threshold: int, scale: float, repeats: int, min_time: float
) -> list[str]:
    x = torch.randn(tokens, hidden, device="cuda")
    bias = torch.randn(hidden, device="cuda")
    res = torch.randn(tokens, hidden, device="cuda")
    t = measure(
        {
            "fused": lambda: kernels.bias_dropout_add(x, bias, res, seed, 0, threshold, scale),
            "eager": lambda: res + F.dropout(x + bias, P, training=True),
        },
        repeats,
        "cuda",
        min_time,
    )
    return [
        f"{tokens}x{hidden}",
        fmt_time(t["fused"]),
        fmt_time(t["eager"]),
        f"{t['eager'] / t['fused']:.1f}x",
    ]


def cuda_extras(seed: int, threshold: int, scale: float, repeats: int, min_time: float) -> None:
    """Bandwidth of forward/backward against a copy, and fused bias+dropout+add against eager."""
    rows = [cuda_bandwidth_row(e, seed, threshold, scale, repeats, min_time) for e in (24, 26, 28)]
    print("\nCUDA bandwidth (GB/s, read + write)")
    print(table(["n", "copy", "forward", "backward", "fwd/copy", "bwd/copy"], rows))
    rows = [
        cuda_bias_dropout_add_row(tokens, hidden, seed, threshold, scale, repeats, min_time)
        for tokens, hidden in ((8192, 1024), (16384, 4096))
    ]
    print("\nCUDA bias + dropout + residual")
    print(table(["shape", "dropkit fused", "eager", "eager/fused"], rows))


if __name__ == "__main__":
    main()
