"""Threads of dropkit's parallel CPU kernels: never more than torch uses, one parallel region at a
time, serial or parallel as measured.

Every numba kernel with a ``prange`` twin (:mod:`dropkit.kernels.cpu` and
:mod:`dropkit.kernels.noise_cpu`) runs through :func:`run_twins`: the serial twin below
``PARALLEL_MIN`` elements, with one thread to use (torch's count, 1 in a forked child), while
another dropkit parallel region runs, or while the parallel twin is still being compiled on a fresh
install (:mod:`dropkit.kernels.warmup`); otherwise the faster twin as measured by a
:class:`PathChooser`. Both twins give the same bits, so the choice only affects speed.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable

import numba
import torch

__all__ = [
    "PARALLEL_COLD",
    "PARALLEL_MIN",
    "THREADING_LAYER",
    "PathChooser",
    "claim_parallel",
    "forked_child",
    "kernel_threads",
    "release_parallel",
    "run_twins",
    "set_max_threads",
    "use_threads",
]

#: Below this many elements the serial kernels run (no thread-pool launch).
PARALLEL_MIN = 1 << 16


# ----------------------------------------------------------------------------------------------
# Serial or parallel: measured, not assumed
# ----------------------------------------------------------------------------------------------
class PathChooser:
    """Picks the serial or the parallel twin of a kernel for tensors of ``PARALLEL_MIN`` or more.

    Both give the same bits, so the choice only affects speed. On an idle machine the parallel
    kernel wins for large tensors; on an oversubscribed one (more runnable threads than cores) a
    parallel region waits for a descheduled worker thread and can take a full scheduler time slice
    (measured: 14 ms instead of 0.1 ms for 2^18 floats on a 2-core machine at load 10). So each
    size class (power of two of the element count) keeps an exponential moving average of the
    seconds per element of each path, uses the faster one, and re-measures the other now and then,
    with exponential back-off while the choice keeps being confirmed.
    """

    PROBE_MIN = 8
    PROBE_MAX = 512

    def __init__(self) -> None:
        # size class -> [ema serial, ema parallel, calls until next probe, probe interval]
        self.stats: dict[int, list[float]] = {}

    def pick(self, n: int) -> tuple[bool, int]:
        """(use_parallel, size class) for a call on n >= PARALLEL_MIN elements."""
        size_class = n.bit_length()
        st = self.stats.get(size_class)
        if st is None:
            st = self.stats[size_class] = [math.nan, math.nan, self.PROBE_MIN, self.PROBE_MIN]
        serial_time, parallel_time = st[0], st[1]
        if math.isnan(parallel_time):
            return True, size_class
        if math.isnan(serial_time):
            return False, size_class
        best_parallel = parallel_time <= serial_time
        st[2] -= 1
        if st[2] <= 0:  # probe the other path
            return not best_parallel, size_class
        return best_parallel, size_class

    def record(self, size_class: int, parallel: bool, seconds_per_element: float) -> None:
        st = self.stats[size_class]
        index = 1 if parallel else 0
        was_best_parallel = st[1] <= st[0]
        old = st[index]
        # Quick to believe a faster time (a slow outlier such as the thread pool's start-up must
        # not condemn a path for long), slow to believe a slower one.
        st[index] = (
            seconds_per_element
            if math.isnan(old)
            else min(seconds_per_element, 0.75 * old + 0.25 * seconds_per_element)
        )
        if st[2] <= 0:  # this was a probe: back off if the choice held, else look again soon
            holds = (st[1] <= st[0]) == was_best_parallel
            st[3] = min(st[3] * 2, self.PROBE_MAX) if holds else float(self.PROBE_MIN)
            st[2] = st[3]


# GNU OpenMP (numba's "omp" threading layer) cannot run in a child forked from a process that
# used it: the child is terminated ("fork() called from a process already using GNU OpenMP").
# DataLoader workers and multiprocessing's fork start method do exactly that, so a forked child
# only ever takes the serial twins (same bits, no thread pool), whatever the layer.
_FORKED_CHILD = False


def _mark_forked_child() -> None:
    global _FORKED_CHILD
    _FORKED_CHILD = True


def forked_child() -> bool:
    """True in a child forked from this process (its parallel kernels run serial)."""
    return _FORKED_CHILD


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_mark_forked_child)


# ----------------------------------------------------------------------------------------------
# Threads: never more than torch uses
# ----------------------------------------------------------------------------------------------
#: The numba threading layer dropkit picks when the user has not (``NUMBA_THREADING_LAYER``).
#: ``workqueue`` is numba's own pool, present in every numba install: its idle workers sleep on
#: a condition variable instead of spinning (a GNU OpenMP pool beside torch's own OpenMP pool
#: spins for CPU time that torch's threads need), and it survives fork. It is not safe for two
#: threads launching parallel regions at once: :data:`_PARALLEL_GATE` serialises them.
THREADING_LAYER = "workqueue"

#: Held while a parallel twin runs; a thread that finds it taken runs the serial twin instead
#: (same bits), so two parallel regions never overlap and no caller ever waits for another.
_PARALLEL_GATE = threading.Lock()
#: At most this many threads for the parallel twins (None: follow torch). See :func:`set_max_threads`.
_MAX_THREADS: list[int | None] = [None]
#: (parallel twin, NumPy dtype) -> a check, True once the twin may run. Filled on a fresh install
#: by :mod:`dropkit.kernels.warmup` while a parallel twin is still being compiled in the
#: background (its serial twin serves meanwhile), read here and by
#: :mod:`dropkit.kernels.noise_cpu`; empty otherwise.
PARALLEL_COLD: dict[tuple[object, object], object] = {}


def _pick_threading_layer() -> None:
    """Sets numba's threading layer to :data:`THREADING_LAYER` unless the user chose one or
    numba's pool is already running (the layer cannot change then)."""
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return
    try:
        from numba.np.ufunc import parallel as numba_parallel

        if getattr(numba_parallel, "_is_initialized", False):
            return
    except ImportError:  # pragma: no cover - other numba layouts
        pass
    numba.config.THREADING_LAYER = THREADING_LAYER


