"""The generic argument checks of dropkit._validate: each error names the argument, its value and
what is allowed, and is a TypeError for a value of the wrong kind, a ValueError for a bad value."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from dropkit import _validate as V


def _raises(error: type[Exception], message: str):
    """The whole message, anchored: the name, the value and what is allowed, nothing else."""
    return pytest.raises(error, match="^" + re.escape(message) + "$")


# ------------------------------------------------------------------------------------------------
# bools and choices


def test_check_bool_accepts_python_and_numpy_bools_only():
    assert V.check_bool(True, "per_sample") is True
    assert V.check_bool(False, "per_sample") is False
    value = V.check_bool(np.bool_(True), "per_sample")
    assert value is True and type(value) is bool
    with _raises(TypeError, "per_sample must be a bool (True or False), got 1 of type int"):
        V.check_bool(1, "per_sample")
    with _raises(TypeError, "batch_first must be a bool (True or False), got 'no' of type str"):
        V.check_bool("no", "batch_first")
    with _raises(TypeError, "drop_bias must be a bool (True or False), got None of type NoneType"):
        V.check_bool(None, "drop_bias")


def test_check_training_is_check_bool_named_training():
    assert V.check_training(np.bool_(False)) is False
    with _raises(TypeError, "training must be a bool (True or False), got 0 of type int"):
        V.check_training(0)
    with _raises(TypeError, "eval_mode must be a bool (True or False), got 0 of type int"):
        V.check_training(0, "eval_mode")


def test_check_choice_names_every_allowed_string():
    assert V.check_choice("row", "mode", ("row", "batch")) == "row"
    with _raises(ValueError, "mode must be one of 'row', 'batch', got 'col'"):
        V.check_choice("col", "mode", ("row", "batch"))
    with _raises(TypeError, "mode must be a string, one of 'row', 'batch', got 1 of type int"):
        V.check_choice(1, "mode", ("row", "batch"))
    with _raises(ValueError, "c must be one of 'a', 'b' (the paper's objective), got 'x'"):
        V.check_choice("x", "c", ["a", "b"], why="the paper's objective")


def test_check_scaling_is_a_choice_among_the_scalings():
    assert V.check_scaling("inverted") == "inverted"
    with _raises(ValueError, "scaling must be one of 'inverted', 'inference', got 'Inverted'"):
        V.check_scaling("Inverted")
    with _raises(
        TypeError,
        "scaling must be a string, one of 'inverted', 'inference', got None of type NoneType",
    ):
        V.check_scaling(None)


# ------------------------------------------------------------------------------------------------
# real numbers


@pytest.mark.parametrize("value", [2, 2.0, np.float32(2.0), np.int64(2)])
def test_check_real_accepts_any_real_number_and_returns_a_float(value):
    out = V.check_real(value, "alpha")
    assert out == 2.0 and type(out) is float


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (True, TypeError, "alpha must be a real number, got True of type bool"),
        ("1", TypeError, "alpha must be a real number, got '1' of type str"),
        (1j, TypeError, "alpha must be a real number, got 1j of type complex"),
        (math.nan, ValueError, "alpha must be a finite number, got nan"),
        (-math.inf, ValueError, "alpha must be a finite number, got -inf"),
    ],
)
def test_check_real_refuses(value, error, message):
    with _raises(error, message):
        V.check_real(value, "alpha")


def test_check_real_bounds():
    assert V.check_real(0.0, "eps", nonneg=True) == 0.0
    assert V.check_real(-3, "threshold") == -3.0
    with _raises(ValueError, "eps must be a number >= 0, got -1e-09"):
        V.check_real(-1e-9, "eps", nonneg=True)
    with _raises(ValueError, "temperature must be a number > 0, got 0.0"):
        V.check_real(0, "temperature", positive=True)


def test_check_positive_finite():
    assert V.check_positive_finite(3, "tau") == 3.0
    for bad in (0, -1.0, math.inf, math.nan):
        with _raises(ValueError, f"tau must be a positive finite number, got {bad!r}"):
            V.check_positive_finite(bad, "tau")
    with _raises(TypeError, "lr must be a positive finite number, got '0.1' of type str"):
        V.check_positive_finite("0.1", "lr")
    with _raises(TypeError, "lr must be a positive finite number, got True of type bool"):
        V.check_positive_finite(True, "lr")


# ------------------------------------------------------------------------------------------------
# rates, levels and fractions


def test_check_open_unit():
    assert V.check_open_unit(np.float64(0.5), "level") == 0.5
    for bad in (0.0, 1.0, 1.5, -0.1, math.nan):
        with _raises(ValueError, f"level must be a number in (0, 1), got {bad!r}"):
            V.check_open_unit(bad, "level")
    with _raises(TypeError, "val_fraction must be a number in (0, 1), got None of type NoneType"):
        V.check_open_unit(None, "val_fraction")


def test_check_open_rate():
    assert V.check_open_rate(0.3) == 0.3
    assert V.check_open_rate(0.5, upper=0.5) == 0.5
    with _raises(ValueError, "p must be in (0, 1) (its logit is learned), got 1.0"):
        V.check_open_rate(1.0, reason="its logit is learned")
    with _raises(ValueError, "p must be in (0, 0.5], got 0.6"):
        V.check_open_rate(0.6, upper=0.5)
    with _raises(ValueError, "q must be in (0, 1), got 0"):
        V.check_open_rate(0, "q")
    # The kind and the closed interval are the probability check's.
    with pytest.raises(TypeError, match=r"^dropout probability p must be a number in \[0, 1\]"):
        V.check_open_rate("0.5")
    with pytest.raises(ValueError, match=r"^dropout probability p must be a number in \[0, 1\]"):
        V.check_open_rate(2.0)


def test_check_rates():
    assert V.check_rates([0.5, np.float32(0.25)], "rates") == (0.5, 0.25)
    with _raises(ValueError, "rates must hold at least one dropout rate, got none"):
        V.check_rates([], "rates")
    with _raises(ValueError, "--grid: dropout rates must be in (0, 1), got 0.0 at position 1"):
        V.check_rates([0.1, 0.0], "--grid")
    with _raises(ValueError, "rates: dropout rates must be in (0, 1), got nan at position 0"):
        V.check_rates([math.nan], "rates")
    with _raises(ValueError, "rates must not repeat a rate, got [0.1, 0.2, 0.1]"):
        V.check_rates([0.1, 0.2, 0.1], "rates")
    with _raises(
        TypeError,
        "rates: dropout rates must be numbers in (0, 1), got '0.1' of type str at position 0",
    ):
        V.check_rates(["0.1"], "rates")
    with _raises(
        TypeError, "rates must be a sequence of dropout rates in (0, 1), got 0.1 of type float"
    ):
        V.check_rates(0.1, "rates")


def test_check_taus():
    assert V.check_taus((1, 2.5), "taus") == (1.0, 2.5)
    with _raises(ValueError, "taus must hold at least one precision τ, got none"):
        V.check_taus(iter(()), "taus")
    for bad in (0.0, -2.0, math.inf):
        with _raises(
            ValueError,
            f"taus: precisions τ must be positive finite numbers, got {bad!r} at position 1",
        ):
            V.check_taus([1.0, bad], "taus")
    with _raises(ValueError, "taus must not repeat a value, got [1.0, 1.0]"):
        V.check_taus([1.0, 1.0], "taus")
    with _raises(
        TypeError,
        "taus: precisions τ must be positive finite numbers, got True of type bool at position 0",
    ):
        V.check_taus([True], "taus")
    with _raises(TypeError, "taus must be a sequence of precisions τ > 0, got '1' of type str"):
        V.check_taus("1", "taus")


# ------------------------------------------------------------------------------------------------
# integers, seeds and sizes


def test_check_nonneg_int():
    assert V.check_nonneg_int(0, "t") == 0
    assert V.check_nonneg_int(np.int64(7), "t") == 7
    with _raises(ValueError, "t must be an integer >= 0, got -1"):
        V.check_nonneg_int(-1, "t")
    with _raises(TypeError, "t must be an integer >= 0, got 1.0 of type float"):
        V.check_nonneg_int(1.0, "t")
    with _raises(TypeError, "t must be an integer >= 0, got False of type bool"):
        V.check_nonneg_int(False, "t")


def test_check_int_range():
    assert V.check_int_range(4, "--threads", 1, 4) == 4
    with _raises(
        ValueError, "--threads must be an int in [1, 4] (the CPU cores this process may use), got 5"
    ):
        V.check_int_range(5, "--threads", 1, 4, note="the CPU cores this process may use")
    with _raises(ValueError, "k must be an int in [1, 4], got 0"):
        V.check_int_range(0, "k", 1, 4)
    with _raises(TypeError, "k must be an int in [1, 4], got 2.0 of type float"):
        V.check_int_range(2.0, "k", 1, 4)


def test_check_seed_is_32_bits():
    assert V.MAX_SEED == 2**32 - 1
    assert V.check_seed(0) == 0 and V.check_seed(V.MAX_SEED) == V.MAX_SEED
    with _raises(ValueError, "seed must be an int in [0, 4294967295] (32 bits), got 4294967296"):
        V.check_seed(2**32)
    with _raises(ValueError, "--seed must be an int in [0, 4294967295] (32 bits), got -1"):
        V.check_seed(-1, "--seed")
    with _raises(TypeError, "seed must be an int in [0, 4294967295] (32 bits), got None of type "
                 "NoneType"):  # fmt: skip
        V.check_seed(None)


def test_check_int_tuple():
    assert V.check_int_tuple(3, "block_size", 2) == (3, 3)
    assert V.check_int_tuple([1, np.int32(2), 3], "block_size", 3) == (1, 2, 3)
    with _raises(ValueError, "block_size must be an int or 2 ints (one per spatial dim), got (3,)"):
        V.check_int_tuple((3,), "block_size", 2)
    with _raises(ValueError, "block_size must be an integer >= 1, got 0"):
        V.check_int_tuple((3, 0), "block_size", 2)
    with _raises(ValueError, "kernel must be an int or 2 ints (one per axis), got (1, 2, 3)"):
        V.check_int_tuple((1, 2, 3), "kernel", 2, per="axis")
    with _raises(
        TypeError, "block_size must be an int or a sequence of 2 ints, got '3' of type str"
    ):
        V.check_int_tuple("3", "block_size", 2)
    with _raises(TypeError, "block_size must be an integer >= 1, got 2.5 of type float"):
        V.check_int_tuple((2.5, 1), "block_size", 2)


# ------------------------------------------------------------------------------------------------
# tensors, shapes and dtypes


def test_check_min_rank():
    V.check_min_rank(torch.ones(2, 3), 2, "attention_dropout")
    with _raises(
        ValueError, "attention_dropout expects input of rank >= 2, got a 1-D tensor of shape (3,)"
    ):
        V.check_min_rank(torch.ones(3), 2, "attention_dropout")
    with _raises(ValueError, "f expects weight of rank >= 1, got a 0-D tensor of shape ()"):
        V.check_min_rank(torch.tensor(1.0), 1, "f", "weight")


def test_check_shape():
    assert V.check_shape(torch.Size([2, 0])) == [2, 0]
    assert V.check_shape(iter([np.int64(4)])) == [4]
    for bad in ((2, -1), (2.0,), (True,), 3, "23", None):
        with _raises(TypeError, f"shape must be a sequence of ints >= 0, got {bad!r}"):
            V.check_shape(bad)


def test_check_float_dtype():
    assert V.check_float_dtype(torch.bfloat16) is torch.bfloat16
    for bad in (torch.int64, torch.bool, torch.complex64, "float32", np.float32):
        with _raises(TypeError, f"dtype must be a floating-point torch.dtype, got {bad!r}"):
            V.check_float_dtype(bad)


def test_every_public_check_is_exported_and_documented():
    for name in V.__all__:
        obj = getattr(V, name)
        if callable(obj):
            assert obj.__doc__, name
    assert not [n for n in dir(V) if n.startswith("check_") and n not in V.__all__]


# ------------------------------------------------------------------------------------------------
# the call sites say the same


def test_string_options_of_the_schedules_and_uncertainty_are_checked_choices():
    from dropkit import schedules
    from dropkit import uncertainty as U

    with _raises(ValueError, "interval must be one of 'step', 'epoch', got 'batch'"):
        schedules.DropoutScheduleHooks(schedules.constant(0.1), interval="batch")
    with _raises(TypeError, "interval must be a string, one of 'step', 'epoch', got 1 of type int"):
        schedules.DropoutScheduleHooks(schedules.constant(0.1), interval=1)
    samples, y = np.zeros((2, 3)), np.zeros(3)
    with _raises(ValueError, "reduction must be one of 'mean', 'none', got 'sum'"):
        U.gaussian_log_likelihood(samples, y, 1.0, reduction="sum")
    with pytest.raises(ValueError, match="^convention must be one of .*'paper'.* got 'keras'$"):
        U.tau_from_prior(0.5, 0.2, 100, 1e-3, convention="keras")


def test_layers_and_functions_use_the_shared_checks():
    import dropkit
    from dropkit import functional as F

    with _raises(TypeError, "per_sample must be a bool (True or False), got 1 of type int"):
        dropkit.DropConnectLinear(2, 2, p=0.5, per_sample=1)
    with _raises(ValueError, "mode must be one of 'row', 'batch', got 'col'"):
        dropkit.DropPath(0.1, mode="col")
    with _raises(ValueError, "block_size must be an int or 2 ints (one per spatial dim), got (3,)"):
        F.drop_block2d(torch.ones(1, 1, 4, 4), 0.1, (3,))
    with _raises(ValueError, "temperature must be a number > 0, got 0.0"):
        dropkit.ConcreteDropout(torch.nn.Linear(2, 2), temperature=0.0)
    with _raises(ValueError, "p must be in (0, 0.5] (its logit is learned), got 0.7"):
        dropkit.VariationalDropout(0.7)
    with _raises(ValueError, "t must be an integer >= 0, got -1"):
        dropkit.schedules.constant(0.1)(-1)


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("lr", 0.0, ValueError, "lr must be a positive finite number, got 0.0"),
        ("lr", float("nan"), ValueError, "lr must be a positive finite number, got nan"),
        ("lr", "0.1", TypeError, "lr must be a positive finite number, got '0.1' of type str"),
        ("val_fraction", 1.0, ValueError, "val_fraction must be a number in (0, 1), got 1.0"),
        ("metric", "acc", ValueError, "metric must be one of 'val_acc', 'val_loss', got 'acc'"),
        ("seed", -1, ValueError, "seed must be an int in [0, 4294967295] (32 bits), got -1"),
        (
            "seed",
            2.0,
            TypeError,
            "seed must be an int in [0, 4294967295] (32 bits), got 2.0 of type float",
        ),
    ],
)
def test_study_config_uses_the_one_validator(field, value, error, message):
    from dropkit.study.config import StudyConfig

    with _raises(error, message):
        StudyConfig(**{field: value}).resolved()


def test_fit_checks_lr_with_the_one_validator():
    from dropkit.train import fit

    data = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
    with _raises(ValueError, "lr must be a positive finite number, got inf"):
        fit(torch.nn.Linear(3, 2), data, lr=float("inf"))
