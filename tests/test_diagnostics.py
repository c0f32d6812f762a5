"""Activation analysis (per-module statistics, scale mismatch) and the audit's findings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as TF
from stats import assert_fraction_close
from torch import nn

import dropkit
from dropkit.diagnostics import ActivationRecorder, activation_stats, audit


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class UnscaledDropout(nn.Dropout):
    """The seeds' pitfall: a training mask without 1/(1 - p), and no (1 - p) at eval."""

    def forward(self, x):
        if not self.training:
            return x
        return x * (torch.rand_like(x) >= self.p)


def _codes(findings):
    return [f.code for f in findings]


def _by_code(findings, code):
    return [f for f in findings if f.code == code]


# ---------------------------------------------------------------- activation analysis --------


def _dropout_input(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """What the dropout at net[2] sees: the same tensor on every pass (nothing random before it)."""
    with torch.no_grad():
        return net[1](net[0](x)).double()


def _gain_sd(h: torch.Tensor, p: float, scale: float, repeats: int) -> float:
    """Standard deviation of the mean gain over ``repeats`` passes of an elementwise mask.

    One pass: g = scale · Σ m_i h_i² / Σ h_i² with m_i ~ Bernoulli(1 − p) independent, so
    Var g = scale² p (1 − p) Σ h⁴ / (Σ h²)²; the passes are independent.
    """
    h2 = h * h
    return math.sqrt(
        scale**2 * p * (1 - p) * float((h2 * h2).sum()) / float(h2.sum()) ** 2 / repeats
    )


def _assert_within(observed: float, expected: float, sd: float, what: str) -> None:
    assert abs(observed - expected) <= 6 * sd, f"{what}: {observed} vs {expected} ± {6 * sd} (6σ)"


def test_inverted_dropout_keeps_the_expected_activation_and_drops_a_fraction_p():
    torch.manual_seed(0)
    p, repeats = 0.3, 16
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), dropkit.Dropout(p), nn.Linear(64, 4))
    x = torch.randn(128, 16)
    h = _dropout_input(net, x)
    (stats,) = activation_stats(net, x, repeats=repeats)
    assert stats.path == "2" and stats.kind == "Dropout" and stats.p == p
    with ActivationRecorder(net) as rec:
        net.train()(x)
    sums = rec.sums["2"]["train"]
    assert sums.nonzero_in == int((h != 0).sum())
    assert_fraction_close(sums.dropped, sums.nonzero_in, p)  # one pass: drops ~ Binomial(n, p)
    # Over the passes: Binomial(repeats · nonzero inputs, p).
    assert_fraction_close(stats.fraction_dropped, repeats * int((h != 0).sum()), p)
    _assert_within(stats.train_gain, 1.0, _gain_sd(h, p, 1 / (1 - p), repeats), "train gain")
    assert stats.eval_gain == 1.0 and stats.scale_mismatch is False
    # In eval the module is the identity; in training it adds variance, keeping the mean:
    # the output mean over passes has sd sqrt(Σ h² p / (1 − p) / repeats) / numel.
    assert stats.eval_in_mean == stats.eval_out_mean and stats.eval_in_var == stats.eval_out_var
    assert stats.train_out_var > stats.train_in_var
    mean_sd = math.sqrt(float((h * h).sum()) * p / (1 - p) / repeats) / h.numel()
    _assert_within(stats.train_out_mean, float(h.mean()), mean_sd, "train output mean")
    assert stats.train_in_mean == pytest.approx(float(h.mean()), rel=1e-6)


def test_inference_scaling_has_matching_gains_of_one_minus_p():
    torch.manual_seed(1)
    p = 0.5
    net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), dropkit.Dropout(p, scaling="inference"))
    x = torch.randn(128, 8)
    (stats,) = activation_stats(net, x)
    _assert_within(stats.train_gain, 1 - p, _gain_sd(_dropout_input(net, x), p, 1.0, 16), "gain")
    assert stats.eval_gain == 1 - p  # y = x · 0.5 exactly
    assert stats.scale_mismatch is False


def test_unscaled_dropout_is_a_scale_mismatch():
    torch.manual_seed(2)
    p = 0.5
    net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), UnscaledDropout(p))
    x = torch.randn(128, 8)
    (stats,) = activation_stats(net, x)
    _assert_within(stats.train_gain, 1 - p, _gain_sd(_dropout_input(net, x), p, 1.0, 16), "gain")
    assert stats.eval_gain == 1.0
    assert stats.scale_mismatch is True
    (finding,) = _by_code(audit(net.eval(), torch.randn(16, 8)), "scale-mismatch")
    assert finding.path == "2" and finding.severity == "error" and "1/(1 − p)" in finding.fix


