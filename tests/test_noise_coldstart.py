"""Cold start of the counter-based noise kernels (issue 12, item 2): while numba compiles a noise
kind in the background, :mod:`dropkit.kernels.noise_fallback` serves it with the same bits and the
numba kernels' argument checks; the first Gaussian dropout call on a fresh install compiles
nothing in the calling process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import dropkit
from dropkit.kernels import cpu, noise, noise_cpu, threads, warmup
from tests.coldstart import child_env, cold_process

_REAL_NOISE_RUN = noise_cpu._run
_SIZES = [1, 1000, noise_cpu.PARALLEL_MIN * 2 + 3]


@pytest.fixture
def cold(monkeypatch):
    """This process as on a fresh install (tests/coldstart.py)."""
    yield from cold_process(monkeypatch)


def _draws(n: int, seed: int, offset: int) -> dict[str, torch.Tensor]:
    x32 = torch.randn(n, generator=torch.Generator().manual_seed(n))
    return {
        "uniform": noise.uniform(n, seed, offset),
        "normal32": noise.normal(n, seed, offset, "cpu", torch.float32),
        "normal64": noise.normal(n, seed, offset, "cpu", torch.float64),
        "multiply32": noise.gaussian_multiply(x32, seed, offset, 0.7),
        "multiply64": noise.gaussian_multiply(x32.double(), seed, offset, 0.7),
    }


def test_cold_noise_fallback_gives_numba_s_bits(monkeypatch):
    cases = [(n, seed, offset) for n in _SIZES for seed, offset in [(0, 0), (2**64 - 5, 2**40 + 3)]]
    warm = {case: _draws(*case) for case in cases}  # numba (conftest: no background warm-up)
    ready = set(warmup.READY)
    try:
        monkeypatch.delenv("DROPKIT_WARMUP", raising=False)
        warmup.READY.clear()
        monkeypatch.setattr(warmup, "_cached", lambda driver, args: False)
        monkeypatch.setattr(warmup, "start", lambda kind=None: True)
        monkeypatch.setattr(warmup, "running", lambda: True)
        monkeypatch.setattr(warmup, "_NEXT_PROBE", {})
        monkeypatch.setattr(noise_cpu, "_run", lambda *a: pytest.fail("numba ran"))
        for case, expected in warm.items():
            got = _draws(*case)
            for name, tensor in expected.items():
                assert got[name].dtype == tensor.dtype and not got[name].requires_grad
                assert torch.equal(got[name], tensor), (case, name)
        for kind in warmup.NOISE_KINDS:
            assert warmup.served_by(kind).startswith("torch fallback"), kind
    finally:
        warmup.READY.clear()
        warmup.READY.update(ready)


def test_the_first_noise_kind_asked_for_is_compiled_first(cold):
    x = torch.randn(8, 16, requires_grad=True)
    y = dropkit.GaussianDropout(0.3)(x)
    y.sum().backward()
    assert cold[0] == ("multiply", torch.float32)
    assert warmup._order(cold[0])[:2] == [("multiply", torch.float32), torch.float32]
    assert sorted(map(str, warmup._order(cold[0]))) == sorted(map(str, warmup.KINDS))
    assert warmup._kind_from_name(warmup._kind_name(("normal", torch.float64))) == (
        "normal",
        torch.float64,
    )


_BAD = [
    ("uniform", (4, -1, 0), (4, -1, 0), ValueError, "seed must be an integer in"),
    ("normal", (-2, 0, 0), (-2, 0, 0), ValueError, "n must be a non-negative integer, got -2"),
    ("normal", (4, 0, 0, "cpu", torch.float16), (4, 0, 0, torch.float16), TypeError, "dtype must"),
    ("gaussian_multiply", (torch.ones(4, dtype=torch.int64), 0, 0, 0.5), None, TypeError, "x must"),
    ("gaussian_multiply", (torch.ones(4), 0, 2**63 - 1, 0.5), None, ValueError, "offset must be"),
    ("gaussian_multiply", ([1.0], 0, 0, 0.5), None, TypeError, "x must be a torch.Tensor"),
]


@pytest.mark.parametrize("name, args, cpu_args, error, message", _BAD)
def test_cold_noise_keeps_the_numba_kernels_argument_checks(
    cold, name, args, cpu_args, error, message
):
    with pytest.raises(error, match=message) as cold_error:
        getattr(noise, name)(*args)
    with pytest.raises(error) as numba_error:  # noise_cpu checks before it runs anything
        getattr(noise_cpu, name)(*(cpu_args or args))
    assert str(cold_error.value) == str(numba_error.value)


def test_numba_serves_noise_once_the_cache_holds_it(cold, monkeypatch):
    noise.normal(10, 1, 0)
    kind = ("normal", torch.float32)
    assert warmup.served_by(kind) != "numba"
    calls = []
    monkeypatch.setattr(warmup, "_cached", lambda driver, args: True)
    monkeypatch.setattr(warmup, "_NEXT_PROBE", {})
    monkeypatch.setattr(noise_cpu, "_run", lambda drivers, *a: calls.append(drivers))
    noise.normal(10, 1, 0)
    assert warmup.served_by(kind) == "numba" and calls == [noise_cpu._NORMAL]


def test_noise_compiles_here_with_the_warm_up_turned_off(cold, monkeypatch):
    monkeypatch.setenv("DROPKIT_WARMUP", "0")
    calls = []
    monkeypatch.setattr(noise_cpu, "_run", lambda drivers, *a: calls.append(drivers))
    noise.uniform(10, 1, 0)
    assert calls == [noise_cpu._UNIFORM] and cold == []  # nothing started
    assert warmup.served_by(("uniform", torch.float32)) == "numba"


def test_the_serial_noise_twin_serves_while_the_parallel_one_compiles(cold, monkeypatch):
    monkeypatch.setattr(warmup, "_PROBE_EVERY", 0.0)
    parallel_cached = [False]
    monkeypatch.setattr(
        warmup,
        "_cached",
        lambda driver, args: driver is not noise_cpu._multiply_par or parallel_cached[0],
    )
    monkeypatch.setattr(noise_cpu, "_run", _REAL_NOISE_RUN)  # numba's twins may run here
    claims = []
    monkeypatch.setattr(threads, "claim_parallel", lambda n: claims.append(n) or 0)
    x = torch.randn(noise_cpu.PARALLEL_MIN * 2)
    first = noise.gaussian_multiply(x, 3, 0, 0.5)
    assert (noise_cpu._multiply_par, np.dtype(np.float32)) in cpu.PARALLEL_COLD
    for _ in range(2):
        assert torch.equal(noise.gaussian_multiply(x, 3, 0, 0.5), first)
    assert claims == []  # the serial twin, without asking for threads
    assert warmup.served_by(("multiply", torch.float32)) == "numba"
    parallel_cached[0] = True
    assert torch.equal(noise.gaussian_multiply(x, 3, 0, 0.5), first)
    assert claims == [x.numel()] and not cpu.PARALLEL_COLD  # the usual thread policy again
    monkeypatch.undo()
    assert torch.equal(noise_cpu.gaussian_multiply(x, 3, 0, 0.5), first)


_FIRST_CALL = textwrap.dedent(
    """
    import json, sys, time, torch, dropkit
    from dropkit.kernels import noise_cpu, warmup
    x = torch.randn(256, 512, generator=torch.Generator().manual_seed(5), requires_grad=True)
    layer = dropkit.GaussianDropout(0.4)
    torch.manual_seed(11)
    start = time.perf_counter()
    y = layer(x)
    y.backward(torch.ones_like(y))
    first = time.perf_counter() - start
    compiled_here = sum(
        sum(d.stats.cache_misses.values())
        for pair in (noise_cpu._UNIFORM, noise_cpu._NORMAL, noise_cpu._MULTIPLY)
        for d in pair
    )
    proc = warmup._STATE["proc"]
    running = proc is not None and proc.poll() is None
    if proc is not None:
        proc.kill()  # the test needs only the first call; leave no background compile behind
        proc.wait()
    torch.save({"y": y.detach(), "grad": x.grad}, sys.argv[1])
    print(json.dumps({"first": first, "compiled_here": compiled_here, "running": running,
                      "by": warmup.served_by(("multiply", torch.float32))}))
    """
)


def test_fresh_install_first_gaussian_dropout_is_served_at_once_with_numba_s_bits(tmp_path):
    """A real cold start (empty numba cache): the first GaussianDropout forward + backward
    compiles nothing in the calling process, is served by the fallback, and gives the bits the
    warm numba path gives for the same seed."""
    out_file = tmp_path / "first.pt"
    env = child_env(NUMBA_CACHE_DIR=str(tmp_path / "numba"), DROPKIT_NATIVE="0")
    out = subprocess.run(
        [sys.executable, "-c", _FIRST_CALL, str(out_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["compiled_here"] == 0 and result["running"], result
    assert result["by"] == "torch fallback (numba compiling in the background)"
    assert result["first"] < 30.0  # no compile (15-45 s) in the call; the bound catches a hang
    cold = torch.load(out_file)

    x = torch.randn(256, 512, generator=torch.Generator().manual_seed(5), requires_grad=True)
    torch.manual_seed(11)
    y = dropkit.GaussianDropout(0.4)(x)
    y.backward(torch.ones_like(y))
    assert warmup.served_by(("multiply", torch.float32)) == "numba"  # conftest: warm-up off
    assert torch.equal(cold["y"], y.detach()) and torch.equal(cold["grad"], x.grad)
    assert not torch.equal(y.detach(), x.detach())  # noise was applied


@pytest.mark.parametrize("kind", warmup.NOISE_KINDS, ids=warmup._kind_name)
def test_cache_probe_recognises_the_noise_wrappers_signatures(kind):
    """The probe and the background compile use exactly the types noise_cpu's wrappers pass."""
    op, dtype = kind
    x = torch.randn(100).to(dtype)
    if op == "uniform":
        noise_cpu.uniform(100, 1, 0)
    elif op == "normal":
        noise_cpu.normal(100, 1, 0, dtype)
    else:
        noise_cpu.gaussian_multiply(x, 1, 0, 0.5)
    (serial, args), (parallel, _) = warmup._samples(kind)
    assert (parallel, serial) == noise_cpu.DRIVERS[op]
    assert warmup._cached(serial, args) is True  # the wrapper compiled exactly this signature
