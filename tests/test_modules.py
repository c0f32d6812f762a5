"""Generic module tests over the spec table (tests/module_specs.py), one row per public module:
repr, pickle, deepcopy, state_dict (round trip into a fresh instance, in eval and in training
under the same seed, and the torch.nn twin's, both ways), the documented eval output (the torch.nn
twin's, or the row's eval rule), the training statistics against the torch.nn twin (drop rate and
scale), dtypes (every floating dtype, and a clear error for a wrong input), an empty batch,
train/eval and reproducibility under ``torch.manual_seed``."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_flatten

import dropkit
from dropkit import ops
from dropkit.mc import is_stochastic_module
from tests.module_specs import EXEMPT, SPECS, public_module_classes
from tests.stats import assert_fraction_close

IDS = [spec.name for spec in SPECS]


def _tensors(output: object) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(output)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


def _run(module: nn.Module, args: tuple, seed: int = 0) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    with torch.no_grad():
        return [t.clone() for t in _tensors(module(*args))]


def _assert_same(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype
        assert torch.equal(a, e), (a, e)


def _known_bug(request, spec, test: str) -> None:
    # strict: once the bug is fixed the test fails until the row's known_bugs entry is removed.
    if test in spec.known_bugs:
        request.applymarker(pytest.mark.xfail(strict=True, reason=spec.known_bugs[test]))


def _built(spec):
    torch.manual_seed(0)
    return spec.make()


def test_every_public_module_has_a_spec():
    exported = set(public_module_classes())
    covered = {spec.cls for spec in SPECS}
    assert len(covered) == len(SPECS), "one row per class"
    missing = exported - covered - set(EXEMPT)
    assert not missing, f"public modules without a row in tests/module_specs.py: {missing}"
    assert not (covered - exported), "a row for a class dropkit does not export"
    assert not (set(EXEMPT) & covered)


def test_public_module_classes_finds_the_layers_a_user_imports():
    # The coverage test above is only as good as this discovery: it must see every kind of module.
    found = set(public_module_classes())
    for cls in (dropkit.Dropout, dropkit.DropConnectConv2d, dropkit.ELBOLoss, dropkit.MLP):
        assert cls in found
    # ...including a public class that only a submodule exports.
    assert dropkit.convert.FeatureAlphaDropout in found
    assert "FeatureAlphaDropout" not in dropkit.__all__
    assert len(found) == len(SPECS) + len(EXEMPT)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_repr_names_the_class_and_round_trips_through_copies(spec):
    module = _built(spec)
    text = repr(module)
    assert text.startswith(f"{spec.name}(")
    if isinstance(module, dropkit.DropoutBase):
        assert "p=" in text
    assert repr(copy.deepcopy(module)) == text
    assert repr(pickle.loads(pickle.dumps(module))) == text


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_compute_what_the_original_computes(spec, how):
    module = _built(spec)
    args = spec.inputs(3, torch.float32)
    clone = copy.deepcopy(module) if how == "deepcopy" else pickle.loads(pickle.dumps(module))
    assert clone is not module
    for original, copied in zip(module.parameters(), clone.parameters(), strict=True):
        assert copied is not original and torch.equal(copied, original)
    assert clone.training
    _assert_same(_run(clone, args, seed=3), _run(module, args, seed=3))  # same draws, same seed
    module.eval()
    clone.eval()
    _assert_same(_run(clone, args), _run(module, args))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_state_dict_round_trips_into_a_fresh_instance(spec):
    if not spec.complete_state:
        pytest.skip(f"{spec.name}'s output depends on more than its state_dict (spec table)")
    module = _built(spec).eval()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.25)  # differ from any fresh initialisation
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    fresh = spec.make().eval()
    fresh.load_state_dict(torch.load(buffer), strict=True)
    assert fresh.state_dict().keys() == module.state_dict().keys()
    args = spec.inputs(3, torch.float32)
    _assert_same(_run(fresh, args), _run(module, args))
    # In training too: the same state and the same seed give the same draws.
    module.train()
    fresh.train()
    _assert_same(_run(fresh, args, seed=4), _run(module, args, seed=4))


TWINS = [spec for spec in SPECS if spec.twin is not None]


@pytest.mark.parametrize("spec", TWINS, ids=[s.name for s in TWINS])
def test_the_torch_nn_twin_computes_the_eval_output_and_shares_the_state_dict(spec):
    module = _built(spec).eval()
    twin = spec.twin(module).eval()
    args = spec.inputs(3, torch.float32)
    for ours, theirs in zip(_run(module, args), _run(twin, args), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    # Both ways: the twin's state_dict loads into the module and the module's into the twin.
    if not spec.twin_state:
        return
    twin.load_state_dict(module.state_dict(), strict=True)
    module.load_state_dict(twin.state_dict(), strict=True)


RULES = [spec for spec in SPECS if spec.eval_rule is not None]


@pytest.mark.parametrize("spec", RULES, ids=[s.name for s in RULES])
def test_the_eval_output_is_the_documented_rule(spec):
    module = _built(spec).eval()
    args = spec.inputs(5, torch.float32)
    with torch.no_grad():
        expected = _tensors(spec.eval_rule(module, *args))
    for ours, rule in zip(_run(module, args, seed=1), expected, strict=True):
        torch.testing.assert_close(ours, rule, rtol=1e-6, atol=1e-6)


def test_every_row_declares_its_eval_output():
    # A twin or an eval rule: what eval computes is checked for every module, not only its shape.
    for spec in SPECS:
        assert (spec.twin is None) != (spec.eval_rule is None), spec.name


TRAIN_TWINS = [spec for spec in SPECS if spec.train_twin is not None]


@pytest.mark.parametrize("spec", TRAIN_TWINS, ids=[s.name for s in TRAIN_TWINS])
def test_training_drops_at_the_torch_nn_twins_rate_with_its_values(spec):
    # On an all-ones input each independent draw (a unit, or a channel) is one of two values:
    # the dropped value (0, or alpha dropout's a·α' + b, the smaller) and the kept one. Both
    # modules give the same two values, and drop a fraction p (dropkit: 1 − its 16-bit keep
    # probability, within 2^-17 of p) within 6σ of the binomial law.
    module = _built(spec).train()
    twin = spec.train_twin.make(module).train()
    x = torch.ones(spec.train_twin.shape)
    ours = spec.train_twin.units(_run(module, (x,), seed=7)[0])
    theirs = spec.train_twin.units(_run(twin, (x,), seed=7)[0])
    values, twin_values = ours.unique(), theirs.unique()
    assert len(values) == 2 and len(twin_values) == 2, (values, twin_values)
    torch.testing.assert_close(values, twin_values, rtol=1e-6, atol=1e-6)
    n = ours.numel()
    assert n >= 10_000
    dropped = int((ours == values[0]).sum())
    twin_dropped = int((theirs == twin_values[0]).sum())
    assert_fraction_close(dropped, n, 1 - ops.keep_probability(module.p), what=spec.name)
    assert_fraction_close(twin_dropped, n, module.p, what=f"torch.nn twin of {spec.name}")


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str
)
def test_forward_keeps_the_dtype_in_train_and_eval(spec, dtype):
    module = _built(spec).to(dtype)
    args = spec.inputs(3, dtype)
    if dtype not in spec.dtypes:  # refused with an error naming the dtype, never a wrong answer
        for mode in (True, False):
            with pytest.raises(TypeError, match=str(dtype)):
                module.train(mode)(*args)
        return
    for mode in (True, False):
        module.train(mode)
        outputs = _run(module, args)
        assert outputs
        for out in outputs:
            if out.is_floating_point():
                assert out.dtype == spec.out_dtype(dtype)
                assert torch.isfinite(out).all()


def _wrong_kind(arg: torch.Tensor) -> torch.Tensor:
    """Integers where floats are expected, floats where token ids are."""
    return arg.mul(10).round().long() if arg.is_floating_point() else arg.float()


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_an_input_of_the_wrong_kind_is_a_clear_error(spec):
    module = _built(spec)
    args = spec.inputs(3, torch.float32)
    error, match = spec.wrong_input
    for mode in (True, False):
        module.train(mode)
        with pytest.raises(error, match=match):
            module(_wrong_kind(args[0]), *args[1:])


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_an_empty_batch_gives_an_empty_output(spec, request):
    if spec.empty_batch is not True:
        pytest.skip(f"{spec.name}: {spec.empty_batch}")
    _known_bug(request, spec, "empty_batch")
    module = _built(spec)
    args = spec.inputs(0, torch.float32)
    for mode in (True, False):
        module.train(mode)
        outputs = _run(module, args)
        assert outputs and all(out.numel() == 0 for out in outputs)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_train_and_eval_switch_every_submodule_and_eval_is_deterministic(spec):
    module = _built(spec)
    args = spec.inputs(16, torch.float32)
    assert all(m.training for m in module.modules())
    module.eval()
    assert not any(m.training for m in module.modules())
    _assert_same(_run(module, args, seed=1), _run(module, args, seed=2))
    module.train()
    assert all(m.training for m in module.modules())
    # Training draws are reproducible under torch.manual_seed and differ between seeds.
    _assert_same(_run(module, args, seed=5), _run(module, args, seed=5))
    if spec.stochastic:
        assert any(
            not torch.equal(a, b)
            for a, b in zip(_run(module, args, seed=5), _run(module, args, seed=6), strict=True)
        )


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_monte_carlo_sampling_sees_the_randomness_the_row_declares(spec):
    # dropkit.mc switches on exactly the modules whose training forward is random: a stochastic
    # row is (or holds) one, and mc_dropout refuses a model with none.
    module = _built(spec)
    assert any(is_stochastic_module(m) for m in module.modules()) == spec.stochastic
