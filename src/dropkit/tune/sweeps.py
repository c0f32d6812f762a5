r"""Ablation (with and without dropout, one layer at a time) and sensitivity (the metric against p
over seeds), and :func:`summarize`, which gives each group's mean, standard deviation and error."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from dropkit._validate import check_choice, check_seeds
from dropkit.tune.rates import check_layers
from dropkit.tune.search import DEFAULT_GRID, check_grid
from dropkit.tune.trainer import TrainSpec

__all__ = ["ablation", "sensitivity", "summarize"]


def _train_each(
    spec: TrainSpec,
    configs: Sequence[tuple[dict[str, Any], dict[str, float]]],
    seeds: Sequence[int],
    progress: Any,
) -> list[dict[str, Any]]:
    """Trains every (configuration, seed); a row holds the configuration's fields (its name or
    its p), the seed, the rates and the metrics."""
    rows = []
    for fields, rates in configs:
        for seed in seeds:
            metrics = spec.run(rates, seed)
            rows.append({**fields, "seed": seed, "rates": dict(rates), **metrics})
            if progress is not None and hasattr(progress, "update"):
                progress.update(1)
    return rows


def ablation(
    build_model: Callable[[], nn.Module],
    train_fn: Callable[..., Any] | None = None,
    eval_fn: Callable[[nn.Module], Any] | None = None,
    *,
    train: Any = None,
    val: Any = None,
    seeds: Iterable[int] = (0,),
    one_at_a_time: str = "without",
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 100,
    weight_decay: float = 0.0,
    task: str = "classification",
    metric: str = "val_loss",
    progress: Any = None,
) -> list[dict[str, Any]]:
    r"""Trains the model with and without dropout, and with one dropout layer changed at a time.

    Configurations, each trained once per seed (same initial weights and batches across
    configurations for a seed):

    - ``"all"``: the rates ``build_model()`` sets;
    - ``"none"``: every dropout rate 0;
    - ``"without:<path>"`` (leave-one-out): that module's rate 0, the others as built;
    - ``"only:<path>"``: that module as built, the others 0 (with ``one_at_a_time="only"`` or
      ``"both"``).

    Only modules with a rate above 0 are varied.

    Returns:
        One dict per (configuration, seed): ``config``, ``seed``, ``rates`` and the metrics
        (``val_loss``, ``val_acc``, ``train_loss``, ``train_acc``, ``gap``, ``loss_gap`` with the
        built-in trainer; what ``eval_fn`` returns otherwise). Aggregate with :func:`summarize`,
        draw with :func:`plot_ablation`.

    Example:
        >>> import torch, dropkit
        >>> from dropkit.tune import ablation
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(40, 4, generator=g), torch.randint(0, 2, (40,), generator=g)
        >>> rows = ablation(lambda: dropkit.MLP([4, 8, 8, 2], p=0.3), train=(x, y), val=(x, y), epochs=1)
        >>> [r["config"] for r in rows]
        ['all', 'none', 'without:dropout1', 'without:dropout2']
    """
    check_choice(one_at_a_time, "one_at_a_time", ("without", "only", "both"))
    seeds = check_seeds(seeds)
    spec = TrainSpec(
        build_model,
        train_fn,
        eval_fn,
        train=train,
        val=val,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        task=task,
        metric=metric,
    )
    built = spec.built_rates(seeds[0])
    active = [path for path, p in built.items() if p > 0]
    if not active:
        raise ValueError(
            f"every dropout rate of the model is 0 ({built}); there is nothing to ablate"
        )
    configs: list[tuple[str, dict[str, float]]] = [
        ("all", dict(built)),
        ("none", dict.fromkeys(built, 0.0)),
    ]
    if one_at_a_time in ("without", "both"):
        configs += [(f"without:{path}", {**built, path: 0.0}) for path in active]
    if one_at_a_time in ("only", "both"):
        configs += [
            (f"only:{path}", {**dict.fromkeys(built, 0.0), path: built[path]}) for path in active
        ]
    return _train_each(
        spec, [({"config": name}, rates) for name, rates in configs], seeds, progress
    )


def sensitivity(
    build_model: Callable[[], nn.Module],
    train_fn: Callable[..., Any] | None = None,
    eval_fn: Callable[[nn.Module], Any] | None = None,
    *,
    train: Any = None,
    val: Any = None,
    rates: Iterable[float] = (0.0, *DEFAULT_GRID),
    seeds: Iterable[int] = (0, 1, 2),
    layers: Sequence[str] | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 100,
    weight_decay: float = 0.0,
    task: str = "classification",
    metric: str = "val_loss",
    progress: Any = None,
) -> list[dict[str, Any]]:
    r"""The validation metric as a function of p, once per seed (for error bars).

    For each p in ``rates`` and each seed, the modules in ``layers`` (default: all dropout
    modules) get rate p, the others keep the rates ``build_model()`` gives; the model is trained
    and evaluated. :func:`summarize` with ``by="p"`` gives mean, standard deviation and standard
    error per p; :func:`plot_sensitivity` draws mean ± one standard deviation.

    Returns:
        One dict per (p, seed): ``p``, ``seed``, ``rates`` and the metrics.

    Example:
        >>> import torch, dropkit
        >>> from dropkit.tune import sensitivity, summarize
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(40, 4, generator=g), torch.randint(0, 2, (40,), generator=g)
        >>> rows = sensitivity(lambda: dropkit.MLP([4, 8, 2]), train=(x, y), val=(x, y),
        ...                    rates=[0.0, 0.5], seeds=[0, 1], layers=["dropout1"], epochs=1)
        >>> [(s["p"], s["n"]) for s in summarize(rows, by="p")]
        [(0.0, 2), (0.5, 2)]
    """
    values = check_grid(rates)
    seeds = check_seeds(seeds)
    spec = TrainSpec(
        build_model,
        train_fn,
        eval_fn,
        train=train,
        val=val,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        task=task,
        metric=metric,
    )
    built = spec.built_rates(seeds[0])
    layers = check_layers(layers, list(built))
    configs = [({"p": p}, {**built, **dict.fromkeys(layers, p)}) for p in values]
    return _train_each(spec, configs, seeds, progress)


def summarize(
    records: Iterable[Mapping[str, Any]], by: str = "config", metric: str = "val_loss"
) -> list[dict[str, Any]]:
    r"""Groups records by ``by`` and gives mean, standard deviation and standard error of ``metric``.

    std is the sample standard deviation (n − 1; 0 for a single seed), sem = std / √n. Groups
    keep the order of first appearance.

    Example:
        >>> from dropkit.tune import summarize
        >>> rows = [{"p": 0.1, "val_loss": 1.0}, {"p": 0.1, "val_loss": 3.0}, {"p": 0.2, "val_loss": 2.0}]
        >>> summarize(rows, by="p")[0]
        {'p': 0.1, 'metric': 'val_loss', 'mean': 2.0, 'std': 1.4142135623730951, 'sem': 1.0, 'n': 2, 'min': 1.0, 'max': 3.0}
    """
    groups: dict[Any, list[float]] = {}
    for row in records:
        if by not in row:
            raise KeyError(f"record {dict(row)} has no field {by!r}")
        if metric not in row:
            raise KeyError(f"record has no metric {metric!r}; it holds {sorted(row)}")
        value = row[metric]
        groups.setdefault(row[by], [])
        if value is not None:
            groups[row[by]].append(float(value))
    out = []
    for key, values in groups.items():
        n = len(values)
        mean = statistics.fmean(values) if n else math.nan
        std = statistics.stdev(values) if n > 1 else 0.0
        out.append(
            {
                by: key,
                "metric": metric,
                "mean": mean,
                "std": std,
                "sem": std / math.sqrt(n) if n else math.nan,
                "n": n,
                "min": min(values) if n else math.nan,
                "max": max(values) if n else math.nan,
            }
        )
    return out
