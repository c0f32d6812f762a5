"""Shared by the cold-start tests (test_coldstart, test_noise_coldstart): a child process's
environment, and this process made to look like a fresh install while the warm-up runs."""

from __future__ import annotations

import os
from collections.abc import Iterator

from dropkit.kernels import cpu, native, noise_cpu, small, threads, warmup


def child_env(**extra: str) -> dict[str, str]:
    """This tree's ``src`` first on PYTHONPATH, the background warm-up back on (conftest turns it
    off for the other tests), then ``extra``."""
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    env.pop("DROPKIT_WARMUP", None)
    env.update(extra)
    return env


def cold_process(monkeypatch) -> Iterator[list[object]]:
    """This process as on a fresh install: numba's cache empty, the warm-up running, the
    small-tensor lane and the C++ node not loaded yet, and any numba run an error. Yields the
    kinds the warm-up was asked to start with; restores everything after."""
    monkeypatch.delenv("DROPKIT_WARMUP", raising=False)
    ready = set(warmup.READY)
    warmup.READY.clear()
    started: list[object] = []

    def start(kind=None):  # as the real one: True only the first time
        started.append(kind)
        return len(started) == 1

    monkeypatch.setattr(warmup, "_cached", lambda driver, args: False)
    monkeypatch.setattr(warmup, "start", start)
    monkeypatch.setattr(warmup, "running", lambda: True)
    monkeypatch.setattr(warmup, "_NEXT_PROBE", {})
    lane = dict(small.ENTRIES)
    small.ENTRIES.clear()  # the small-tensor lane serves nothing yet
    monkeypatch.setattr(native, "_NODES", [native._UNLOADED, None])

    def no_numba(*args, **kwargs):
        raise AssertionError("numba ran while its code was being compiled")

    monkeypatch.setattr(cpu, "_run", no_numba)
    monkeypatch.setattr(noise_cpu, "_run", no_numba)
    try:
        yield started
    finally:
        warmup.READY.clear()
        warmup.READY.update(ready)
        small.ENTRIES.update(lane)
        threads.PARALLEL_COLD.clear()
