"""Cold start and the native build (issue 12, item 2): the first dropout call never waits for a
compiler or a lock, the fallback that serves meanwhile gives the kernels' bits, and the build
folder is keyed on everything the build depends on. No test here compiles C++."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import dropkit
from dropkit import kernels, ops
from dropkit.kernels import cpu, native, small, warmup
from dropkit.reference import philox as ref
from tests.coldstart import child_env, cold_process

fcntl = pytest.importorskip("fcntl")

_KINDS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


# ----------------------------------------------------------------------------------------------
# The build folder's key
# ----------------------------------------------------------------------------------------------
def test_build_directory_is_keyed_on_interpreter_abi_and_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("DROPKIT_NATIVE_DIR", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    base = native._build_directory()
    assert json.loads((base / "build-key.json").read_text()) == native.build_key()

    monkeypatch.setattr(sys, "executable", "/elsewhere/venv-b/bin/python")
    monkeypatch.setattr(sys, "prefix", "/elsewhere/venv-b")
    other_venv = native._build_directory()
    assert other_venv != base and other_venv.parent == base.parent

    monkeypatch.undo()
    monkeypatch.setenv("DROPKIT_NATIVE_DIR", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    assert native._build_directory() == base  # the key is stable
    abi = torch._C._GLIBCXX_USE_CXX11_ABI
    monkeypatch.setattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", not abi)
    assert native._build_directory() != base
    monkeypatch.setattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", abi)
    monkeypatch.setenv("CXX", "clang++-not-installed")
    assert native._build_directory() != base
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("CXXFLAGS", "-march=native")
    assert native._build_directory() != base


# ----------------------------------------------------------------------------------------------
# A held lock never blocks the first call
# ----------------------------------------------------------------------------------------------
_FIRST_CALL = textwrap.dedent(
    """
    import json, time, torch, dropkit
    from dropkit import kernels, rng
    from dropkit.kernels import fallback, native
    x = torch.randn(100, 100)
    x[x == 0] = 1.0  # expected != 0 is then the kept set
    x.requires_grad_()
    torch.manual_seed(0)
    start = time.perf_counter()
    for _ in range(3):  # the first calls: numba from its cache, the native node looked for
        y = dropkit.functional.dropout(x, 0.5)
        y.backward(torch.ones_like(y))
        x.grad = None
    y = dropkit.functional.dropout(x, 0.5)
    y.backward(torch.ones_like(y))
    first = time.perf_counter() - start
    torch.manual_seed(0)
    for _ in range(3):
        rng.draw_seed()
    seed = rng.draw_seed()
    t = kernels.threshold_from_p(0.5)
    expected = fallback.dropout_forward(x.detach(), seed, 0, t, kernels.scale_from_threshold(t))
    ok = torch.equal(y, expected) and torch.equal(x.grad, (expected != 0) * 2.0)
    from dropkit.kernels import warmup
    proc = warmup._STATE["proc"]
    print(json.dumps({"first": first, "ok": ok, "status": native.status(),
                      "warmup_pid": proc.pid if proc is not None else None}))
    """
)


def test_a_held_build_lock_never_blocks_the_first_call(tmp_path):
    """A build killed mid-way leaves torch's lock file, or another process is building: the first
    dropout calls return at once with the right bits while the build is left to the background."""
    env = child_env(DROPKIT_NATIVE_DIR=str(tmp_path), DROPKIT_NATIVE_WAIT="600", DROPKIT_NATIVE="1")
    probe = "from dropkit.kernels import native; print(native._build_directory())"
    directory = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    ).stdout.strip()
    assert directory.startswith(str(tmp_path))
    # torch's FileBaton, as a killed `cpp_extension.load` leaves it, and the build lock held by a
    # live process (this one), as while another process builds.
    with open(os.path.join(directory, "lock"), "w"):
        pass
    holder = os.open(os.path.join(directory, ".dropkit-build.lock"), os.O_RDWR | os.O_CREAT)
    warmup_pid = None
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        out = subprocess.run(
            [sys.executable, "-c", _FIRST_CALL],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        warmup_pid = result["warmup_pid"]
    finally:
        if warmup_pid:  # the background builder, still waiting for the lock: end it
            os.kill(warmup_pid, signal.SIGKILL)
        os.close(holder)
    assert result["ok"]
    assert result["first"] < 60.0  # no lock wait, no compiler (the bound only catches a hang)
    # "not loaded yet" when numba's own cache was cold too (the fallback served without asking)
    assert result["status"].startswith(("building in the background", "not loaded yet")), result
    assert warmup_pid is not None
    # The lock file dropkit did not create is still there; nothing was built.
    assert os.path.exists(os.path.join(directory, "lock"))
    assert not os.path.exists(os.path.join(directory, "dropkit_native.so"))


def test_a_builder_waits_for_a_held_build_lock_at_most_its_bound(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPKIT_NATIVE_DIR", str(tmp_path))
    directory = native._build_directory()
    holder = os.open(directory / ".dropkit-build.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another open file: flock excludes it in-process too
        started = time.monotonic()
        with pytest.raises(native.BuildBusy, match="another process has been building"):
            native.build(wait=0.3)
        assert time.monotonic() - started < 10.0
    finally:
        os.close(holder)
    assert not any(p.name.startswith(".staging-") for p in directory.iterdir())


def test_a_recorded_build_failure_keeps_the_python_path_without_rebuilding(tmp_path, monkeypatch):
    monkeypatch.delenv("DROPKIT_WARMUP", raising=False)
    monkeypatch.setenv("DROPKIT_NATIVE_DIR", str(tmp_path))
    directory = native._build_directory()
    (directory / "build-failed.txt").write_text("OSError: no C++ compiler\n")
    monkeypatch.setattr(native, "_STATE", {"op": None, "status": "not loaded yet", "tried": False})
    started = []
    monkeypatch.setattr(warmup, "start", lambda kind=None: started.append(kind) or True)
    assert native.load(wait=False) is None
    assert native.status().startswith("unavailable: RuntimeError: OSError: no C++ compiler")
    assert not native.pending() and started == []


# ----------------------------------------------------------------------------------------------
# While numba compiles in the background, the fallback serves the same bits
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def cold(monkeypatch):
    """This process as on a fresh install (tests/coldstart.py)."""
    yield from cold_process(monkeypatch)


def _warm_results(shape, dtype, p, seed):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    x.requires_grad_(True)
    torch.manual_seed(seed)
    y = dropkit.functional.dropout(x, p)
    y.backward(torch.ones_like(y))
    return x, y.detach(), x.grad


@pytest.mark.parametrize("dtype", _KINDS)
@pytest.mark.parametrize("shape", [(100, 100), (300, 1000)])
def test_cold_fallback_gives_the_warm_paths_bits(cold, dtype, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    x.requires_grad_(True)
    torch.manual_seed(7)
    y = dropkit.functional.dropout(x, 0.3)
    y.backward(torch.ones_like(y))
    torch.manual_seed(7)
    seed = dropkit.rng.draw_seed()
    t = ops.threshold(0.3)
    keep = torch.from_numpy(ref.keep_mask_from_threshold(x.numel(), seed, 0, t)).view(shape)
    scale = ops.dropout_scale(0.3)
    assert torch.equal(y, torch.where(keep, x.detach() * scale, torch.zeros((), dtype=dtype)))
    assert torch.equal(x.grad, torch.where(keep, torch.ones_like(x) * scale, 0).to(dtype))
    assert cold[0] == dtype  # the background warm-up was asked for this dtype first
    assert warmup.served_by(dtype).startswith("torch fallback")


def test_cold_paths_match_numba_bit_for_bit(monkeypatch):
    shapes = [(100, 100), (257, 300)]
    warm = {(s, d): _warm_results(s, d, 0.5, 3)[1:] for s in shapes for d in _KINDS}
    x = torch.randn(64, 96)
    bias, residual = torch.randn(96), torch.randn(64, 96)
    warm_bda = kernels.bias_dropout_add(x, bias, residual, 11, 5, 30000, 1.8)
    warm_mask = kernels.keep_mask(70001, 9, 3, 20000)
    monkeypatch.delenv("DROPKIT_WARMUP", raising=False)
    ready = set(warmup.READY)
    warmup.READY.clear()
    monkeypatch.setattr(warmup, "_cached", lambda driver, args: False)
    monkeypatch.setattr(warmup, "start", lambda kind=None: True)
    monkeypatch.setattr(warmup, "running", lambda: True)
    monkeypatch.setattr(warmup, "_NEXT_PROBE", {})
    lane = dict(small.ENTRIES)
    small.ENTRIES.clear()
    monkeypatch.setattr(cpu, "_run", lambda *a: pytest.fail("numba ran"))
    try:
        for (shape, dtype), (y, grad) in warm.items():
            _, y_cold, grad_cold = _warm_results(shape, dtype, 0.5, 3)
            assert torch.equal(y_cold, y) and torch.equal(grad_cold, grad), (shape, dtype)
        assert torch.equal(kernels.bias_dropout_add(x, bias, residual, 11, 5, 30000, 1.8), warm_bda)
        assert torch.equal(kernels.keep_mask(70001, 9, 3, 20000), warm_mask)
        out = torch.empty(64, 96)
        kernels.dropout_forward_out(x, out, 4, 2, 1000, 1.5)
        monkeypatch.undo()
        assert torch.equal(out, kernels.dropout_forward(x, 4, 2, 1000, 1.5))
    finally:
        warmup.READY.update(ready)
        small.ENTRIES.update(lane)


def test_cold_path_keeps_the_kernels_argument_checks(cold):
    with pytest.raises(ValueError, match="threshold"):
        kernels.dropout_forward(torch.ones(4), 0, 0, 70000, 1.0)
    with pytest.raises(ValueError, match="n must be a non-negative integer, got -1"):
        kernels.keep_mask(-1, 0, 0, 0, "cpu")
    with pytest.raises(ValueError, match="out must have x's shape"):
        kernels.dropout_forward_out(torch.ones(4), torch.ones(5), 0, 0, 0, 1.0)


def test_numba_serves_once_the_warm_up_has_filled_the_cache(cold, monkeypatch):
    x = torch.randn(50, 50, requires_grad=True)
    dropkit.functional.dropout(x, 0.5)
    assert warmup.served_by() != "numba"
    calls = []
    monkeypatch.setattr(warmup, "_cached", lambda driver, args: True)
    monkeypatch.setattr(warmup, "_NEXT_PROBE", {})
    monkeypatch.setattr(cpu, "_run", lambda driver, *a: calls.append(driver.__name__))
    kernels.dropout_forward(torch.randn(1 << 17), 1, 0, 100, 1.0)
    assert warmup.served_by() == "numba" and calls  # numba's code, loaded from the cache


def test_numba_compiles_here_when_the_warm_up_ended_without_filling_the_cache(cold, monkeypatch):
    monkeypatch.setattr(warmup, "running", lambda: False)
    monkeypatch.setattr(warmup, "start", lambda kind=None: False)
    calls = []
    monkeypatch.setattr(cpu, "_run", lambda driver, *a: calls.append(driver.__name__))
    kernels.dropout_forward(torch.randn(1000), 1, 0, 100, 1.0)
    assert calls and warmup.served_by() == "numba"


@pytest.mark.parametrize("kind", [*_KINDS, *[("bda", d) for d in _KINDS], "mask"])
def test_cache_probe_recognises_the_signatures_the_wrappers_compile(kind):
    """The probe and the background compile use exactly the types the wrappers pass; a drift
    would leave every fresh process on the fallback until the warm-up ends."""
    dtype = kind[1] if isinstance(kind, tuple) else kind
    x = torch.randn(1 << 17).to(dtype) if kind != "mask" else None
    if kind == "mask":
        cpu.keep_mask(1 << 17, 1, 0, 100)
    elif isinstance(kind, tuple):
        cpu.set_max_threads(None)
        bias = torch.randn(512).to(dtype)
        cpu.bias_dropout_add(x.view(-1, 512), bias, x.view(-1, 512), 1, 0, 100, 1.0)
    else:
        cpu.dropout_forward(x, 1, 0, 100, 1.0)
    for driver, args in warmup._samples(kind):
        driver(*args)  # both twins compiled or loaded, with the probe's argument types
    assert warmup._kind_cached(kind) is True


@pytest.mark.slow
def test_fresh_install_first_call_is_served_without_compiling_in_process(tmp_path):
    """A real cold start: empty numba cache; numba must not compile in the calling process, the
    first call gives the reference bits, and numba serves after the background warm-up."""
    code = textwrap.dedent(
        """
        import json, numpy as np, torch, dropkit
        from dropkit.kernels import cpu, warmup
        from dropkit.reference import philox as ref
        x = torch.randn(1024, 4096, requires_grad=True)
        torch.manual_seed(1)
        y = dropkit.functional.dropout(x, 0.25)
        y.backward(torch.ones_like(y))
        first_by = warmup.served_by()
        compiled_here = sum(sum(d.stats.cache_misses.values()) for d in cpu.DROPOUT_DRIVERS[torch.float32])
        torch.manual_seed(1)
        seed = dropkit.rng.draw_seed()
        keep = ref.keep_mask_from_threshold(x.numel(), seed, 0, 16384).reshape(1024, 4096)
        # The kept units are read from the gradient (scale where kept, 0 where dropped), not from
        # y != 0: torch.randn does give exact zeros (2 in this 2^22 draw in one CI run).
        ok = bool(np.array_equal(x.grad.numpy() != 0, keep))
        assert warmup.wait(900)
        torch.manual_seed(1)
        y2 = dropkit.functional.dropout(x, 0.25)
        print(json.dumps({"first_by": first_by, "compiled_here": compiled_here, "ok": ok,
                          "same": torch.equal(y, y2), "after_by": warmup.served_by()}))
        """
    )
    env = child_env(NUMBA_CACHE_DIR=str(tmp_path / "numba"), DROPKIT_NATIVE="0")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1200
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {
        "first_by": "torch fallback (numba compiling in the background)",
        "compiled_here": 0,
        "ok": True,
        "same": True,
        "after_by": "numba",
    }


def test_without_background_builds_the_node_waits_for_an_explicit_load(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPKIT_WARMUP", "0")
    monkeypatch.setenv("DROPKIT_NATIVE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_STATE", {"op": None, "status": "not loaded yet", "tried": False})
    monkeypatch.setattr(native, "_NODES", [native._UNLOADED, None])
    assert native.load(wait=False) is None
    assert native.pending() and "DROPKIT_WARMUP=0" in native.status()
    assert native._nodes() == [None, None] and native._NODES[0] is native._UNLOADED  # asks again


def test_the_serial_twin_serves_while_the_parallel_one_compiles(cold, monkeypatch):
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(warmup, "_PROBE_EVERY", 0.0)
        parallel_cached = [False]
        monkeypatch.setattr(
            warmup,
            "_cached",
            lambda driver, args: driver is not cpu._dropout_float_par or parallel_cached[0],
        )
        cpu.set_max_threads(None)
        calls = []
        monkeypatch.setattr(cpu, "_run", lambda driver, *a: calls.append(driver))
        x = torch.randn(cpu.PARALLEL_MIN * 2)
        for _ in range(3):
            kernels.dropout_forward(x, 1, 0, 100, 1.0)
        assert calls == [cpu._dropout_float_ser] * 3  # numba's serial twin, not the fallback
        if cpu.kernel_threads() > 1:
            parallel_cached[0] = True
            calls.clear()
            kernels.dropout_forward(x, 1, 0, 100, 1.0)
            assert calls == [cpu._dropout_float_par]  # the chooser tries parallel first
        assert not cpu.PARALLEL_COLD or cpu.kernel_threads() == 1
    finally:
        torch.set_num_threads(1)
        cpu.PARALLEL_COLD.clear()
