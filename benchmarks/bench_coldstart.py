"""Cold start: the first training-mode dropout forward + backward in a fresh environment.

Each measurement is a fresh Python process whose numba cache (``NUMBA_CACHE_DIR``) and native
build folder (``DROPKIT_NATIVE_DIR``) point at new empty temporary folders, as on a fresh install.
The process imports torch and dropkit, then times its first ``dropout(x, 0.5)`` forward +
``backward`` on a tensor that requires grad, then the second one. torch's ``F.dropout`` is timed
the same way in its own fresh process. A *warm* row re-runs dropkit in a new process on the caches
the cold run left (after its background warm-up finished): the cost on every later start. The
*gaussian* rows do the same for ``dropkit.GaussianDropout(0.5)`` (the counter-based noise kernels,
:mod:`dropkit.kernels.noise`) in its own fresh caches; ``--no-gaussian`` skips them.

Sizes: ``small`` is (100, 100) (a small MLP's activation, the C++ node's range), ``large`` is
(1024, 4096) = 2^22 elements (numba's parallel kernels).

Run:
    .venv/bin/python benchmarks/bench_coldstart.py                # small and large, 3 repeats
    .venv/bin/python benchmarks/bench_coldstart.py --repeats 1 --sizes small
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

SIZES = {"small": (100, 100), "large": (1024, 4096)}

# The measured process. Prints one JSON line.
_CHILD = r"""
import json, sys, time
start = time.perf_counter()
import torch
import dropkit
imported = time.perf_counter() - start
which, shape = sys.argv[1], tuple(int(s) for s in sys.argv[2].split("x"))
wait_warm = sys.argv[3] == "1"
torch.manual_seed(0)
x = torch.randn(shape, requires_grad=True)
grad = torch.ones(shape)
if which == "gaussian":  # dropkit.GaussianDropout: the counter-based noise kernels
    drop = lambda x, p, training: dropkit.GaussianDropout(p)(x)  # noqa: E731
else:
    drop = dropkit.functional.dropout if which == "dropkit" else torch.nn.functional.dropout
times = []
for _ in range(2):
    t = time.perf_counter()
    drop(x, 0.5, training=True).backward(grad)
    times.append(time.perf_counter() - t)
info = {"import_s": imported, "first_s": times[0], "second_s": times[1]}
kind = ("multiply", torch.float32) if which == "gaussian" else torch.float32
if which != "torch":
    from dropkit.kernels import native
    try:
        from dropkit.kernels import warmup
    except ImportError:  # before the background warm-up existed
        warmup = None
    info["served_first_by"] = warmup.served_by(kind) if warmup else "numba"
    if wait_warm and warmup is not None:
        t = time.perf_counter()
        warmup.wait(timeout=600)
        info["warm_up_s"] = time.perf_counter() - t + sum(times)
        for _ in range(2):  # the calls that load numba's and the native build's output
            drop(x, 0.5, training=True).backward(grad)
        t = time.perf_counter()
        drop(x, 0.5, training=True).backward(grad)
        info["after_warm_up_s"] = time.perf_counter() - t
        info["served_after_by"] = warmup.served_by(kind)
    info["native"] = native.status()
print(json.dumps(info))
"""


def run_child(which: str, shape: tuple[int, int], caches: str, wait_warm: bool) -> dict:
    env = {
        **os.environ,
        "NUMBA_CACHE_DIR": os.path.join(caches, "numba"),
        "DROPKIT_NATIVE_DIR": os.path.join(caches, "native"),
    }
    dims = "x".join(map(str, shape))
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, which, dims, "1" if wait_warm else "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"child failed ({which} {dims}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["small", "large"])
    parser.add_argument(
        "--no-gaussian",
        dest="gaussian",
        action="store_false",
        help="skip the GaussianDropout rows (the counter-based noise kernels' cold start)",
    )
    args = parser.parse_args()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    import numba
    import torch

    print(
        f"machine: {platform.machine()} {os.cpu_count()} CPUs, load {load:.2f}; python "
        f"{platform.python_version()}, torch {torch.__version__}, numba {numba.__version__}"
    )
    print("fresh process, empty NUMBA_CACHE_DIR and DROPKIT_NATIVE_DIR; seconds, medians")
    header = (
        f"{'size':<6} {'run':<13} {'import':>7} {'1st fwd+bwd':>12} {'2nd':>8} "
        f"{'warm-up':>8} {'after':>8}  served by (first -> after warm-up)"
    )
    print(header)
    for size in args.sizes:
        shape = SIZES[size]
        rows: dict[str, list[dict]] = {"torch": [], "dropkit cold": [], "dropkit warm": []}
        if args.gaussian:
            rows.update({"gaussian cold": [], "gaussian warm": []})
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix="dropkit-cold-") as caches:
                rows["torch"].append(run_child("torch", shape, caches, False))
                started = time.perf_counter()
                rows["dropkit cold"].append(run_child("dropkit", shape, caches, True))
                rows["dropkit cold"][-1]["wall_s"] = time.perf_counter() - started
                rows["dropkit warm"].append(run_child("dropkit", shape, caches, False))
            if args.gaussian:  # its own empty caches: the first call of the process is Gaussian
                with tempfile.TemporaryDirectory(prefix="dropkit-cold-") as caches:
                    rows["gaussian cold"].append(run_child("gaussian", shape, caches, True))
                    rows["gaussian warm"].append(run_child("gaussian", shape, caches, False))
        for name, runs in rows.items():

            def med(key: str, runs=runs) -> str:
                values = [r[key] for r in runs if key in r]
                return f"{statistics.median(values):8.3f}" if values else f"{'':>8}"

            served = ""
            if name != "torch":
                last = runs[-1]
                served = last.get("served_first_by", "")
                if "served_after_by" in last:
                    served += f" -> {last['served_after_by']}"
                served += f"; native: {last.get('native', '')[:40]}"
            print(
                f"{size:<6} {name:<13} {med('import_s')[1:]:>7} {med('first_s'):>12} "
                f"{med('second_s')} {med('warm_up_s')} {med('after_warm_up_s')}  {served}"
            )
        torch_first = statistics.median(r["first_s"] for r in rows["torch"])
        cold_first = statistics.median(r["first_s"] for r in rows["dropkit cold"])
        print(
            f"{size}: dropkit's cold first fwd+bwd {cold_first:.3f} s "
            f"({cold_first / torch_first:.1f}x torch's {torch_first:.3f} s; target < 3 s)"
        )
        if args.gaussian:
            gauss_first = statistics.median(r["first_s"] for r in rows["gaussian cold"])
            print(
                f"{size}: GaussianDropout's cold first fwd+bwd {gauss_first:.3f} s "
                f"({gauss_first / torch_first:.1f}x torch's dropout; target < 3 s)"
            )


if __name__ == "__main__":
    main()
