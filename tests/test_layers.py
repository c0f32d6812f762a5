"""dropkit's dropout modules behave as torch.nn modules: train()/eval(), repr, inplace, state_dict,
nn.Sequential, copy and pickle, shapes; and the per-layer-rate MLP."""

from __future__ import annotations

import copy
import io
import pickle
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import dropkit
from dropkit import ops
from tests.stats import assert_fraction_close

LAYERS = {
    "Dropout": (lambda **kw: dropkit.Dropout(0.5, **kw), (16, 32)),
    "Dropout1d": (lambda **kw: dropkit.Dropout1d(0.5, **kw), (8, 16, 10)),
    "Dropout2d": (lambda **kw: dropkit.Dropout2d(0.5, **kw), (8, 16, 4, 4)),
    "Dropout3d": (lambda **kw: dropkit.Dropout3d(0.5, **kw), (4, 16, 2, 3, 3)),
}
ALL_CLASSES = [
    dropkit.Dropout,
    dropkit.Dropout1d,
    dropkit.Dropout2d,
    dropkit.Dropout3d,
    dropkit.AlphaDropout,
    dropkit.GaussianDropout,
]


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("scaling", ["inverted", "inference"])
def test_train_drops_and_eval_applies_the_eval_rule(name, scaling):
    make, shape = LAYERS[name]
    layer = make(scaling=scaling)
    x = torch.rand(shape) + 0.5
    torch.manual_seed(0)
    assert layer.training
    y = layer(x)
    assert (y == 0).any() and (y != 0).any()
    layer.eval()
    expected = x if scaling == "inverted" else x * 0.5
    assert torch.equal(layer(x), expected)
    layer.train()
    assert (layer(x) == 0).any()


def test_alpha_and_gaussian_are_the_identity_in_eval():
    x = torch.randn(10, 10)
    for layer in (dropkit.AlphaDropout(0.3), dropkit.GaussianDropout(0.3)):
        assert not torch.equal(layer(x), x)
        assert torch.equal(layer.eval()(x), x)


def test_repr_matches_torch_nn_and_shows_non_default_arguments():
    for ours, theirs in [
        (dropkit.Dropout(0.2), nn.Dropout(0.2)),
        (dropkit.Dropout1d(0.3, inplace=True), nn.Dropout1d(0.3, inplace=True)),
        (dropkit.Dropout2d(), nn.Dropout2d()),
        (dropkit.Dropout3d(0.1), nn.Dropout3d(0.1)),
        (dropkit.AlphaDropout(0.1), nn.AlphaDropout(0.1)),
    ]:
        assert repr(ours) == repr(theirs)
    assert repr(dropkit.Dropout(0.2, scaling="inference")) == (
        "Dropout(p=0.2, inplace=False, scaling='inference')"
    )
    assert repr(dropkit.Dropout(0.2, noise_shape=(None, 1, None))) == (
        "Dropout(p=0.2, inplace=False, noise_shape=(None, 1, None))"
    )
    assert repr(dropkit.GaussianDropout(0.3)) == "GaussianDropout(p=0.3)"
    assert repr(dropkit.AlphaDropout(0.3, noise_shape=(None, None, 1))) == (
        "AlphaDropout(p=0.3, inplace=False, noise_shape=(None, None, 1))"
    )


def test_setting_p_revalidates_and_takes_effect():
    layer = dropkit.Dropout(0.5)
    layer.p = 0.0
    x = torch.randn(100)
    assert torch.equal(layer(x), x)
    layer.p = 1
    assert isinstance(layer.p, float) and torch.equal(layer(x), torch.zeros_like(x))
    with pytest.raises(ValueError, match="got 1.5"):
        layer.p = 1.5
    assert layer.p == 1.0


@pytest.mark.parametrize("name", list(LAYERS))
def test_inplace_layer_writes_into_its_input(name):
    make, shape = LAYERS[name]
    x = torch.rand(shape) + 0.5
    original = x.clone()
    torch.manual_seed(1)
    y = make(inplace=True)(x)
    assert y.data_ptr() == x.data_ptr()
    assert ((y == 0) | (y == original * 2)).all() and (y == 0).any()
    z = torch.randn(shape)
    expected = z * 0.5
    make(inplace=True, scaling="inference").eval()(z)
    assert torch.equal(z, expected)


