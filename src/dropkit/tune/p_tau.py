r"""Regression with MC dropout: dropout rate p and model precision τ by validation MC log-likelihood
(Gal & Ghahramani 2016's grid search); :mod:`dropkit.regression` runs it per split."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dropkit._validate import check_positive_int, check_rates, check_seed, check_taus

__all__ = ["PTauSearch", "search_p_tau"]


@dataclass
class PTauSearch:
    """What :func:`search_p_tau` found.

    Attributes:
        records: one dict per grid point: ``p``, ``tau``, ``tau_factor`` (τ / τ₀, None for a given
            grid), ``weight_decay`` (the paper's λ), ``val_log_likelihood`` and ``val_rmse`` (MC
            dropout), ``val_log_likelihood_ws`` and ``val_rmse_ws`` (weight scaling).
        best: the grid point with the highest MC validation log-likelihood (``p``, ``tau``, …).
        best_weight_scaling: the one with the highest weight-scaling validation log-likelihood.
        taus: the τ grid; ``tau0``: its centre 1/s² when derived (None when given).
        rates: the rate grid.
    """

    records: list[dict[str, Any]]
    best: dict[str, Any]
    best_weight_scaling: dict[str, Any]
    taus: tuple[float, ...]
    tau0: float | None
    rates: tuple[float, ...]


def search_p_tau(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    *,
    rates: Sequence[float] = (0.005, 0.01, 0.05, 0.1),
    taus: Sequence[float] | None = None,
    hidden: Sequence[int] = (50,),
    epochs: int = 400,
    batch_size: int = 128,
    lr: float = 1e-3,
    T: int = 1000,
    length_scale: float = 1e-2,
    seed: int = 0,
) -> PTauSearch:
    r"""Chooses dropout rate p and model precision τ by MC predictive log-likelihood on validation.

    Gal & Ghahramani 2016's grid search: for each (p, τ), an MLP [D, *hidden, 1] with dropout p on
    its input and hidden layers is trained on ``train`` with the paper's objective and weight decay
    λ = l² (1 − p) / (2 N τ) (:func:`dropkit.uncertainty.weight_decay_from_tau`,
    ``convention="paper"``), then scored on ``val`` by
    logsumexp_t(−τ/2 (y − ŷ_t)²) − log T − ½ log 2π + ½ log τ over T MC passes
    (:func:`dropkit.mc.predict`, :func:`dropkit.uncertainty.gaussian_log_likelihood`). Every grid
    point trains side by side in one batched model (:func:`dropkit.regression.train_dropout_ensemble`).

    With ``taus=None`` the τ grid comes from the data: a first fit at the grid's middle rate gives
    the validation residual variance s² of its weight-scaled prediction, and the grid is
    τ₀ × {¼, ½, 1, 2, 4} with τ₀ = 1/s².

    Args:
        train, val: (x, y) tensors, x (N, D), y (N,); standardise both on the training part first
            (τ is a precision of ``y`` as given).
        rates: dropout rates in (0, 1).
        taus: precisions τ > 0, or None for the derived grid.
        hidden, epochs, batch_size, lr: the networks and their training.
        T: MC passes per validation score.
        length_scale: prior length-scale l (the authors' code: 10⁻²).
        seed: seeds the networks and the MC samples.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(200, 2, generator=g); y = x[:, 0] + 0.3 * torch.randn(200, generator=g)
        >>> found = search_p_tau((x[:150], y[:150]), (x[150:], y[150:]), rates=[0.01, 0.1],
        ...                      hidden=[16], epochs=20, T=20)
        >>> len(found.records), found.best["p"] in (0.01, 0.1)
        (10, True)
    """
    import numpy as np

    from dropkit import uncertainty as U
    from dropkit.mc import predict
    from dropkit.regression import MC_PASS_BYTES, TAU_FACTORS, train_dropout_ensemble

    (x_train, y_train), (x_val, y_val) = train, val
    rates = list(check_rates(rates, "rates"))
    taus = None if taus is None else check_taus(taus, "taus")
    seed = check_seed(seed)
    T = check_positive_int(T, "T")
    n = int(x_train.shape[0])
    y_val_np = torch.as_tensor(y_val).double().numpy()
    common = {"hidden": hidden, "epochs": epochs, "batch_size": batch_size, "lr": lr}

    def decay(p: float, tau: float) -> float:
        return U.weight_decay_from_tau(tau, p, n, length_scale=length_scale, convention="paper")

    tau0 = None
    if taus is None:
        middle = sorted(rates)[len(rates) // 2]
        (first,) = train_dropout_ensemble(
            x_train, y_train, [middle], [decay(middle, 1.0)], seed=seed, **common
        )
        with torch.no_grad():
            residual = first(torch.as_tensor(x_val, dtype=torch.float32))[:, 0].double().numpy()
        tau0 = 1.0 / max(float(np.mean((residual - y_val_np) ** 2)), 1e-12)
        taus = [tau0 * f for f in TAU_FACTORS]
    taus = list(check_taus(taus, "taus"))
    grid = [(p, tau) for p in rates for tau in taus]
    nets = train_dropout_ensemble(
        x_train,
        y_train,
        [p for p, _ in grid],
        [decay(p, tau) for p, tau in grid],
        seed=seed + 1,
        **common,
    )
    x_val = torch.as_tensor(x_val, dtype=torch.float32)
    records = []
    for (p, tau), net in zip(grid, nets, strict=True):
        # Passes of up to 64 MiB: T = 1000 samples of a small net in a few passes (4× faster
        # than 1 MiB passes here); the samples do not depend on the chunking.
        samples = predict(net, x_val, T=T, seed=seed, max_memory_bytes=MC_PASS_BYTES)
        samples = samples[..., 0].double().numpy()
        with torch.no_grad():
            ws = net(x_val)[:, 0].double().numpy()
        records.append(
            {
                "p": p,
                "tau": tau,
                "tau_factor": None if tau0 is None else tau / tau0,
                "weight_decay": decay(p, tau),
                "val_log_likelihood": U.gaussian_log_likelihood(samples, y_val_np, tau),
                "val_rmse": U.rmse(samples.mean(0), y_val_np),
                "val_log_likelihood_ws": U.gaussian_log_likelihood(ws[None], y_val_np, tau),
                "val_rmse_ws": U.rmse(ws, y_val_np),
            }
        )
    best = max(records, key=lambda r: r["val_log_likelihood"])
    best_ws = max(records, key=lambda r: r["val_log_likelihood_ws"])
    return PTauSearch(records, dict(best), dict(best_ws), tuple(taus), tau0, tuple(rates))