def test_torch_dropout_and_inplace_dropout_are_measured_on_their_real_input():
    torch.manual_seed(3)
    p = 0.4
    net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Dropout(p, inplace=True), nn.Linear(64, 2))
    x = torch.randn(128, 8)
    h = _dropout_input(net, x)
    (stats,) = activation_stats(net, x)
    # The input is snapshotted before the inplace op overwrites it: the fraction is of its
    # non-zero entries (an overwritten input would show dropped units as zero inputs).
    assert_fraction_close(stats.fraction_dropped, 16 * int((h != 0).sum()), p)
    assert stats.train_in_mean == pytest.approx(float(h.mean()), rel=1e-6)
    assert stats.scale_mismatch is False


def test_activation_stats_restores_modes_and_the_rng():
    net = dropkit.MLP([8, 16, 2], p=[0.1, 0.5]).eval()
    net.dropout1.train()  # an odd mix of flags, to check each is restored
    x = torch.randn(4, 8)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    activation_stats(net, x)
    assert torch.equal(torch.rand(3), expected)
    assert not net.training and net.dropout1.training and not net.input_dropout.training


def test_activation_stats_bad_input():
    with pytest.raises(TypeError, match="model"):
        activation_stats("net", torch.randn(2, 2))
    with pytest.raises(TypeError, match="batch"):
        activation_stats(dropkit.MLP([2, 2]), 3.0)
    with pytest.raises(ValueError, match="repeats"):
        activation_stats(dropkit.MLP([2, 2]), torch.randn(2, 2), repeats=0)


# ---------------------------------------------------------------- audit ----------------------


def test_a_well_built_mlp_has_no_findings():
    net = dropkit.MLP([40, 64, 64, 10])  # input 0.2, hidden 0.5, output 0
    assert audit(net.eval()) == [] and audit(net.train(), torch.randn(8, 40)) == []


def test_dropout_active_while_model_in_eval_is_an_error_with_its_path():
    net = dropkit.MLP([4, 8, 8, 2], p=[0.1, 0.3, 0.3]).eval()
    net.dropout2.train()
    (finding,) = audit(net)
    assert (finding.code, finding.severity, finding.path) == (
        "dropout-active-in-eval",
        "error",
        "dropout2",
    )
    assert "model.eval()" in finding.fix
    net.train()
    net.dropout1.eval()
    (finding,) = audit(net)
    assert (finding.code, finding.path) == ("training-flag-mismatch", "dropout1")


def test_dropout_after_the_last_layer_is_flagged():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Dropout(0.2))
    (finding,) = audit(net)
    assert (finding.code, finding.path) == ("dropout-after-last-layer", "3")
    assert "p = 0 on the output layer" in finding.fix


def test_rates_outside_the_usual_range_for_their_layer_kind():
    net = nn.Sequential(
        nn.Dropout(0.5),  # input: usual 0.1-0.2
        nn.Linear(4, 8),
        nn.ReLU(),
        nn.Dropout(0.7),  # hidden: usual 0.2-0.5
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Dropout(0.05),  # hidden, weak
        nn.Linear(8, 2),
    )
    found = {f.path: f for f in audit(net)}
    assert set(found) == {"0", "3", "6"}
    assert found["0"].severity == "warning" and "[0.1, 0.2]" in found["0"].message
    assert found["3"].severity == "warning" and "[0.2, 0.5]" in found["3"].message
    assert found["6"].severity == "info"
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Dropout2d(0.5), nn.Conv2d(8, 8, 3))
    (finding,) = audit(conv)
    assert finding.path == "2" and "conv" in finding.message
    all_dropped = nn.Sequential(nn.Linear(4, 4), dropkit.Dropout(1.0), nn.Linear(4, 2))
    (finding,) = audit(all_dropped)
    assert finding.severity == "error" and "p = 1" in finding.message
    assert audit(net, rates={"input": (0.0, 0.6), "hidden": (0.0, 0.8)}) == []


def test_dropout_directly_before_batchnorm_is_flagged():
    net = nn.Sequential(
        nn.Linear(4, 8), nn.Dropout(0.3), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 2)
    )
    (finding,) = audit(net)
    assert (finding.code, finding.path) == ("dropout-before-batchnorm", "1")
    assert "3" in finding.message