def test_alpha_dropout_inplace():
    x = torch.randn(1000)
    original = x.clone()
    torch.manual_seed(2)
    y = dropkit.AlphaDropout(0.2, inplace=True)(x)
    assert y.data_ptr() == x.data_ptr() and not torch.equal(x, original)


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_dropout_modules_hold_no_tensors_and_survive_copy_and_pickle(cls):
    kwargs = {"noise_shape": (None, 1)} if cls in (dropkit.Dropout, dropkit.GaussianDropout) else {}
    layer = cls(0.25, **kwargs)
    assert layer.state_dict() == {} and list(layer.parameters()) == []
    if layer.has_scaling:
        layer = cls(0.25, inplace=True, scaling="inference", **kwargs)
    layer.eval()
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert type(clone) is cls and repr(clone) == repr(layer)
        assert clone.p == 0.25 and clone.training is False
        assert clone.scaling == layer.scaling and clone.inplace == layer.inplace
        assert getattr(clone, "noise_shape", None) == getattr(layer, "noise_shape", None)
        clone.p = 0.5  # the setter still validates on the copy
        assert layer.p == 0.25
        with pytest.raises(ValueError):
            clone.p = -0.1


def test_model_state_dict_round_trips_and_matches_torch_nn_layout():
    torch.manual_seed(3)
    ours = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        dropkit.Dropout2d(0.2),
        nn.Flatten(),
        dropkit.Dropout(0.5, scaling="inference"),
        nn.Linear(8 * 4 * 4, 10),
    )
    theirs = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Dropout2d(0.2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(8 * 4 * 4, 10),
    )
    state = ours.state_dict()
    assert state.keys() == theirs.state_dict().keys()
    theirs.load_state_dict(state, strict=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = copy.deepcopy(ours)
    for param in fresh.parameters():
        param.data.zero_()
    fresh.load_state_dict(torch.load(buffer), strict=True)
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(fresh.eval()(x), ours.eval()(x))


def test_sequential_train_and_eval_reach_every_dropout_layer():
    model = nn.Sequential(
        nn.Linear(4, 4), dropkit.Dropout(0.5), nn.Sequential(dropkit.AlphaDropout())
    )
    model.eval()
    assert all(not m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())
    x = torch.randn(3, 4)
    assert model(x).shape == (3, 4)


def test_is_dropout_module_recognises_dropkit_and_torch_modules():
    for module in [cls() for cls in ALL_CLASSES] + [
        nn.Dropout(),
        nn.Dropout1d(),
        nn.Dropout2d(),
        nn.Dropout3d(),
        nn.AlphaDropout(),
        nn.FeatureAlphaDropout(),
    ]:
        assert dropkit.is_dropout_module(module)
    assert not any(
        dropkit.is_dropout_module(m) for m in (nn.Linear(2, 2), nn.ReLU(), nn.Sequential())
    )


def test_dropout_has_the_statistics_of_torch_nn_dropout():
    n = 1 << 18
    x = torch.ones(n)
    torch.manual_seed(4)
    ours, theirs = dropkit.Dropout(0.3)(x), nn.Dropout(0.3)(x)
    assert_fraction_close(int((ours == 0).sum()), n, 1 - ops.keep_probability(0.3))
    assert_fraction_close(int((theirs == 0).sum()), n, 0.3)
    # The same kept value up to the kernels' 2^-16 grid for p.
    assert torch.allclose(ours[ours != 0][:1], theirs[theirs != 0][:1], rtol=1e-4)


# torch's accepted ranks: (layer, rank, accepted without warning by torch.nn)
CHANNEL_RANKS = [
    (dropkit.Dropout1d, nn.Dropout1d, [2, 3], [1, 4]),
    (dropkit.Dropout2d, nn.Dropout2d, [3, 4], [2, 5]),
    (dropkit.Dropout3d, nn.Dropout3d, [4, 5], [3, 6]),
]


@pytest.mark.parametrize("ours, theirs, good, bad", CHANNEL_RANKS)
def test_channel_layers_accept_torch_documented_shapes_and_refuse_other_ranks(
    ours, theirs, good, bad
):
    for rank in good:
        x = torch.ones((3,) * rank)
        assert ours(0.5)(x).shape == x.shape
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert theirs(0.5)(x).shape == x.shape
    for rank in bad:
        with pytest.raises(ValueError, match=f"got a {rank}-D tensor"):
            ours(0.5)(torch.ones((3,) * rank))


def test_unbatched_dropout2d_is_per_channel_not_torchs_3d_guess():
    # torch treats a 3-D input to Dropout2d as (N, C, L) (a warning says so); dropkit follows the
    # documented unbatched (C, H, W): one mask value per channel, constant over H and W.
    torch.manual_seed(5)
    y = dropkit.Dropout2d(0.5)(torch.ones(64, 4, 5))
    assert (y == y[:, :1, :1]).all() and (y == 0).any()


def test_dropout_accepts_unbatched_and_scalar_inputs():
    for shape in [(), (7,), (3, 4, 5, 6, 2)]:
        x = torch.randn(shape)
        assert dropkit.Dropout(0.5)(x).shape == x.shape


# --- the per-layer-rate MLP ------------------------------------------------------------------


def test_mlp_default_rates_follow_the_seeds():
    net = dropkit.MLP([40, 64, 32, 10])
    assert net.rates == [0.2, 0.5, 0.5]
    assert [name for name, _ in net.named_children()] == [
        "input_dropout",
        "fc1",
        "act1",
        "dropout1",
        "fc2",
        "act2",
        "dropout2",
        "fc3",
    ]
    assert dropkit.MLP([4, 3]).rates == [0.2]


def test_mlp_per_layer_rates_including_an_output_rate():
    net = dropkit.MLP([10, 20, 30, 5], p=[0.1, 0.2, 0.3, 0.4], scaling="inference")
    assert net.rates == [0.1, 0.2, 0.3, 0.4]
    assert isinstance(net.output_dropout, dropkit.Dropout)
    assert all(m.scaling == "inference" for m in net.children() if isinstance(m, dropkit.Dropout))
    assert dropkit.MLP([10, 20, 5], p=0.3).rates == [0.0, 0.3]


def test_mlp_input_dropout_drops_its_rate_of_inputs():
    torch.manual_seed(6)
    net = dropkit.MLP([256, 8, 2], p=[0.1, 0.6])
    seen = {}
    net.input_dropout.register_forward_hook(lambda m, i, o: seen.update(input=o))
    net.dropout1.register_forward_hook(lambda m, i, o: seen.update(hidden=(i[0], o)))
    net(torch.rand(512, 256) + 0.5)
    dropped = int((seen["input"] == 0).sum())
    assert_fraction_close(dropped, 512 * 256, 1 - ops.keep_probability(0.1))
    before, after = seen["hidden"]
    live = before != 0
    assert_fraction_close(
        int((after[live] == 0).sum()), int(live.sum()), 1 - ops.keep_probability(0.6)
    )


def test_mlp_trains_evaluates_and_round_trips():
    torch.manual_seed(7)
    net = dropkit.MLP([8, 16, 3], p=[0.1, 0.5], activation=nn.Tanh)
    assert isinstance(net.act1, nn.Tanh)
    x = torch.randn(5, 8)
    net.eval()
    assert torch.equal(net(x), net(x))
    assert net(x[0]).shape == (3,)  # unbatched
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert torch.equal(clone(x), net(x)) and clone.rates == net.rates
    other = dropkit.MLP([8, 16, 3], p=[0.1, 0.5], activation=nn.Tanh)
    other.load_state_dict(net.state_dict())
    assert torch.equal(other.eval()(x), net(x))
    net.train()
    torch.manual_seed(8)
    assert not torch.equal(net(x), net(x))


def test_mlp_rates_can_be_changed_by_a_scheduler():
    net = dropkit.MLP([4, 8, 2], p=[0.0, 0.0])
    x = torch.randn(3, 4)
    first = net(x)
    assert torch.equal(first, net(x))  # p = 0 everywhere: deterministic
    for module in net.modules():
        if dropkit.is_dropout_module(module):
            module.p = 0.5
    assert net.rates == [0.5, 0.5]


def test_docs_api_examples_run(capsys):
    page = Path(__file__).parent.parent / "docs" / "api.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) >= 8
    for block in blocks:
        exec(compile(block, str(page), "exec"), {})