_pick_threading_layer()


def set_max_threads(n: int | None) -> None:
    """Caps the threads of dropkit's parallel CPU kernels at ``n`` (None: ``torch.get_num_threads()``).

    By default the kernels use as many threads as torch's intra-op pool
    (``torch.get_num_threads()``, read at each call in the calling thread), never more than
    numba's pool (``NUMBA_NUM_THREADS``); 1 thread means the serial kernels. ``set_max_threads(1)``
    forces them serial (the benchmarks' baseline). Same bits either way.

    Example:
        >>> set_max_threads(1); kernel_threads()
        1
        >>> set_max_threads(None)
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    _MAX_THREADS[0] = n


def kernel_threads() -> int:
    """Threads the parallel kernels would use for a call made now from this thread.

    ``min(torch.get_num_threads(), NUMBA_NUM_THREADS, set_max_threads cap)``; 1 in a forked child.

    Example:
        >>> kernel_threads() <= torch.get_num_threads()
        True
    """
    if _FORKED_CHILD:
        return 1
    threads = min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)
    cap = _MAX_THREADS[0]
    return max(1, threads if cap is None else min(threads, cap))


def claim_parallel(n: int) -> int:
    """For a kernel on ``n`` elements: the threads its parallel twin may use now, with the
    one-parallel-region-at-a-time gate taken (give it back with :func:`release_parallel`), or 0:
    run the serial twin (below ``PARALLEL_MIN``, one thread to use, or another region running).

    Every dropkit kernel with a ``prange`` twin (these and :mod:`dropkit.kernels.noise_cpu`) goes
    through here, so none of them oversubscribes torch's cores or overlaps another's region.
    """
    threads = 1 if n < PARALLEL_MIN else kernel_threads()
    if threads <= 1 or not _PARALLEL_GATE.acquire(blocking=False):
        return 0
    return threads


def release_parallel() -> None:
    """Gives back the gate taken by a non-zero :func:`claim_parallel`."""
    _PARALLEL_GATE.release()


def use_threads(threads: int) -> None:
    """Sets numba's thread count for the calling thread (numba keeps one per thread) before a
    parallel twin runs; ``threads`` from :func:`claim_parallel`."""
    if numba.get_num_threads() != threads:
        numba.set_num_threads(threads)


def run_twins(
    parallel,
    serial,
    n: int,
    dtype: object,
    call: Callable[[object], None],
    warm: Callable[[object], bool],
    choosers: dict[int, PathChooser],
) -> None:
    """Runs ``call(serial)`` or ``call(parallel)`` for a kernel on ``n`` elements of ``dtype``.

    The serial twin below ``PARALLEL_MIN``, with one thread to use, while another region runs
    (see :func:`claim_parallel`) or while the parallel twin is still compiling (``PARALLEL_COLD``);
    else the faster twin as measured by ``choosers[threads]``, on :func:`kernel_threads` threads.
    ``warm(driver)`` says whether the driver ran before in this process (a first call compiles or
    loads numba's cache: it is not a timing).
    """
    if PARALLEL_COLD and n >= PARALLEL_MIN:
        ready = PARALLEL_COLD.get((parallel, dtype))
        if ready is not None and not ready():  # still being compiled in the background
            call(serial)
            return
    threads = claim_parallel(n)
    if not threads:
        call(serial)
        return
    try:
        chooser = choosers.get(threads) or choosers.setdefault(threads, PathChooser())
        use_parallel, size_class = chooser.pick(n)
        driver = parallel if use_parallel else serial
        if use_parallel:
            use_threads(threads)
        if not warm(driver):
            call(driver)
            return
        start = time.perf_counter()
        call(driver)
        chooser.record(size_class, use_parallel, (time.perf_counter() - start) / n)
    finally:
        release_parallel()
