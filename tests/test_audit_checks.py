"""The audit's table of checks: each check alone, on a model where it fires and one where it stays
silent (a near miss: the pitfall's neighbour, often with other checks firing), then the table
itself (names, codes, order) and ``audit(..., checks=...)``."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

import dropkit
from dropkit.diagnostics import (
    AUDIT_CHECKS,
    AuditCheck,
    AuditContext,
    Finding,
    audit,
)

CHECKS = {check.name: check for check in AUDIT_CHECKS}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class UnscaledDropout(nn.Dropout):
    """A training mask without 1/(1 - p), and no (1 - p) at eval: train gain 1 - p, eval gain 1."""

    def forward(self, x):
        return x * (torch.rand_like(x) >= self.p) if self.training else x


class HardCoded(nn.Module):
    def __init__(self, follow_flag=False):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 16), nn.Linear(16, 2)
        self.follow_flag = follow_flag

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(TF.dropout(h, 0.5, self.training if self.follow_flag else True))


class Noisy(nn.Module):
    def __init__(self, noise=0.1):
        super().__init__()
        self.fc, self.noise = nn.Linear(4, 2), noise

    def forward(self, x):
        return self.fc(x + self.noise * torch.randn_like(x))


class Spare(nn.Module):
    """A dropout module registered and never called (``used=False``)."""

    def __init__(self, used):
        super().__init__()
        self.fc, self.spare, self.used = nn.Linear(4, 4), nn.Dropout(0.3), used

    def forward(self, x):
        return self.fc(self.spare(x) if self.used else x)


def _mlp_eval_with(flip):
    net = dropkit.MLP([4, 8, 8, 2], p=[0.1, 0.3, 0.3]).eval()
    for name in flip:
        net.get_submodule(name).train()
    return net


def _mlp_training_with(flip):
    net = dropkit.MLP([4, 8, 8, 2], p=[0.1, 0.3, 0.3]).train()
    for name in flip:
        net.get_submodule(name).eval()
    return net


def _eval_but(net, index):
    """The model in eval mode but for its layer ``index``, left training."""
    net.eval()
    net[index].train()
    return net


X4 = torch.randn(8, 4)

# check name -> [(model factory, batch, the findings it reports as (code, severity, path))].
# The first case of each check fires; an empty expectation is a silent case.
CASES = {
    "mode-flags": [
        (
            lambda: _mlp_eval_with(["dropout2"]),
            None,
            [("dropout-active-in-eval", "error", "dropout2")],
        ),
        (
            lambda: _mlp_training_with(["dropout1"]),
            None,
            [("training-flag-mismatch", "warning", "dropout1")],
        ),
        (lambda: _mlp_eval_with([]), None, []),
        # A BatchNorm left training in an eval model is not a dropout module's flag.
        (
            lambda: _eval_but(
                nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.3)), 1
            ),
            None,
            [],
        ),
    ],
    "after-last-layer": [
        (
            lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2), nn.Dropout(0.5)),
            None,
            [("dropout-after-last-layer", "warning", "3")],
        ),
        # p = 0 on the output layer is the fix; a dropout before the last layer is fine.
        (
            lambda: nn.Sequential(
                nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 2), nn.Dropout(0.0)
            ),
            None,
            [],
        ),
    ],
    "consecutive-dropout": [
        (
            lambda: nn.Sequential(
                nn.Linear(4, 8),
                nn.Dropout(0.3),
                nn.Identity(),
                dropkit.Dropout(0.2),
                nn.Linear(8, 2),
            ),
            None,
            [("consecutive-dropout", "info", "1")],
        ),
        # An activation between them: two dropouts, not one.
        (
            lambda: nn.Sequential(
                nn.Linear(4, 8), nn.Dropout(0.3), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2)
            ),
            None,
            [],
        ),
    ],
    "before-batchnorm": [
        (
            lambda: nn.Sequential(
                nn.Linear(4, 8), nn.Dropout(0.3), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 2)
            ),
            None,
            [("dropout-before-batchnorm", "warning", "1")],
        ),
        # After the BatchNorm, or at p = 0 before it.
        (
            lambda: nn.Sequential(
                nn.Linear(4, 8),
                nn.BatchNorm1d(8),
                nn.ReLU(),
                nn.Dropout(0.3),
                nn.Linear(8, 8),
                nn.Dropout(0.0),
                nn.BatchNorm1d(8),
                nn.Linear(8, 2),
            ),
            None,
            [],
        ),
    ],
    "rate-range": [
        (
            lambda: nn.Sequential(
                nn.Dropout(0.5),
                nn.Linear(4, 8),
                nn.Dropout(0.7),
                nn.Linear(8, 8),
                nn.Dropout(0.05),
                nn.Linear(8, 2),
            ),
            None,
            [
                ("rate-out-of-range", "warning", "0"),
                ("rate-out-of-range", "warning", "2"),
                ("rate-out-of-range", "info", "4"),
            ],
        ),
        (
            lambda: nn.Sequential(nn.Linear(4, 4), dropkit.Dropout(1.0), nn.Linear(4, 2)),
            None,
            [("rate-out-of-range", "error", "1")],
        ),
        (
            lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.Dropout2d(0.5), nn.Conv2d(8, 8, 3)),
            None,
            [("rate-out-of-range", "warning", "1")],
        ),
        # In range for their kind (0.2 on the input, 0.5 hidden, 0.3 conv); alpha dropout's p is not
        # a rate of dropped units; p = 0 is no dropout.
        (
            lambda: nn.Sequential(
                nn.Dropout(0.2),
                nn.Linear(4, 8),
                nn.Dropout(0.5),
                nn.Linear(8, 8),
                nn.AlphaDropout(0.9),
                nn.Dropout(0.0),
                nn.Linear(8, 2),
            ),
            None,
            [],
        ),
        (lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.Dropout(0.3), nn.Conv2d(8, 8, 3)), None, []),
    ],
    "functional-hardcoded": [
        (lambda: HardCoded().eval(), X4, [("functional-dropout-hardcoded", "error", "")]),
        (lambda: HardCoded(follow_flag=True).eval(), X4, []),
    ],
    "random-in-eval": [
        (lambda: Noisy().eval(), X4, [("random-in-eval", "error", "")]),
        (lambda: Noisy(noise=0.0).eval(), X4, []),
        # Randomness explained by a finding of its own: a hard-coded call, a dropout left training.
        (lambda: HardCoded().eval(), X4, []),
        (lambda: _eval_but(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.3)), 1), X4, []),
    ],
    "dead-dropout": [
        (lambda: Spare(used=False).eval(), X4, [("dropout-never-runs", "warning", "spare")]),
        (lambda: Spare(used=True).eval(), X4, []),
    ],
    "scale-mismatch": [
        (
            lambda: nn.Sequential(nn.Linear(4, 32), UnscaledDropout(0.5), nn.Linear(32, 2)).eval(),
            torch.randn(16, 4),
            [("scale-mismatch", "error", "1")],
        ),
        (
            lambda: nn.Sequential(nn.Linear(4, 32), nn.Dropout(0.5), nn.Linear(32, 2)).eval(),
            torch.randn(16, 4),
            [],
        ),
    ],
}

CASE_IDS = [f"{name}-{i}" for name, cases in CASES.items() for i in range(len(cases))]
CASE_LIST = [(name, *case) for name, cases in CASES.items() for case in cases]


def _triples(findings):
    return [(f.code, f.severity, f.path) for f in findings]


def test_every_check_has_a_case_where_it_fires_and_one_where_it_is_silent():
    assert list(CASES) == [check.name for check in AUDIT_CHECKS]
    for name, cases in CASES.items():
        assert cases[0][2], f"{name}: the first case must fire"
        assert any(not expected for _, _, expected in cases), f"{name}: no silent case"


@pytest.mark.parametrize(("name", "make", "batch", "expected"), CASE_LIST, ids=CASE_IDS)
def test_each_check_alone(name, make, batch, expected):
    check = CHECKS[name]
    # The check's own function on a context, and audit running only that check, agree.
    direct = check.run(AuditContext(make(), batch))
    assert _triples(direct) == expected
    assert {f.code for f in direct} <= set(check.codes)
    assert _triples(audit(make(), batch, checks=[name])) == expected
    # Within the whole audit the check reports the same findings.
    whole = [f for f in audit(make(), batch) if f.code in check.codes]
    assert _triples(whole) == expected


def test_the_silent_cases_are_near_misses_other_checks_see():
    # The silent models are not empty of findings: other checks fire on some of them.
    codes = {f.code for f in audit(HardCoded().eval(), X4)}
    assert codes == {"functional-dropout-hardcoded"}  # random-in-eval silent, explained
    model = nn.Sequential(nn.Dropout(0.2), nn.Linear(4, 8), nn.AlphaDropout(0.9), nn.Linear(8, 2))
    assert {f.code for f in audit(model)} == set()  # alpha dropout's p is not range-checked
    model.append(nn.Dropout(0.5))
    assert [f.code for f in audit(model)] == ["dropout-after-last-layer"]


def test_the_table_names_and_codes_are_unique_and_documented():
    names = [check.name for check in AUDIT_CHECKS]
    codes = [code for check in AUDIT_CHECKS for code in check.codes]
    assert len(names) == len(set(names)) == 9 and len(codes) == len(set(codes)) == 12
    documented = Finding.__doc__.split("severity:")[0]
    assert all(f"``{code}``" in documented for code in codes)
    assert [c.name for c in AUDIT_CHECKS if c.needs_batch] == [
        "functional-hardcoded",
        "random-in-eval",
        "dead-dropout",
        "scale-mismatch",
    ]


def test_per_layer_findings_come_in_layer_order_then_table_order():
    # Layer 1: before-batchnorm and rate-range fire; layer 4: after-last-layer and rate-range.
    # Checks run one after the other, but the report reads layer by layer within a severity.
    net = nn.Sequential(
        nn.Linear(4, 8), nn.Dropout(0.7), nn.BatchNorm1d(8), nn.Linear(8, 2), nn.Dropout(0.6)
    )
    assert _triples(audit(net)) == [
        ("dropout-before-batchnorm", "warning", "1"),
        ("rate-out-of-range", "warning", "1"),
        ("dropout-after-last-layer", "warning", "4"),
        ("rate-out-of-range", "warning", "4"),
    ]
    # Checks given in another order run in that order; a layer's findings follow it.
    reordered = audit(net, checks=["rate-range", "after-last-layer", "before-batchnorm"])
    assert _triples(reordered) == [
        ("rate-out-of-range", "warning", "1"),
        ("dropout-before-batchnorm", "warning", "1"),
        ("rate-out-of-range", "warning", "4"),
        ("dropout-after-last-layer", "warning", "4"),
    ]


def test_the_whole_table_by_name_is_the_default_audit():
    net = nn.Sequential(
        nn.Linear(4, 16), UnscaledDropout(0.5), nn.Dropout(0.7), nn.Linear(16, 2), nn.Dropout(0.2)
    ).eval()
    net[2].train()
    x = torch.randn(16, 4)
    default = audit(net, x)
    assert len({f.code for f in default}) >= 4
    assert default == audit(net, x, checks=[c.name for c in AUDIT_CHECKS])
    assert default == audit(net, x, checks=AUDIT_CHECKS)
    without_batch = audit(net)
    assert without_batch == audit(net, checks=[c.name for c in AUDIT_CHECKS if not c.needs_batch])
    assert without_batch == audit(net, checks=AUDIT_CHECKS)  # the data checks left out


def test_a_check_of_your_own_runs_beside_the_table():
    def no_gaussian(ctx: AuditContext) -> list[Finding]:
        return [
            Finding("gaussian-dropout", "info", d.path, "Gaussian dropout.", "use Dropout.")
            for d in ctx.dropouts()
            if isinstance(d.module, dropkit.GaussianDropout)
        ]

    mine = AuditCheck(
        "no-gaussian", ("gaussian-dropout",), "dropout kinds", no_gaussian, per_layer=True
    )
    net = nn.Sequential(
        nn.Linear(4, 8), dropkit.GaussianDropout(0.3), nn.Linear(8, 2), nn.Dropout(0.5)
    )
    findings = audit(net, checks=[*AUDIT_CHECKS, mine])
    assert _triples(findings) == [
        ("dropout-after-last-layer", "warning", "3"),
        ("gaussian-dropout", "info", "1"),
    ]
    assert _triples(audit(net, checks=[mine, "after-last-layer"], ignore=["gaussian-dropout"])) == [
        ("dropout-after-last-layer", "warning", "3")
    ]


def test_every_functional_module_of_dropkit_is_watched():
    # drop_path lives in another functional module than dropout; called with training left at its
    # default (True) in eval, the audit names it.
    from dropkit import functional_variants

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return x + functional_variants.drop_path(self.fc(x), 0.5)

    (finding,) = audit(nn.Sequential(Residual()).eval(), X4, checks=["functional-hardcoded"])
    assert finding.path == "0" and ".drop_path was called with training=True" in finding.message
    assert functional_variants.drop_path.__name__ == "drop_path"  # unwrapped again


def test_checks_bad_input():
    net = dropkit.MLP([2, 2])
    with pytest.raises(
        ValueError, match=r"checks: unknown check 'rates'; the checks are \['mode-flags'"
    ):
        audit(net, checks=["rates"])
    with pytest.raises(
        TypeError, match="checks must be a list of check names or AuditChecks, got 'mode-flags'"
    ):
        audit(net, checks="mode-flags")
    with pytest.raises(TypeError, match="checks must hold check names or AuditChecks, got int: 3"):
        audit(net, checks=[3])
    with pytest.raises(
        ValueError, match=r"checks: \['scale-mismatch'\] all run the model and need a batch"
    ):
        audit(net, checks=["scale-mismatch"])
    # With a check that runs without a batch, the others are left out as in the default.
    assert audit(net, checks=["scale-mismatch", "mode-flags"]) == []
    bad = dataclasses.replace(
        CHECKS["mode-flags"],
        name="bad",
        run=lambda ctx: [Finding("x", "fatal", "", "m", "f")],
    )
    with pytest.raises(TypeError, match="check 'bad' must return Findings with severity in"):
        audit(net, checks=[bad])
    assert audit(net, checks=[]) == []
