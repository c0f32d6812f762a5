"""The terminal summary of a study's numbers."""

from __future__ import annotations

import os
from typing import Any


def _pct(value: float | None) -> str:
    return "   —  " if value is None else f"{100 * value:5.1f}%"


def _rates(rates: dict[str, float]) -> str:
    return "/".join(f"{v:.2f}".rstrip("0").rstrip(".") if v else "0" for v in rates.values())


def format_summary(numbers: dict[str, Any], report_dir: str | None = None) -> str:
    """The terminal summary table of a study's numbers.

    Example:
        >>> numbers = {"data": {"name": "toy", "n_train": 80, "n_test": 20, "n_features": 4,
        ...                     "n_classes": 2, "n_fit": 64, "n_val": 16},
        ...            "config": {"seed": 0, "metric": "val_acc"},
        ...            "final": {k: {"rates": {"input_dropout": 0.0, "dropout1": r}, "train_acc": 1.0,
        ...                          "test_acc": 0.8, "gap": 0.2, "test_loss": 0.5}
        ...                      for k, r in (("baseline", 0.0), ("dropout", 0.2))},
        ...            "chosen": {"from": "one_rate"}, "mc_dropout": {}}
        >>> print(format_summary(numbers).splitlines()[0])
        dropkit study: toy, 80 train (64 fit / 16 validation) / 20 test, 4 features, 2 classes, seed 0
    """
    d, final = numbers["data"], numbers["final"]
    seeds = final["baseline"].get("seeds")
    lines = [
        f"dropkit study: {d['name']}, {d['n_train']} train ({d['n_fit']} fit / {d['n_val']} "
        f"validation) / {d['n_test']} test, {d['n_features']} features, {d['n_classes']} classes, "
        f"seed {numbers['config']['seed']}",
        "",
        f"{'model':<24} {'rates (in/h…)':<16} {'train':>7} {'test':>7} {'± std':>6} {'gap':>6} "
        f"{'test NLL':>9}",
    ]
    rows = [
        ("baseline, no dropout", final["baseline"]),
        (f"dropout ({numbers['chosen']['from'].replace('_', ' ')})", final["dropout"]),
    ]
    for label, row in rows:
        std = row.get("test_acc_std") if seeds and len(seeds) > 1 else None
        lines.append(
            f"{label:<24} {_rates(row['rates']):<16} {_pct(row['train_acc']):>7} "
            f"{_pct(row['test_acc']):>7} {'' if std is None else f'{100 * std:5.1f}':>6} "
            f"{100 * row['gap']:6.1f} {row['test_loss']:9.3f}"
        )
    if seeds and len(seeds) > 1:
        lines.append(f"(train, test, gap and NLL: mean over seeds {', '.join(map(str, seeds))})")
    mc = numbers.get("mc_dropout", {})
    if mc.get("mc"):
        ws, m = mc["weight_scaling"], mc["mc"]
        lines += [
            "",
            f"{'dropout model, seed ' + str(mc['seed']):<24} {'test':>7} {'NLL':>7} {'Brier':>7} {'ECE':>7}",
            f"{'  weight scaling':<24} {_pct(ws['acc']):>7} {ws['nll']:7.3f} {ws['brier']:7.3f} "
            f"{_pct(ws['ece']):>7}",
            f"{'  MC dropout, T=' + str(mc['T']):<24} {_pct(m['acc']):>7} {m['nll']:7.3f} "
            f"{m['brier']:7.3f} {_pct(m['ece']):>7}",
        ]
    lines.append("")
    checks = numbers.get("checks", {})
    if checks:
        lines.append(
            f"gap {100 * final['baseline']['gap']:.1f} → {100 * final['dropout']['gap']:.1f} points; "
            f"test accuracy {100 * final['baseline']['test_acc']:.1f}% → "
            f"{100 * final['dropout']['test_acc']:.1f}%"
        )
    chosen = numbers.get("chosen", {})
    if "p_one_se" in chosen:
        lines.append(
            f"one rate: best p = {chosen['p_best']:g}, one-SE p = {chosen['p_one_se']:g}; chosen "
            f"({chosen['from'].replace('_', ' ')}): "
            + ", ".join(f"{k}={v:.3g}" for k, v in chosen["rates"].items())
        )
    if mc.get("auroc_entropy") is not None:
        lines.append(
            f"MC dropout uncertainty spots errors: AUROC {mc['auroc_entropy']:.3f} (entropy), "
            f"{mc['auroc_bald']:.3f} (BALD)"
        )
    if "timing" in numbers:
        lines.append(f"time {numbers['timing']['total_s']:.0f} s")
    if report_dir is not None:
        lines.append(f"report: {os.path.join(report_dir, 'index.html')}")
    return "\n".join(lines)
