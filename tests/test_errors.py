"""Bad input: one test each. Every error is a ValueError (bad value) or TypeError (bad type) whose
message names the argument, the value it got and what is allowed, raised before any work."""

from __future__ import annotations

import fractions
import re

import numpy as np
import pytest
import torch

import dropkit
from dropkit import functional as F

FUNCTIONS = {
    "dropout": lambda x, **kw: F.dropout(x, **kw),
    "dropout1d": lambda x, **kw: F.dropout1d(x.reshape(2, 3, -1), **kw),
    "dropout2d": lambda x, **kw: F.dropout2d(x.reshape(2, 3, 2, -1), **kw),
    "dropout3d": lambda x, **kw: F.dropout3d(x.reshape(2, 3, 2, 2, -1), **kw),
    "alpha_dropout": lambda x, **kw: F.alpha_dropout(x, **kw),
    "gaussian_dropout": lambda x, **kw: F.gaussian_dropout(x, **kw),
}
MODULES = [
    dropkit.Dropout,
    dropkit.Dropout1d,
    dropkit.Dropout2d,
    dropkit.Dropout3d,
    dropkit.AlphaDropout,
    dropkit.GaussianDropout,
]


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 2, 2, 2)


@pytest.mark.parametrize("p", [1.5, -0.1, float("inf")])
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_p_outside_zero_one_is_a_value_error(name, p):
    with pytest.raises(
        ValueError, match=re.escape("dropout probability p must be a number in [0, 1")
    ) as info:
        FUNCTIONS[name](_x(), p=p)
    assert repr(p) in str(info.value)


@pytest.mark.parametrize("cls", MODULES)
def test_module_p_outside_zero_one_is_a_value_error(cls):
    with pytest.raises(
        ValueError, match=r"dropout probability p must be a number in \[0, 1[\])], got 1\.5$"
    ):
        cls(1.5)


def test_nan_p_is_a_value_error():
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\], got nan"):
        F.dropout(_x(), float("nan"))
    with pytest.raises(ValueError, match="got nan"):
        dropkit.Dropout2d(float("nan"))


@pytest.mark.parametrize(
    "p, shown",
    [
        ("0.5", "'0.5' of type str"),
        (None, "None of type NoneType"),
        (True, "True of type bool"),
        (0.5j, "0.5j of type complex"),
    ],
)
def test_non_number_p_is_a_type_error(p, shown):
    with pytest.raises(
        TypeError, match=re.escape(f"dropout probability p must be a number in [0, 1], got {shown}")
    ):
        F.dropout(_x(), p)
    with pytest.raises(TypeError, match=re.escape(shown)):
        dropkit.Dropout(p)


def test_tensor_p_must_have_one_element():
    assert F.train_scale(torch.tensor(0.5)) == 2.0
    with pytest.raises(
        TypeError, match=r"p must be a number in \[0, 1\], got a tensor of shape \(2,\)"
    ):
        F.dropout(_x(), torch.tensor([0.1, 0.2]))


def test_gaussian_p_one_is_a_value_error():
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\), got 1\.0"):
        F.gaussian_dropout(_x(), 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\), got 1"):
        dropkit.GaussianDropout(1)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_integer_tensor_is_a_type_error(name, dtype):
    x = torch.ones(24, dtype=dtype)
    with pytest.raises(
        TypeError, match=f"input must be a floating-point tensor .* got dtype {dtype}"
    ):
        FUNCTIONS[name](x, p=0.5)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_bool_tensor_is_a_type_error(name):
    with pytest.raises(
        TypeError, match="input must be a floating-point tensor .* got dtype torch.bool"
    ):
        FUNCTIONS[name](torch.ones(24, dtype=torch.bool), p=0.5)


def test_complex_tensor_and_non_tensor_are_type_errors():
    with pytest.raises(TypeError, match="got dtype torch.complex64"):
        dropkit.Dropout()(torch.ones(3, dtype=torch.complex64))
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got list"):
        F.dropout([1.0, 2.0], 0.5)


@pytest.mark.parametrize(
    "layer, shape, expected",
    [
        (
            dropkit.Dropout1d,
            (4,),
            r"dropout1d expects input of shape \(C, L\) or \(N, C, L\) \(rank 2 or 3\), got a 1-D tensor of shape \(4,\)",
        ),
        (
            dropkit.Dropout1d,
            (2, 3, 4, 5),
            r"dropout1d expects .* got a 4-D tensor of shape \(2, 3, 4, 5\)",
        ),
        (
            dropkit.Dropout2d,
            (3, 4),
            r"dropout2d expects input of shape \(C, H, W\) or \(N, C, H, W\) \(rank 3 or 4\), got a 2-D tensor",
        ),
        (dropkit.Dropout2d, (1, 2, 3, 4, 5), r"dropout2d expects .* got a 5-D tensor"),
        (
            dropkit.Dropout3d,
            (2, 3, 4),
            r"dropout3d expects input of shape \(C, D, H, W\) or \(N, C, D, H, W\) \(rank 4 or 5\), got a 3-D tensor",
        ),
        (dropkit.Dropout3d, (1, 1, 2, 3, 4, 5), r"dropout3d expects .* got a 6-D tensor"),
    ],
)
def test_wrong_rank_for_channel_dropout_is_a_value_error(layer, shape, expected):
    with pytest.raises(ValueError, match=expected):
        layer(0.5)(torch.ones(shape))


