"""Counter-based RNG and raw dropout kernels: reference, numba (CPU) and Triton (interpreter).

The NumPy reference (dropkit.reference.philox) is the oracle: it is checked against Random123's
known-answer vectors, and the numba and Triton kernels must reproduce its bits exactly.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dropkit import kernels
from dropkit.kernels import cpu, threads
from dropkit.reference import philox as ref
from tests.stats import assert_fraction_close

ALL_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

# Random123 kat_vectors, philox4x32 with 10 rounds: (counter, key, expected output).
KAT_PHILOX4X32_10 = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]

# (seed, offset, n): unaligned offsets and lengths, chunk boundaries (CHUNK = 256), the parallel
# path (n >= PARALLEL_MIN), offsets past 2**32 and 2**40, the largest allowed offset.
STREAM_CASES = [
    (0, 0, 1),
    (1, 0, 8),
    (2, 3, 5),
    (3, 7, 9),
    (12345, 1, 8191),
    (12345, 8190, 2 * 8192 + 5),
    (2**32 + 17, 2**32 - 3, 1000),
    (2**64 - 1, 2**32 + 5, 777),
    (0xDEADBEEFCAFEF00D, 2**40 + 5, 3001),
    (7, 2**40 - 8191, 70_001),
    (99, 2**63 - 4099, 4099),
]


def _scale(threshold: int) -> float:
    return ref.scale_from_threshold(threshold)


def _torch_dropout_oracle(x: torch.Tensor, keep: np.ndarray, scale: float) -> torch.Tensor:
    """What the kernels must equal: torch's own rounding of ``x * scale`` where kept, else 0."""
    keep_t = torch.from_numpy(keep).reshape(x.shape)
    return torch.where(keep_t, x * scale, torch.zeros((), dtype=x.dtype))


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal as values, NaN equal to NaN (payloads may differ), and +0/-0 told apart."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    nan = torch.isnan(a) & torch.isnan(b)
    same = (a == b) & (torch.signbit(a) == torch.signbit(b))
    return bool((same | nan).all())


