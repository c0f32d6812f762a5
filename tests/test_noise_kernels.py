"""Counter-based uniform and Gaussian noise: NumPy reference, numba, Triton and torch agree bit
for bit, and the samples have the distributions they claim (bounds of >= 5 sigma, fixed seeds)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from dropkit.kernels import noise, noise_cpu, noise_fallback
from dropkit.reference import noise as ref
from dropkit.reference import philox
from tests.stats import assert_mean_close, assert_variance_close

CASES = [
    (1, 0, 0),
    (2, 0, 1),
    (13, 2, 3),
    (5000, 2**64 - 3, 2**32 - 7),
    (100, 0xDEADBEEFCAFEF00D, 2**40 + 5),
    (4099, 99, 2**63 - 4099),
    (70_001, 7, 1),  # past the parallel threshold
]


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(np.uint8)


def test_noise_words_are_the_philox_blocks_read_as_32_bit_words():
    words = ref.random_uint32(8, seed=0, offset=0)
    assert [hex(w) for w in words[:4]] == [
        hex(w) for w in philox.philox4x32_10((0, 0, 0, 0), (0, 0))
    ]
    assert tuple(words[4:]) == philox.philox4x32_10((1, 0, 0, 0), (0, 0))
    # the 16-bit lanes of the Bernoulli stream are the same blocks, halves of these words
    lanes = philox.random_uint16(16, seed=0, offset=0)
    assert [int(w) & 0xFFFF for w in words] == lanes[0::2].tolist()


def test_uniform_is_the_top_24_bits_of_each_word():
    words = ref.random_uint32(1000, seed=11, offset=5)
    u = ref.uniform_reference(1000, seed=11, offset=5)
    assert u.dtype == np.float32
    assert ((words >> 8).astype(np.float64) * 2.0**-24 == u.astype(np.float64)).all()


def test_box_muller_matches_libm_to_float64_precision():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    a[:3] = [0, 2**32 - 1, 2**31]  # smallest u1, u1 = 1 exactly, u1 = 1/2
    b[:3] = [0, 2**30, 2**32 - 1]  # quadrant edges
    z0, z1 = ref.box_muller_reference(a, b)
    u1 = (a.astype(np.float64) + 1) * 2.0**-32
    theta = 2 * np.pi * b.astype(np.float64) * 2.0**-32
    r = np.sqrt(-2 * np.log(u1))
    assert np.abs(z0 - r * np.cos(theta)).max() < 1e-12
    assert np.abs(z1 - r * np.sin(theta)).max() < 1e-12
    assert z0[1] == 0.0 and z1[1] == 0.0  # u1 = 1: r = 0
    # float32 noise is the correctly rounded Box-Muller value almost everywhere
    exact = (r * np.cos(theta)).astype(np.float32)
    assert (z0.astype(np.float32) != exact).mean() < 1e-4


def test_sqrt_sequence_is_within_two_ulps_of_the_true_root():
    y = np.concatenate([[0.0, 4.6e-10, 44.36], np.random.default_rng(1).uniform(0, 44.4, 100_000)])
    got = ref.sqrt_reference(y)
    assert got[0] == 0.0
    assert (np.abs(got[1:] - np.sqrt(y[1:])) <= 2 * np.spacing(np.sqrt(y[1:]))).all()


@pytest.mark.parametrize("n,seed,offset", CASES)
def test_numba_and_torch_fallback_equal_the_reference_bit_for_bit(n, seed, offset):
    u = ref.uniform_reference(n, seed, offset)
    assert (_bits(noise_cpu.uniform(n, seed, offset).numpy()) == _bits(u)).all()
    assert (_bits(noise_fallback.uniform(n, seed, offset, "cpu").numpy()) == _bits(u)).all()
    for dtype, np_dtype in ((torch.float32, np.float32), (torch.float64, np.float64)):
        z = ref.normal_reference(n, seed, offset, np_dtype)
        got_cpu = noise_cpu.normal(n, seed, offset, dtype).numpy()
        got_torch = noise_fallback.normal(n, seed, offset, "cpu", dtype).numpy()
        assert (_bits(got_cpu) == _bits(z)).all(), dtype
        assert (_bits(got_torch) == _bits(z)).all(), dtype
        x = torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(n))
        y = ref.gaussian_multiply_reference(x.numpy(), seed, offset, 0.7)
        assert (_bits(noise_cpu.gaussian_multiply(x, seed, offset, 0.7).numpy()) == _bits(y)).all()
        assert (
            _bits(noise_fallback.gaussian_multiply(x, seed, offset, 0.7).numpy()) == _bits(y)
        ).all()


def test_a_value_depends_only_on_its_stream_position():
    whole = noise_cpu.normal(1000, 5, 0)
    for start in (1, 2, 3, 7, 512):
        assert torch.equal(noise_cpu.normal(1000 - start, 5, start), whole[start:])
    assert torch.equal(noise_cpu.uniform(997, 5, 3), noise_cpu.uniform(1000, 5, 0)[3:])


def test_fused_multiply_equals_torch_composition_of_the_noise():
    x = torch.randn(3, 1000, generator=torch.Generator().manual_seed(3))
    z = noise_cpu.normal(x.numel(), 9, 0).view_as(x)
    assert torch.equal(noise_cpu.gaussian_multiply(x, 9, 0, 0.3), x * (1.0 + 0.3 * z))
    xd = x.double()
    zd = noise_cpu.normal(x.numel(), 9, 0, torch.float64).view_as(x)
    assert torch.equal(noise_cpu.gaussian_multiply(xd, 9, 0, 0.3), xd * (1.0 + 0.3 * zd))


def test_dispatch_picks_numba_on_cpu_and_torch_ops_elsewhere():
    assert torch.equal(noise.normal(100, 3, 0, "cpu"), noise_cpu.normal(100, 3, 0))
    meta = noise.normal(100, 3, 0, "meta")
    assert meta.device.type == "meta" and meta.shape == (100,)


def test_serial_and_parallel_twins_give_the_same_bits():
    n = 1 << 17
    for kernel, args in ((noise_cpu._NORMAL, (0,)), (noise_cpu._UNIFORM, (0,))):
        dtype = np.float32
        outs = []
        for driver in kernel:
            out = np.empty(n, dtype)
            driver(out, np.int64(3), np.uint64(1), np.uint64(2), args)
            outs.append(out)
        assert (_bits(outs[0]) == _bits(outs[1])).all()


# --- the distributions ---------------------------------------------------------------------
N_SAMPLES = 1 << 21


def test_normal_mean_variance_skew_and_kurtosis_within_6_sigma():
    z = noise_cpu.normal(N_SAMPLES, 2024, 0, torch.float64).numpy()
    n = z.size
    assert_mean_close(z.mean(), 0.0, 1.0, n)
    assert_variance_close(z.var(), 1.0, n, kurtosis=3.0)
    # third moment: Var(z^3) = 15; fourth: Var(z^4) = 105 - 9 = 96
    assert_mean_close((z**3).mean(), 0.0, math.sqrt(15.0), n, what="third moment")
    assert_mean_close((z**4).mean(), 3.0, math.sqrt(96.0), n, what="fourth moment")


def test_normal_passes_kolmogorov_smirnov_and_tail_counts():
    z = np.sort(noise_cpu.normal(N_SAMPLES, 7, 0).numpy().astype(np.float64))
    n = z.size
    cdf = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    d = max((np.arange(1, n + 1) / n - cdf).max(), (cdf - np.arange(n) / n).max())
    # Kolmogorov: P(sqrt(n) D > 1.95) = 0.001; this bound is far out in the tail.
    assert math.sqrt(n) * d < 1.95, d
    for k in (1, 2, 3, 4):
        p = math.erfc(k / math.sqrt(2))
        count = int((np.abs(z) > k).sum())
        sd = math.sqrt(n * p * (1 - p))
        assert abs(count - n * p) <= 6 * sd + 0.5, (k, count, n * p)


def test_pair_members_and_neighbours_are_uncorrelated():
    z = noise_cpu.normal(N_SAMPLES, 8, 0, torch.float64).numpy()
    n = z.size // 2
    for a, b in ((z[0::2], z[1::2]), (z[:-1], z[1:]), (z[:-4], z[4:])):
        m = min(a.size, b.size)
        corr = float((a[:m] * b[:m]).mean())
        assert abs(corr) <= 6 / math.sqrt(m), corr
    # r^2 = z0^2 + z1^2 is chi-square(2) = Exp(1/2): mean 2, variance 4
    r2 = z[0::2] ** 2 + z[1::2] ** 2
    assert_mean_close(r2.mean(), 2.0, 2.0, n, what="E[r^2]")


def test_uniform_moments_and_256_bin_chi_square():
    u = noise_cpu.uniform(N_SAMPLES, 31, 0).numpy().astype(np.float64)
    n = u.size
    assert u.min() >= 0.0 and u.max() < 1.0
    assert_mean_close(u.mean(), 0.5, math.sqrt(1 / 12), n)
    assert_variance_close(u.var(), 1 / 12, n, kurtosis=1.8)
    counts = np.bincount((u * 256).astype(np.int64), minlength=256)
    expected = n / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert abs(chi2 - 255) <= 6 * math.sqrt(2 * 255), chi2


def test_different_seeds_give_unrelated_noise():
    a = noise_cpu.normal(1 << 16, 1, 0, torch.float64)
    b = noise_cpu.normal(1 << 16, 2, 0, torch.float64)
    corr = float((a * b).mean())
    assert abs(corr) <= 6 / math.sqrt(1 << 16)


# --- errors --------------------------------------------------------------------------------
def test_noise_kernels_reject_bad_streams_and_dtypes():
    with pytest.raises(ValueError, match="seed must be an integer in"):
        noise_cpu.normal(3, -1, 0)
    with pytest.raises(ValueError, match="offset must be an integer >= 0"):
        noise_cpu.uniform(3, 0, 2**63 - 1)
    with pytest.raises(ValueError, match="n must be a non-negative integer"):
        noise_cpu.normal(-1, 0, 0)
    with pytest.raises(TypeError, match="dtype must be torch.float32 or torch.float64"):
        noise_cpu.normal(3, 0, 0, torch.float16)
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        noise_cpu.gaussian_multiply(torch.ones(3, dtype=torch.float16), 0, 0, 0.5)
    with pytest.raises(ValueError, match="x must be contiguous"):
        noise_cpu.gaussian_multiply(torch.ones(3, 4).t(), 0, 0, 0.5)
    with pytest.raises(ValueError, match="seed must be an integer in"):
        noise_fallback.normal(3, 2**64, 0, "cpu")
    with pytest.raises(ValueError, match="seed must be an integer in"):
        ref.normal_reference(3, -1, 0)
    with pytest.raises(TypeError, match="dtype must be np.float32 or np.float64"):
        ref.normal_reference(3, 0, 0, np.float16)


# --- Triton, interpreted in a fresh process (TRITON_INTERPRET must precede the triton import) --
_TRITON_CHILD = textwrap.dedent(
    """
    import sys
    import torch
    from dropkit.kernels import noise_gpu
    assert noise_gpu.INTERPRETED
    cases = torch.load(sys.argv[1])
    out = []
    for n, seed, offset in cases:
        x = torch.randn(n, generator=torch.Generator().manual_seed(n))
        out.append((
            noise_gpu.uniform(n, seed, offset, "cpu"),
            noise_gpu.normal(n, seed, offset, "cpu", torch.float32),
            noise_gpu.normal(n, seed, offset, "cpu", torch.float64),
            noise_gpu.gaussian_multiply(x, seed, offset, 0.7),
            noise_gpu.gaussian_multiply(x.double(), seed, offset, 0.7),
        ))
    torch.save(out, sys.argv[2])
    """
)


def test_triton_interpreted_noise_equals_reference_bit_for_bit(tmp_path):
    import triton  # noqa: F401  # the dev extra installs it: a missing one fails, never skips

    cases = [c for c in CASES if c[0] <= 5000]
    torch.save(cases, tmp_path / "cases.pt")
    done = subprocess.run(
        [sys.executable, "-c", _TRITON_CHILD, str(tmp_path / "cases.pt"), str(tmp_path / "o.pt")],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = torch.load(tmp_path / "o.pt")
    for (n, seed, offset), (u, z32, z64, y32, y64) in zip(cases, results, strict=True):
        x = torch.randn(n, generator=torch.Generator().manual_seed(n))
        assert (_bits(u.numpy()) == _bits(ref.uniform_reference(n, seed, offset))).all()
        assert (_bits(z32.numpy()) == _bits(ref.normal_reference(n, seed, offset))).all()
        assert (
            _bits(z64.numpy()) == _bits(ref.normal_reference(n, seed, offset, np.float64))
        ).all()
        y = ref.gaussian_multiply_reference(x.numpy(), seed, offset, 0.7)
        assert (_bits(y32.numpy()) == _bits(y)).all()
        y = ref.gaussian_multiply_reference(x.double().numpy(), seed, offset, 0.7)
        assert (_bits(y64.numpy()) == _bits(y)).all()


def test_triton_noise_kernels_compile_for_sm90_without_fma_or_approximations():
    """What the interpreter cannot show: PTX for an H100 with IEEE-rounded float64 operations."""
    import triton  # the dev extra installs it: a missing one fails, never skips

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("kernels are interpreted in this process")
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    from dropkit.kernels import noise_gpu

    # The one condition that skips: no runnable ptxas (Triton's wheels ship one). Any error of
    # the compile itself, a ptxas failure included, fails the test (as in test_kernels.py).
    try:
        get_ptxas(90)
    except RuntimeError as error:
        if not str(error).startswith("Cannot find ptxas"):
            raise
        pytest.skip(f"cannot compile for sm_90 here: {error}")

    def ptx(fn, signature, constexprs):
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        options = {"num_warps": 4, "enable_fp_fusion": False}
        return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]

    ints = {"n": "i64", "seed": "u64", "first_block": "i64", "lane_shift": "i64"}
    for dtype, flag in (("fp32", False), ("fp64", True)):
        code = ptx(
            noise_gpu._multiply_kernel,
            {"x_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", **ints, "std_bits": "i64"}
            | {"BLOCK": "constexpr", "IS_F64": "constexpr"},
            {"BLOCK": 1024, "IS_F64": flag},
        )
        assert "fma" not in code and "approx" not in code and "div.rn.f64" in code
        # the polynomial constants are float64, not float32 rounded: 1/3 and ln 2
        assert "0d3FD5555555555555" in code and "0d3FE62E42FEFA39EF" in code
    code = ptx(
        noise_gpu._uniform_kernel,
        {"out_ptr": "*fp32", **ints, "BLOCK": "constexpr"},
        {"BLOCK": 1024},
    )
    assert "mul.hi.u32" in code


# --- on a GPU (benchmarks/gpu_check.sh runs these where a CUDA device is lent) ----------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("n,seed,offset", CASES)
def test_cuda_noise_equals_the_reference_bit_for_bit(n, seed, offset):
    u = noise.uniform(n, seed, offset, "cuda").cpu().numpy()
    assert (_bits(u) == _bits(ref.uniform_reference(n, seed, offset))).all()
    for dtype, np_dtype in ((torch.float32, np.float32), (torch.float64, np.float64)):
        z = noise.normal(n, seed, offset, "cuda", dtype).cpu().numpy()
        assert (_bits(z) == _bits(ref.normal_reference(n, seed, offset, np_dtype))).all(), dtype
        x = torch.randn(n, dtype=dtype, generator=torch.Generator().manual_seed(n))
        y = noise.gaussian_multiply(x.cuda(), seed, offset, 0.7).cpu().numpy()
        expected = ref.gaussian_multiply_reference(x.numpy(), seed, offset, 0.7)
        assert (_bits(y) == _bits(expected)).all(), dtype


@needs_cuda
def test_cuda_and_cpu_layers_draw_the_same_noise_for_the_same_manual_seed():
    import dropkit

    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    std = torch.full((32,), 0.4)
    for fn in (
        lambda t, s: dropkit.functional.gaussian_dropout(t, 0.3),
        lambda t, s: dropkit.functional_learned.variational_dropout(t, s.log() * 2),
        lambda t, s: dropkit.functional_learned.standout(t.abs(), (t.abs() / 4).clamp(max=1)),
    ):
        torch.manual_seed(1)
        on_cpu = fn(x, std)
        torch.manual_seed(1)
        on_gpu = fn(x.cuda(), std.cuda()).cpu()
        assert torch.equal(on_cpu, on_gpu)
