"""Cold start: compile dropkit's CPU kernels in a background process while torch ops serve.

On a fresh install numba's disk cache is empty: compiling the CPU kernels takes seconds (about
2.6 s for one dtype's serial loop, more for the parallel ones) and the C++ node of
:mod:`dropkit.kernels.native` takes 15-30 s more and a compiler. None of that may stall a user's
first dropout call, so:

* On the first CPU kernel call of a kind (a dtype's dropout, a dtype's bias + dropout + residual,
  the bare mask, and the counter-based noise of :mod:`dropkit.kernels.noise_cpu`: uniform,
  normal and the fused Gaussian multiply, :data:`NOISE_KINDS`) dropkit asks numba's disk cache whether that kind's compiled code is there
  (:func:`numba_ready`; a read of numba's small index file, no compilation). If it is, numba
  loads it and serves, as before.
* If not, dropkit starts **one** background process, ``python -m dropkit.kernels.warmup <dtype>``,
  which compiles the requested kind first (serial twin, then parallel twin, filling numba's disk
  cache), then the numba cfuncs and the C++ node (:func:`dropkit.kernels.native.build`), then
  every other kind (float32 dropout, the other dtypes, bias + dropout + residual, the mask, then
  the noise kinds). Meanwhile calls of that kind run :mod:`dropkit.kernels.fallback` (noise:
  :mod:`dropkit.kernels.noise_fallback`): the same Philox stream in torch ops, the **same bits**
  (mask and noise are pure functions of seed and offset, whichever code computes them), with the
  CPU kernels' argument checks (:class:`ColdCPU`, :class:`ColdNoise`). It is slower (about 1 ms for
  10^4 elements, 0.4 s for 2^22; Gaussian noise about 3x that), so each kind switches to numba's serial twin as soon as the
  cache holds it, and to the parallel twin when that is cached too (looked up at most every 0.1 s).
* If the background process ends without filling the cache (numba cannot write its cache, or the
  process failed or was killed), numba compiles in this process at the next call, as it did before.
* ``DROPKIT_WARMUP=0`` turns this off: numba compiles in the calling process on first use.
* A forked child (a DataLoader worker) never starts a background process of its own.

A separate process rather than a thread: numba's compiler holds the GIL, and a fallback call is
hundreds of short torch ops, each giving the GIL away and waiting up to the interpreter's 5 ms
switch interval to get it back.

Example:
    >>> from dropkit.kernels import warmup
    >>> warmup.served_by() in ("numba", "torch fallback (numba compiling in the background)")
    True
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import torch

from dropkit.kernels import cpu, fallback, noise_cpu, noise_fallback, threads
from dropkit.kernels._checks import (
    check_bias_residual,
    check_cpu_tensor,
    check_noise_stream,
    check_stream,
)

__all__ = [
    "KINDS",
    "NOISE_KINDS",
    "child_env",
    "disabled",
    "numba_ready",
    "outcome",
    "running",
    "served_by",
    "start",
    "wait",
]

#: Kinds whose numba code may serve in this process without compiling here. Read on hot paths.
READY: set[object] = set()
_LOCK = threading.Lock()
_PROBE_EVERY = 0.1
_STATE: dict[str, object] = {"proc": None, "started": False, "outcome": "not started"}
_NEXT_PROBE: dict[object, float] = {}
_NAMES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def disabled() -> bool:
    """Whether ``DROPKIT_WARMUP=0`` turned the background compile off (numba compiles in the
    calling process on first use; :mod:`dropkit.kernels.native` builds only on an explicit load)."""
    return os.environ.get("DROPKIT_WARMUP", "1") == "0"


#: The counter-based noise kernels' kinds (:mod:`dropkit.kernels.noise_cpu`): (operation, dtype).
NOISE_KINDS: tuple[tuple[str, torch.dtype], ...] = (
    ("multiply", torch.float32),
    ("normal", torch.float32),
    ("uniform", torch.float32),
    ("multiply", torch.float64),
    ("normal", torch.float64),
)


def _samples(kind: object) -> list[tuple[object, tuple]]:
    """(driver, arguments) for the serial then the parallel driver that serve ``kind`` (a torch
    dtype: dropout; ``("bda", dtype)``; ``"mask"``; a noise kind of :data:`NOISE_KINDS`), with
    exactly the types the CPU wrappers pass: each kernel module says its own."""
    if isinstance(kind, tuple) and kind[0] in noise_cpu.DRIVERS:
        return noise_cpu.warmup_calls(kind)
    return cpu.warmup_calls(kind)


#: Every kind the warm-up knows (any other is not a kernel's: the kernels' own checks reject it).
KINDS: tuple[object, ...] = (
    *_NAMES.values(),
    *(("bda", d) for d in _NAMES.values()),
    "mask",
    *NOISE_KINDS,
)
_KNOWN = frozenset(KINDS)


def _cached(driver, args: tuple) -> bool | None:
    """Whether ``driver`` for these argument types is compiled in this process or in numba's disk
    cache (read from numba's cache index; nothing is compiled or loaded). None when numba's
    internals do not answer (another numba version): then the caller treats it as not cached."""
    try:
        signature = tuple(driver.typeof_pyval(a) for a in args)
        if signature in driver.overloads:
            return True
        return _numba_disk_cache_has(driver, signature)
    except Exception:  # numba internals moved: no answer
        return None


def _numba_disk_cache_has(driver, signature: tuple) -> bool:
    """Whether numba's on-disk cache index of the jitted ``driver`` lists ``signature``.

    numba has no public API for this question, so this is the one place dropkit reads numba's
    private cache objects (``Dispatcher._cache``, ``Cache._index_key``,
    ``_CacheFile._load_index``, numba 0.57-0.61). Callers treat an exception as "no answer".
    """
    cache = driver._cache
    key = cache._index_key(signature, driver.targetctx.codegen())
    return key in cache._cache_file._load_index()


def _kind_cached(kind: object) -> bool:
    return all(_cached(driver, args) for driver, args in _samples(kind))


def _parallel_check(kind: object):
    """A check for :data:`dropkit.kernels.threads.PARALLEL_COLD`: True (and gone) once ``kind``'s parallel twin is
    cached or the warm-up has ended; looks at most every 0.1 s."""
    driver, args = _samples(kind)[1]
    key = (driver, args[0].dtype)
    next_look = [0.0]

    def ready() -> bool:
        now = time.monotonic()
        if now < next_look[0]:
            return False
        next_look[0] = now + _PROBE_EVERY
        if _cached(driver, args) or not running():
            threads.PARALLEL_COLD.pop(key, None)
            return True
        return False

    return key, ready


def numba_ready(kind: object) -> bool:
    """True when numba may serve ``kind`` now without compiling in this process.

    Starts the background warm-up when the code is not cached; False while it runs. Once the
    serial twin is cached it serves (the parallel one joins when it is cached too). See the module
    docstring. ``kind``: a torch dtype (dropout), ``("bda", dtype)``, ``"mask"`` or a noise kind
    (:data:`NOISE_KINDS`, e.g. ``("multiply", torch.float32)`` for Gaussian dropout).
    """
    if kind in READY:
        return True
    if kind not in _KNOWN:
        return True  # not a kernel dtype: the CPU kernels' own checks reject it
    with _LOCK:
        if kind in READY:
            return True
        now = time.monotonic()
        if not disabled():
            if now < _NEXT_PROBE.get(kind, 0.0):
                return False
            serial, parallel = (_cached(driver, args) for driver, args in _samples(kind))
            if not (serial and parallel) and (start(kind) or running()):
                if not serial:
                    _NEXT_PROBE[kind] = now + _PROBE_EVERY
                    return False
                key, check = _parallel_check(kind)  # the serial twin serves meanwhile
                threads.PARALLEL_COLD[key] = check
            # else: cached, or the warm-up is over (or could not run): compile what is missing here
        READY.add(kind)
        return True


def _kind_name(kind: object) -> str:
    """``float32``, ``bda-float32``, ``mask``, ``multiply-float32``...: the warm-up's argument."""
    if kind == "mask":
        return "mask"
    if isinstance(kind, tuple):
        return f"{kind[0]}-{str(kind[1]).removeprefix('torch.')}"
    return str(kind).removeprefix("torch.")


def _kind_from_name(name: str) -> object:
    """The kind :func:`_kind_name` names (float32 dropout for a name it does not know)."""
    for kind in KINDS:
        if _kind_name(kind) == name:
            return kind
    return torch.float32


def child_env() -> dict[str, str]:
    """The environment of dropkit's helper processes: this one's, with this process's import path
    (dropkit may be importable here only through a path set at run time)."""
    env = dict(os.environ)
    path = [p for p in sys.path if p]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env


def start(kind: object = torch.float32) -> bool:
    """Starts the background warm-up (``kind`` first) unless this process already did, is a forked
    child, or has it turned off. True if it started it now."""
    if _STATE["started"] or disabled():
        return False
    _STATE["started"] = True
    try:
        _STATE["proc"] = subprocess.Popen(
            [sys.executable, "-m", "dropkit.kernels.warmup", _kind_name(kind)],
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
    except OSError as error:
        _STATE["outcome"] = f"could not start: {error}"
        return False
    _STATE["outcome"] = "running"
    return True


def running() -> bool:
    """Whether this process's background warm-up is still running."""
    proc = _STATE["proc"]
    if proc is None:
        return False
    code = proc.poll()  # type: ignore[attr-defined]
    if code is None:
        return True
    _STATE["outcome"] = "finished" if code == 0 else f"exited with status {code}"
    return False


def outcome() -> str:
    """One of: not started, running, finished, exited with status N, could not start: why."""
    running()
    return str(_STATE["outcome"])


def wait(timeout: float | None = None) -> bool:
    """Waits for this process's background warm-up; True when none is running any more."""
    proc = _STATE["proc"]
    if proc is None:
        return True
    try:
        proc.wait(timeout)  # type: ignore[attr-defined]
    except subprocess.TimeoutExpired:
        return False
    return not running()


def served_by(kind: object = torch.float32) -> str:
    """Which code computes the CPU kernels of ``kind`` right now (for reports and benchmarks):
    a torch dtype (dropout), ``("bda", dtype)``, ``"mask"`` or a noise kind (:data:`NOISE_KINDS`)."""
    if kind in READY:
        return "numba"
    return "torch fallback (numba compiling in the background)"


def _after_fork_in_child() -> None:
    # The parent's warm-up is not this process's child; a forked worker never starts its own.
    _STATE["proc"] = None
    _STATE["started"] = True
    _STATE["outcome"] = "not started (forked child)"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ----------------------------------------------------------------------------------------------
# The torch-ops stand-in while numba compiles: the CPU kernels' checks, the fallback's arithmetic
# ----------------------------------------------------------------------------------------------
class ColdCPU:
    """:mod:`dropkit.kernels.cpu`'s API computed by :mod:`dropkit.kernels.fallback` (same bits,
    same argument checks), for CPU calls made while numba's code is being compiled."""

    @staticmethod
    def dropout_forward(x, seed, offset, threshold, scale):  # noqa: D102
        check_cpu_tensor(x, "x")
        check_stream(x.numel(), seed, offset, threshold)
        if x.requires_grad:
            x = x.detach()
        return fallback.dropout_forward(x, seed, offset, threshold, scale)

    dropout_backward = dropout_forward

    @staticmethod
    def dropout_forward_out(x, out, seed, offset, threshold, scale):  # noqa: D102
        check_cpu_tensor(x, "x")
        check_cpu_tensor(out, "out", x.dtype)
        if out.shape != x.shape:
            raise ValueError(f"out must have x's shape {tuple(x.shape)}, got {tuple(out.shape)}")
        check_stream(x.numel(), seed, offset, threshold)
        if x.requires_grad:
            x = x.detach()
        with torch.no_grad():
            return out.copy_(fallback.dropout_forward(x, seed, offset, threshold, scale))

    @staticmethod
    def keep_mask(n, seed, offset, threshold, device="cpu"):  # noqa: D102
        if torch.device(device).type != "cpu":
            raise ValueError(f"device must be cpu for the numba kernels, got {device}")
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        check_stream(n, seed, offset, threshold)
        return fallback.keep_mask(n, seed, offset, threshold, "cpu")

    @staticmethod
    def bias_dropout_add(x, bias, residual, seed, offset, threshold, scale):  # noqa: D102
        check_cpu_tensor(x, "x")
        check_cpu_tensor(bias, "bias", x.dtype)
        check_cpu_tensor(residual, "residual", x.dtype)
        check_bias_residual(x, bias, residual)
        check_stream(x.numel(), seed, offset, threshold)
        x, bias, residual = (t.detach() for t in (x, bias, residual))
        return fallback.bias_dropout_add(x, bias, residual, seed, offset, threshold, scale)


class ColdNoise:
    """:mod:`dropkit.kernels.noise_cpu`'s API computed by :mod:`dropkit.kernels.noise_fallback`
    (same bits, same argument checks), for noise drawn while numba's code is being compiled."""

    @staticmethod
    def uniform(n, seed, offset):  # noqa: D102
        check_noise_stream(n, seed, offset)
        return noise_fallback.uniform(n, seed, offset, "cpu")

    @staticmethod
    def normal(n, seed, offset, dtype=torch.float32):  # noqa: D102
        check_noise_stream(n, seed, offset)
        return noise_fallback.normal(n, seed, offset, "cpu", dtype)

    @staticmethod
    def gaussian_multiply(x, seed, offset, std):  # noqa: D102
        check_cpu_tensor(x, "x")
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"x must be float32 or float64, got {x.dtype}")
        check_noise_stream(x.numel(), seed, offset)
        with torch.no_grad():
            return noise_fallback.gaussian_multiply(x.detach(), seed, offset, std)


# ----------------------------------------------------------------------------------------------
# The background process
# ----------------------------------------------------------------------------------------------
def _compile(kind: object) -> None:
    for driver, args in _samples(kind):
        driver(*args)


def _order(first: object) -> list[object]:
    """The background process's order: ``first``, then float32 dropout, the other dropout
    dtypes, bias + dropout + residual, the mask, then the noise kinds (each once)."""
    rest = [*_NAMES.values(), *(("bda", d) for d in _NAMES.values()), "mask", *NOISE_KINDS]
    return [first, *(kind for kind in rest if kind != first)]


def _main(argv: list[str]) -> int:
    """``python -m dropkit.kernels.warmup [kind]``: fill numba's cache and build the C++ node."""
    kinds = _order(_kind_from_name(argv[0]) if argv else torch.float32)
    status = 0
    for index, kind in enumerate(kinds):
        try:
            _compile(kind)
        except Exception as error:  # keep going: the other kinds may still compile
            print(f"warm-up: {_kind_name(kind)}: {type(error).__name__}: {error}", file=sys.stderr)
            status = 1
        if index == 0 and os.environ.get("DROPKIT_NATIVE", "1") != "0":
            from dropkit.kernels import native

            try:
                native.kernel_addresses()  # the cfuncs, cached for the process that loads the library
                native.build()
            except Exception as error:  # recorded in the build folder; the Python path serves
                print(f"warm-up: native: {type(error).__name__}: {error}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