def _special_values(dtype: torch.dtype, n: int, seed: int) -> torch.Tensor:
    """Random normals spread over many magnitudes, plus inf, -inf, NaN, ±0 and subnormals."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64) * torch.exp2(
        torch.randint(-30, 30, (n,), generator=g).double()
    )
    x = x.to(dtype)
    tiny = torch.finfo(dtype).tiny
    specials = torch.tensor([math.inf, -math.inf, math.nan, 0.0, -0.0, tiny / 4, -tiny / 2, 1.0])
    x[: min(n, 8)] = specials[: min(n, 8)].to(dtype)
    return x


# ----------------------------------------------------------------------------------------------
# The reference generator
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("counter", "key", "expected"), KAT_PHILOX4X32_10)
def test_reference_philox_matches_random123_known_answers(counter, key, expected):
    assert ref.philox4x32_10(counter, key) == expected
    out = ref.philox4x32_10_array(*(np.array([c], dtype=np.uint32) for c in counter), *key)
    assert tuple(int(w[0]) for w in out) == expected


def test_stream_is_philox_words_read_as_little_endian_16_bit_lanes():
    seed = 0x0123456789ABCDEF
    lanes = ref.random_uint16(24, seed, 0)
    for block in range(3):
        words = ref.philox4x32_10((block, 0, 0, 0), (seed & 0xFFFFFFFF, seed >> 32))
        expected = [half for w in words for half in (w & 0xFFFF, w >> 16)]
        assert lanes[8 * block : 8 * block + 8].tolist() == expected


def test_stream_block_counter_uses_both_32_bit_words_past_2_to_32_blocks():
    block = 2**35 + 3  # high counter word 8, low word 3
    lanes = ref.random_uint16(8, 5, 8 * block)
    words = ref.philox4x32_10((3, 8, 0, 0), (5, 0))
    assert lanes.tolist() == [half for w in words for half in (w & 0xFFFF, w >> 16)]


def test_reference_stream_at_offset_is_a_window_of_the_stream_from_zero():
    whole = ref.random_uint16(100, 42, 0)
    for start in (1, 7, 8, 31):
        assert np.array_equal(ref.random_uint16(100 - start, 42, start), whole[start:])


@given(p=st.floats(0.0, 1.0, allow_nan=False))
def test_threshold_represents_p_to_within_2_to_minus_17(p):
    t = ref.threshold_from_p(p)
    assert 0 <= t <= 65536
    assert abs(ref.keep_probability_from_threshold(t) - (1.0 - p)) <= 2.0**-17


def test_threshold_edges():
    assert ref.threshold_from_p(0.0) == 0
    assert ref.threshold_from_p(1.0) == 65536
    assert ref.threshold_from_p(2.0**-17) == 1  # a tie rounds up
    assert ref.scale_from_threshold(65536) == 0.0
    assert ref.scale_from_threshold(0) == 1.0


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan])
def test_threshold_rejects_p_outside_unit_interval(bad):
    with pytest.raises(ValueError, match="p must be a number in \\[0, 1\\]"):
        ref.threshold_from_p(bad)


def test_threshold_rejects_non_number():
    with pytest.raises(TypeError, match="p must be a real number"):
        ref.threshold_from_p("0.5")


def test_reference_rejects_bad_philox_words():
    with pytest.raises(ValueError, match="4 counter words and 2 key words"):
        ref.philox4x32_10((0, 0, 0), (0, 0))
    with pytest.raises(ValueError, match="integers in \\[0, 2\\*\\*32\\)"):
        ref.philox4x32_10((2**32, 0, 0, 0), (0, 0))


# ----------------------------------------------------------------------------------------------
# numba == reference, bit for bit
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("seed", "offset", "n"), STREAM_CASES)
def test_numba_stream_and_mask_equal_reference(seed, offset, n):
    expected = ref.random_uint16(n, seed, offset)
    assert np.array_equal(cpu.random_uint16(n, seed, offset).numpy(), expected)
    for threshold in (0, 1, 6554, 32768, 65535, 65536):
        mask = cpu.keep_mask(n, seed, offset, threshold)
        assert mask.dtype == torch.bool and mask.shape == (n,)
        assert np.array_equal(mask.numpy(), expected >= threshold)


@pytest.mark.parametrize(("seed", "offset", "n"), STREAM_CASES)
def test_numba_forward_equals_reference_float32(seed, offset, n):
    x = _special_values(torch.float32, n, seed % 1000)
    threshold = 6554
    y = cpu.dropout_forward(x, seed, offset, threshold, _scale(threshold))
    expected = ref.dropout_forward_reference(x.numpy(), seed, offset, threshold, _scale(threshold))
    assert _same_bits(y, torch.from_numpy(expected))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_numba_parallel_and_serial_twins_give_the_same_bits(dtype):
    n = cpu.PARALLEL_MIN + 12345
    x = _special_values(dtype, n, 9)
    seed, offset, threshold = 314159, 2**32 - 100, 20000
    x_np = cpu._as_numpy(x)
    scale = cpu.scale_arg(dtype, _scale(threshold))
    outputs = []
    for twin in cpu.DROPOUT_DRIVERS[dtype]:
        out = torch.empty_like(x)
        cpu._run(twin, (x_np, cpu._as_numpy(out)), offset, seed, threshold, scale)
        outputs.append(out)
    keep = ref.keep_mask_from_threshold(n, seed, offset, threshold)
    assert _same_bits(outputs[0], _torch_dropout_oracle(x, keep, _scale(threshold)))
    assert torch.equal(outputs[0].view(torch.uint8), outputs[1].view(torch.uint8))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_bias_dropout_add_parallel_and_serial_twins_give_the_same_bits(dtype):
    g = torch.Generator().manual_seed(10)
    x = torch.randn(70, 1001, generator=g).to(dtype)  # above PARALLEL_MIN, rows cross chunks
    bias = torch.randn(1001, generator=g).to(dtype)
    res = torch.randn(70, 1001, generator=g).to(dtype)
    seed, offset, threshold = 5, 2**40 + 3, 30000
    arrays = tuple(cpu._as_numpy(t) for t in (x, bias, res))
    scale = cpu.scale_arg(dtype, _scale(threshold))
    outputs = []
    for twin in cpu.BDA_DRIVERS[dtype]:
        out = torch.empty_like(x)
        cpu._run(twin, (*arrays, cpu._as_numpy(out)), offset, seed, threshold, scale)
        outputs.append(out)
    keep = ref.keep_mask_from_threshold(x.numel(), seed, offset, threshold)
    assert _same_bits(outputs[0], res + _torch_dropout_oracle(x + bias, keep, _scale(threshold)))
    assert torch.equal(outputs[0].view(torch.uint8), outputs[1].view(torch.uint8))


def test_mask_parallel_and_serial_twins_agree():
    n = cpu.PARALLEL_MIN + 5
    outs = []
    for twin in (cpu._mask_par, cpu._mask_ser):
        out = np.empty(n, dtype=np.bool_)
        cpu._run(twin, (out,), 2**33 + 1, 77, 12345)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1])
    assert np.array_equal(outs[0], ref.keep_mask_from_threshold(n, 77, 2**33 + 1, 12345))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_of_a_process_that_ran_parallel_kernels_still_works():
    """GNU OpenMP kills a forked child that enters a parallel region: children use serial twins."""
    n = cpu.PARALLEL_MIN + 1000
    x = torch.randn(n)
    out = torch.empty_like(x)
    cpu._run(cpu._dropout_float_par, (x.numpy(), out.numpy()), 0, 3, 100, np.float32(1.0))
    expected = cpu.dropout_forward(x, 3, 0, 100, 1.0)
    pid = os.fork()
    if pid == 0:  # child: must not touch pytest state; report through the exit code
        code = 1
        try:
            # Compare with NumPy: torch's own OpenMP pool is not fork-safe either, and a
            # torch.equal here can deadlock in libgomp when the parent used torch's pool.
            ok = all(
                np.array_equal(cpu.dropout_forward(x, 3, 0, 100, 1.0).numpy(), expected.numpy())
                for _ in range(3)
            )
            code = 0 if ok and threads.forked_child() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status


def test_path_chooser_prefers_the_measured_faster_twin_and_backs_off_probing():
    chooser = threads.PathChooser()
    n = 1 << 20
    assert chooser.pick(n) == (True, 21)  # nothing measured: try parallel first
    chooser.record(21, True, 10e-9)
    assert chooser.pick(n) == (False, 21)  # then serial
    chooser.record(21, False, 1e-9)
    picks = []
    for _ in range(3 * threads.PathChooser.PROBE_MIN):
        parallel, size_class = chooser.pick(n)
        picks.append(parallel)
        chooser.record(size_class, parallel, 10e-9 if parallel else 1e-9)
    # serial is 10x faster: parallel only as a probe, the first after PROBE_MIN calls, the next
    # after twice as many (the choice held).
    first = picks.index(True)
    assert first == threads.PathChooser.PROBE_MIN - 1
    assert picks.count(True) == 2
    assert picks.index(True, first + 1) == first + 2 * threads.PathChooser.PROBE_MIN


def test_path_chooser_switches_when_a_probe_wins():
    chooser = threads.PathChooser()
    chooser.record(chooser.pick(1 << 20)[1], True, 10e-9)
    chooser.record(chooser.pick(1 << 20)[1], False, 1e-9)
    for _ in range(threads.PathChooser.PROBE_MIN - 1):
        assert chooser.pick(1 << 20)[0] is False
    assert chooser.pick(1 << 20)[0] is True  # the probe
    chooser.record(21, True, 0.1e-9)  # parallel is now much faster: believed at once
    assert chooser.pick(1 << 20)[0] is True


def test_path_chooser_forgets_a_slow_outlier_at_the_first_faster_time():
    chooser = threads.PathChooser()
    chooser.record(chooser.pick(1 << 20)[1], True, 1e-3)  # e.g. the thread pool starting up
    chooser.record(chooser.pick(1 << 20)[1], False, 2e-9)
    chooser.stats[21][2] = 1  # next call probes parallel
    assert chooser.pick(1 << 20)[0] is True
    chooser.record(21, True, 1e-9)
    assert chooser.stats[21][1] == 1e-9


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**64 - 1),
    offset=st.integers(0, 2**62),
    n=st.integers(0, 2000),
    threshold=st.integers(0, 65536),
)
def test_numba_mask_equals_reference_property(seed, offset, n, threshold):
    mask = cpu.keep_mask(n, seed, offset, threshold)
    assert np.array_equal(mask.numpy(), ref.keep_mask_from_threshold(n, seed, offset, threshold))


def test_tensor_mask_is_the_concatenation_of_its_pieces_masks():
    """Offsets are element counts: a tensor split in two uses consecutive stream windows."""
    whole = cpu.keep_mask(1000, 9, 2**40, 30000)
    head = cpu.keep_mask(333, 9, 2**40, 30000)
    tail = cpu.keep_mask(667, 9, 2**40 + 333, 30000)
    assert torch.equal(whole, torch.cat([head, tail]))


# ----------------------------------------------------------------------------------------------
# dtypes: the kernels round x * scale exactly as torch does
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scale", [1.0, 1 / (1 - 6554 / 65536), 3.7, 1e-3, 131072.0])
def test_numba_half_types_round_like_torch_for_every_bit_pattern(dtype, scale):
    x = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    y = cpu.dropout_forward(x, 11, 5, 0, scale)  # threshold 0: every element kept
    assert _same_bits(y, x * scale)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_numba_forward_equals_torch_where_mask_x_times_scale(dtype):
    n, seed, offset, threshold = 5003, 77, 2**33 + 3, 16384
    x = _special_values(dtype, n, 1)
    keep = ref.keep_mask_from_threshold(n, seed, offset, threshold)
    y = cpu.dropout_forward(x, seed, offset, threshold, _scale(threshold))
    assert y.dtype == dtype
    assert _same_bits(y, _torch_dropout_oracle(x, keep, _scale(threshold)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_numba_forward_equals_numpy_reference(dtype):
    x = _special_values(dtype, 2000, 2).reshape(40, 50)
    y = cpu.dropout_forward(x, 5, 3, 40000, _scale(40000))
    expected = ref.dropout_forward_reference(x.numpy(), 5, 3, 40000, _scale(40000))
    assert _same_bits(y, torch.from_numpy(expected))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_numba_backward_is_grad_times_forward_mask_times_scale(dtype):
    n, seed, offset, threshold = 3001, 2024, 2**32 + 1, 13107
    scale = _scale(threshold)
    y = cpu.dropout_forward(torch.ones(n, dtype=dtype), seed, offset, threshold, scale)
    grad = _special_values(dtype, n, 3)
    grad_x = cpu.dropout_backward(grad, seed, offset, threshold, scale)
    keep = (y != 0).numpy()
    assert np.array_equal(keep, ref.keep_mask_from_threshold(n, seed, offset, threshold))
    assert _same_bits(grad_x, _torch_dropout_oracle(grad, keep, scale))


def test_large_outputs_allocated_with_huge_page_advice_hold_the_right_bits():
    n = cpu.HUGE_PAGE_MIN_BYTES // 4 + 1000  # float32 output above the huge-page threshold
    x = torch.randn(n)
    y = cpu.dropout_forward(x, 21, 2**32 + 5, 6554, _scale(6554))
    keep = ref.keep_mask_from_threshold(n, 21, 2**32 + 5, 6554)
    assert _same_bits(y, _torch_dropout_oracle(x, keep, _scale(6554)))
    mask = cpu.keep_mask(cpu.HUGE_PAGE_MIN_BYTES + 3, 21, 0, 6554)
    assert np.array_equal(mask.numpy(), ref.keep_mask_from_threshold(mask.numel(), 21, 0, 6554))


def test_numba_forward_out_works_in_place():
    x = torch.randn(3, 1000)
    expected = cpu.dropout_forward(x, 1, 2, 30000, _scale(30000))
    result = cpu.dropout_forward_out(x, x, 1, 2, 30000, _scale(30000))
    assert result is x
    assert torch.equal(x, expected)


def test_numba_forward_keeps_shape_and_ignores_requires_grad():
    x = torch.randn(4, 5, 6, requires_grad=True)
    y = cpu.dropout_forward(x, 1, 0, 0, 1.0)
    assert y.shape == x.shape and not y.requires_grad
    assert torch.equal(y, x.detach())


# ----------------------------------------------------------------------------------------------
# Statistics and threshold edge cases
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [2.0**-16, 0.01, 0.1, 0.5, 0.9, 1 - 2.0**-16])
def test_kept_fraction_is_binomial_within_6_sigma(p):
    n = 1 << 20
    threshold = ref.threshold_from_p(p)
    kept = int(cpu.keep_mask(n, 4242, 2**40 + 3, threshold).sum())
    assert_fraction_close(kept, n, ref.keep_probability_from_threshold(threshold), sigmas=6)


def test_lanes_are_uniform_over_256_bins_chi_square_6_sigma():
    n = 1 << 20
    lanes = cpu.random_uint16(n, 2718281828, 12345).numpy()
    expected = n / 256
    for counts in (
        np.bincount(lanes >> 8, minlength=256),
        np.bincount(lanes & 0xFF, minlength=256),
    ):
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        # chi-square with 255 degrees of freedom: mean 255, sd sqrt(510).
        assert abs(chi2 - 255) <= 6 * math.sqrt(510), chi2


def test_neighbouring_lanes_are_uncorrelated():
    lanes = cpu.random_uint16(1 << 20, 1, 0).numpy().astype(np.float64)
    u = (lanes - lanes.mean()) / lanes.std()
    for lag in (1, 2, 7, 8):  # within a word, across words, across Philox blocks
        corr = float((u[:-lag] * u[lag:]).mean())
        assert abs(corr) <= 6 / math.sqrt(len(u)), (lag, corr)


def test_different_seeds_give_different_masks():
    a = cpu.keep_mask(4096, 1, 0, 32768)
    b = cpu.keep_mask(4096, 2, 0, 32768)
    assert_fraction_close(int((a == b).sum()), 4096, 0.5, what="agreement of independent masks")


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_p_zero_keeps_everything_and_scale_one_returns_x(dtype):
    x = _special_values(dtype, 1000, 4)
    assert _same_bits(cpu.dropout_forward(x, 3, 9, 0, 1.0), x)
    assert bool(cpu.keep_mask(1000, 3, 9, 0).all())


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_p_one_drops_everything_without_nan(dtype):
    x = _special_values(dtype, 1000, 5)  # includes inf and NaN
    y = cpu.dropout_forward(x, 3, 9, 65536, 0.0)
    assert torch.equal(y, torch.zeros_like(x))
    assert not bool(cpu.keep_mask(1000, 3, 9, 65536).any())


def test_tiny_p_drops_exactly_the_lanes_equal_to_zero():
    n = 1 << 20
    lanes = cpu.random_uint16(n, 5, 0).numpy()
    mask = cpu.keep_mask(n, 5, 0, 1).numpy()  # p = 2**-16
    assert np.array_equal(~mask, lanes == 0)
    assert_fraction_close(int((~mask).sum()), n, 2.0**-16)


def test_inverted_dropout_output_is_unbiased():
    n, threshold = 1 << 20, ref.threshold_from_p(0.3)
    y = cpu.dropout_forward(torch.ones(n, dtype=torch.float64), 8, 0, threshold, _scale(threshold))
    keep = ref.keep_probability_from_threshold(threshold)
    # y is scale * Bernoulli(keep): mean 1, sd sqrt((1 - keep) / keep).
    sd = math.sqrt((1 - keep) / keep)
    assert abs(float(y.mean()) - 1.0) <= 6 * sd / math.sqrt(n)


# ----------------------------------------------------------------------------------------------
# bias + dropout + residual
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize(("shape", "offset"), [((7, 33), 5), ((3, 4, 1000), 2**32 + 3), ((1,), 0)])
def test_bias_dropout_add_equals_torch_eager_composition(dtype, shape, offset):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(shape, generator=g).to(dtype)
    bias = torch.randn(shape[-1], generator=g).to(dtype)
    residual = torch.randn(shape, generator=g).to(dtype)
    seed, threshold = 31337, 26214
    scale = _scale(threshold)
    y = cpu.bias_dropout_add(x, bias, residual, seed, offset, threshold, scale)
    keep = ref.keep_mask_from_threshold(x.numel(), seed, offset, threshold)
    expected = residual + _torch_dropout_oracle(x + bias, keep, scale)
    assert _same_bits(y, expected)
    if dtype != torch.bfloat16:
        np_ref = ref.bias_dropout_add_reference(
            x.numpy(), bias.numpy(), residual.numpy(), seed, offset, threshold, scale
        )
        assert _same_bits(y, torch.from_numpy(np_ref))


def test_bias_dropout_add_uses_the_dropout_mask_of_the_same_seed_and_offset():
    x = torch.randn(64, 100)
    zeros = torch.zeros(100)
    y = cpu.bias_dropout_add(x, zeros, torch.zeros_like(x), 1, 2, 30000, _scale(30000))
    assert torch.equal(y, cpu.dropout_forward(x, 1, 2, 30000, _scale(30000)))


def test_bias_dropout_add_backward_gradients():
    grad = torch.randn(6, 50, dtype=torch.float64)
    grad_x, grad_bias = kernels.bias_dropout_add_backward(grad, 4, 100, 20000, _scale(20000))
    keep = torch.from_numpy(ref.keep_mask_from_threshold(300, 4, 100, 20000)).view(6, 50)
    assert torch.equal(grad_x, torch.where(keep, grad * _scale(20000), 0.0))
    assert torch.allclose(grad_bias, grad_x.sum(0))


# ----------------------------------------------------------------------------------------------
# Argument errors
# ----------------------------------------------------------------------------------------------
def test_kernel_rejects_threshold_out_of_range():
    with pytest.raises(
        ValueError, match="threshold must be an integer in \\[0, 65536\\], got 65537"
    ):
        cpu.dropout_forward(torch.ones(3), 0, 0, 65537, 1.0)


def test_kernel_rejects_negative_offset():
    with pytest.raises(ValueError, match="offset must be an integer >= 0"):
        cpu.dropout_forward(torch.ones(3), 0, -1, 0, 1.0)


def test_kernel_rejects_offset_past_2_to_63():
    with pytest.raises(ValueError, match="offset \\+ numel <= 2\\*\\*63"):
        cpu.keep_mask(10, 0, 2**63 - 5, 0)


def test_kernel_rejects_seed_out_of_range():
    with pytest.raises(ValueError, match="seed must be an integer in \\[0, 2\\*\\*64\\)"):
        cpu.dropout_forward(torch.ones(3), 2**64, 0, 0, 1.0)


def test_kernel_rejects_non_contiguous_input():
    with pytest.raises(ValueError, match="x must be contiguous"):
        cpu.dropout_forward(torch.ones(4, 4).t(), 0, 0, 0, 1.0)


def test_kernel_rejects_integer_tensor():
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        cpu.dropout_forward(torch.ones(3, dtype=torch.int64), 0, 0, 0, 1.0)


def test_kernel_rejects_non_tensor():
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        cpu.dropout_forward([1.0, 2.0], 0, 0, 0, 1.0)


def test_kernel_rejects_out_of_other_dtype():
    with pytest.raises(TypeError, match="out must have dtype torch.float32"):
        cpu.dropout_forward_out(torch.ones(3), torch.ones(3, dtype=torch.float64), 0, 0, 0, 1.0)


def test_kernel_rejects_out_of_other_shape():
    with pytest.raises(ValueError, match="out must have x's shape"):
        cpu.dropout_forward_out(torch.ones(3), torch.ones(4), 0, 0, 0, 1.0)


def test_numba_kernel_rejects_non_cpu_device():
    with pytest.raises(ValueError, match="device must be cpu for the numba kernels"):
        cpu.keep_mask(3, 0, 0, 0, "meta")


def test_keep_mask_rejects_negative_n():
    with pytest.raises(ValueError, match="n must be a non-negative integer, got -1"):
        cpu.keep_mask(-1, 0, 0, 0)


def test_bias_dropout_add_rejects_bias_of_wrong_shape():
    with pytest.raises(ValueError, match="bias must have shape \\(x.shape\\[-1\\],\\) = \\(5,\\)"):
        cpu.bias_dropout_add(torch.ones(2, 5), torch.ones(4), torch.ones(2, 5), 0, 0, 0, 1.0)


def test_bias_dropout_add_rejects_residual_of_wrong_shape():
    with pytest.raises(ValueError, match="residual must have x's shape"):
        cpu.bias_dropout_add(torch.ones(2, 5), torch.ones(5), torch.ones(5), 0, 0, 0, 1.0)


def test_empty_tensors_are_fine():
    assert cpu.dropout_forward(torch.ones(0), 0, 0, 100, 1.0).shape == (0,)
    assert cpu.keep_mask(0, 0, 0, 100).shape == (0,)
    assert ref.keep_mask_reference(0, 0, 0, 0.5).shape == (0,)


# ----------------------------------------------------------------------------------------------
# Device dispatch
# ----------------------------------------------------------------------------------------------
def test_dispatch_picks_numba_on_cpu_and_torch_ops_elsewhere():
    assert kernels.backend_name("cpu") == "numba"
    assert kernels.backend_name("meta") == "torch"
    assert kernels.backend_name("cuda") == ("triton" if kernels.HAS_TRITON else "torch")


def test_dispatched_cpu_calls_equal_the_numba_kernels():
    x = torch.randn(100)
    assert torch.equal(
        kernels.dropout_forward(x, 1, 2, 3000, 1.1), cpu.dropout_forward(x, 1, 2, 3000, 1.1)
    )
    assert torch.equal(kernels.keep_mask(100, 1, 2, 3000, "cpu"), cpu.keep_mask(100, 1, 2, 3000))


@pytest.mark.parametrize(("seed", "offset", "n"), STREAM_CASES[:9])
def test_torch_fallback_gives_the_same_mask_as_numba(seed, offset, n):
    from dropkit.kernels import fallback

    assert torch.equal(
        fallback.keep_mask(n, seed, offset, 30000, "cpu"), cpu.keep_mask(n, seed, offset, 30000)
    )


# ----------------------------------------------------------------------------------------------
# Triton == reference, under TRITON_INTERPRET=1 in a subprocess
# ----------------------------------------------------------------------------------------------
# TRITON_INTERPRET must be set before triton is first imported (tl.randint4x is decorated then),
# and torch.compile in other tests imports triton, so the Triton kernels run in a fresh process.
_TRITON_CHILD = textwrap.dedent(
    """
    import sys
    import torch
    from dropkit.kernels import gpu
    assert gpu.INTERPRETED
    cases = torch.load(sys.argv[1])
    results = []
    for case in cases:
        op, args = case["op"], case["args"]
        if op == "keep_mask":
            results.append(gpu.keep_mask(*args, device="cpu"))
        elif op == "forward":
            results.append(gpu.dropout_forward(*args))
        elif op == "backward":
            results.append(gpu.dropout_backward(*args))
        elif op == "forward_out":
            x = args[0]
            gpu.dropout_forward_out(x, x, *args[1:])
            results.append(x)
        elif op == "bias_dropout_add":
            results.append(gpu.bias_dropout_add(*args))
    torch.save(results, sys.argv[2])
    """
)


def _triton_cases() -> list[dict]:
    cases: list[dict] = []
    for seed, offset, n in [
        (0, 0, 1),
        (2, 3, 13),
        (2**64 - 3, 2**32 - 7, 5000),
        (0xDEADBEEFCAFEF00D, 2**40 + 5, 100),
        (99, 2**63 - 4099, 4099),
    ]:
        for threshold in (0, 1, 32768, 65536):
            cases.append({"op": "keep_mask", "args": (n, seed, offset, threshold)})
    for dtype in ALL_DTYPES:
        x = _special_values(dtype, 3000, 7)
        cases.append({"op": "forward", "args": (x, 5, 2**33 + 1, 6554, _scale(6554))})
        # offset % 8 == 0 takes the kernel's aligned (vectorised) specialisation
        cases.append({"op": "forward", "args": (x, 6, 2**35, 30000, _scale(30000))})
        cases.append({"op": "forward", "args": (x.reshape(30, 100), 6, 8, 65536, 0.0)})
        cases.append({"op": "backward", "args": (x, 8, 2**40 + 3, 40000, _scale(40000))})
        g = torch.Generator().manual_seed(8)
        xb = torch.randn(7, 33, generator=g).to(dtype)
        bias = torch.randn(33, generator=g).to(dtype)
        res = torch.randn(7, 33, generator=g).to(dtype)
        for offset in (77, 2**32):
            cases.append(
                {"op": "bias_dropout_add", "args": (xb, bias, res, 9, offset, 20000, _scale(20000))}
            )
    cases.append({"op": "forward_out", "args": (torch.randn(1000), 1, 2, 30000, _scale(30000))})
    return cases


@pytest.fixture(scope="module")
def triton_results(tmp_path_factory):
    import triton  # noqa: F401  # the dev extra installs it: a missing one fails, never skips

    folder = tmp_path_factory.mktemp("triton")
    cases = _triton_cases()
    torch.save(cases, folder / "cases.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _TRITON_CHILD, str(folder / "cases.pt"), str(folder / "out.pt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return cases, torch.load(folder / "out.pt")


def test_triton_interpreted_kernels_equal_reference_and_numba(triton_results):
    cases, results = triton_results
    assert len(results) == len(cases)
    for case, got in zip(cases, results, strict=True):
        op, args = case["op"], case["args"]
        if op == "keep_mask":
            n, seed, offset, threshold = args
            expected = torch.from_numpy(ref.keep_mask_from_threshold(n, seed, offset, threshold))
            assert torch.equal(got, expected), case
        elif op in ("forward", "backward", "forward_out"):
            x, seed, offset, threshold, scale = args
            keep = ref.keep_mask_from_threshold(x.numel(), seed, offset, threshold)
            assert _same_bits(got, _torch_dropout_oracle(x, keep, scale)), (op, x.dtype)
            assert _same_bits(got, cpu.dropout_forward(x, seed, offset, threshold, scale))
        else:
            x, bias, res, seed, offset, threshold, scale = args
            keep = ref.keep_mask_from_threshold(x.numel(), seed, offset, threshold)
            expected = res + _torch_dropout_oracle(x + bias, keep, scale)
            assert _same_bits(got, expected), (op, x.dtype)
            assert _same_bits(got, cpu.bias_dropout_add(*args))


def test_triton_kernels_compile_for_sm90_with_vector_accesses_and_no_fma():
    """GPU-only compile problems (e.g. Triton turning an int argument equal to 1 into a constexpr)
    do not show under the interpreter: compile the kernels to PTX for an H100 without a device."""
    import triton  # the dev extra installs it: a missing one fails, never skips
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("kernels are interpreted in this process")
    from dropkit.kernels import gpu

    # The one condition that skips: no runnable ptxas (Triton's wheels ship one; an install
    # without it cannot compile for a GPU). Any error of the compile itself, a ptxas failure
    # included, fails the test.
    try:
        get_ptxas(90)
    except RuntimeError as error:
        if not str(error).startswith("Cannot find ptxas"):
            raise
        pytest.skip(f"cannot compile for sm_90 here: {error}")

    def ptx(fn, signature, constexprs, aligned_args=()):
        # What a launch specialises on its own: 16-byte-aligned pointers, sizes divisible by 16.
        attrs = {(i,): [["tt.divisibility", 16]] for i in aligned_args}
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        options = {"num_warps": 8, "enable_fp_fusion": False}
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
        return compiled.asm["ptx"]

    ints = {"seed": "u64", "first_block": "i64", "lane_shift": "i32", "threshold": "i32"}
    flags = {"BLOCK": 4096, "SCALE_F64": False, "IS_BF16": False, "ALIGNED": True}
    forward = ptx(
        gpu._dropout_kernel,
        {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i64", **ints, "scale_bits": "i32"}
        | {k: "constexpr" for k in flags},
        flags,
        aligned_args=(0, 1, 2),
    )
    assert "ld.global.v4" in forward and "st.global.v4" in forward
    flags_bf16 = flags | {"IS_BF16": True}
    fused = ptx(
        gpu._bias_dropout_add_kernel,
        {"x_ptr": "*i16", "bias_ptr": "*i16", "res_ptr": "*i16", "out_ptr": "*i16", "n": "i64"}
        | {"h_len": "constexpr", **ints, "scale_bits": "i32"}
        | {k: "constexpr" for k in flags_bf16},
        {"h_len": 1, **flags_bf16},
    )
    assert "fma." not in fused
    mask = ptx(
        gpu._keep_mask_kernel,
        {"out_ptr": "*i1", "n": "constexpr", **ints, "BLOCK": "constexpr", "ALIGNED": "constexpr"},
        {"n": 1, "BLOCK": 4096, "ALIGNED": False},
    )
    assert "mul.hi.u32" in mask


def test_dropkit_imports_without_triton_and_gpu_kernels_refuse_cpu_tensors():
    """One fresh process: importing dropkit leaves triton unimported; gpu.py refuses CPU tensors."""
    code = textwrap.dedent(
        """
        import sys
        import torch
        import dropkit, dropkit.kernels, dropkit.ops
        print("triton imported:", "triton" in sys.modules)
        try:
            from dropkit.kernels import gpu
        except ImportError:
            print("no triton")
        else:
            try:
                gpu.dropout_forward(torch.ones(3), 0, 0, 0, 1.0)
            except ValueError as e:
                print(e)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert "triton imported: False" in done.stdout, done.stderr[-2000:]
    assert (
        "no triton" in done.stdout
        or "x must be a CUDA tensor for the Triton kernels" in done.stdout
    ), done.stderr[-2000:]


@pytest.mark.parametrize("n", [4096, cpu.PARALLEL_MIN + 4099])
def test_a_call_ending_exactly_at_2_to_the_63_matches_the_reference(n):
    """offset + n = 2^63 is inside the contract: the chunk arithmetic must not overflow int64."""
    offset = 2**63 - n
    y = cpu.dropout_forward(torch.ones(n), 99, offset, 20000, 1.0)
    tail = min(n, 3000)
    expected = ref.keep_mask_from_threshold(tail, 99, offset + n - tail, 20000)
    assert np.array_equal(y.numpy()[-tail:] != 0, expected)
    assert np.array_equal(
        y.numpy()[:tail] != 0, ref.keep_mask_from_threshold(tail, 99, offset, 20000)
    )
