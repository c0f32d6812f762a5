"""Plots of curves, searches, ablations and sensitivities (matplotlib's Agg canvas; pyplot's global
state is never touched). Each takes an ``ax`` to draw into and/or a ``path`` to write a PNG."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dropkit.train import History
from dropkit.tune.sweeps import summarize

if TYPE_CHECKING:
    from dropkit.tune.trials import SearchResult

__all__ = ["plot_curves", "plot_search", "plot_ablation", "plot_sensitivity"]


@contextlib.contextmanager
def _axes(
    ax: Any, path: str | os.PathLike | None, figsize: tuple[float, float] = (6.0, 4.0)
) -> Iterator[Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=figsize)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    yield ax
    if path is not None:
        fig = ax.figure
        fig.tight_layout()
        fig.savefig(os.fspath(path), format="png", dpi=110)


def plot_curves(
    records: Sequence[Mapping[str, Any]] | History,
    *,
    flagged_epoch: int | None = None,
    ax: Any = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Any:
    """Learning curves (train and validation loss, and accuracy on a second axis when present).

    Args:
        records: :attr:`OverfitMonitor.records`, ``History.as_records()`` or a ``History``.
        flagged_epoch: drawn as a vertical line (the epoch the gap passed ε).
        ax: matplotlib Axes to draw into (default: a new figure).
        path: write the figure as PNG there.

    Returns:
        The Axes drawn into.
    """
    if isinstance(records, History):
        records = records.as_records()
    rows = list(records)
    if not rows:
        raise ValueError("plot_curves needs at least one epoch of records, got none")
    epochs = [r["epoch"] for r in rows]
    with _axes(ax, path) as ax:
        for key, style in (("train_loss", "-"), ("val_loss", "--")):
            values = [r.get(key) for r in rows]
            if any(v is not None for v in values):
                ax.plot(
                    epochs,
                    [math.nan if v is None else v for v in values],
                    style,
                    color="C0",
                    label=key,
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if any(r.get("train_acc") is not None for r in rows):
            acc_ax = ax.twinx()
            for key, style in (("train_acc", "-"), ("val_acc", "--")):
                values = [r.get(key) for r in rows]
                acc_ax.plot(
                    epochs,
                    [math.nan if v is None else v for v in values],
                    style,
                    color="C1",
                    label=key,
                )
            acc_ax.set_ylabel("accuracy")
            acc_ax.legend(loc="center right", fontsize="small")
        if flagged_epoch is not None:
            ax.axvline(
                flagged_epoch, color="C3", linestyle=":", label=f"gap > ε at epoch {flagged_epoch}"
            )
        ax.legend(loc="upper right", fontsize="small")
        ax.set_title(title or "learning curves")
    return ax


def plot_search(
    result: SearchResult, *, ax: Any = None, path: str | os.PathLike | None = None
) -> Any:
    """Grid mode: the objective against p (the chosen p* marked). Per-layer: objective per trial.

    Returns:
        The Axes drawn into.
    """
    done = [r for r in result.records if r["state"] == "COMPLETE"]
    if not done:
        raise ValueError(f"study {result.study_name!r} has no COMPLETE trial to plot")
    with _axes(ax, path) as ax:
        if result.mode == "grid":
            done.sort(key=lambda r: r["p"])
            ax.plot([r["p"] for r in done], [r["value"] for r in done], "o-", label=result.metric)
            if result.best_p is not None:
                ax.axvline(
                    result.best_p, color="C3", linestyle=":", label=f"p* = {result.best_p:g}"
                )
            ax.set_xlabel("dropout rate p")
        else:
            ax.plot([r["trial"] for r in done], [r["value"] for r in done], "o", label="complete")
            pruned = [r for r in result.records if r["state"] == "PRUNED" and r["intermediate"]]
            if pruned:
                ax.plot(
                    [r["trial"] for r in pruned],
                    [r["intermediate"][-1] for r in pruned],
                    "x",
                    color="C7",
                    label="pruned (last reported)",
                )
            ax.set_xlabel("trial")
        ax.set_ylabel(result.metric)
        ax.legend(fontsize="small")
        ax.set_title(f"rate search ({result.mode})")
    return ax


def plot_ablation(
    records: Sequence[Mapping[str, Any]],
    metric: str = "val_loss",
    *,
    ax: Any = None,
    path: str | os.PathLike | None = None,
) -> Any:
    """Bars of ``metric`` per ablation configuration, error bars one standard deviation over seeds.

    Returns:
        The Axes drawn into.
    """
    summary = summarize(records, by="config", metric=metric)
    if not summary:
        raise ValueError("plot_ablation needs records, got none")
    with _axes(ax, path, figsize=(max(5.0, 1.1 * len(summary)), 4.0)) as ax:
        names = [s["config"] for s in summary]
        ax.bar(
            range(len(names)),
            [s["mean"] for s in summary],
            yerr=[s["std"] for s in summary],
            capsize=4,
            color="C0",
        )
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize="small")
        ax.set_ylabel(f"{metric} (mean ± std over seeds)")
        ax.set_title("dropout ablation")
    return ax


def plot_sensitivity(
    records: Sequence[Mapping[str, Any]],
    metric: str = "val_loss",
    *,
    ax: Any = None,
    path: str | os.PathLike | None = None,
    label: str | None = None,
) -> Any:
    """``metric`` against p, mean ± one standard deviation over seeds.

    Returns:
        The Axes drawn into.
    """
    summary = sorted(summarize(records, by="p", metric=metric), key=lambda s: s["p"])
    if not summary:
        raise ValueError("plot_sensitivity needs records, got none")
    with _axes(ax, path) as ax:
        ax.errorbar(
            [s["p"] for s in summary],
            [s["mean"] for s in summary],
            yerr=[s["std"] for s in summary],
            fmt="o-",
            capsize=4,
            label=label or metric,
        )
        ax.set_xlabel("dropout rate p")
        ax.set_ylabel(f"{metric} (mean ± std over seeds)")
        ax.legend(fontsize="small")
        ax.set_title("rate sensitivity")
    return ax
