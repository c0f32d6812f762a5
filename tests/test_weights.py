"""DropConnect (Linear and Conv) and weight-drop on recurrent weights."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as TF
from inputs import randn_without_zeros
from stats import assert_fraction_close
from torch import nn

import dropkit
from dropkit import functional_variants as FV
from dropkit import ops


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# drop_connect on a weight
# --------------------------------------------------------------------------------------------


def test_drop_connect_drops_weights_at_rate_p_and_scales_the_rest():
    p = 0.3
    w = torch.ones(200, 100)
    out = FV.drop_connect(w, p, generator=_gen(0))
    keep = ops.keep_probability(p)
    values = out.unique()
    assert len(values) == 2 and values[0] == 0.0
    assert values[1].item() == pytest.approx(1 / (1 - p), rel=1e-7)
    assert_fraction_close(int((out == 0).sum()), out.numel(), 1 - keep)


def test_drop_connect_gradient_reaches_only_kept_weights():
    w = randn_without_zeros(6, 5, requires_grad=True)  # out != 0 is then the mask
    out = FV.drop_connect(w, 0.5, generator=_gen(1))
    out.sum().backward()
    kept = out.detach() != 0
    assert torch.allclose(w.grad, kept.float() / ops.keep_probability(0.5))


def test_drop_connect_eval_rules():
    w = torch.randn(3, 4)
    assert FV.drop_connect(w, 0.4, training=False) is w
    assert torch.equal(FV.drop_connect(w, 0.4, training=False, scaling="inference"), w * (1 - 0.4))


def test_drop_connect_rejects_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        FV.drop_connect(torch.ones(2, 2), 0.5, batch_size=0)


# --------------------------------------------------------------------------------------------
# DropConnect Linear
# --------------------------------------------------------------------------------------------


def test_linear_drops_weights_not_activations():
    # With one-hot inputs e_j and zero bias, y[j, o] = M[o, j] · W[o, j] / (1 − p): each output
    # is one weight, kept or dropped on its own, so a row mixes zeros and non-zeros and never
    # zeroes a whole output unit the way activation dropout would.
    p, n_in, n_out = 0.5, 64, 64
    weight = torch.ones(n_out, n_in)
    y = FV.drop_connect_linear(torch.eye(n_in), weight, None, p, generator=_gen(2))
    keep = ops.keep_probability(p)
    assert set(y.unique().tolist()) == {0.0, 1 / keep}
    assert_fraction_close(int((y == 0).sum()), y.numel(), 1 - keep)
    unit_dropped = (y == 0).all(dim=0)
    assert not unit_dropped.any()


def test_linear_one_mask_per_batch_by_default_and_per_sample_on_request():
    layer = dropkit.DropConnectLinear(10, 6, p=0.5)
    x = torch.randn(1, 10).expand(8, 10)
    y = layer(x)
    assert torch.allclose(y, y[:1].expand_as(y))  # the same weights for every sample
    layer.per_sample = True
    y = layer(x)
    assert not torch.allclose(y, y[:1].expand_as(y))


def test_linear_per_sample_matches_a_loop_over_sample_masks():
    x, w, b = torch.randn(5, 3, 4), torch.randn(2, 4), torch.randn(2)
    y = FV.drop_connect_linear(x, w, b, 0.4, per_sample=True, drop_bias=True, generator=_gen(3))
    g = _gen(3)
    ws = FV.drop_connect(w, 0.4, batch_size=5, generator=g)
    bs = FV.drop_connect(b, 0.4, batch_size=5, generator=g)
    expected = torch.stack([x[n] @ ws[n].T + bs[n] for n in range(5)])
    assert torch.allclose(y, expected, atol=1e-6)


def test_linear_batch_mode_matches_linear_with_the_masked_weight():
    x, w, b = torch.randn(7, 4), torch.randn(3, 4), torch.randn(3)
    y = FV.drop_connect_linear(x, w, b, 0.3, generator=_gen(4))
    expected = TF.linear(x, FV.drop_connect(w, 0.3, generator=_gen(4)), b)
    assert torch.allclose(y, expected)


def test_linear_eval_inverted_is_nn_linear_and_inference_scales_weights():
    layer = dropkit.DropConnectLinear(4, 3, p=0.4)
    dense = nn.Linear(4, 3)
    dense.load_state_dict(layer.state_dict())  # same parameter names as nn.Linear
    x = torch.randn(5, 4)
    assert torch.equal(layer.eval()(x), dense(x))
    inference = dropkit.DropConnectLinear(4, 3, p=0.4, scaling="inference").eval()
    keep = 1 - 0.4
    expected = x @ (keep * inference.weight).T + inference.bias
    assert torch.allclose(inference(x), expected, atol=1e-6)
    assert torch.allclose(inference.to_plain()(x), expected, atol=1e-6)


def test_linear_training_output_is_unbiased_in_expectation():
    layer = dropkit.DropConnectLinear(8, 2, p=0.5, per_sample=True)
    x = torch.randn(1, 8).expand(20_000, 8)
    with torch.no_grad():
        y = layer(x)
        target = TF.linear(x[:1], layer.weight, layer.bias)
        # Each output is b + Σ_j m_j W_j x_j / keep: variance Σ (W_j x_j)² (1 − keep)/keep.
        keep = ops.keep_probability(0.5)
        sd = ((layer.weight * x[:1]) ** 2).sum(1).mul((1 - keep) / keep).sqrt()
    err = (y.mean(0) - target[0]).abs()
    assert bool((err <= 6 * sd / 20_000**0.5).all())


def test_from_linear_copies_parameters():
    dense = nn.Linear(3, 2)
    layer = dropkit.DropConnectLinear.from_linear(dense, p=0.2, per_sample=True)
    assert layer.per_sample and layer.p == 0.2
    assert torch.equal(layer.weight, dense.weight)
    with pytest.raises(TypeError, match="nn.Linear"):
        dropkit.DropConnectLinear.from_linear(nn.Conv1d(1, 1, 1))


def test_linear_rejects_bad_arguments():
    with pytest.raises(ValueError, match="p must be"):
        dropkit.DropConnectLinear(3, 2, p=1.5)
    with pytest.raises(TypeError, match="per_sample"):
        dropkit.DropConnectLinear(3, 2, per_sample="yes")
    with pytest.raises(ValueError, match="in_features"):
        FV.drop_connect_linear(torch.randn(2, 5), torch.randn(2, 3))
    with pytest.raises(ValueError, match="rank"):
        FV.drop_connect_linear(torch.randn(3), torch.randn(2, 3), per_sample=True)


# --------------------------------------------------------------------------------------------
# DropConnect convolutions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [1, 2])
def test_conv2d_per_sample_grouped_conv_matches_a_loop(groups):
    x = torch.randn(3, 4, 6, 6)
    w, b = torch.randn(6, 4 // groups, 3, 3), torch.randn(6)
    y = FV.drop_connect_conv(
        x, w, b, 0.4, stride=2, padding=1, groups=groups, per_sample=True, generator=_gen(5)
    )
    ws = FV.drop_connect(w, 0.4, batch_size=3, generator=_gen(5))
    expected = torch.cat(
        [TF.conv2d(x[n : n + 1], ws[n], b, stride=2, padding=1, groups=groups) for n in range(3)]
    )
    assert torch.allclose(y, expected, atol=1e-5)


def test_conv_batch_mode_matches_conv_with_the_masked_weight():
    x, w = torch.randn(2, 3, 9), torch.randn(4, 3, 3)
    y = FV.drop_connect_conv(x, w, None, 0.3, padding="same", generator=_gen(6))
    expected = TF.conv1d(x, FV.drop_connect(w, 0.3, generator=_gen(6)), padding="same")
    assert torch.allclose(y, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("cls", "plain", "shape"),
    [
        (dropkit.DropConnectConv1d, nn.Conv1d, (2, 3, 8)),
        (dropkit.DropConnectConv2d, nn.Conv2d, (2, 3, 6, 6)),
        (dropkit.DropConnectConv3d, nn.Conv3d, (2, 3, 4, 4, 4)),
    ],
)
def test_conv_layers_are_plain_convs_in_eval(cls, plain, shape):
    conv = plain(3, 4, 3, padding=1, padding_mode="reflect")
    layer = cls.from_conv(conv, p=0.3, per_sample=True)
    assert isinstance(layer, plain) and dropkit.is_dropout_module(layer)
    x = torch.randn(*shape)
    assert torch.equal(layer.eval()(x), conv(x))
    layer.train()
    y = layer(x)
    assert y.shape == conv(x).shape and not torch.allclose(y, conv(x))
    layer.scaling = "inference"
    layer.eval()
    assert torch.allclose(layer.to_plain()(x), layer(x), atol=1e-6)


def test_conv_per_sample_masks_differ_between_samples():
    layer = dropkit.DropConnectConv2d(2, 3, 3, p=0.5, per_sample=True, bias=False)
    x = torch.randn(1, 2, 5, 5).expand(6, 2, 5, 5)
    y = layer(x)
    assert not torch.allclose(y, y[:1].expand_as(y))


def test_conv_rejects_bad_arguments():
    with pytest.raises(ValueError, match="channels"):
        FV.drop_connect_conv(torch.randn(1, 5, 8, 8), torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match="rank"):
        FV.drop_connect_conv(torch.randn(3, 8, 8), torch.randn(2, 3, 3, 3), per_sample=True)
    with pytest.raises(ValueError, match="rank"):
        FV.drop_connect_conv(torch.randn(1, 3, 8), torch.randn(2, 3))
    with pytest.raises(TypeError, match="conv must be"):
        dropkit.DropConnectConv2d.from_conv(nn.Conv1d(1, 1, 1))


# --------------------------------------------------------------------------------------------
# WeightDrop on LSTM / GRU
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rnn_cls", [nn.LSTM, nn.GRU])
def test_weight_drop_trains_without_warnings_multilayer_bidirectional(rnn_cls):
    torch.manual_seed(0)
    rnn = rnn_cls(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    model = dropkit.WeightDrop(rnn, p=0.5)
    assert model.weights == (
        "weight_hh_l0",
        "weight_hh_l0_reverse",
        "weight_hh_l1",
        "weight_hh_l1_reverse",
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 6, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            out, _ = model(x)
            out.pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        model.eval()
        model(x)
    # The wrapped module is untouched: same parameter names, still Parameters, contiguous.
    assert set(dict(rnn.named_parameters())) == set(
        dict(rnn_cls(3, 5, 2, bidirectional=True).named_parameters())
    )
    assert all(isinstance(p, nn.Parameter) and p.is_contiguous() for p in rnn.parameters())


def test_weight_drop_zero_gradient_exactly_on_dropped_recurrent_weights():
    torch.manual_seed(1)
    rnn = nn.LSTM(4, 16)
    model = dropkit.WeightDrop(rnn, p=0.4)
    out, _ = model(torch.randn(5, 3, 4))
    out.sum().backward()
    zero = rnn.weight_hh_l0.grad == 0
    assert_fraction_close(int(zero.sum()), zero.numel(), 1 - ops.keep_probability(0.4))
    assert (rnn.weight_ih_l0.grad != 0).float().mean() > 0.99  # input weights are not dropped


def test_weight_drop_uses_one_mask_for_every_time_step():
    # The output equals that of a plain copy whose W_hh is the masked matrix, fixed over time.
    rnn = nn.GRU(3, 4, num_layers=2)
    model = dropkit.WeightDrop(rnn, p=0.5)
    x = torch.randn(7, 2, 3)
    torch.manual_seed(2)
    out, h = model(x)
    torch.manual_seed(2)
    ref = copy.deepcopy(rnn)
    with torch.no_grad():
        for name in model.weights:
            getattr(ref, name).copy_(FV.drop_connect(getattr(rnn, name), 0.5))
    ref_out, ref_h = ref(x)
    assert torch.allclose(out, ref_out, atol=1e-6) and torch.allclose(h, ref_h, atol=1e-6)


def test_weight_drop_eval_rules():
    rnn = nn.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    model = dropkit.WeightDrop(rnn, p=0.5).eval()
    assert torch.equal(model(x)[0], rnn(x)[0])
    inference = dropkit.WeightDrop(rnn, p=0.5, scaling="inference").eval()
    assert torch.allclose(inference(x)[0], inference.to_plain()(x)[0], atol=1e-6)
    assert not torch.allclose(inference(x)[0], rnn(x)[0])


def test_weight_drop_rejects_bad_arguments():
    with pytest.raises(TypeError, match="LSTM"):
        dropkit.WeightDrop(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="weights"):
        dropkit.WeightDrop(nn.LSTM(2, 2), weights=["weight_hh_l9"])
    with pytest.raises(ValueError, match="p must be"):
        dropkit.WeightDrop(nn.GRU(2, 2), p=-0.1)


# --------------------------------------------------------------------------------------------
# Moment-matching inference (Wan et al. 2013, Algorithm 2)
# --------------------------------------------------------------------------------------------


def test_linear_moments_are_exact_over_the_weight_mask():
    # Sample per-sample DropConnect outputs for one input and compare with the closed forms.
    from stats import assert_mean_close, assert_variance_close

    torch.manual_seed(3)
    p, n = 0.3, 40_000
    x, w, b = torch.randn(1, 12), torch.randn(2, 12), torch.randn(2)
    mean, var = FV.drop_connect_linear_moments(x, w, b, p)
    with torch.no_grad():
        y = FV.drop_connect_linear(
            x.expand(n, 12).double(), w.double(), b.double(), p, per_sample=True, generator=_gen(7)
        )
    q = ops.keep_probability(p)
    c = (w * x / q).double()  # u = b + Σ_j m_j c_j: excess kurtosis Σ κ4_j / σ⁴
    kappa4 = (c**4 * q * (1 - q) * (1 - 6 * q * (1 - q))).sum(1)
    for o in range(2):
        sd = var[0, o].sqrt().item()
        assert_mean_close(y[:, o].mean().item(), mean[0, o].item(), sd, n)
        kurtosis = 3.0 + (kappa4[o] / var[0, o].double() ** 2).item()
        assert_variance_close(y[:, o].var().item(), var[0, o].item(), n, kurtosis=kurtosis)


def test_moment_matching_relu_matches_the_gaussian_closed_form():
    x, w = torch.randn(3, 20, generator=_gen(8)), torch.randn(4, 20, generator=_gen(9))
    z = 50_000
    r = FV.drop_connect_moment_matching(x, w, None, 0.5, torch.relu, z, generator=_gen(10))
    mean, var = FV.drop_connect_linear_moments(x, w, None, 0.5)
    sd = var.sqrt()
    normal = torch.distributions.Normal(0.0, 1.0)
    t = mean / sd
    expected = mean * normal.cdf(t) + sd * normal.log_prob(t).exp()  # E[relu(u)], u ~ N(mean, sd²)
    bound = 6 * (mean**2 + var).sqrt() / z**0.5  # sd(relu(u)) <= sqrt(E[u²])
    assert bool(((r - expected).abs() <= bound).all())


def test_moment_matching_method_and_errors():
    layer = dropkit.DropConnectLinear(6, 3, p=0.5, scaling="inference")
    x = torch.randn(2, 6)
    r = layer.moment_matching(x, activation=lambda u: u, num_samples=20_000, generator=_gen(11))
    mean, var = FV.drop_connect_linear_moments(
        x, layer.weight, layer.bias, 0.5, scaling="inference"
    )
    assert bool(((r - mean).abs() <= 6 * var.sqrt() / 20_000**0.5 + 1e-6).all())
    with pytest.raises(ValueError, match="num_samples"):
        layer.moment_matching(x, num_samples=0)
    with pytest.raises(TypeError, match="activation"):
        FV.drop_connect_moment_matching(x, layer.weight, activation="relu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (cuDNN's RNN kernels)")
@pytest.mark.parametrize("rnn_cls", [nn.LSTM, nn.GRU])
def test_weight_drop_on_cudnn_emits_no_contiguity_or_flatten_warning(rnn_cls):
    rnn = rnn_cls(3, 8, num_layers=2, bidirectional=True).cuda()
    model = dropkit.WeightDrop(rnn, p=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(6, 4, 3, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            out, _ = model(x)
            out.pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        model.eval()
        model(x)
    torch.cuda.synchronize()
