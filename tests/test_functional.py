"""dropkit.functional: the scaling rules, mask statistics and structure, gradients, edge rates.

Every random property is checked with fixed seeds and bounds from its distribution (>= 6σ, see
tests/stats.py); nothing here assumes which bits the mask kernel draws.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as torch_F
from hypothesis import given, settings
from hypothesis import strategies as st

from dropkit import functional as F
from dropkit import ops
from tests.inputs import randn_without_zeros
from tests.stats import assert_fraction_close, assert_mean_close, assert_variance_close

N = 1 << 18
SCALINGS = ["inverted", "inference"]
CHANNEL = {1: F.dropout1d, 2: F.dropout2d, 3: F.dropout3d}


def _keep(p: float) -> float:
    return ops.keep_probability(p)


# --- the elementwise rule -------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.8, 0.95])
@pytest.mark.parametrize("scaling", SCALINGS)
def test_drop_fraction_is_p(p, scaling):
    torch.manual_seed(1)
    y = F.dropout(torch.ones(N), p, scaling=scaling)
    assert_fraction_close(int((y == 0).sum()), N, 1 - _keep(p), what=f"dropped fraction, p={p}")
    assert abs((1 - _keep(p)) - p) <= 2**-17


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.7])
@pytest.mark.parametrize("scaling", SCALINGS)
def test_each_output_is_zero_or_the_scaled_input(p, scaling):
    torch.manual_seed(2)
    x = randn_without_zeros(1000, 64)  # an input zero would pass for a dropped unit
    y = F.dropout(x, p, scaling=scaling)
    scaled = x * F.train_scale(p, scaling)
    assert ((y == 0) | (y == scaled)).all()
    assert (y == 0).any() and (y != 0).any()


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_inverted_output_is_unbiased(p):
    torch.manual_seed(3)
    keep = _keep(p)
    # Whole-tensor mean of a constant input: y = c/(1 − p) w.p. 1 − p, so E[y] = c.
    c = 1.5
    y = F.dropout(torch.full((N,), c), p)
    assert_mean_close(y.mean().item(), c, c * math.sqrt((1 - keep) / keep), N)
    # And per element: E[y_i] = x_i for each of 16 different values, over 20 000 draws.
    x = torch.linspace(-2.0, 3.0, 16, dtype=torch.float64)
    draws = 20_000
    y = F.dropout(x.expand(draws, 16).contiguous(), p)
    for i in range(16):
        std = abs(x[i].item()) * math.sqrt((1 - keep) / keep)
        assert_mean_close(y[:, i].mean().item(), x[i].item(), std, draws, what=f"E[y_{i}]")


@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_inference_scaling_trains_at_keep_times_x_and_evals_at_exactly_keep_times_x(p):
    torch.manual_seed(4)
    keep = _keep(p)
    x = torch.linspace(-2.0, 3.0, 16, dtype=torch.float64)
    draws = 20_000
    y = F.dropout(x.expand(draws, 16).contiguous(), p, scaling="inference")
    assert ((y == 0) | (y == x)).all()  # no scaling in training
    for i in range(16):
        std = abs(x[i].item()) * math.sqrt(keep * (1 - keep))
        assert_mean_close(y[:, i].mean().item(), keep * x[i].item(), std, draws)
    # Eval is exactly x * (1 − p) (issue 15 item 3); training keeps at the kernel's keep probability.
    assert torch.equal(F.dropout(x, p, training=False, scaling="inference"), x * (1 - p))


def test_inference_eval_is_exactly_one_minus_p_on_the_kernels_grid():
    x = torch.randn(100)
    for p in (0.5, 0.25, 0.125, 0.75):
        assert _keep(p) == 1 - p
        assert torch.equal(F.dropout(x, p, training=False, scaling="inference"), x * (1 - p))


def test_inverted_eval_returns_the_input():
    x = torch.randn(10)
    assert F.dropout(x, 0.7, training=False) is x


def test_masks_change_between_calls():
    x = torch.ones(4096)
    torch.manual_seed(5)
    first, second = F.dropout(x, 0.5), F.dropout(x, 0.5)
    assert not torch.equal(first, second)
    # Two independent masks agree on a fraction p² + (1 − p)² = 1/2 of the units.
    assert_fraction_close(int((first == second).sum()), 4096, 0.5, what="agreement")


@pytest.mark.parametrize("kind", ["dropout", "noise_shape", "dropout2d", "alpha", "gaussian"])
def test_masks_are_reproducible_under_manual_seed_and_generator(kind):
    x = torch.randn(8, 16, 4, 4)
    call = {
        "dropout": lambda g=None: F.dropout(x, 0.4, generator=g),
        "noise_shape": lambda g=None: F.dropout(
            x, 0.4, noise_shape=(None, None, 1, 1), generator=g
        ),
        "dropout2d": lambda g=None: F.dropout2d(x, 0.4, generator=g),
        "alpha": lambda g=None: F.alpha_dropout(x, 0.4, generator=g),
        "gaussian": lambda g=None: F.gaussian_dropout(x, 0.4, generator=g),
    }[kind]
    torch.manual_seed(6)
    first = call()
    torch.manual_seed(6)
    assert torch.equal(call(), first)
    a = call(torch.Generator().manual_seed(7))
    b = call(torch.Generator().manual_seed(7))
    c = call(torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_inplace_writes_into_the_input():
    torch.manual_seed(9)
    x = randn_without_zeros(1000)  # y == 0 is then a dropped unit
    original = x.clone()
    y = F.dropout(x, 0.5, inplace=True)
    assert y.data_ptr() == x.data_ptr()
    assert ((y == 0) | (y == original * 2)).all() and (y == 0).any()
    z = torch.randn(50)
    expected = z * 0.75
    assert F.dropout(z, 0.25, training=False, inplace=True, scaling="inference") is z
    assert torch.equal(z, expected)
    w = randn_without_zeros(6, 5, 4)
    original = w.clone()
    out = F.dropout(w, 0.5, inplace=True, noise_shape=(None, 1, None))
    assert out.data_ptr() == w.data_ptr()
    assert ((out == 0) | (out == original * 2)).all()


# --- gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("noise_shape", [None, (None, 1, None)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_is_exactly_mask_times_scale(scaling, noise_shape, dtype):
    torch.manual_seed(10)
    p = 0.3
    x = (torch.rand(32, 20, 16, dtype=dtype) + 0.5).requires_grad_()
    y = F.dropout(x, p, scaling=scaling, noise_shape=noise_shape)
    upstream = torch.randn_like(x)
    y.backward(upstream)
    mask = y.detach() != 0
    if noise_shape is not None:
        assert (mask == mask[:, :1]).all()
    scale = F.train_scale(p, scaling)
    assert torch.equal(x.grad, torch.where(mask, upstream * scale, torch.zeros_like(x)))


@pytest.mark.parametrize("d", [1, 2, 3])
def test_channel_dropout_gradient_is_exactly_the_channel_mask_times_scale(d):
    torch.manual_seed(11)
    x = (torch.rand((8, 16) + (3,) * d) + 0.5).requires_grad_()
    y = CHANNEL[d](x, 0.5)
    y.sum().backward()
    assert torch.equal(x.grad, (y.detach() != 0).to(x.dtype) * 2.0)


def test_alpha_and_gaussian_gradients_are_their_multipliers():
    torch.manual_seed(12)
    x = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    a, b, alpha_prime = F.alpha_dropout_affine(0.2)
    y = F.alpha_dropout(x, 0.2)
    y.sum().backward()
    kept = x.grad != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], a), rtol=1e-15)
    assert torch.allclose(y[~kept], torch.full_like(y[~kept], a * alpha_prime + b), rtol=1e-12)
    x.grad = None
    y = F.gaussian_dropout(x, 0.2)
    y.sum().backward()
    assert torch.allclose(x.grad, (y / x).detach(), rtol=1e-12)


# --- p = 0 and p = 1 ------------------------------------------------------------------------

VARIANTS = {
    "dropout": lambda x, p, s: F.dropout(x, p, scaling=s),
    "noise_shape": lambda x, p, s: F.dropout(x, p, scaling=s, noise_shape=(None, None, 1, None)),
    "dropout1d": lambda x, p, s: F.dropout1d(x.flatten(2), p, scaling=s),
    "dropout2d": lambda x, p, s: F.dropout2d(x, p, scaling=s),
    "dropout3d": lambda x, p, s: F.dropout3d(x.unsqueeze(2), p, scaling=s),
    "alpha": lambda x, p, s: F.alpha_dropout(x, p),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("scaling", SCALINGS)
def test_p_zero_is_the_identity_forward_and_backward(variant, scaling):
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    y = VARIANTS[variant](x, 0.0, scaling)
    assert torch.equal(y.reshape(x.shape), x)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("scaling", SCALINGS)
def test_p_one_gives_zeros_without_nan_or_inf_forward_and_backward(variant, scaling):
    x = torch.randn(4, 6, 5, 5) * 1e30
    x[0, 0, 0] = float("inf")  # a dropped unit is 0 whatever its input
    x = x.requires_grad_()
    y = VARIANTS[variant](x, 1.0, scaling)
    assert torch.equal(y, torch.zeros_like(y))
    y.backward(torch.randn_like(y))
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad, torch.zeros_like(x))
    if variant != "alpha":
        x = x.detach()[1:]  # eval at p = 1 is 0·x for inference scaling: finite inputs
        eval_out = F.dropout(x, 1.0, training=False, scaling=scaling)
        assert torch.isfinite(eval_out).all()
        assert torch.equal(eval_out, x if scaling == "inverted" else torch.zeros_like(x))


@pytest.mark.parametrize("variant", ["noise_shape", "dropout2d", "alpha"])
def test_dropped_units_are_exact_even_where_the_input_is_inf_or_nan(variant):
    # The mask is a function of the seed and the shape, not of the values: the same seed on an
    # all-ones input shows which units the run on inf/nan drops, independently of its output.
    x = torch.randn(64, 6, 5, 5, generator=torch.Generator().manual_seed(3))
    x[:, :, 0, 0] = float("inf")
    x[:, :, 1, 1] = float("nan")
    torch.manual_seed(21)
    on_ones = VARIANTS[variant](torch.ones_like(x), 0.5, "inverted").reshape(x.shape)
    torch.manual_seed(21)
    y = VARIANTS[variant](x, 0.5, "inverted").reshape(x.shape)
    if variant == "alpha":
        a, b, alpha_prime = F.alpha_dropout_affine(0.5)
        dropped_value = torch.tensor(a * alpha_prime + b, dtype=y.dtype)
        kept_value = a * x + b
    else:
        dropped_value = torch.tensor(0.0)
        kept_value = x * 2.0
    dropped = on_ones == dropped_value
    for where in (x.isinf(), x.isnan()):  # both outcomes occur where the input is not finite
        assert dropped[where].any() and (~dropped[where]).any()
    # A dropped unit is exactly its dropped value (0·inf or 0·nan would give NaN)...
    assert torch.equal(y[dropped], dropped_value.expand(int(dropped.sum())))
    # ...and a kept unit carries its input, inf and nan included.
    torch.testing.assert_close(y[~dropped], kept_value[~dropped], equal_nan=True)


def test_gaussian_p_zero_is_the_identity():
    x = torch.randn(10)
    assert torch.equal(F.gaussian_dropout(x, 0.0), x)


# --- channel and shared masks ----------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("batched", [True, False])
def test_channel_mask_is_constant_within_a_channel(d, batched):
    torch.manual_seed(13)
    p = 0.3
    shape = ((64,) if batched else ()) + (128,) + (3,) * d
    y = CHANNEL[d](torch.ones(shape), p)
    maps = y.flatten(-d)  # (N, C, spatial) or (C, spatial)
    assert (maps == maps[..., :1]).all(), "a channel's map is not all kept or all dropped"
    assert set(maps.unique().tolist()) <= {0.0, (torch.ones(()) * F.train_scale(p)).item()}
    dropped = int((maps[..., 0] == 0).sum())
    assert_fraction_close(dropped, maps[..., 0].numel(), 1 - _keep(p), what="dropped channels")
    if batched:  # each sample draws its own channel mask
        assert not (maps[..., 0] == maps[:1, :, 0]).all()


@pytest.mark.parametrize(
    "noise_shape, shared",
    [((None, 1, None), (1,)), ((1, None, None), (0,)), ((None, 1, 1), (1, 2)), ((64, 1, 32), (1,))],
)
def test_shared_mask_is_constant_along_the_shared_dims(noise_shape, shared):
    torch.manual_seed(14)
    p = 0.4
    y = F.dropout(torch.ones(64, 10, 32), p, noise_shape=noise_shape)
    for dim in shared:
        assert (y == y.narrow(dim, 0, 1)).all(), f"mask varies along dim {dim}"
    reduced = y
    for dim in shared:
        reduced = reduced.narrow(dim, 0, 1)
    assert_fraction_close(int((reduced == 0).sum()), reduced.numel(), 1 - _keep(p))
    # Along the other dims the mask does vary.
    assert (reduced != reduced.flatten()[0]).any()


def test_noise_shape_gives_one_mask_per_sequence_shared_over_time():
    torch.manual_seed(15)
    x = randn_without_zeros(16, 50, 8)  # (N, T, C); y != 0 is then the mask
    y = F.dropout(x, 0.5, noise_shape=(None, 1, None))
    mask = (y != 0).float()
    assert (mask == mask[:, :1]).all()
    assert (mask[:, 0] != mask[:1, 0]).any()  # sequences differ


# --- alpha and Gaussian dropout ---------------------------------------------------------------


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_alpha_dropout_keeps_zero_mean_and_unit_variance(p):
    torch.manual_seed(16)
    n = 1 << 20
    x = torch.randn(n, dtype=torch.float64)  # SELU-normalised activations: mean 0, variance 1
    y = F.alpha_dropout(x, p)
    a, b, alpha_prime = F.alpha_dropout_affine(p)
    keep = 1 - p  # the affine map uses the exact q = 1 − p, as torch's alpha_dropout
    # y is a mixture: N(b, a²) w.p. q, the constant d = aα' + b w.p. 1 − q; its 4th moment:
    d = a * alpha_prime + b
    fourth = keep * (b**4 + 6 * a**2 * b**2 + 3 * a**4) + (1 - keep) * d**4
    assert math.isclose(keep * b + (1 - keep) * d, 0.0, abs_tol=1e-12)
    assert math.isclose(keep * (a**2 + b**2) + (1 - keep) * d**2, 1.0, rel_tol=1e-12)
    assert_mean_close(y.mean().item(), 0.0, 1.0, n)
    assert_variance_close(y.var().item(), 1.0, n, kurtosis=fourth)


def test_alpha_dropout_matches_torch_alpha_dropout_values():
    # Same constants as torch.nn.functional.alpha_dropout: kept units a·x + b, dropped a·α' + b.
    x = torch.full((4096,), 0.7, dtype=torch.float64)
    torch.manual_seed(17)
    ours = set(F.alpha_dropout(x, 0.25).unique().tolist())  # p on the kernels grid
    theirs = set(torch_F.alpha_dropout(x, 0.25, training=True).unique().tolist())
    assert len(ours) == len(theirs) == 2
    for u, v in zip(sorted(ours), sorted(theirs), strict=True):
        assert math.isclose(u, v, rel_tol=1e-12)


def test_alpha_dropout_with_noise_shape_is_feature_alpha_dropout():
    torch.manual_seed(18)
    y = F.alpha_dropout(torch.randn(8, 32, 5, 5), 0.5, noise_shape=(None, None, 1, 1))
    a, b, alpha_prime = F.alpha_dropout_affine(0.5)
    dropped = (y - (a * alpha_prime + b)).abs() < 1e-6
    assert (dropped == dropped[..., :1, :1]).all() and dropped.any()


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_gaussian_dropout_noise_has_mean_one_and_variance_p_over_one_minus_p(p):
    torch.manual_seed(19)
    n = 1 << 20
    y = F.gaussian_dropout(torch.ones(n, dtype=torch.float64), p)
    var = p / (1 - p)
    assert_mean_close(y.mean().item(), 1.0, math.sqrt(var), n)
    assert_variance_close(y.var().item(), var, n, kurtosis=3.0)


def test_gaussian_noise_shape_shares_the_noise():
    torch.manual_seed(20)
    y = F.gaussian_dropout(torch.ones(4, 10, 6), 0.5, noise_shape=(None, 1, None))
    assert (y == y[:, :1]).all() and (y != y[0, 0, 0]).any()


# --- property-based: any shape, dtype, stride, p, scaling -------------------------------------

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=4),
    dtype=st.sampled_from(DTYPES),
    p=st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0)),
    scaling=st.sampled_from(SCALINGS),
    transpose=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_dropout_output_has_the_input_shape_dtype_and_rule(
    shape, dtype, p, scaling, transpose, seed
):
    torch.manual_seed(seed)
    x = (torch.rand(shape, dtype=torch.float64) + 0.5).to(dtype)
    if transpose and x.dim() >= 2:
        x = x.transpose(0, -1)  # non-contiguous
    x.requires_grad_()
    y = F.dropout(x, p, scaling=scaling)
    assert y.shape == x.shape and y.dtype == dtype
    scale = F.train_scale(p, scaling)
    kept = y != 0
    assert torch.equal(y.detach(), torch.where(kept, x.detach() * scale, torch.zeros_like(y)))
    if p == 0.0:
        assert kept.all()
    if p == 1.0:
        assert not kept.any()
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, torch.where(kept, torch.ones_like(y) * scale, torch.zeros_like(y)))


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    data=st.data(),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_any_broadcastable_noise_shape_shares_the_mask(shape, data, p, seed):
    shared = data.draw(st.lists(st.booleans(), min_size=len(shape), max_size=len(shape)))
    noise_shape = tuple(
        1 if s else data.draw(st.sampled_from([None, n]))
        for s, n in zip(shared, shape, strict=True)
    )
    torch.manual_seed(seed)
    y = F.dropout(torch.ones(shape), p, noise_shape=noise_shape)
    for dim, is_shared in enumerate(shared):
        if is_shared:
            assert (y == y.narrow(dim, 0, 1)).all()
    assert set(y.unique().tolist()) <= {0.0, (torch.ones(()) * F.train_scale(p)).item()}


@settings(max_examples=25, deadline=None)
@given(
    d=st.sampled_from([1, 2, 3]),
    batched=st.booleans(),
    sizes=st.lists(st.integers(1, 4), min_size=5, max_size=5),
    dtype=st.sampled_from(DTYPES),
    p=st.floats(0.0, 1.0),
    scaling=st.sampled_from(SCALINGS),
)
def test_channel_dropout_accepts_batched_and_unbatched_shapes(d, batched, sizes, dtype, p, scaling):
    shape = tuple(sizes[: d + 2]) if batched else tuple(sizes[: d + 1])
    x = torch.ones(shape, dtype=dtype)
    y = CHANNEL[d](x, p, scaling=scaling)
    assert y.shape == x.shape and y.dtype == dtype
    maps = y.flatten(-d)
    assert (maps == maps[..., :1]).all()
    assert torch.equal(
        CHANNEL[d](x, p, training=False, scaling=scaling), x * F.eval_scale(p, scaling)
    )


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4),
    dtype=st.sampled_from(DTYPES),
    p=st.floats(0.0, 0.99),
    variant=st.sampled_from(["alpha", "gaussian", "shared"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_every_variant_keeps_shape_and_dtype_and_is_the_identity_in_eval(
    shape, dtype, p, variant, seed
):
    torch.manual_seed(seed)
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    call = {
        "alpha": lambda t, training: F.alpha_dropout(t, p, training),
        "gaussian": lambda t, training: F.gaussian_dropout(t, p, training),
        "shared": lambda t, training: F.dropout(
            t, p, training, noise_shape=(1,) + (None,) * (t.dim() - 1) if t.dim() else ()
        ),
    }[variant]
    y = call(x, True)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert call(x, False) is x


def test_dropout_fast_path_matches_checked_path_and_still_validates():
    # The second call with a rate takes functional.dropout's cached fast path: same bits as
    # ops.dropout_elementwise for the same seed, and bad inputs are still refused.
    import dropkit.functional as DF
    from dropkit import _masking
    from dropkit import ops as dops

    x = torch.randn(37, 11)
    DF.dropout(x, 0.3)  # fills the cache for (0.3, "inverted")
    assert (0.3, "inverted") in _masking._FAST  # the cache lives with dropout, in _masking
    torch.manual_seed(5)
    fast = DF.dropout(x, 0.3)
    torch.manual_seed(5)
    ref = dops.dropout_elementwise(x, 0.3, dops.dropout_scale(0.3))
    assert torch.equal(fast, ref)
    with pytest.raises(TypeError, match="floating-point"):
        DF.dropout(torch.ones(3, dtype=torch.int64), 0.3)
    with pytest.raises(ValueError, match="scaling"):
        DF.dropout(x, 0.3, scaling="standard")
    with pytest.raises(TypeError, match="Tensor"):
        DF.dropout([1.0, 2.0], 0.3)
