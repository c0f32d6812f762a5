"""DropBlock, DropPath, DropHead and attention dropout: the papers' defining properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st
from inputs import randn_without_zeros, without_zeros
from stats import assert_fraction_close, assert_mean_close

import dropkit
from dropkit import functional_variants as FV
from dropkit import ops

# --------------------------------------------------------------------------------------------
# DropBlock
# --------------------------------------------------------------------------------------------


def _exact_block_stats(
    p: float, block: tuple[int, ...], feat: tuple[int, ...]
) -> tuple[float, float]:
    """Exact mean and variance of one map's dropped fraction under DropBlock's seeding.

    Unit a is kept iff none of the seed corners S_a covering it fires: P = q^|S_a| with
    q = 1 − γ (γ as the kernel really draws it). Two units are kept together with probability
    q^|S_a ∪ S_b|, so Cov(K_a, K_b) = q^(|S_a|+|S_b|−|S_a∩S_b|) − q^(|S_a|+|S_b|). The sets are
    boxes, so |S_a ∩ S_b| is a product over dims (a Kronecker product of 1-d overlaps).
    """
    gamma = FV.drop_block_gamma(p, block, feat)
    q = ops.keep_probability(gamma)
    counts, overlaps = np.ones(1), np.ones((1, 1))
    for b, f in zip(block, feat, strict=True):
        y = np.arange(f)
        lo, hi = np.maximum(0, y - b + 1), np.minimum(y, f - b)
        inter = np.minimum(hi[:, None], hi[None, :]) - np.maximum(lo[:, None], lo[None, :]) + 1
        counts = np.kron(counts, hi - lo + 1)
        overlaps = np.kron(overlaps, np.maximum(inter, 0))
    keep = q**counts
    cov = q ** (counts[:, None] + counts[None, :] - overlaps) - np.outer(keep, keep)
    n = counts.size
    return 1.0 - keep.mean(), cov.sum() / n**2


def _dropped_fraction_per_map(y: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    return (y == 0).flatten(-spatial_dims).double().mean(-1).flatten()


@pytest.mark.parametrize(
    ("p", "block", "feat"),
    [(0.2, (3, 3), (12, 12)), (0.3, (2, 4), (9, 11)), (0.1, (5, 5), (8, 8))],
)
def test_drop_block2d_dropped_fraction_matches_exact_law(p, block, feat):
    gen = torch.Generator().manual_seed(0)
    y = FV.drop_block2d(torch.ones(64, 64, *feat), p, block, generator=gen)
    frac = _dropped_fraction_per_map(y, 2)  # 4096 independent maps
    mean, var = _exact_block_stats(p, block, feat)
    assert_mean_close(
        frac.mean().item(), mean, math.sqrt(var), frac.numel(), what="dropped fraction"
    )


def test_drop_block2d_dropped_fraction_is_p_up_to_the_overlap_bias():
    # Σ_a c_a γ = p·|map| by the paper's γ, and 1 − (1 − γ)^c ∈ [cγ(1 − (c − 1)γ/2), cγ], so
    # p(1 − (b² − 1)γ/2) <= E[fraction] <= p: the measured mean must sit in that band ± 6σ.
    p, b, f = 0.15, 3, 16
    gen = torch.Generator().manual_seed(1)
    y = FV.drop_block2d(torch.ones(64, 64, f, f), p, b, generator=gen)
    frac = _dropped_fraction_per_map(y, 2)
    gamma = FV.drop_block_gamma(p, b, (f, f))
    _, var = _exact_block_stats(p, (b, b), (f, f))
    tol = 6 * math.sqrt(var / frac.numel())
    lower = p * (1 - (b * b - 1) * gamma / 2)
    assert lower - tol <= frac.mean().item() <= p + tol
    assert lower > 0.9 * p  # the bias is small at this γ


def test_drop_block3d_dropped_fraction_matches_exact_law():
    p, block, feat = 0.2, (2, 2, 2), (5, 6, 6)
    gen = torch.Generator().manual_seed(2)
    y = FV.drop_block3d(torch.ones(32, 64, *feat), p, block, generator=gen)
    frac = _dropped_fraction_per_map(y, 3)
    mean, var = _exact_block_stats(p, block, feat)
    assert_mean_close(
        frac.mean().item(), mean, math.sqrt(var), frac.numel(), what="dropped fraction"
    )


def _is_union_of_full_blocks(dropped: torch.Tensor, block: tuple[int, ...]) -> bool:
    """Morphological opening: every dropped unit lies in a fully dropped block that fits."""
    k = len(block)
    pool = TF.max_pool2d if k == 2 else TF.max_pool3d
    full = -pool(-dropped, kernel_size=block, stride=1)  # 1 where a whole valid window is dropped
    pad: list[int] = []
    for b in reversed(block):
        pad += [b - 1, b - 1]
    covered = pool(TF.pad(full, pad), kernel_size=block, stride=1)
    return torch.equal(covered, dropped)


@pytest.mark.parametrize("block", [(3, 3), (2, 4)])
def test_drop_block2d_drops_contiguous_full_blocks(block):
    gen = torch.Generator().manual_seed(3)
    y = FV.drop_block2d(torch.ones(8, 16, 11, 13), 0.3, block, generator=gen)
    dropped = (y == 0).float()
    assert dropped.sum() > 0
    assert _is_union_of_full_blocks(dropped, block)
    # Elementwise dropout at the same rate is not a union of blocks: the check can fail.
    speckle = (torch.rand(8, 16, 11, 13, generator=gen) < 0.3).float()
    assert not _is_union_of_full_blocks(speckle, block)


def test_drop_block3d_drops_contiguous_full_blocks():
    gen = torch.Generator().manual_seed(4)
    y = FV.drop_block3d(torch.ones(4, 8, 6, 7, 8), 0.3, (2, 3, 2), generator=gen)
    dropped = (y == 0).float()
    assert dropped.sum() > 0 and _is_union_of_full_blocks(dropped, (2, 3, 2))


def test_drop_block_gamma_is_the_papers_formula():
    p, b, f = 0.1, 7, 14
    assert FV.drop_block_gamma(p, b, (f, f)) == pytest.approx(p / b**2 * f**2 / (f - b + 1) ** 2)
    assert FV.drop_block_gamma(0.2, (2, 3), (8, 9)) == pytest.approx(0.2 / 6 * 72 / (7 * 7))


@pytest.mark.parametrize("normalize", ["batch", "sample"])
def test_drop_block_count_normalisation_keeps_the_mean(normalize):
    gen = torch.Generator().manual_seed(5)
    x = torch.ones(4, 3, 10, 10)
    y = FV.drop_block2d(x, 0.3, 3, normalize=normalize, generator=gen)
    kept = y != 0
    if normalize == "batch":
        assert y.mean().item() == pytest.approx(1.0, abs=1e-6)
        assert torch.allclose(y[kept], torch.full_like(y[kept], y.numel() / kept.sum().item()))
    else:
        assert torch.allclose(y.mean(dim=(1, 2, 3)), torch.ones(4), atol=1e-6)


def test_drop_block_gradient_is_the_mask_times_the_scale():
    x = randn_without_zeros(2, 3, 8, 8, requires_grad=True)  # y / x is then defined everywhere
    gen = torch.Generator().manual_seed(6)
    y = FV.drop_block2d(x, 0.2, 3, generator=gen)
    y.sum().backward()
    ratio = y.detach() / x.detach()
    assert torch.allclose(x.grad, ratio, atol=1e-6)


def test_drop_block_share_channels_uses_one_mask_per_sample():
    gen = torch.Generator().manual_seed(7)
    y = FV.drop_block2d(torch.ones(3, 5, 9, 9), 0.3, 3, share_channels=True, generator=gen)
    assert torch.equal(y, y[:, :1].expand_as(y))


def test_drop_block_eval_and_zero_rate_are_identity():
    x = torch.randn(2, 3, 8, 8)
    layer = dropkit.DropBlock2d(0.3, 3).eval()
    assert layer(x) is x
    assert FV.drop_block2d(x, 0.0, 3) is x


def test_drop_block_module_unbatched_and_inplace():
    x = torch.ones(3, 9, 9)
    y = dropkit.DropBlock2d(0.3, 3, inplace=True)(x)
    assert y is x and (x == 0).any()


def test_drop_block_same_generator_state_gives_same_mask():
    x = torch.ones(2, 2, 9, 9)
    a = FV.drop_block2d(x, 0.3, 3, generator=torch.Generator().manual_seed(9))
    b = FV.drop_block2d(x, 0.3, 3, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_drop_block_rejects_block_larger_than_map():
    with pytest.raises(ValueError, match="block_size"):
        FV.drop_block2d(torch.ones(1, 1, 4, 4), 0.1, 5)


def test_drop_block_rejects_p_one():
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\)"):
        dropkit.DropBlock2d(1.0)


def test_drop_block_rejects_wrong_rank():
    with pytest.raises(ValueError, match="rank"):
        FV.drop_block3d(torch.ones(3, 8, 8), 0.1, 2)


def test_drop_block_rejects_integer_input():
    with pytest.raises(TypeError, match="floating-point"):
        FV.drop_block2d(torch.ones(1, 1, 8, 8, dtype=torch.int64), 0.1, 3)


def test_drop_block_rejects_bad_block_size():
    with pytest.raises(ValueError, match="block_size"):
        dropkit.DropBlock2d(0.1, (3, 3, 3))
    with pytest.raises(ValueError, match="block_size"):
        dropkit.DropBlock2d(0.1, 0)
    with pytest.raises(TypeError, match="block_size"):
        dropkit.DropBlock2d(0.1, 2.5)


def test_drop_block_rejects_bad_normalize():
    with pytest.raises(ValueError, match="normalize"):
        dropkit.DropBlock2d(0.1, 3, normalize="mean")


# --------------------------------------------------------------------------------------------
# DropPath
# --------------------------------------------------------------------------------------------


def test_drop_path_row_mode_drops_whole_samples_at_rate_p():
    p = 0.3
    gen = torch.Generator().manual_seed(10)
    y = FV.drop_path(torch.ones(20_000, 3, 2), p, generator=gen)
    per_sample = y.flatten(1)
    keep = ops.keep_probability(p)
    dropped = (per_sample == 0).all(dim=1)
    kept = (per_sample == 1 / (1 - p)).all(dim=1)  # the exact scale, as torch's
    assert bool((dropped | kept).all())
    assert_fraction_close(int(dropped.sum()), dropped.numel(), 1 - keep)


def test_drop_path_batch_mode_drops_the_whole_batch_together():
    gen = torch.Generator().manual_seed(11)
    p, trials, dropped = 0.4, 2000, 0
    for _ in range(trials):
        y = FV.drop_path(torch.ones(4, 3), p, mode="batch", generator=gen)
        assert torch.equal(y, torch.full_like(y, y[0, 0].item()))
        dropped += int(y[0, 0] == 0)
    assert_fraction_close(dropped, trials, 1 - ops.keep_probability(p))


def test_drop_path_scale_by_keep_false_and_inference_scaling():
    gen = torch.Generator().manual_seed(12)
    y = FV.drop_path(torch.ones(100, 2), 0.5, scale_by_keep=False, generator=gen)
    assert set(y.unique().tolist()) == {0.0, 1.0}
    x = torch.randn(5, 2)
    assert FV.drop_path(x, 0.5, training=False, scale_by_keep=False) is x
    layer = dropkit.DropPath(0.25, scaling="inference").eval()
    assert torch.allclose(layer(x), x * ops.keep_probability(0.25))


def test_drop_path_residual_output_is_unbiased():
    p, n = 0.2, 50_000
    gen = torch.Generator().manual_seed(13)
    y = FV.drop_path(torch.ones(n, 1), p, generator=gen)
    keep = ops.keep_probability(p)
    assert_mean_close(y.mean().item(), 1.0, math.sqrt((1 - keep) / keep), n)


def test_drop_path_eval_is_identity():
    x = torch.randn(4, 3)
    assert dropkit.DropPath(0.5).eval()(x) is x


def test_drop_path_rates_are_linear_like_timm_and_torchvision():
    rates = dropkit.drop_path_rates(0.3, 12)
    assert rates == pytest.approx(torch.linspace(0, 0.3, 12).tolist(), abs=1e-7)
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert all(b >= a for a, b in zip(rates, rates[1:], strict=False))
    huang = dropkit.drop_path_rates(0.5, 5, first_is_zero=False)
    assert huang == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert dropkit.drop_path_rates(0.3, 1) == [0.0]


def test_drop_path_rates_reject_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        dropkit.drop_path_rates(0.1, 0)
    with pytest.raises(ValueError, match="drop_path_rate"):
        dropkit.drop_path_rates(1.5, 3)


def test_drop_path_rejects_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        dropkit.DropPath(0.1, mode="col")


def test_drop_path_rejects_scalar_input():
    with pytest.raises(ValueError, match="rank"):
        FV.drop_path(torch.tensor(1.0), 0.1)


def test_drop_path_rejects_non_bool_scale_by_keep():
    with pytest.raises(TypeError, match="scale_by_keep"):
        dropkit.DropPath(0.1, scale_by_keep=1)


# --------------------------------------------------------------------------------------------
# DropHead and attention dropout
# --------------------------------------------------------------------------------------------


def test_drop_head_drops_whole_heads_and_rescales_by_kept_count():
    gen = torch.Generator().manual_seed(14)
    n, h, p = 4000, 6, 0.3
    y = FV.drop_head(torch.ones(n, h, 3, 2), p, generator=gen)
    per_head = y.flatten(2)
    assert torch.equal(per_head, per_head[..., :1].expand_as(per_head))  # constant within a head
    kept = (per_head[..., 0] != 0).sum(dim=1)
    has_any = kept > 0
    # The paper's normalisation: kept heads of a sample share H / (number kept), so sums are H.
    total = per_head[..., 0].sum(dim=1)
    assert torch.allclose(total[has_any], torch.full_like(total[has_any], float(h)))
    assert_fraction_close(int((per_head[..., 0] == 0).sum()), n * h, 1 - ops.keep_probability(p))


def test_drop_head_inverted_normalisation():
    gen = torch.Generator().manual_seed(15)
    y = FV.drop_head(torch.ones(50, 4, 2, 2), 0.5, normalize="inverted", generator=gen)
    assert set(y.unique().tolist()) <= {0.0, 1 / ops.keep_probability(0.5)}


def test_drop_head_eval_is_identity_and_rejects_bad_rank():
    x = torch.randn(2, 4, 3, 5)
    assert dropkit.DropHead(0.5).eval()(x) is x
    with pytest.raises(ValueError, match="rank"):
        FV.drop_head(torch.randn(4, 3, 5), 0.5)


def test_drop_head_rejects_bad_normalize():
    with pytest.raises(ValueError, match="normalize"):
        dropkit.DropHead(0.1, normalize="rows")


def test_attention_dropout_elementwise_rate_and_scale():
    p = 0.25
    gen = torch.Generator().manual_seed(16)
    attn = torch.full((8, 4, 16, 16), 1 / 16)
    y = FV.attention_dropout(attn, p, generator=gen)
    keep = ops.keep_probability(p)
    values = y.unique()
    assert values[0] == 0.0 and len(values) == 2
    assert values[1].item() == pytest.approx(1 / 16 / keep)
    assert_fraction_close(int((y == 0).sum()), y.numel(), 1 - keep)


def test_attention_dropout_key_mode_drops_whole_keys():
    gen = torch.Generator().manual_seed(17)
    attn = torch.softmax(torch.randn(3, 2, 7, 9, generator=gen), dim=-1)
    y = FV.attention_dropout(attn, 0.4, mode="key", generator=gen)
    dropped = y == 0
    assert torch.equal(dropped, dropped[..., :1, :].expand_as(dropped))  # same keys for every query
    assert dropped.any()


def test_attention_dropout_rows_normalisation_sums_to_one():
    gen = torch.Generator().manual_seed(18)
    attn = torch.softmax(torch.randn(4, 2, 6, 6, generator=gen), dim=-1)
    y = FV.attention_dropout(attn, 0.5, normalize="rows", generator=gen)
    sums = y.sum(-1)
    assert bool(((sums - 1).abs() < 1e-5).logical_or(sums == 0).all())
    assert (y == 0).any()


def test_attention_dropout_module_eval_identity_and_grad():
    layer = dropkit.AttentionDropout(0.3)
    attn = without_zeros(torch.rand(2, 3, 4, 4)).requires_grad_()  # y != 0 is then the mask
    y = layer(attn)
    y.sum().backward()
    keep = ops.keep_probability(0.3)
    assert torch.allclose(attn.grad, (y.detach() != 0).float() / keep)
    assert layer.eval()(attn) is attn


def test_attention_dropout_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank"):
        FV.attention_dropout(torch.rand(5), 0.1)
    with pytest.raises(ValueError, match="mode"):
        dropkit.AttentionDropout(0.1, mode="query")


def test_structured_modules_are_dropout_modules_with_validated_p():
    for layer in (
        dropkit.DropBlock2d(0.1, 3),
        dropkit.DropBlock3d(0.1, 2),
        dropkit.DropPath(0.1),
        dropkit.DropHead(0.1),
        dropkit.AttentionDropout(0.1),
    ):
        assert dropkit.is_dropout_module(layer)
        with pytest.raises(ValueError):
            layer.p = 1.5


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_structured_functions_keep_the_input_dtype(dtype):
    gen = torch.Generator().manual_seed(19)
    cases = [
        (FV.drop_block2d, torch.ones(2, 3, 8, 8, dtype=dtype), {"block_size": 3}),
        (FV.drop_block3d, torch.ones(2, 3, 4, 4, 4, dtype=dtype), {"block_size": 2}),
        (FV.drop_path, torch.ones(8, 3, dtype=dtype), {}),
        (FV.drop_head, torch.ones(2, 4, 3, 2, dtype=dtype), {}),
        (FV.attention_dropout, torch.ones(2, 4, 3, 3, dtype=dtype), {}),
    ]
    for fn, x, kwargs in cases:
        y = fn(x, 0.5, generator=gen, **kwargs)
        assert y.dtype == dtype and y.shape == x.shape
        assert (y == 0).any() and (y != 0).any()


@settings(max_examples=30, deadline=None)
@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    bh=st.integers(1, 4),
    bw=st.integers(1, 4),
    p=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**31 - 1),
)
def test_drop_block2d_property_union_of_blocks_and_single_scale(h, w, bh, bw, p, seed):
    bh, bw = min(bh, h), min(bw, w)
    x = torch.ones(2, 3, h, w)
    y = FV.drop_block2d(x, p, (bh, bw), generator=torch.Generator().manual_seed(seed))
    assert y.shape == x.shape
    dropped = (y == 0).float()
    assert _is_union_of_full_blocks(dropped, (bh, bw))
    kept_values = y[y != 0].unique()
    assert len(kept_values) <= 1  # one count-normalisation factor for the whole batch


def test_structured_functions_accept_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(20)
    x = torch.ones(9, 9, 3, 2).permute(2, 3, 0, 1)  # (3, 2, 9, 9), not contiguous
    assert not x.is_contiguous()
    y = FV.drop_block2d(x, 0.3, 3, generator=gen)
    assert _is_union_of_full_blocks((y == 0).float(), (3, 3))
    z = FV.drop_path(torch.ones(4, 6).t(), 0.5, generator=gen)  # (6, 4) transposed view
    assert bool(((z == 0).all(1) | (z != 0).all(1)).all())


_LEARNED_SECTIONS = {
    "Concrete dropout",
    "Variational dropout",
    "Sparse variational dropout",
    "Standout",
}


@pytest.mark.slow
def test_variants_doc_examples_run():
    """Every python example of docs/variants.md (this area's sections) runs as written."""
    import pathlib
    import re

    doc = pathlib.Path(__file__).resolve().parents[1] / "docs" / "variants.md"
    sections = re.split(r"^## ", doc.read_text(), flags=re.M)[1:]
    ran = 0
    for section in sections:
        title = section.splitlines()[0].strip()
        if title in _LEARNED_SECTIONS:
            continue
        for code in re.findall(r"```python\n(.*?)```", section, re.S):
            exec(compile(code, f"docs/variants.md: {title}", "exec"), {"__name__": "docs_example"})
            ran += 1
    assert ran >= 9


def test_dropped_units_are_exactly_zero_even_for_inf_and_nan():
    # The house rule of the fused kernels: a dropped unit is 0, not 0·inf = NaN.
    # The masks depend on the seed and the shape only: the same seed on an all-ones input shows
    # which units the run on inf/nan drops, independently of that run's output.
    x = torch.full((64, 3, 6, 6), float("inf"))
    x[::2] = float("nan")
    variants = {
        "drop_block2d": lambda t, gen: FV.drop_block2d(t, 0.3, 2, generator=gen),
        "drop_path": lambda t, gen: FV.drop_path(t, 0.5, generator=gen),
        "drop_head": lambda t, gen: FV.drop_head(t, 0.5, generator=gen),
        "attention_dropout": lambda t, gen: FV.attention_dropout(t, 0.5, mode="key", generator=gen),
    }
    for name, op in variants.items():
        on_ones = op(torch.ones_like(x), torch.Generator().manual_seed(21))
        y = op(x, torch.Generator().manual_seed(21))
        dropped = on_ones == 0
        for where in (x.isinf(), x.isnan()):  # both outcomes occur on inf and on nan rows
            assert dropped[where].any() and (~dropped[where]).any(), name
        assert torch.equal(y[dropped], torch.zeros(int(dropped.sum()))), name  # not 0·inf = NaN
        # A kept unit carries its input: inf stays inf (scales are positive), nan stays nan.
        assert torch.equal(y.isnan(), x.isnan() & ~dropped), name
        assert torch.equal(y.isinf(), x.isinf() & ~dropped), name
        assert bool((y[y.isinf()] > 0).all()), name
