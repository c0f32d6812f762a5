r"""Regression with MC dropout: Gal & Ghahramani's UCI protocol (2016, sec. 5) as one call.

The protocol, for each of K random train/test splits (90% / 10%):

1. **Choose (p, τ) on validation.** The training split is cut into a fit part and a validation part
   (20%). Inputs and target are standardised with the fit part's mean and std. For every p in the
   grid {0.005, 0.01, 0.05, 0.1} and every τ in a τ grid, a network [D, 50, 1] with dropout p on
   its input and hidden layer is trained on the paper's objective
   (1/N) Σ ½ (y − ŷ)² + λ Σ ‖W‖² with λ = l² (1 − p) / (2 N τ) (eq. 7, length-scale l = 10⁻² as
   in the authors' code), and scored by its MC predictive log-likelihood on the validation part.
   The authors hand-set a τ grid per data set; here it is derived from the data: a first fit
   (p = the grid's middle rate) gives the validation residual variance s², and the grid is
   τ₀ × {¼, ½, 1, 2, 4} with τ₀ = 1 / s² (``taus=`` overrides it).
2. **Retrain** the chosen (p, τ) on the whole training split (standardised on it).
3. **Test**: MC dropout (T passes of :func:`dropkit.mc.predict`, unstandardised) — RMSE of the MC
   mean, log-likelihood logsumexp_t(−τ/2 (y − ŷ_t)²) − log T − ½ log 2π + ½ log τ in the target's
   units (τ of the standardised target divided by its variance), and the coverage of the 50/90/95%
   central predictive intervals. Weight scaling (the network in eval mode, one deterministic pass
   with Gaussian noise τ⁻¹) gets the same three numbers twice: for the MC network itself, and for a
   network whose (p, τ) was chosen on validation by weight scaling's own log-likelihood (the fair
   baseline).

Results are the mean ± standard error over splits.

**Speed.** The grid's networks train side by side as one batched model
(:func:`train_dropout_ensemble`): one weight tensor per layer with a leading member dim, one
``baddbmm`` per layer, one Adam. The members share their initialisation, minibatch order and the
uniform draws behind their masks (member m keeps a unit when u ≥ p_m: common random numbers), so
the difference between two grid points is their p and τ, not the luck of their seeds.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import numpy as np
import torch

from dropkit import uncertainty as U
from dropkit._validate import (
    check_nonneg_int,
    check_open_unit,
    check_positive_finite,
    check_positive_int,
    check_probability,
    check_rates,
    check_real,
    check_taus,
)
from dropkit.models import MLP

__all__ = [
    "DEFAULT_RATES",
    "TAU_FACTORS",
    "LENGTH_SCALE",
    "COVERAGE_LEVELS",
    "MIN_ROWS",
    "RegressionConfig",
    "RegressionData",
    "load_regression_data",
    "train_dropout_ensemble",
    "run_regression_study",
    "run_split",
    "assemble_result",
    "format_regression_summary",
]

#: The paper's dropout rates (Gal & Ghahramani 2016, UCI experiments).
DEFAULT_RATES: tuple[float, ...] = (0.005, 0.01, 0.05, 0.1)
#: The τ grid is τ₀ × these, τ₀ the inverse validation residual variance of a first fit.
TAU_FACTORS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Prior length-scale l of the authors' code.
LENGTH_SCALE = 1e-2
#: Nominal levels of the central predictive intervals whose coverage is reported.
COVERAGE_LEVELS: tuple[float, ...] = (0.5, 0.9, 0.95)
#: The fewest rows a regression study accepts (2 test rows, a validation part of at least 3).
MIN_ROWS = 20
#: Memory budget of one batched MC pass (:func:`dropkit.mc.predict`'s ``max_memory_bytes``): the
#: study's nets are small, so T = 1000 samples of a validation part fit in a few passes.
MC_PASS_BYTES = 64 << 20
#: Built-in regression data sets (bundled with scikit-learn, never downloaded).
BUILTIN = ("diabetes",)


# --------------------------------------------------------------------------------------------
# Settings and data
# --------------------------------------------------------------------------------------------


@dataclass
class RegressionConfig:
    r"""Settings of one regression study; ``None`` fields take the mode's default.

    Args:
        data: ``"diabetes"`` (scikit-learn's, bundled) or a CSV / NPZ file.
        label: the target column (CSV) or array (NPZ).
        seed: seeds the splits, every network and the MC samples.
        quick: 3 splits, 40 epochs, T = 100 (the same pipeline, under a minute).
        splits: K random train/test splits (default 20, quick 3).
        epochs: training epochs of every network (default 400, the paper's; quick 40).
        hidden: hidden widths (default one layer of 50 units, the paper's).
        lr, batch_size: Adam's learning rate and the minibatch (Keras's defaults in the authors'
            code: 10⁻³ and 128).
        rates: the dropout-rate grid.
        taus: a τ grid (precisions of the standardised target) instead of the derived one.
        mc_samples: T, MC dropout passes for validation and test (default 1000, quick 100).
        test_fraction, val_fraction: test share of the rows; validation share of a training split.
        length_scale: prior length-scale l in λ = l² (1 − p) / (2 N τ).
        progress: a progress bar on stderr.
    """

    data: str = "diabetes"
    label: str = "label"
    seed: int = 0
    quick: bool = False
    splits: int | None = None
    epochs: int | None = None
    hidden: tuple[int, ...] = (50,)
    lr: float = 1e-3
    batch_size: int = 128
    rates: tuple[float, ...] = DEFAULT_RATES
    taus: tuple[float, ...] | None = None
    mc_samples: int | None = None
    test_fraction: float = 0.1
    val_fraction: float = 0.2
    length_scale: float = LENGTH_SCALE
    progress: bool = True

    def resolved(self) -> RegressionConfig:
        """A copy with every ``None`` replaced by the mode's default and every field checked.

        Example:
            >>> RegressionConfig(quick=True).resolved().splits
            3
        """
        quick = bool(self.quick)
        out = RegressionConfig(**asdict(self))
        out.splits = check_positive_int(
            self.splits if self.splits is not None else (3 if quick else 20), "splits"
        )
        if out.splits < 2:
            raise ValueError(
                f"splits must be at least 2 (a standard error needs two splits), got {out.splits}"
            )
        out.epochs = check_positive_int(
            self.epochs if self.epochs is not None else (40 if quick else 400), "epochs"
        )
        out.mc_samples = check_positive_int(
            self.mc_samples if self.mc_samples is not None else (100 if quick else 1000),
            "mc_samples",
        )
        out.hidden = tuple(check_positive_int(h, "hidden") for h in self.hidden)
        if not out.hidden:
            raise ValueError("hidden must hold at least one layer width, got none")
        out.batch_size = check_positive_int(self.batch_size, "batch_size")
        out.lr = check_positive_finite(self.lr, "lr")
        out.length_scale = check_positive_finite(self.length_scale, "length_scale")
        out.rates = check_rates(self.rates, "rates")
        out.taus = None if self.taus is None else check_taus(self.taus, "taus")
        for name in ("test_fraction", "val_fraction"):
            check_open_unit(getattr(self, name), name)
        check_nonneg_int(self.seed, "seed")
        return out


@dataclass
class RegressionData:
    """All rows of a regression data set: (N, D) features, (N,) target, and where they came from."""

    name: str
    x: np.ndarray
    y: np.ndarray
    features: list[str] = field(default_factory=list)
    source: str = ""


def load_regression_data(data: str, label: str = "label") -> RegressionData:
    """``"diabetes"`` (scikit-learn's 442 patients × 10 features) or a CSV / NPZ file's rows.

    The target is checked (numbers, finite, not constant) and the features as in
    :func:`dropkit.data.read_table`; nothing is standardised here (each split does it on its own
    training part).

    Example:
        >>> d = load_regression_data("diabetes")
        >>> d.x.shape, d.y.shape
        ((442, 10), (442,))
    """
    from dropkit import data as _data

    if data in BUILTIN and not os.path.exists(data):
        x, y = _diabetes_files()
        return RegressionData(
            "diabetes",
            x,
            y,
            ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"],
            "scikit-learn's diabetes data (Efron et al. 2004), bundled, unscaled",
        )
    path = os.fspath(data)
    features, x, labels = _data.read_table(path, label)
    y = _data.regression_target(labels, path=path, label=label)
    name = os.path.splitext(os.path.basename(path))[0] or "table"
    return RegressionData(name, x, y, features, f"{path}, column {label!r}")


def _diabetes_files() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled diabetes files (the unscaled features), read without importing
    scikit-learn (its import costs seconds; the files are plain gzip'd text)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("--data diabetes needs scikit-learn installed (its bundled copy)")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    x = np.loadtxt(os.path.join(folder, "diabetes_data_raw.csv.gz"), dtype=np.float64)
    y = np.loadtxt(os.path.join(folder, "diabetes_target.csv.gz"), dtype=np.float64)
    return x, y


def check_splits(n_rows: int, config: RegressionConfig, name: str = "data") -> tuple[int, int, int]:
    """(n_test, n_fit, n_val) of every split; raises if the rows are too few for the protocol.

    Example:
        >>> check_splits(442, RegressionConfig().resolved())
        (44, 318, 80)
    """
    n_test = int(round(n_rows * config.test_fraction))
    n_train = n_rows - n_test
    n_val = int(round(n_train * config.val_fraction))
    n_fit = n_train - n_val
    need = (
        f"need at least {MIN_ROWS} rows, so that every split has 2 test rows and a validation "
        "part of 3"
    )
    if n_rows < MIN_ROWS or n_test < 2 or n_val < 3 or n_fit < 3:
        raise ValueError(
            f"{name} has {n_rows} rows, too few for train/test splits with test_fraction="
            f"{config.test_fraction} and val_fraction={config.val_fraction} ({need})"
        )
    if math.comb(n_rows, n_test) < config.splits:
        raise ValueError(
            f"{name} has {n_rows} rows: only {math.comb(n_rows, n_test)} different test sets of "
            f"{n_test} rows exist, fewer than --splits {config.splits}"
        )
    return n_test, n_fit, n_val


# --------------------------------------------------------------------------------------------
# The batched trainer
# --------------------------------------------------------------------------------------------


def _as_float_tensor(value: object, name: str, ndim: int) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    tensor = tensor.to(torch.float32)
    if tensor.dim() != ndim or tensor.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty {ndim}-D tensor, got shape {tuple(tensor.shape)}"
        )
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return tensor


class _Adam:
    """Adam (Kingma & Ba 2015) over one flat buffer that holds every parameter.

    torch.optim.Adam's update, element for element, without its import cost (it pulls in
    torch._dynamo) and with one set of ops per step for all tensors. Each member's slice of a stacked
    tensor gets the update it would get alone: Adam is elementwise.
    """

    def __init__(self, size: int, lr: float, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = torch.zeros(size)
        self.v = torch.zeros(size)
        self.t = 0

    @torch.no_grad()
    def step(self, flat: torch.Tensor, grad: torch.Tensor) -> None:
        beta1, beta2 = self.betas
        self.t += 1
        step_size = self.lr / (1 - beta1**self.t)
        root_correction = math.sqrt(1 - beta2**self.t)
        self.m.mul_(beta1).add_(grad, alpha=1 - beta1)
        self.v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        flat.addcdiv_(self.m, (self.v.sqrt() / root_correction).add_(self.eps), value=-step_size)


def _views(flat: torch.Tensor, shapes: list) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Fresh (weight, bias) views into ``flat``, shaped like ``shapes``' pairs."""
    weights, biases, offset = [], [], 0
    for w, b in shapes:
        for tensor, out in ((w, weights), (b, biases)):
            out.append(flat[offset : offset + tensor.numel()].view(tensor.shape))
            offset += tensor.numel()
    return weights, biases


def train_dropout_ensemble(
    x: object,
    y: object,
    rates: Sequence[float],
    weight_decays: Sequence[float],
    *,
    hidden: Sequence[int] = (50,),
    epochs: int = 400,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[MLP]:
    r"""Trains M dropout regression networks side by side in one batched model.

    Member m is the MLP [D, *hidden, 1] with dropout rate p_m on its input and on every hidden layer
    (the authors' network), trained with Adam on the paper's objective
    (1/B) Σ_b ½ (y_b − ŷ_b)² + λ_m Σ_l ‖W_l‖² (weights only, as the authors' code; pass λ from
    :func:`dropkit.uncertainty.weight_decay_from_tau` with ``convention="paper"``). The members
    share their initialisation (torch.nn.Linear's), the minibatch order, and one uniform draw u per
    unit and step: member m keeps a unit when u ≥ p_m and scales it by 1/(1 − p_m), so each mask
    is Bernoulli(1 − p_m) and members differ only by their p and λ.

    Args:
        x: (N, D) inputs (standardise them first).
        y: (N,) targets (standardise them first; τ is then a precision of the standardised target).
        rates: M dropout rates in [0, 1).
        weight_decays: M weight decays λ ≥ 0 of the paper's objective.
        hidden, epochs, batch_size, lr: the network and the optimiser.
        seed: seeds the initialisation, the minibatch order and the masks.

    Returns:
        M :class:`dropkit.MLP` networks (``p=[p_m] * (len(hidden) + 1)``), in eval mode.

    Example:
        >>> import torch
        >>> x = torch.randn(64, 3); y = x[:, 0] - 0.5 * x[:, 1]
        >>> nets = train_dropout_ensemble(x, y, [0.01, 0.1], [1e-6, 1e-6], hidden=[16], epochs=2)
        >>> [net.rates for net in nets]
        [[0.01, 0.01], [0.1, 0.1]]
    """
    x = _as_float_tensor(x, "x", 2)
    y = _as_float_tensor(y, "y", 1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    rates = [check_probability(p, f"rates[{i}]", allow_one=False) for i, p in enumerate(rates)]
    decays = list(weight_decays)
    if not rates or len(decays) != len(rates):
        raise ValueError(
            f"rates and weight_decays must be non-empty and of equal length, got {len(rates)} "
            f"and {len(decays)}"
        )
    decays = [check_real(lam, f"weight_decays[{i}]", nonneg=True) for i, lam in enumerate(decays)]
    hidden = [check_positive_int(h, f"hidden[{i}]") for i, h in enumerate(hidden)]
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_positive_finite(lr, "lr")
    n, d = x.shape
    m = len(rates)
    sizes = [d, *hidden, 1]
    gen = torch.Generator().manual_seed(int(seed))

    initial = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        # torch.nn.Linear's initialisation: U(−1/√fan_in, 1/√fan_in) for weights and biases.
        bound = 1.0 / math.sqrt(fan_in)
        w = (torch.rand(1, fan_in, fan_out, generator=gen) * 2 - 1) * bound
        b = (torch.rand(1, 1, fan_out, generator=gen) * 2 - 1) * bound
        initial.append((w.repeat(m, 1, 1), b.repeat(m, 1, 1)))
    # Every parameter is a view into one flat leaf tensor: one gradient, one Adam update.
    flat = torch.cat([t.flatten() for pair in initial for t in pair]).requires_grad_()
    weights, biases = _views(flat, initial)
    p = torch.tensor(rates, dtype=torch.float32).view(m, 1, 1)
    scale = 1.0 / (1.0 - p)
    lam = torch.tensor(decays, dtype=torch.float32)
    adam = _Adam(flat.numel(), lr)

    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            h = x[index].unsqueeze(0)  # (1, B, D), broadcast over members
            target = y[index]
            for layer, (w, b) in enumerate(zip(weights, biases, strict=True)):
                u = torch.rand(1, h.shape[1], w.shape[1], generator=gen)
                h = h * ((u >= p) * scale)  # (M, B, fan_in)
                h = torch.baddbmm(b, h, w)
                if layer < len(weights) - 1:
                    h = torch.relu(h)
            data_term = 0.5 * (h[..., 0] - target).square().mean(1)  # (M,)
            penalty = sum(w.square().sum((1, 2)) for w in weights)
            loss = (data_term + lam * penalty).sum()
            (grad,) = torch.autograd.grad(loss, flat)
            adam.step(flat, grad)
            weights, biases = _views(flat, initial)

    nets = []
    with torch.no_grad():
        for member, rate in enumerate(rates):
            net = MLP(sizes, p=[rate] * (len(sizes) - 1))
            for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
                linear = getattr(net, f"fc{i + 1}")
                linear.weight.copy_(w[member].T)
                linear.bias.copy_(b[member, 0])
            nets.append(net.eval())
    return nets


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------


def _standardizer(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std along rows (std 0 → 1), refusing values whose spread overflows float64."""
    mean = values.mean(0)
    with np.errstate(over="ignore", invalid="ignore"):
        std = values.std(0)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise ValueError(
            "a feature or the target spreads beyond float64 (|values| near 1e300): its standard "
            "deviation overflows; rescale it first"
        )
    return mean, np.where(std > 0, std, 1.0)


def _tensor(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def _scores(
    samples: np.ndarray, y: np.ndarray, tau: float, levels: Sequence[float]
) -> dict[str, Any]:
    """RMSE of the mean, log-likelihood and interval coverage of (T, N) samples in y's units."""
    return {
        "rmse": U.rmse(samples.mean(0), y),
        "log_likelihood": U.gaussian_log_likelihood(samples, y, tau),
        "coverage": {f"{c:g}": v for c, v in U.interval_coverage(samples, y, tau, levels).items()},
    }


#: Levels of the calibration curve (coverage against nominal level).
_CURVE_LEVELS = tuple(round(c, 2) for c in np.linspace(0.05, 0.95, 19)) + (0.99,)


def run_split(
    data: RegressionData, split: int, cfg: RegressionConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One split of the protocol: its row of numbers and the arrays its figures need."""
    from dropkit import tune
    from dropkit.mc import predict

    n = len(data.y)
    n_test = int(round(n * cfg.test_fraction))
    rng = np.random.default_rng([cfg.seed, split])
    order = rng.permutation(n)
    test, train = order[:n_test], order[n_test:]
    n_val = int(round(len(train) * cfg.val_fraction))
    val, fit = train[:n_val], train[n_val:]
    net_seed = cfg.seed * 1_000_003 + split

    # 1. (p, τ) on the validation part, standardised with the fit part's statistics.
    x_mean, x_std = _standardizer(data.x[fit])
    y_mean, y_std = _standardizer(data.y[fit])
    search = tune.search_p_tau(
        (_tensor((data.x[fit] - x_mean) / x_std), _tensor((data.y[fit] - y_mean) / y_std)),
        (_tensor((data.x[val] - x_mean) / x_std), _tensor((data.y[val] - y_mean) / y_std)),
        rates=cfg.rates,
        taus=cfg.taus,
        hidden=cfg.hidden,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        T=cfg.mc_samples,
        length_scale=cfg.length_scale,
        seed=net_seed,
    )
    chosen_mc, chosen_ws = search.best, search.best_weight_scaling

    # 2. Retrain both choices on the whole training split, standardised on it.
    x_mean, x_std = _standardizer(data.x[train])
    y_mean, y_std = _standardizer(data.y[train])
    y_std = float(y_std)
    y_mean = float(y_mean)
    decays = [
        U.weight_decay_from_tau(
            c["tau"], c["p"], len(train), length_scale=cfg.length_scale, convention="paper"
        )
        for c in (chosen_mc, chosen_ws)
    ]
    net_mc, net_ws = train_dropout_ensemble(
        _tensor((data.x[train] - x_mean) / x_std),
        _tensor((data.y[train] - y_mean) / y_std),
        [chosen_mc["p"], chosen_ws["p"]],
        decays,
        hidden=cfg.hidden,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        seed=net_seed + 500_009,
    )

    # 3. Test, in the target's units: ŷ = ŷ_std · σ_y + μ_y and τ = τ_std / σ_y².
    x_test = _tensor((data.x[test] - x_mean) / x_std)
    y_test = data.y[test]
    samples = predict(
        net_mc, x_test, T=cfg.mc_samples, seed=net_seed, max_memory_bytes=MC_PASS_BYTES
    )[..., 0]
    samples = samples.double().numpy() * y_std + y_mean
    with torch.no_grad():
        ws_same = net_mc(x_test)[:, 0].double().numpy()[None] * y_std + y_mean
        ws = net_ws(x_test)[:, 0].double().numpy()[None] * y_std + y_mean
    tau_mc = chosen_mc["tau"] / y_std**2
    tau_ws = chosen_ws["tau"] / y_std**2
    levels = COVERAGE_LEVELS
    row = {
        "split": split,
        "n_train": int(len(train)),
        "n_test": int(n_test),
        "tau0": search.tau0,
        "tau_grid": list(search.taus),
        "mc_dropout": {
            "p": chosen_mc["p"],
            "tau": chosen_mc["tau"],
            **_scores(samples, y_test, tau_mc, levels),
        },
        "weight_scaling": {
            "p": chosen_ws["p"],
            "tau": chosen_ws["tau"],
            **_scores(ws, y_test, tau_ws, levels),
        },
        "weight_scaling_same_network": {
            "p": chosen_mc["p"],
            "tau": chosen_mc["tau"],
            **_scores(ws_same, y_test, tau_mc, levels),
        },
        "validation": search.records,
    }
    arrays = {
        "y": y_test,
        "mc_pit": U.predictive_cdf(samples, y_test, tau_mc),
        "ws_pit": U.predictive_cdf(ws, y_test, tau_ws),
    }
    if split == 0:
        arrays["mc_mean"] = samples.mean(0)
        arrays["mc_interval"] = U.predictive_interval(samples, tau_mc, 0.95)
        arrays["ws_mean"] = ws[0]
        arrays["ws_interval"] = U.predictive_interval(ws, tau_ws, 0.95)
    return row, arrays


#: The models of the report, in order, with their labels.
MODELS = {
    "mc_dropout": "MC dropout",
    "weight_scaling": "weight scaling (own p, τ)",
    "weight_scaling_same_network": "weight scaling (MC's network)",
}


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, se


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    models: dict[str, Any] = {}
    for key in MODELS:
        rmse = [r[key]["rmse"] for r in rows]
        ll = [r[key]["log_likelihood"] for r in rows]
        out: dict[str, Any] = {}
        out["test_rmse"], out["test_rmse_se"] = _mean_se(rmse)
        out["test_log_likelihood"], out["test_log_likelihood_se"] = _mean_se(ll)
        out["coverage"], out["coverage_se"] = {}, {}
        for level in rows[0][key]["coverage"]:
            mean, se = _mean_se([r[key]["coverage"][level] for r in rows])
            out["coverage"][level], out["coverage_se"][level] = mean, se
        out["test_rmse_per_split"] = rmse
        out["test_log_likelihood_per_split"] = ll
        models[key] = out
    return models


def run_regression_study(
    config: RegressionConfig,
    *,
    dataset: RegressionData | None = None,
    task_rule: str = "",
    log: TextIO | None = None,
) -> Any:
    r"""Runs the protocol on every split and returns a :class:`dropkit.study.StudyResult`.

    ``numbers`` (JSON-ready) holds ``task`` = ``"regression"``, ``task_rule`` (why the task was
    chosen), ``data``, ``config``, ``models`` (per model: ``test_rmse``, ``test_log_likelihood``,
    their standard errors ``*_se``, the interval ``coverage`` per level, per-split lists),
    ``splits`` (one row per split: chosen p and τ, the τ grid, every score and the validation
    grid), ``checks``, ``timing`` and ``environment``. ``figures`` are PNGs for the report.

    Example:
        >>> cfg = RegressionConfig(quick=True, splits=2, epochs=2, mc_samples=5, progress=False,
        ...                        rates=(0.05,), taus=(1.0,))
        >>> numbers = run_regression_study(cfg).numbers
        >>> sorted(numbers["models"]["mc_dropout"])[:4]
        ['coverage', 'coverage_se', 'test_log_likelihood', 'test_log_likelihood_per_split']
    """
    cfg = config.resolved()
    started = time.perf_counter()
    data = dataset if dataset is not None else load_regression_data(cfg.data, cfg.label)
    check_splits(len(data.y), cfg, repr(data.name))
    rows, arrays = [], []
    from tqdm.auto import tqdm

    with tqdm(
        total=cfg.splits,
        desc="regression splits",
        unit="split",
        disable=not cfg.progress,
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        for split in range(cfg.splits):
            row, arr = run_split(data, split, cfg)
            rows.append(row)
            arrays.append(arr)
            bar.update(1)
            if log is not None:
                m = row["mc_dropout"]
                print(
                    f"split {split}: p = {m['p']:g}, τ = {m['tau']:.3g}: RMSE {m['rmse']:.3f}, "
                    f"LL {m['log_likelihood']:.3f}",
                    file=log,
                )
    return assemble_result(data, cfg, rows, arrays, task_rule=task_rule, started=started)


def assemble_result(
    data: RegressionData,
    cfg: RegressionConfig,
    rows: list[dict[str, Any]],
    arrays: list[dict[str, Any]],
    *,
    task_rule: str = "",
    started: float | None = None,
) -> Any:
    """The :class:`dropkit.study.StudyResult` of split rows computed by :func:`run_split` (in order).

    Each split is a deterministic function of (seed, split), so splits computed in several
    processes assemble into the same numbers as one :func:`run_regression_study` call.
    """
    from dropkit.study import StudyResult

    if started is None:
        started = time.perf_counter()
    n_test, n_fit, n_val = check_splits(len(data.y), cfg, repr(data.name))
    models = _aggregate(rows)
    mc, ws = models["mc_dropout"], models["weight_scaling"]
    diff = [
        a - b
        for a, b in zip(
            mc["test_log_likelihood_per_split"], ws["test_log_likelihood_per_split"], strict=True
        )
    ]
    diff_mean, diff_se = _mean_se(diff)
    numbers: dict[str, Any] = {
        "task": "regression",
        "task_rule": task_rule,
        "data": {
            "name": data.name,
            "source": data.source,
            "n_rows": int(len(data.y)),
            "n_features": int(data.x.shape[1]),
            "n_train": int(len(data.y) - n_test),
            "n_fit": n_fit,
            "n_val": n_val,
            "n_test": n_test,
            "target_mean": float(data.y.mean()),
            "target_std": float(data.y.std()),
        },
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "models": models,
        "checks": {
            "mc_ll_minus_ws_ll": diff_mean,
            "mc_ll_minus_ws_ll_se": diff_se,
            "mc_ll_at_least_ws_ll": mc["test_log_likelihood"] >= ws["test_log_likelihood"],
            "mc_ll_better_per_split": sum(d >= 0 for d in diff),
        },
        "splits": rows,
    }
    t_fig = time.perf_counter()
    figures = _figures(numbers, arrays, cfg)
    timing = {"figures_s": time.perf_counter() - t_fig, "total_s": time.perf_counter() - started}
    from dropkit import __version__

    numbers["environment"] = {
        "dropkit": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
    }
    numbers = _clean(numbers)
    numbers["timing"] = {k: round(v, 2) for k, v in timing.items()}
    return StudyResult(numbers=numbers, figures=figures)


def _clean(value: Any) -> Any:
    """JSON-ready copy: NaN/inf → None, tuples → lists, numpy scalars → Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _png(draw: Any, size: tuple[float, float] = (6.4, 4.0)) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    draw(fig)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, metadata={"Software": None})
    return buffer.getvalue()


def _figures(
    numbers: dict[str, Any], arrays: list[dict[str, Any]], cfg: RegressionConfig
) -> dict[str, tuple[str, str, bytes]]:
    models = numbers["models"]
    figures: dict[str, tuple[str, str, bytes]] = {}
    k = len(arrays)

    def errorbars(fig: Any) -> None:
        rmse_ax, ll_ax = fig.subplots(1, 2)
        labels = list(MODELS.values())
        for ax, key, title in (
            (rmse_ax, "test_rmse", "test RMSE (lower is better)"),
            (ll_ax, "test_log_likelihood", "test log-likelihood (higher is better)"),
        ):
            means = [models[m][key] for m in MODELS]
            ses = [models[m][f"{key}_se"] for m in MODELS]
            ax.errorbar(range(len(means)), means, yerr=ses, fmt="o", capsize=5, color="C0")
            for i, m in enumerate(MODELS):
                ax.plot([i] * k, models[m][f"{key}_per_split"], ".", color="0.7", zorder=0)
            ax.set_xticks(range(len(labels)), labels, rotation=12, fontsize="small")
            ax.set_title(title)
            ax.set_xlim(-0.5, len(labels) - 0.5)

    figures["errorbars"] = (
        "Test RMSE and log-likelihood",
        f"Mean ± standard error over {k} random splits (grey: each split). MC dropout: T = "
        f"{cfg.mc_samples} passes; weight scaling: one deterministic pass with noise τ⁻¹, with its "
        "own (p, τ) chosen on validation, or the MC network's.",
        _png(errorbars, (11.0, 4.2)),
    )

    def calibration(fig: Any) -> None:
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfect calibration")
        for key, label, color in (
            ("mc_pit", "MC dropout", "C0"),
            ("ws_pit", "weight scaling", "C3"),
        ):
            per_split = np.array(
                [[(np.abs(a[key] - 0.5) <= c / 2).mean() for c in _CURVE_LEVELS] for a in arrays]
            )
            mean = per_split.mean(0)
            se = per_split.std(0, ddof=1) / math.sqrt(k) if k > 1 else np.zeros_like(mean)
            ax.errorbar(
                _CURVE_LEVELS, mean, yerr=se, fmt="o-", ms=3, capsize=2, color=color, label=label
            )
        ax.set_xlabel("nominal level of the central predictive interval")
        ax.set_ylabel("observed coverage on the test set")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize="small", loc="upper left")
        ax.set_title("calibration: coverage against level")

    figures["calibration"] = (
        "Calibration of the predictive intervals",
        f"Share of test targets inside the central predictive interval of each level, mean ± "
        f"standard error over {k} splits; below the diagonal the intervals are too narrow.",
        _png(calibration, (5.6, 5.0)),
    )

    first = arrays[0]

    def predicted(fig: Any) -> None:
        axes = fig.subplots(1, 2, sharey=True)
        y = first["y"]
        low_all = min(y.min(), first["mc_interval"][0].min(), first["ws_interval"][0].min())
        high_all = max(y.max(), first["mc_interval"][1].max(), first["ws_interval"][1].max())
        for ax, key, label, color in (
            (axes[0], "mc", "MC dropout", "C0"),
            (axes[1], "ws", "weight scaling", "C3"),
        ):
            mean = first[f"{key}_mean"]
            low, high = first[f"{key}_interval"]
            inside = (y >= low) & (y <= high)
            ax.errorbar(
                y,
                mean,
                yerr=[mean - low, high - mean],
                fmt="o",
                ms=3,
                color=color,
                ecolor=color,
                elinewidth=0.8,
                alpha=0.7,
                label=f"95% interval ({inside.mean():.0%} hold y)",
            )
            ax.plot([low_all, high_all], [low_all, high_all], ls="--", color="0.5", lw=1)
            ax.set_xlabel("actual target")
            ax.set_title(label)
            ax.legend(fontsize="small", loc="upper left")
        axes[0].set_ylabel("predicted (mean and 95% interval)")

    figures["predicted"] = (
        "Predicted against actual, with intervals",
        "Split 0's test rows: the predictive mean and its central 95% interval against the observed "
        "target; the dashed line is a perfect prediction.",
        _png(predicted, (11.0, 4.6)),
    )

    def grid(fig: Any) -> None:
        ax = fig.add_subplot()
        rates = sorted({r["p"] for r in numbers["splits"][0]["validation"]})
        factors = sorted(
            {
                r["tau_factor"]
                for r in numbers["splits"][0]["validation"]
                if r["tau_factor"] is not None
            }
        )
        if not factors:
            factors = sorted({r["tau"] for r in numbers["splits"][0]["validation"]})
            key, xlabel = "tau", "τ"
        else:
            key, xlabel = "tau_factor", "τ / τ₀"
        table = np.full((len(rates), len(factors)), np.nan)
        for i, p in enumerate(rates):
            for j, f in enumerate(factors):
                values = [
                    r["val_log_likelihood"]
                    for row in numbers["splits"]
                    for r in row["validation"]
                    if r["p"] == p and r[key] == f
                ]
                table[i, j] = np.mean(values)
        image = ax.imshow(table, cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, label="validation MC log-likelihood (standardised)")
        ax.set_xticks(range(len(factors)), [f"{f:g}" for f in factors])
        ax.set_yticks(range(len(rates)), [f"{p:g}" for p in rates])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("dropout rate p")
        ax.set_title("validation log-likelihood over the grid")

    figures["grid"] = (
        "The (p, τ) grid on validation",
        f"Validation MC log-likelihood of each grid point (standardised target), mean over {k} "
        "splits; each split chose its own best point.",
        _png(grid, (6.4, 4.4)),
    )
    return figures


# --------------------------------------------------------------------------------------------
# Terminal summary
# --------------------------------------------------------------------------------------------


def format_regression_summary(numbers: dict[str, Any], report_dir: str | None = None) -> str:
    """The terminal summary of a regression study's numbers.

    Example:
        >>> model = {"test_rmse": 54.1, "test_rmse_se": 1.2, "test_log_likelihood": -5.41,
        ...          "test_log_likelihood_se": 0.02, "coverage": {"0.95": 0.94}}
        >>> numbers = {"data": {"name": "diabetes", "n_rows": 442, "n_features": 10,
        ...                     "n_train": 398, "n_test": 44},
        ...            "config": {"splits": 20, "seed": 0}, "models": dict.fromkeys(MODELS, model),
        ...            "checks": {"mc_ll_minus_ws_ll": 0.0, "mc_ll_minus_ws_ll_se": 0.0,
        ...                       "mc_ll_better_per_split": 10}}
        >>> print(format_regression_summary(numbers).splitlines()[0])
        dropkit study (regression): diabetes, 442 rows, 10 features; 20 splits of 398 train / 44 test, seed 0
    """
    d, cfg, models = numbers["data"], numbers["config"], numbers["models"]
    levels = list(models["mc_dropout"]["coverage"])
    lines = [
        f"dropkit study (regression): {d['name']}, {d['n_rows']} rows, {d['n_features']} features; "
        f"{cfg['splits']} splits of {d['n_train']} train / {d['n_test']} test, seed {cfg['seed']}",
    ]
    if numbers.get("task_rule"):
        lines.append(f"task: regression ({numbers['task_rule']})")
    lines += [
        "",
        f"{'model':<32} {'test RMSE':>16} {'test LL':>17} "
        + " ".join(f"{'cov ' + str(round(100 * float(c))) + '%':>9}" for c in levels),
    ]
    for key, label in MODELS.items():
        m = models[key]
        lines.append(
            f"{label:<32} {m['test_rmse']:9.3f} ± {m['test_rmse_se']:<5.3f}"
            f"{m['test_log_likelihood']:10.3f} ± {m['test_log_likelihood_se']:<5.3f}"
            + " ".join(f"{100 * m['coverage'][c]:8.1f}%" for c in levels)
        )
    checks = numbers["checks"]
    lines += [
        "(mean ± standard error over splits; log-likelihood per test point in the target's units)",
        "",
        f"MC dropout − weight scaling, test LL: {checks['mc_ll_minus_ws_ll']:+.3f} ± "
        f"{checks['mc_ll_minus_ws_ll_se']:.3f} (MC at least as good on "
        f"{checks['mc_ll_better_per_split']} of {cfg['splits']} splits)",
    ]
    if "timing" in numbers:
        lines.append(f"time {numbers['timing']['total_s']:.0f} s")
    if report_dir is not None:
        lines.append(f"report: {os.path.join(report_dir, 'index.html')}")
    return "\n".join(lines)
