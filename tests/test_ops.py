"""dropkit.ops: counter-based fused dropout, its torch.library ops, layouts, dtypes and statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from inputs import randn_without_zeros
from stats import assert_fraction_close, assert_mean_close

from dropkit import kernels, ops, rng
from dropkit.kernels import fallback
from dropkit.reference import philox as ref

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _bytes_saved_for_backward(fn, *inputs):
    """Runs fn under saved_tensors_hooks and returns the bytes autograd packed for backward."""
    total = []

    def pack(t):
        total.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    return sum(total), out


def _reference_mask(n, seed, offset, p):
    return torch.from_numpy(ref.keep_mask_reference(n, seed, offset, p))


# ------------------------------------------------------------------------------------------------
# Rates and thresholds
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.0, 0.1, 0.25, 0.3, 0.5, 0.9, 1.0, 1 / 3, 2**-17, 1 - 2**-17])
def test_threshold_and_keep_probability_match_the_reference(p):
    assert ops.threshold(p) == ref.threshold_from_p(p)
    assert ops.keep_probability(p) == ref.keep_probability_from_threshold(ref.threshold_from_p(p))
    assert abs(ops.keep_probability(p) - (1 - p)) <= 2**-17


def test_dropout_scale_is_the_exact_inverse_of_one_minus_p_and_zero_at_p_one():
    # Exact (issue 15 item 3): 1/(1 − p) in double as torch computes it, not 1/keep_probability(p).
    assert ops.dropout_scale(0.1) == 1.0 / (1.0 - 0.1) != 1.0 / ops.keep_probability(0.1)
    assert ops.dropout_scale(0.8) == 1.0 / (1.0 - 0.8)
    assert ops.dropout_scale(1.0) == 0.0


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_probability_is_a_value_error(bad):
    with pytest.raises(ValueError, match="p"):
        ops.dropout_elementwise(torch.ones(3), bad, 1.0)
    with pytest.raises(ValueError, match="p"):
        ops.keep_mask((3,), bad, "cpu")


def test_bad_argument_types_are_type_errors():
    with pytest.raises(TypeError, match="floating-point"):
        ops.dropout_elementwise(torch.ones(3, dtype=torch.int64), 0.5, 2.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        ops.dropout_elementwise([1.0, 2.0], 0.5, 2.0)
    with pytest.raises(TypeError, match="scale"):
        ops.dropout_elementwise(torch.ones(3), 0.5, "2")
    with pytest.raises(ValueError, match="scale"):
        ops.dropout_elementwise(torch.ones(3), 0.5, float("inf"))
    with pytest.raises(TypeError, match="generator"):
        ops.dropout_elementwise(torch.ones(3), 0.5, 2.0, generator=0)
    with pytest.raises(TypeError, match="shape"):
        ops.keep_mask(3, 0.5, "cpu")
    with pytest.raises(TypeError, match="shape"):
        ops.keep_mask((2, -1), 0.5, "cpu")


def test_explicit_seed_and_offset_are_checked():
    x = torch.ones(4)
    with pytest.raises(ValueError, match="seed"):
        ops.dropout_with_seed(x, 0.5, seed=2**64)
    with pytest.raises(ValueError, match="offset"):
        ops.dropout_with_seed(x, 0.5, seed=1, offset=-1)
    with pytest.raises(TypeError, match="seed"):
        ops.dropout_with_seed(x, 0.5, seed=1.5)
    with pytest.raises(ValueError, match="offset"):
        ops.dropout_with_seed(x, 0.5, seed=1, offset=2**63 - 2)


# ------------------------------------------------------------------------------------------------
# Bits: reference == numba (small direct path and public wrapper) == torch fallback
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 13, 10_000, 70_001])
@pytest.mark.parametrize(
    "seed, offset", [(0, 0), (2**64 - 1, 5), (123456789, 2**32 - 3), (7, 2**40 + 1)]
)
def test_dropout_with_seed_matches_the_numpy_reference(n, seed, offset):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    y = ops.dropout_with_seed(x, 0.3, seed, offset)
    t = ref.threshold_from_p(0.3)
    expected = ref.dropout_forward_reference(x.numpy(), seed, offset, t, ops.dropout_scale(0.3))
    np.testing.assert_array_equal(y.numpy(), expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [37, 70_001])
def test_every_dtype_gives_the_kernel_wrappers_bits(dtype, n):
    from dropkit.kernels import cpu, small

    x = torch.randn(n, generator=torch.Generator().manual_seed(1)).to(dtype)
    t, scale = ops.threshold(0.2), ops.dropout_scale(0.2)
    assert small.accepts(x) == (n < cpu.PARALLEL_MIN)  # both eager paths are exercised
    y = ops.dropout_with_seed(x, 0.2, seed=99, offset=3)
    assert y.dtype == dtype
    assert torch.equal(y, cpu.dropout_forward(x, 99, 3, t, scale))
    assert torch.equal(y != 0, (x != 0) & _reference_mask(n, 99, 3, 0.2))


def test_fallback_gives_the_reference_bits_and_runs_on_meta():
    for seed, offset in [(0, 0), (2**63 + 11, 2**33 - 7)]:
        got = fallback.philox_uint16(100, seed, offset, "cpu").numpy()
        np.testing.assert_array_equal(got, ref.random_uint16(100, seed, offset).astype(np.int32))
    x = torch.randn(3, 50, dtype=torch.float64)
    y = fallback.dropout_forward(x, 5, 9, 20000, 1.5)
    expected = ref.dropout_forward_reference(x.numpy(), 5, 9, 20000, 1.5)
    np.testing.assert_array_equal(y.numpy(), expected)
    assert kernels.backend_name("meta") == "torch"
    meta = ops.dropout_elementwise(torch.empty(4, 5, device="meta"), 0.5, 2.0)
    assert meta.device.type == "meta" and meta.shape == (4, 5)
    assert ops.keep_mask((2, 3), 0.5, "meta").shape == (2, 3)


def test_keep_mask_and_dropout_draw_the_same_mask_for_the_same_seed():
    torch.manual_seed(5)
    mask = ops.keep_mask((40, 30), 0.4, "cpu")
    torch.manual_seed(5)
    y = ops.dropout_elementwise(torch.ones(40, 30), 0.4, 1.0)
    assert torch.equal(mask, y != 0)


def test_default_path_is_the_seeded_counter_stream():
    g = torch.Generator().manual_seed(11)
    seed = rng.draw_seed(torch.Generator().manual_seed(11))
    x = torch.randn(6, 7)
    y = ops.dropout_elementwise(x, 0.5, 2.0, generator=g)
    assert torch.equal(y, ops.dropout_with_seed(x, 0.5, seed, 0, 2.0))


# ------------------------------------------------------------------------------------------------
# Layouts: logical row-major mask, memory format kept, 64-bit offsets on strided views
# ------------------------------------------------------------------------------------------------
def test_a_permuted_view_gets_the_mask_of_its_contiguous_copy():
    x = torch.randn(4, 5, 6).permute(2, 0, 1)
    assert not x.is_contiguous()
    a = ops.dropout_elementwise(x, 0.5, 2.0, generator=torch.Generator().manual_seed(0))
    b = ops.dropout_elementwise(
        x.contiguous(), 0.5, 2.0, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(a, b)


def test_channels_last_input_keeps_its_memory_format_and_the_logical_mask():
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    y = ops.dropout_elementwise(x, 0.5, 2.0, generator=torch.Generator().manual_seed(0))
    assert y.is_contiguous(memory_format=torch.channels_last)
    expected = ops.dropout_elementwise(
        x.contiguous(), 0.5, 2.0, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(y, expected)


@pytest.mark.parametrize("offset", [2**32 - 17, 2**40 + 3, 2**62 + 5])
def test_offsets_past_two_to_the_32_on_strided_views(offset):
    base = torch.randn(64, 64, dtype=torch.float64)
    view = base[::2, 1::3]  # strided, non-contiguous
    y = ops.dropout_with_seed(view, 0.5, seed=2**64 - 3, offset=offset)
    expected = ref.dropout_forward_reference(
        view.contiguous().numpy(), 2**64 - 3, offset, 32768, 2.0
    )
    np.testing.assert_array_equal(y.numpy(), expected)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    order_seed=st.integers(0, 2**16),
    step=st.integers(1, 3),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**64 - 1),
    offset=st.integers(0, 2**62),
)
def test_any_layout_matches_the_reference_on_its_contiguous_copy(
    shape, order_seed, step, dtype, p, seed, offset
):
    gen = torch.Generator().manual_seed(order_seed)
    base = torch.randn([s * step for s in shape], generator=gen, dtype=dtype)
    view = base[tuple(slice(None, None, step) for _ in shape)]
    view = view.permute(*torch.randperm(len(shape), generator=gen).tolist())
    y = ops.dropout_with_seed(view, p, seed, offset)
    dense = view.contiguous().numpy()
    expected = ref.dropout_forward_reference(
        dense, seed, offset, ref.threshold_from_p(p), ops.dropout_scale(p)
    )
    assert y.shape == view.shape and y.dtype == dtype
    np.testing.assert_array_equal(y.contiguous().numpy(), expected)


def test_slices_of_one_stream_compose_with_offsets():
    x = torch.randn(3, 1000)
    whole = ops.dropout_with_seed(x, 0.3, seed=42)
    parts = [ops.dropout_with_seed(x[i], 0.3, 42, offset=1000 * i) for i in range(3)]
    assert torch.equal(whole, torch.stack(parts))


# ------------------------------------------------------------------------------------------------
# Autograd: grad = mask · scale, nothing O(n) saved, in-place, p = 0 and p = 1, double backward
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [100, 70_001])
def test_gradient_is_the_regenerated_mask_times_scale(n):
    x = torch.randn(n, requires_grad=True)
    torch.manual_seed(3)
    y = ops.dropout_elementwise(x, 0.3, ops.dropout_scale(0.3))
    torch.manual_seed(3)
    mask = ops.keep_mask((n,), 0.3, "cpu")
    upstream = torch.randn(n)
    (grad,) = torch.autograd.grad(y, x, upstream)
    assert torch.equal(grad, torch.where(mask, upstream * ops.dropout_scale(0.3), 0.0))


def test_autograd_saves_o1_bytes_not_the_mask():
    n = 1 << 16
    x = randn_without_zeros(n, requires_grad=True)  # y != 0 is then the kept set
    eager_bytes, y = _bytes_saved_for_backward(lambda t: ops.dropout_elementwise(t, 0.5, 2.0), x)
    seed = torch.ops.dropkit.draw_seed(torch.empty(0))
    op_bytes, y_op = _bytes_saved_for_backward(
        lambda t: torch.ops.dropkit.dropout_with_seed(t, seed, 0, 32768, 2.0), x
    )
    torch_bytes, _ = _bytes_saved_for_backward(lambda t: torch.nn.functional.dropout(t, 0.5), x)
    assert eager_bytes <= 16 and op_bytes <= 16
    assert torch_bytes >= n  # torch keeps at least a byte per element: the check can see it
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0) * 2.0)
    x.grad = None
    y_op.sum().backward()
    assert torch.equal(x.grad, (y_op != 0) * 2.0)


def test_bias_dropout_add_saves_o1_bytes():
    x = torch.randn(64, 128, requires_grad=True)
    b = torch.randn(128, requires_grad=True)
    r = torch.randn(64, 128, requires_grad=True)
    saved, _ = _bytes_saved_for_backward(lambda *t: ops.bias_dropout_add(*t, 0.1), x, b, r)
    seed = torch.ops.dropkit.draw_seed(torch.empty(0))
    saved_op, _ = _bytes_saved_for_backward(
        lambda *t: torch.ops.dropkit.bias_dropout_add(
            *t, seed, ops.threshold(0.1), ops.dropout_scale(0.1)
        ),
        x,
        b,
        r,
    )
    assert saved <= 16 and saved_op <= 16


def test_eager_path_and_custom_op_give_the_same_bits():
    x = torch.randn(50, 60)
    torch.manual_seed(8)
    eager = ops.dropout_elementwise(x, 0.25, ops.dropout_scale(0.25))
    torch.manual_seed(8)
    seed = torch.ops.dropkit.draw_seed(torch.empty(0))
    op = torch.ops.dropkit.dropout_with_seed(
        x, seed, 0, ops.threshold(0.25), ops.dropout_scale(0.25)
    )
    assert torch.equal(eager, op)
    unsigned = int(seed) % 2**64
    assert torch.equal(op, ops.dropout_with_seed(x, 0.25, unsigned))


def test_inplace_writes_into_the_input_and_matches_out_of_place():
    x = torch.randn(30, 40)
    expected = ops.dropout_elementwise(x, 0.5, 2.0, generator=torch.Generator().manual_seed(1))
    y = x.clone()
    version = y._version
    out = ops.dropout_elementwise(
        y, 0.5, 2.0, generator=torch.Generator().manual_seed(1), inplace=True
    )
    assert out is y and torch.equal(y, expected) and y._version > version
    z = x.t().clone().t()  # non-contiguous in-place
    out = ops.dropout_elementwise(
        z, 0.5, 2.0, generator=torch.Generator().manual_seed(1), inplace=True
    )
    assert out is z and torch.equal(
        z, ops.dropout_elementwise(x, 0.5, 2.0, generator=torch.Generator().manual_seed(1))
    )


def test_inplace_on_a_non_leaf_backpropagates_through_the_mask():
    leaf = randn_without_zeros(20, 30, requires_grad=True)  # y != 0 is then the kept set
    h = leaf * 1.0
    y = ops.dropout_elementwise(
        h, 0.5, 2.0, generator=torch.Generator().manual_seed(2), inplace=True
    )
    assert y is h
    y.sum().backward()
    assert torch.equal(leaf.grad, (y != 0) * 2.0)


def test_inplace_on_a_leaf_that_requires_grad_is_refused_as_torch_does():
    leaf = torch.randn(5, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf"):
        ops.dropout_elementwise(leaf, 0.5, 2.0, inplace=True)


def test_p_zero_is_the_identity_and_p_one_gives_zeros_without_nan():
    x = torch.tensor([1.0, float("inf"), float("nan"), -2.0], requires_grad=True)
    y = ops.dropout_elementwise(x, 1.0, ops.dropout_scale(1.0))
    assert torch.equal(y, torch.zeros(4))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros(4))
    finite = torch.randn(100)
    assert torch.equal(ops.dropout_elementwise(finite, 0.0, 1.0), finite)


@pytest.mark.parametrize("n", [200, 70_000])  # the small-tensor node and the custom op
def test_double_backward_uses_the_same_mask(n):
    x = randn_without_zeros(n, requires_grad=True)  # y != 0 is then the kept set
    y = ops.dropout_elementwise(x, 0.5, 2.0, generator=torch.Generator().manual_seed(4))
    (g,) = torch.autograd.grad(y, x, torch.ones(n, requires_grad=True), create_graph=True)
    # Differentiable in the incoming gradient, and independent of x: dropout is linear in x, so
    # the second derivative in x is absent (not a tensor of zeros built from a saved x).
    assert g.requires_grad
    (gg,) = torch.autograd.grad(g.sum(), x, allow_unused=True)
    assert gg is None
    v = torch.ones(n, requires_grad=True)
    (g,) = torch.autograd.grad(y, x, v, create_graph=True)
    (gv,) = torch.autograd.grad(g.sum(), v)
    assert torch.equal(gv, (y != 0) * 2.0)


def test_requires_grad_follows_the_input():
    assert not ops.dropout_elementwise(torch.randn(5), 0.5, 2.0).requires_grad
    assert ops.dropout_elementwise(torch.randn(5, requires_grad=True), 0.5, 2.0).requires_grad
    with torch.no_grad():
        assert not ops.dropout_elementwise(
            torch.randn(5, requires_grad=True), 0.5, 2.0
        ).requires_grad


# ------------------------------------------------------------------------------------------------
# Statistics (fixed seeds, 6-sigma bounds)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropped_fraction_is_p_and_the_output_is_unbiased(p, dtype):
    n = 1 << 18
    torch.manual_seed(0)
    y = ops.dropout_elementwise(torch.ones(n, dtype=dtype), p, ops.dropout_scale(p))
    dropped = int((y == 0).sum())
    assert_fraction_close(dropped, n, 1 - ops.keep_probability(p), what="dropped fraction")
    keep = ops.keep_probability(p)
    std = math.sqrt(keep * (1 - keep)) / keep
    assert_mean_close(y.double().mean().item(), 1.0, std, n, what="E[y] for x = 1")


def test_successive_calls_draw_different_masks():
    torch.manual_seed(0)
    a = ops.keep_mask((1000,), 0.5, "cpu")
    b = ops.keep_mask((1000,), 0.5, "cpu")
    agreement = int((a == b).sum())
    assert_fraction_close(agreement, 1000, 0.5, what="agreement of two independent masks")


# ------------------------------------------------------------------------------------------------
# Fusions: bias + dropout + residual, attention
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_dropout_add_equals_the_unfused_composition(dtype):
    gen = torch.Generator().manual_seed(0)
    x, r = (
        torch.randn(2, 7, 16, generator=gen).to(dtype),
        torch.randn(2, 7, 16, generator=gen).to(dtype),
    )
    b = torch.randn(16, generator=gen).to(dtype)
    y = ops.bias_dropout_add(x, b, r, 0.3, generator=torch.Generator().manual_seed(9))
    seed = rng.draw_seed(torch.Generator().manual_seed(9))
    expected = r + ops.dropout_with_seed(x + b, 0.3, seed)
    assert y.dtype == dtype and torch.equal(y, expected)


def test_bias_dropout_add_gradients_match_autograd_of_the_composition():
    gen = torch.Generator().manual_seed(1)
    leaves = [
        torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True)
        for s in [(4, 8), (8,), (4, 8)]
    ]
    x, b, r = leaves
    y = ops.bias_dropout_add(x, b, r, 0.5, generator=torch.Generator().manual_seed(3))
    upstream = torch.randn(4, 8, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(y, leaves, upstream)
    seed = rng.draw_seed(torch.Generator().manual_seed(3))
    expected = torch.autograd.grad(r + ops.dropout_with_seed(x + b, 0.5, seed), leaves, upstream)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_bias_dropout_add_without_bias_in_eval_and_bad_shapes():
    x, r = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(ops.bias_dropout_add(x, None, r, 0.5, training=False), r + x)
    torch.manual_seed(0)
    y = ops.bias_dropout_add(x, None, r, 0.5)
    torch.manual_seed(0)
    assert torch.equal(y, r + ops.dropout_elementwise(x, 0.5, 2.0))
    with pytest.raises(ValueError, match="shape"):
        ops.bias_dropout_add(x, torch.randn(5), r, 0.5)
    with pytest.raises(ValueError, match="shape"):
        ops.bias_dropout_add(x, None, torch.randn(2, 3, 4), 0.5)


def test_attention_dropout_is_elementwise_dropout_of_the_probabilities():
    probs = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    a = ops.attention_dropout(probs, 0.2, generator=torch.Generator().manual_seed(0))
    b = ops.dropout_elementwise(
        probs, 0.2, ops.dropout_scale(0.2), generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(a, b)
    assert ops.attention_dropout(probs, 0.2, training=False) is probs


@pytest.mark.parametrize("causal", [False, True])
def test_reference_attention_matches_sdpa_without_dropout(causal):
    q, k, v = (
        torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)
    )
    got = ops.scaled_dot_product_attention_with_dropout(q, k, v, 0.0, is_causal=causal)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    mask = torch.rand(6, 6, generator=torch.Generator().manual_seed(5)) > 0.3
    mask[:, 0] = True
    got = ops.scaled_dot_product_attention_with_dropout(q, k, v, attn_mask=mask)
    torch.testing.assert_close(
        got,
        torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask),
        rtol=1e-5,
        atol=1e-5,
    )


def test_reference_attention_with_dropout_drops_probabilities_and_backpropagates():
    q, k, v = (
        torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(i), requires_grad=True)
        for i in range(3)
    )
    out = ops.scaled_dot_product_attention_with_dropout(
        q, k, v, 0.5, generator=torch.Generator().manual_seed(7)
    )
    probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), -1)
    dropped = ops.dropout_elementwise(probs, 0.5, 2.0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out, dropped @ v)
    out.sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))
    with pytest.raises(ValueError, match="is_causal"):
        ops.scaled_dot_product_attention_with_dropout(
            q, k, v, is_causal=True, attn_mask=torch.ones(4, 4, dtype=torch.bool)
        )
    with pytest.raises(ValueError, match="query"):
        ops.scaled_dot_product_attention_with_dropout(q, k[..., :3], v)


# ------------------------------------------------------------------------------------------------
# torch.library registration
# ------------------------------------------------------------------------------------------------
def test_seed_drawing_ops_carry_the_nondeterministic_seeded_tag():
    assert torch.Tag.nondeterministic_seeded in torch.ops.dropkit.draw_seed.default.tags
    for name in ("dropout_with_seed", "bias_dropout_add", "keep_mask"):  # pure given the seed
        assert (
            torch.Tag.nondeterministic_seeded not in getattr(torch.ops.dropkit, name).default.tags
        )


def test_opcheck_passes_for_the_registered_ops():
    x = torch.randn(3, 4, requires_grad=True)
    seed = torch.tensor(-5, dtype=torch.int64)
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.dropkit.dropout_with_seed.default, (x, seed, 3, 20000, 1.5))
    torch.library.opcheck(torch.ops.dropkit.draw_seed.default, (torch.empty(0),), test_utils=checks)
    bda_args = (x, torch.randn(4, requires_grad=True), torch.randn(3, 4), seed, 20000, 1.5)
    torch.library.opcheck(torch.ops.dropkit.bias_dropout_add.default, bda_args)
    torch.library.opcheck(
        torch.ops.dropkit.keep_mask.default, ([2, 3], seed, 20000, torch.device("cpu"))
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_gives_the_cpu_bits_for_every_op(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 9, generator=gen).to(dtype)
    assert torch.equal(
        ops.dropout_with_seed(x.cuda(), 0.3, 5, 2**33).cpu(),
        ops.dropout_with_seed(x, 0.3, 5, 2**33),
    )
    torch.manual_seed(1)
    on_cpu = ops.dropout_elementwise(x, 0.3, ops.dropout_scale(0.3))
    torch.manual_seed(1)  # the seed comes from the CPU generator whatever the device
    assert torch.equal(ops.dropout_elementwise(x.cuda(), 0.3, ops.dropout_scale(0.3)).cpu(), on_cpu)
    last = x.contiguous(memory_format=torch.channels_last)
    y = ops.dropout_with_seed(last.cuda(), 0.3, 5)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y.cpu(), ops.dropout_with_seed(x, 0.3, 5))
    b, r = torch.randn(9, generator=gen).to(dtype), torch.randn(2, 3, 8, 9, generator=gen).to(dtype)
    torch.manual_seed(2)
    fused_cpu = ops.bias_dropout_add(x, b, r, 0.2)
    torch.manual_seed(2)
    assert torch.equal(ops.bias_dropout_add(x.cuda(), b.cuda(), r.cuda(), 0.2).cpu(), fused_cpu)
    torch.manual_seed(3)
    mask_cpu = ops.keep_mask((7, 5), 0.5, "cpu")
    torch.manual_seed(3)
    assert torch.equal(ops.keep_mask((7, 5), 0.5, "cuda").cpu(), mask_cpu)
