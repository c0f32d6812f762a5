"""dropkit's parallel CPU kernels never use more threads than torch (issue 12, item 3)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numba
import pytest
import torch

from dropkit.kernels import cpu, threads

_N = cpu.PARALLEL_MIN * 4


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)
    cpu.set_max_threads(None)


def _record(monkeypatch):
    """Wraps cpu._run: records (parallel?, numba threads at the call) for every kernel run."""
    calls: list[tuple[bool, int]] = []
    real = cpu._run
    parallel = {cpu._dropout_float_par, cpu._mask_par, cpu._bda_float_par}

    def run(driver, *args):
        calls.append((driver in parallel, numba.get_num_threads()))
        return real(driver, *args)

    monkeypatch.setattr(cpu, "_run", run)
    return calls


def test_one_torch_thread_means_serial_kernels(torch_threads, monkeypatch):
    torch_threads(1)
    calls = _record(monkeypatch)
    x = torch.randn(_N)
    for _ in range(3 * threads.PathChooser.PROBE_MAX // 64):
        cpu.dropout_forward(x, 1, 0, 1000, 1.0)
        cpu.keep_mask(_N, 1, 0, 1000)
    assert calls and not any(parallel for parallel, _ in calls)
    assert cpu.kernel_threads() == 1


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="numba has one thread here")
def test_parallel_kernels_use_torchs_thread_count(torch_threads, monkeypatch):
    torch_threads(2)
    numba.set_num_threads(1)  # whatever numba was told before: torch's count wins
    calls = _record(monkeypatch)
    x = torch.randn(_N)
    expected = cpu.dropout_forward(x, 1, 0, 1000, 1.0)
    for _ in range(40):
        assert torch.equal(cpu.dropout_forward(x, 1, 0, 1000, 1.0), expected)
    parallel_threads = {threads for parallel, threads in calls if parallel}
    assert parallel_threads == {2}  # the chooser tries parallel first, with torch's 2 threads
    assert cpu.kernel_threads() == 2


def test_set_max_threads_forces_serial_and_checks_its_argument(torch_threads, monkeypatch):
    torch_threads(2)
    cpu.set_max_threads(1)
    calls = _record(monkeypatch)
    cpu.dropout_forward(torch.randn(_N), 1, 0, 1000, 1.0)
    assert calls and not any(parallel for parallel, _ in calls)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=f"n must be a positive integer or None, got {bad!r}"):
            cpu.set_max_threads(bad)


@pytest.mark.skipif(
    bool(os.environ.get("NUMBA_THREADING_LAYER")), reason="the user chose a threading layer"
)
def test_dropkit_picks_numbas_workqueue_threading_layer():
    code = (
        "import torch, numba, dropkit\n"
        "from dropkit.kernels import cpu\n"
        "torch.set_num_threads(2)\n"
        "cpu.set_max_threads(2)\n"
        "x = torch.randn(cpu.PARALLEL_MIN * 4)\n"
        "cpu._run(cpu._dropout_float_par, (x.numpy(), x.clone().numpy()), 0, 1, 9, "
        "cpu.scale_arg(x.dtype, 1.0))\n"
        "print(numba.threading_layer())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "workqueue"


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="numba has one thread here")
def test_concurrent_callers_never_overlap_parallel_regions(torch_threads):
    """numba's workqueue layer must not run two parallel regions at once: a caller that finds
    one running takes the serial twin (same bits) instead of waiting or crashing."""
    torch_threads(2)
    x = torch.randn(_N)
    expected = cpu.dropout_forward(x, 5, 3, 20000, 1.25)
    failures: list[int] = []

    def work() -> None:
        for i in range(30):
            if not torch.equal(cpu.dropout_forward(x, 5, 3, 20000, 1.25), expected):
                failures.append(i)

    workers = [threading.Thread(target=work) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert failures == []
    assert not threads._PARALLEL_GATE.locked()