@pytest.mark.parametrize(
    "noise_shape, expected",
    [
        (
            (2, 4, 1),
            r"noise_shape \(2, 4, 1\) does not broadcast to the input's shape \(2, 3, 5\): each dim must equal the input's or be 1",
        ),
        (
            (None, 1),
            r"noise_shape \(None, 1\) must have one entry per input dim: 3 for the input's shape \(2, 3, 5\), got 2",
        ),
        (
            (None, -1, None),
            r"noise_shape entries must be None or non-negative ints, got \(None, -1, None\)",
        ),
    ],
)
def test_noise_shape_that_does_not_broadcast_is_a_value_error(noise_shape, expected):
    with pytest.raises(ValueError, match=expected):
        F.dropout(torch.ones(2, 3, 5), 0.5, noise_shape=noise_shape)


@pytest.mark.parametrize("noise_shape", ["N1C", 3, (None, 1.0, None)])
def test_noise_shape_of_the_wrong_type_is_a_type_error(noise_shape):
    with pytest.raises(TypeError, match="noise_shape"):
        F.dropout(torch.ones(2, 3, 5), 0.5, noise_shape=noise_shape)
    with pytest.raises(TypeError, match="noise_shape"):
        dropkit.Dropout(0.5, noise_shape=noise_shape)  # caught at construction


def test_bad_scaling_string_is_a_value_error():
    message = r"scaling must be one of 'inverted', 'inference', got 'standard'"
    with pytest.raises(ValueError, match=message):
        F.dropout(_x(), 0.5, scaling="standard")
    with pytest.raises(ValueError, match=message):
        dropkit.Dropout2d(0.5, scaling="standard")
    with pytest.raises(ValueError, match=message):
        dropkit.MLP([3, 2], scaling="standard")
    with pytest.raises(
        TypeError,
        match=r"scaling must be a string, one of 'inverted', 'inference', got 1 of type int",
    ):
        F.dropout(_x(), 0.5, scaling=1)


def test_scaling_on_a_variant_whose_rule_fixes_the_scale_is_a_value_error():
    class FixedScale(dropkit.DropoutBase):
        has_scaling = False

    with pytest.raises(
        ValueError, match=r"scaling must be 'inverted' for FixedScale .*got 'inference'"
    ):
        FixedScale(0.5, scaling="inference")
    with pytest.raises(TypeError, match="scaling"):
        dropkit.AlphaDropout(0.5, scaling="inference")  # not an argument of AlphaDropout


def test_generator_of_the_wrong_type_is_a_type_error():
    with pytest.raises(
        TypeError, match="generator must be a torch.Generator or None, got 0 of type int"
    ):
        F.dropout(_x(), 0.5, generator=0)


def test_setting_a_bad_p_on_a_module_leaves_it_unchanged():
    layer = dropkit.Dropout(0.3)
    with pytest.raises(ValueError, match="got 2"):
        layer.p = 2
    with pytest.raises(TypeError, match="of type str"):
        layer.p = "0.5"
    assert layer.p == 0.3


def test_errors_are_raised_before_any_work():
    x = torch.randn(2, 3, 5)
    original = x.clone()
    state = torch.get_rng_state()
    for bad in (
        dict(noise_shape=(2, 4, 1)),
        dict(scaling="standard"),
        dict(generator="seed"),
    ):
        with pytest.raises((ValueError, TypeError)):
            F.dropout(x, 0.5, inplace=True, **bad)
    assert torch.equal(x, original)  # not half-written
    assert torch.equal(torch.get_rng_state(), state)  # no random numbers drawn


@pytest.mark.parametrize(
    "kwargs, error, expected",
    [
        (dict(sizes=[4]), ValueError, r"sizes must have at least 2 entries"),
        (dict(sizes=[4, 0, 2]), ValueError, r"sizes\[1\] must be an integer >= 1, got 0"),
        (
            dict(sizes=[4, 2.5, 2]),
            TypeError,
            r"sizes\[1\] must be an integer >= 1, got 2.5 of type float",
        ),
        (dict(sizes="42"), TypeError, r"sizes must be a sequence"),
        (
            dict(sizes=[4, 8, 2], p=[0.1]),
            ValueError,
            r"p must be a number or a list of 2 \(input and hidden\) or 3",
        ),
        (
            dict(sizes=[4, 8, 2], p=[0.1, 1.2]),
            ValueError,
            r"dropout probability p\[1\] must be a number in \[0, 1\], got 1.2",
        ),
        (
            dict(sizes=[4, 8, 2], p="0.5"),
            TypeError,
            r"p must be a number, a list of numbers or None, got '0.5'",
        ),
        (
            dict(sizes=[4, 8, 2], activation="relu"),
            TypeError,
            r"activation must be an nn.Module class",
        ),
    ],
)
def test_bad_mlp_arguments(kwargs, error, expected):
    with pytest.raises(error, match=expected):
        dropkit.MLP(**kwargs)


