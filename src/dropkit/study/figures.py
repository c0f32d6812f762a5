"""The study's figures, drawn from its numbers into PNG bytes (matplotlib's Agg, no pyplot state)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

from dropkit import tune
from dropkit.study.config import StudyConfig


def _png(draw: Callable[[Any], None], size: tuple[float, float] = (6.4, 4.0)) -> bytes:
    """Draws into a fresh Agg figure and returns its PNG bytes (no pyplot state, no metadata)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    draw(fig)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=96, metadata={"Software": None})
    return buffer.getvalue()


Figure = tuple[str, str, bytes]


def study_figures(
    numbers: dict[str, Any],
    sens_rows: list[dict[str, Any]],
    ablation_rows: list[dict[str, Any]],
    per_layer: tune.SearchResult,
    mc_arrays: dict[str, np.ndarray],
    cfg: StudyConfig,
) -> dict[str, Figure]:
    """The report's figures, in report order: name → (title, caption, PNG bytes)."""
    figures = {
        "curves": _curves(numbers["final"], cfg),
        "gap": _gap(sens_rows, numbers["sensitivity"]["seeds"], cfg),
        "sensitivity": _sensitivity(sens_rows, numbers["chosen"]),
        "per_layer": (
            "Per-layer search",
            f"Objective ({cfg.metric}) of each TPE trial; pruned trials at their last reported value.",
            _png(lambda fig: tune.plot_search(per_layer, ax=fig.add_subplot())),
        ),
    }
    if any(r["config"] != "all" for r in ablation_rows) and ablation_rows:
        figures["ablation"] = _ablation(ablation_rows)
    if mc_arrays:
        figures["reliability"] = _reliability(mc_arrays, cfg)
        figures["uncertainty"] = _uncertainty(mc_arrays)
    return figures


def _curves(final: dict[str, Any], cfg: StudyConfig) -> Figure:
    def draw(fig: Any) -> None:
        acc_ax, loss_ax = fig.subplots(1, 2)
        for name, color in (("baseline", "C3"), ("dropout", "C0")):
            curve = final[name]["curve"]
            epochs = [r["epoch"] for r in curve]
            label = "no dropout" if name == "baseline" else "chosen dropout"
            for key, style in (("train", "-"), ("test", "--")):
                acc_ax.plot(
                    epochs,
                    [r[f"{key}_acc"] for r in curve],
                    style,
                    color=color,
                    label=f"{label}, {key}",
                )
                loss_ax.plot(epochs, [r[f"{key}_loss"] for r in curve], style, color=color)
        acc_ax.set_xlabel("epoch")
        acc_ax.set_ylabel("accuracy")
        acc_ax.legend(fontsize="small")
        acc_ax.set_title("accuracy: the gap is the space between lines")
        loss_ax.set_xlabel("epoch")
        loss_ax.set_ylabel("cross-entropy")
        loss_ax.set_title("loss")

    return (
        "Learning curves with and without dropout",
        f"Final models on the whole training set, seed {cfg.seed}. Solid: training set (eval "
        "mode); dashed: test set, recorded for this picture only (no choice looks at it).",
        _png(draw, (11.0, 4.2)),
    )


def _gap(sens_rows: list[dict[str, Any]], seeds: list[int], cfg: StudyConfig) -> Figure:
    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        tune.plot_sensitivity(sens_rows, metric="gap", ax=ax, label="A_train − A_val")
        ax.axhline(cfg.epsilon, color="C3", linestyle=":", label=f"ε = {cfg.epsilon:g}")
        ax.set_ylabel("gap A_train − A_val")
        ax.set_title("overfitting gap per dropout rate")
        ax.legend(fontsize="small")

    return (
        "Gap per dropout rate",
        f"A_train − A_val on the validation split, mean ± std over seeds {seeds}.",
        _png(draw),
    )


def _sensitivity(sens_rows: list[dict[str, Any]], chosen: dict[str, Any]) -> Figure:
    def draw(fig: Any) -> None:
        acc_ax, loss_ax = fig.subplots(1, 2)
        tune.plot_sensitivity(sens_rows, metric="val_acc", ax=acc_ax)
        tune.plot_sensitivity(sens_rows, metric="val_loss", ax=loss_ax)
        for ax in (acc_ax, loss_ax):
            ax.axvline(
                chosen["p_best"], color="C7", linestyle=":", label=f"best p = {chosen['p_best']:g}"
            )
            ax.axvline(
                chosen["p_one_se"],
                color="C3",
                linestyle="--",
                label=f"one-SE p = {chosen['p_one_se']:g}",
            )
            ax.legend(fontsize="small")

    return (
        "Sensitivity to the dropout rate",
        "Validation accuracy and loss against the hidden layers' rate p (p = 0 is no dropout), "
        "mean ± std over seeds.",
        _png(draw, (11.0, 4.2)),
    )


def _ablation(ablation_rows: list[dict[str, Any]]) -> Figure:
    def draw(fig: Any) -> None:
        ax = tune.plot_ablation(ablation_rows, metric="val_acc", ax=fig.add_subplot())
        # Zoom on the bars' range: accuracies differ by points, not from zero.
        values = [r["val_acc"] for r in ablation_rows if r.get("val_acc") is not None]
        if values:
            low, high = min(values), max(values)
            margin = max(0.02, 0.5 * (high - low))
            ax.set_ylim(max(0.0, low - margin), min(1.0, high + margin))

    return (
        "Ablation",
        "Validation accuracy of the chosen rates ('all'), no dropout ('none') and each layer's "
        "dropout removed in turn.",
        _png(draw, (7.0, 4.2)),
    )


def _reliability(mc_arrays: dict[str, np.ndarray], cfg: StudyConfig) -> Figure:
    def draw(fig: Any) -> None:
        from dropkit import uncertainty

        uncertainty.reliability_diagram(
            {
                "weight scaling": mc_arrays["weight_scaling_probs"],
                f"MC dropout, T={cfg.mc_samples}": mc_arrays["mc_probs"],
            },
            mc_arrays["y"],
            ax=fig.add_subplot(),
        )

    return (
        "Reliability diagram",
        "Accuracy against confidence in 15 equal-width bins on the test set, for the dropout "
        "model with weight scaling (one deterministic pass) and with MC dropout; the diagonal "
        "is perfect calibration.",
        _png(draw, (5.6, 5.0)),
    )


def _uncertainty(mc_arrays: dict[str, np.ndarray]) -> Figure:
    def draw(fig: Any) -> None:
        from dropkit import uncertainty

        ent_ax, mi_ax = fig.subplots(1, 2)
        for ax, key, label in (
            (ent_ax, "entropy", "predictive entropy (nats)"),
            (mi_ax, "bald", "mutual information, BALD (nats)"),
        ):
            uncertainty.uncertainty_histogram(
                mc_arrays[key],
                mc_arrays["correct"],
                ax=ax,
                xlabel=label,
                title=label.split(" (")[0],
            )

    return (
        "Uncertainty of right and wrong predictions",
        "MC dropout on the test set: wrong predictions should sit at higher uncertainty. AUROC: "
        "how well the uncertainty ranks errors above right answers.",
        _png(draw, (11.0, 4.2)),
    )