def test_two_dropouts_in_a_row_are_flagged_with_the_merged_rate():
    net = nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), dropkit.Dropout(0.2), nn.Linear(8, 2)
    )
    (finding,) = audit(net)
    assert (finding.code, finding.path) == ("consecutive-dropout", "2")
    assert "0.44" in finding.fix  # 1 - 0.7 * 0.8


class HardCoded(nn.Module):
    def __init__(self, use_dropkit=False):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 16), nn.Linear(16, 2)
        self.use_dropkit = use_dropkit

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if self.use_dropkit:
            h = dropkit.functional.dropout(h, 0.5, training=True)
        else:
            h = TF.dropout(h, 0.5, True)  # the bug: training hard-coded
        return self.fc2(h)


class Wrapper(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.body = inner

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("use_dropkit", [False, True])
def test_functional_dropout_with_training_hardcoded_is_caught_on_a_batch(use_dropkit):
    net = Wrapper(HardCoded(use_dropkit)).eval()
    assert audit(net) == []  # invisible without data
    findings = audit(net, torch.randn(8, 4))
    (finding,) = _by_code(findings, "functional-dropout-hardcoded")
    assert finding.path == "body" and "training=self.training" in finding.fix
    name = "dropkit.functional.dropout" if use_dropkit else "torch.nn.functional.dropout"
    assert name in finding.message
    assert "random-in-eval" not in _codes(findings)  # explained by the functional finding
    assert not net.training and dropkit.functional.dropout.__name__ == "dropout"  # patch undone


def test_functional_dropout_following_the_flag_is_fine():
    class Good(HardCoded):
        def forward(self, x):
            return self.fc2(TF.dropout(torch.relu(self.fc1(x)), 0.5, self.training))

    assert audit(Good().eval(), torch.randn(8, 4)) == []


def test_any_randomness_left_in_eval_is_caught():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x + 0.1 * torch.randn_like(x))

    (finding,) = audit(Noisy().eval(), torch.randn(8, 4))
    assert finding.code == "random-in-eval" and finding.severity == "error"


def test_call_order_is_used_when_a_batch_is_given():
    class Head(nn.Module):
        """Registers the dropout before the layers but applies it to the output."""

        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.3)
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.drop(self.fc2(torch.relu(self.fc1(x))))

    net = Head()
    assert "dropout-after-last-layer" not in _codes(audit(net))  # registration order misleads
    (finding,) = _by_code(audit(net, torch.randn(4, 4)), "dropout-after-last-layer")
    assert finding.path == "drop" and "call order" in finding.message


def test_audit_leaves_the_model_as_it_found_it_and_can_ignore_codes():
    net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.9), nn.Linear(8, 2)).train()
    net[1].eval()
    before = {n: m.training for n, m in net.named_modules()}
    findings = audit(net, torch.randn(4, 4))
    assert {n: m.training for n, m in net.named_modules()} == before
    assert set(_codes(findings)) == {"training-flag-mismatch", "rate-out-of-range"}
    assert _codes(audit(net, ignore=["rate-out-of-range"])) == ["training-flag-mismatch"]
    assert str(findings[0]).startswith("[warning] 1:")
    assert findings[0].as_dict()["path"] == "1"


def test_audit_bad_input():
    with pytest.raises(TypeError, match="nn.Module"):
        audit(object())
    with pytest.raises(ValueError, match="rates keys"):
        audit(dropkit.MLP([2, 2]), rates={"output": (0, 1)})
    with pytest.raises(ValueError, match="low <= high"):
        audit(dropkit.MLP([2, 2]), rates={"hidden": (0.5, 0.1)})
    with pytest.raises(TypeError, match="batch"):
        audit(dropkit.MLP([2, 2]), batch="x")


def test_audit_and_activation_stats_leave_batchnorm_statistics_alone():
    # Their training passes run under no_grad, which does not stop BatchNorm from moving its
    # running mean and variance and counting batches: the model's buffers are restored.
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Linear(8, 2))
    x = torch.randn(16, 4) * 3 + 1
    for mode in ("train", "eval"):
        getattr(net, mode)()
        before = {k: v.clone() for k, v in net.state_dict().items()}
        audit(net, x)
        activation_stats(net, x)
        after = net.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), mode
    assert int(net[1].num_batches_tracked) == 0