def test_real_numbers_of_any_type_are_accepted_as_p():
    x = torch.ones(4)
    for p in (
        0,
        1,
        0.5,
        np.float32(0.25),
        np.float64(0.25),
        fractions.Fraction(1, 4),
        torch.tensor(0.25),
    ):
        layer = dropkit.Dropout(p)
        assert type(layer.p) is float and layer.p == float(p)
        assert F.dropout(x, p).shape == x.shape


def test_scale_helpers_validate_their_arguments():
    with pytest.raises(ValueError, match="got 2"):
        F.train_scale(2)
    with pytest.raises(ValueError, match="got 'standard'"):
        F.eval_scale(0.5, "standard")


# ---------------------------------------------------------------- issue 12, item 5 (API) -------


def _not_learned_calls():
    from dropkit import functional_variants as FV

    return {
        **FUNCTIONS,
        "drop_block2d": lambda x, **kw: FV.drop_block2d(x.reshape(2, 3, 2, -1), block_size=1, **kw),
        "drop_path": lambda x, **kw: FV.drop_path(x, **kw),
        "locked_dropout": lambda x, **kw: FV.locked_dropout(x.reshape(2, 3, -1), **kw),
    }


@pytest.mark.parametrize("name", list(_not_learned_calls()))
def test_p_tensor_that_requires_grad_is_a_type_error(name):
    # The rate is read as a number: its gradient would silently be None, so refuse, as torch does.
    p = torch.tensor(0.3, requires_grad=True)
    with pytest.raises(
        TypeError, match=r"p must be a number in \[0, 1\)?\]?, got a tensor that requires grad"
    ):
        _not_learned_calls()[name](_x(), p=p)
    assert _not_learned_calls()[name](_x(), p=p.detach()).requires_grad is False


@pytest.mark.parametrize("cls", MODULES)
def test_module_p_tensor_that_requires_grad_is_a_type_error(cls):
    with pytest.raises(TypeError, match="requires grad"):
        cls(torch.tensor(0.3, requires_grad=True))
    assert cls(torch.tensor(0.3)).p == pytest.approx(0.3)


@pytest.mark.parametrize("training", ["no", 1, None, torch.tensor(True)])
@pytest.mark.parametrize("name", list(_not_learned_calls()))
def test_non_bool_training_is_a_type_error(name, training):
    # "no" is truthy: accepted, it silently meant training mode.
    with pytest.raises(
        TypeError, match=r"^training must be a bool \(True or False\), got .* of type "
    ):
        _not_learned_calls()[name](_x(), p=0.5, training=training)


def test_non_bool_training_is_a_type_error_in_learned_functions():
    from dropkit import functional_learned as FL

    with pytest.raises(TypeError, match=r"training must be a bool .* got 'no' of type str"):
        FL.concrete_dropout(_x(), torch.tensor(0.2), "no")
    with pytest.raises(TypeError, match=r"training must be a bool"):
        FL.variational_dropout(_x(), torch.tensor(-1.0), training="no")


def test_concrete_dropout_accepts_an_empty_batch_as_linear_does():
    torch.manual_seed(0)
    linear = torch.nn.Linear(4, 3)
    layer = dropkit.ConcreteDropout(linear, p=0.2)
    x = torch.zeros(0, 4, requires_grad=True)
    y = layer(x)
    assert y.shape == linear(x).shape == (0, 3)
    y.sum().backward()
    assert x.grad.shape == (0, 4)
    assert torch.equal(linear.weight.grad, torch.zeros(3, 4))
    assert torch.equal(layer.p_logit.grad, torch.zeros(()))
    # K is still the example size, so the regulariser is the one of a (N, 4) batch.
    expected = dropkit.ConcreteDropout(torch.nn.Linear(4, 3), p=0.2)
    expected.load_state_dict(layer.state_dict())
    expected(torch.zeros(2, 4))
    assert torch.equal(layer.regularization(), expected.regularization())
    layer.eval()
    assert layer(torch.zeros(0, 4)).shape == (0, 3)


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (dropkit.DropBlock2d, (2, 3, 4, 5)),
        (dropkit.DropBlock2d, (3, 2, 2)),
        (dropkit.DropBlock3d, (1, 2, 3, 3, 3)),
    ],
)
def test_dropblock_larger_than_the_input_is_the_identity_in_eval_and_at_p_zero(layer, shape):
    # torchvision.ops.drop_block2d returns the input when not training or p == 0, before any size rule.
    x = torch.randn(shape)
    evaluating = layer(0.3, block_size=7).eval()
    assert evaluating(x) is x
    assert layer(0.0, block_size=7)(x) is x
    with pytest.raises(
        ValueError, match=r"block_size \(7, 7(, 7)?\) must fit .* in training with p > 0"
    ):
        layer(0.3, block_size=7)(x)
