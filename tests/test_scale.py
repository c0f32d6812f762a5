"""The user-visible scale is exact (issue 15 item 3): kept values are ``x * (1/(1 − p))`` as torch
computes it, the "inference" eval output is ``x * (1 − p)`` and ``fold_dropout_scaling`` folds
exactly (1 − p). The 16-bit threshold (which units are kept) is a separate property: the keep
probability is within 2^-17 of 1 − p."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dropkit
from dropkit import ops
from tests.inputs import randn_without_zeros

RATES = [0.1, 0.3, 0.8, 1 / 3, 0.123456]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _kept_equals_torch(y: torch.Tensor, x: torch.Tensor, p: float) -> None:
    kept = y != 0
    assert kept.any() and (~kept).any()
    assert torch.equal(y[kept], (x * (1 / (1 - p)))[kept])  # bit for bit torch's rounding


@pytest.mark.parametrize("p", RATES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kept_values_are_x_times_the_exact_inverse_keep_rate(p, dtype):
    torch.manual_seed(0)
    x = (torch.rand(64, 33) + 0.5).to(dtype)
    _kept_equals_torch(dropkit.functional.dropout(x, p), x, p)
    x4 = (torch.rand(8, 6, 3, 3) + 0.5).to(dtype)
    _kept_equals_torch(dropkit.functional.dropout2d(x4, p), x4, p)  # the shared-mask path
    _kept_equals_torch(dropkit.DropPath(p)(x), x, p)


@pytest.mark.parametrize("p", RATES)
def test_kept_values_match_torch_dropout_and_the_issue_assertion(p):
    torch.manual_seed(1)
    x = randn_without_zeros(4096)  # y != 0 is then the kept set
    y = dropkit.functional.dropout(x, p)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))  # failed with the 16-bit scale
    torch.manual_seed(1)
    theirs = torch.nn.functional.dropout(x, p)
    both = kept & (theirs != 0)
    assert torch.equal(y[both], theirs[both])


@pytest.mark.parametrize("p", RATES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_inference_scaling_evaluates_to_exactly_x_times_one_minus_p(p, dtype):
    x = torch.randn(50).to(dtype)
    for layer in (
        dropkit.Dropout(p, scaling="inference"),
        dropkit.Dropout1d(p, scaling="inference"),
    ):
        arg = x if isinstance(layer, dropkit.Dropout) else x.view(5, 10)
        assert torch.equal(layer.eval()(arg), arg * (1 - p))
    assert dropkit.functional.eval_scale(p, "inference") == 1 - p
    assert dropkit.functional.train_scale(p, "inverted") == 1 / (1 - p)


def test_fold_dropout_scaling_folds_exactly_one_minus_p():
    p = 0.3
    torch.manual_seed(2)
    net = dropkit.MLP([4, 8, 2], p=[p, p], scaling="inference").eval()
    folded = dropkit.fold_dropout_scaling(net)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    folded_linears = [m for m in folded.modules() if isinstance(m, nn.Linear)]
    # MLP([4, 8, 2]) is dropout, Linear, ReLU, dropout, Linear: each factor lands on the next weight.
    for plain, scaled in zip(linears, folded_linears, strict=True):
        assert torch.equal(scaled.weight, plain.weight * (1 - p))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.8, 1 / 3, 2**-17, 1 - 2**-17])
def test_the_threshold_resolution_is_a_separate_bounded_property(p):
    # Which units are kept: probability keep_probability(p) = 1 − round(p·2^16)/2^16.
    keep = ops.keep_probability(p)
    assert abs(keep - (1 - p)) <= 2**-17
    assert ops.dropout_scale(p) == 1 / (1 - p)  # the scale does not use it
    # The bias of E[y] that the resolution implies, as the functional docs state it.
    assert abs(keep / (1 - p) - 1) <= 2**-17 / (1 - p)
