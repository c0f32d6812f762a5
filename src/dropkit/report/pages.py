"""The study report as one self-contained HTML page (inline CSS, base64 PNG, no script, no URL)."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["render_html", "render_regression_html"]

_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330;
       max-width: 1180px; margin: 2em auto; padding: 0 1em; background: #fcfcfd; }
h1 { font-size: 1.7em; margin-bottom: .2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #dde;
     padding-bottom: .2em; } .sub { color: #5a6275; margin-top: 0; }
table { border-collapse: collapse; margin: .6em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d8dbe4; padding: .25em .6em; text-align: right; }
th { background: #eef0f6; } td.l, th.l { text-align: left; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; border: 1px solid #e3e5ec; }
figcaption { color: #4a5163; font-size: .92em; max-width: 70em; }
.ok { color: #11763a; font-weight: 600; } .bad { color: #b3261e; font-weight: 600; }
code, pre { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; background: #f1f2f6; }
pre { padding: .6em .8em; overflow-x: auto; } details { margin: .5em 0 1em; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if kind == "pct":
            return f"{100 * value:.1f}%"
        if kind == "pts":
            return f"{100 * value:.1f}"
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1) -> str:
    head = "".join(
        f'<th class="l">{_e(h)}</th>' if i < left else f"<th>{_e(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="l">{_e(c)}</td>' if i < left else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure(name: str, title: str, caption: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="fig-{_e(name)}"><img src="data:image/png;base64,{data}" alt="{_e(title)}">'
        f"<figcaption><b>{_e(title)}.</b> {_e(caption)}</figcaption></figure>"
    )


def _check(ok: Any, text: str) -> str:
    if ok is None:
        return f"<li>{_e(text)}</li>"
    mark = '<span class="ok">✓</span>' if ok else '<span class="bad">✗</span>'
    return f"<li>{mark} {_e(text)}</li>"


def _head(title: str) -> list[str]:
    """The page's head (charset, viewport, an empty favicon, the inline CSS), up to ``<body>``."""
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
    ]


def _task_line(rule: str | None) -> list[str]:
    """How the task was told (``--task`` or the labels it was detected from)."""
    if not rule:
        return []
    return [f'<p class="sub">Task: classification ({_e(rule)}).</p>']


def _data_line(d: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[str]:
    """The data set's sizes and the run's seed, epochs and metric under the title."""
    if d.get("n_train") is None:
        return []
    return [
        f'<p class="sub">{_e(d.get("source", ""))}. {d["n_train"]} training examples '
        f"({d.get('n_fit')} to fit, {d.get('n_val')} for validation), {d.get('n_test')} test, "
        f"{d.get('n_features')} features, {d.get('n_classes')} classes. Seed {_e(cfg.get('seed'))}, "
        f"{_e(cfg.get('epochs'))} epochs per model, rates chosen on {_e(cfg.get('metric'))}.</p>"
    ]


def _summary(final: Mapping[str, Any], mc: Mapping[str, Any]) -> list[str]:
    """The final models' table (baseline, chosen dropout, + MC dropout) and their per-seed runs."""
    if not final:
        return []
    rows = []
    for key, label in (("baseline", "baseline, no dropout"), ("dropout", "chosen dropout")):
        if key not in final:
            continue
        row = final[key]
        extra = mc.get("weight_scaling") if key == "dropout" else None
        rows.append(
            [
                label,
                _fmt(row.get("rates")),
                _fmt(row.get("train_acc"), "pct"),
                _fmt(row.get("test_acc"), "pct")
                + (f" ± {_fmt(row['test_acc_std'], 'pts')}" if row.get("test_acc_std") else ""),
                _fmt(row.get("gap"), "pts"),
                _fmt(row.get("test_loss")),
                _fmt(extra.get("ece"), "pct") if extra else "—",
            ]
        )
    if mc.get("mc"):
        rows.append(
            [
                f"chosen dropout + MC dropout (T = {mc.get('T')})",
                "",
                "",
                _fmt(mc["mc"].get("acc"), "pct"),
                "",
                _fmt(mc["mc"].get("nll")),
                _fmt(mc["mc"].get("ece"), "pct"),
            ]
        )
    parts = [
        "<h2>Summary</h2>",
        _table(
            ["model", "rates", "train acc", "test acc", "gap (points)", "test NLL", "test ECE"],
            rows,
            left=2,
        ),
    ]
    return parts + _per_seed(final)


def _per_seed(final: Mapping[str, Any]) -> list[str]:
    """When the final models ran on several seeds: what the means cover, and each seed's run."""
    seeds = final.get("baseline", {}).get("seeds") or []
    if len(seeds) <= 1:
        return []
    per_seed = []
    for key in ("baseline", "dropout"):
        for run in final.get(key, {}).get("runs", []):
            per_seed.append(
                [
                    key,
                    run["seed"],
                    _fmt(run["train_acc"], "pct"),
                    _fmt(run["test_acc"], "pct"),
                    _fmt(run["gap"], "pts"),
                ]
            )
    return [
        f"<p>Train, test, gap and NLL are means over seeds {_e(', '.join(map(str, seeds)))} "
        f"(± one standard deviation); ECE and the MC dropout row are for seed {seeds[0]}.</p>",
        "<details><summary>Final models per seed</summary>"
        + _table(["model", "seed", "train acc", "test acc", "gap (points)"], per_seed)
        + "</details>",
    ]


def _checks(checks: Mapping[str, Any]) -> list[str]:
    """The study's claims, each ticked or crossed."""
    if not checks:
        return []
    items = [
        _check(checks.get("baseline_overfits"), "the baseline overfits (train − test gap > ε)"),
        _check(checks.get("dropout_shrinks_gap"), "the chosen dropout shrinks the gap"),
        _check(
            checks.get("dropout_keeps_test_acc"),
            "the chosen dropout does not lower test accuracy",
        ),
    ]
    if "baseline_within_3_points_of_paper" in checks:
        items.append(
            _check(
                checks["baseline_within_3_points_of_paper"],
                f"the baseline is within 3 points of the MNIST-1D paper's MLP "
                f"({_fmt(checks.get('paper_mlp_test_acc'), 'pct')} test)",
            )
        )
    return ["<ul>" + "".join(items) + "</ul>"]


def _overfitting(base: Mapping[str, Any] | None) -> list[str]:
    """The baseline's train/validation gap against ε, and the epoch it first passed ε."""
    if not base:
        return []
    flagged = base.get("flagged_epoch")
    return [
        "<h2>Overfitting without dropout</h2>",
        f"<p>On the validation split the baseline reaches {_fmt(base.get('train_acc'), 'pct')} "
        f"training and {_fmt(base.get('val_acc'), 'pct')} validation accuracy: a gap of "
        f"{_fmt(base.get('gap'), 'pts')} points against ε = {_fmt(base.get('epsilon'), 'pts')} points"
        + (f", first passed at epoch {flagged}" if flagged else "")
        + ".</p>",
    ]


def _sensitivity(sens: Mapping[str, Any] | None) -> list[str]:
    """The one-rate sweep: validation accuracy, loss and gap per p, mean ± std over seeds."""
    if not sens:
        return []
    acc = {s["p"]: s for s in sens.get("val_acc", [])}
    loss = {s["p"]: s for s in sens.get("val_loss", [])}
    gaps = {s["p"]: s for s in sens.get("gap", [])}
    rows = [
        [
            _fmt(p),
            f"{_fmt(acc[p]['mean'], 'pct')} ± {_fmt(acc[p]['std'], 'pts')}",
            f"{_fmt(loss[p]['mean'])} ± {_fmt(loss[p]['std'])}",
            f"{_fmt(gaps[p]['mean'], 'pts')} ± {_fmt(gaps[p]['std'], 'pts')}",
            acc[p]["n"],
        ]
        for p in sorted(acc)
    ]
    return [
        "<h2>Rate search</h2>",
        "<p>One rate p on the hidden layers, mean ± std over seeds "
        f"{_e(sens.get('seeds'))} (validation split):</p>"
        + _table(["p", "val acc", "val loss", "gap (points)", "seeds"], rows),
    ]


def _chosen(chosen: Mapping[str, Any] | None, cfg: Mapping[str, Any]) -> list[str]:
    """How the rates were chosen: grid best, the one-standard-error rule, the per-layer search."""
    if not chosen:
        return []
    return [
        f"<p>Optuna grid search (seed {_e(cfg.get('seed'))}): p* = "
        f"{_fmt(chosen.get('grid_best_p'))} ({_e(chosen.get('metric'))} "
        f"{_fmt(chosen.get('grid_best_value'))}). Over all seeds the best mean is at p = "
        f"{_fmt(chosen.get('p_best'))}; the one-standard-error rule (standard error "
        f"{_fmt(chosen.get('noise'))}) takes the largest rate within one standard error of it: "
        f"<b>p = {_fmt(chosen.get('p_one_se'))}</b>. The per-layer TPE search starts there "
        f"({_fmt(chosen.get('one_rate_value'))}) and finds {_fmt(chosen.get('per_layer_best_value'))}; "
        f"it replaces the one rate only when better by more than the standard error. Chosen "
        f"({_e(str(chosen.get('from', '')).replace('_', ' '))}): "
        f"{_e(_fmt(chosen.get('rates')))}.</p>"
    ]


def _per_layer_trials(per_layer: Mapping[str, Any] | None) -> list[str]:
    """Every trial of the per-layer search, folded."""
    if not per_layer:
        return []
    rows = [
        [r["trial"], r["state"], _fmt(r.get("rates")), _fmt(r.get("value"))]
        for r in per_layer.get("records", [])
    ]
    return [
        "<details><summary>Per-layer trials</summary>"
        + _table(["trial", "state", "rates", per_layer.get("metric", "value")], rows, left=3)
        + "</details>"
    ]


def _ablation(abl: Mapping[str, Any] | None) -> list[str]:
    """Validation accuracy and loss of each ablation configuration."""
    if not abl:
        return []
    loss = {s["config"]: s for s in abl.get("val_loss", [])}
    rows = [
        [s["config"], _fmt(s["mean"], "pct"), _fmt(loss.get(s["config"], {}).get("mean"))]
        for s in abl.get("val_acc", [])
    ]
    return ["<h2>Ablation</h2>" + _table(["configuration", "val acc", "val loss"], rows)]


def _mc_dropout(mc: Mapping[str, Any]) -> list[str]:
    """Weight scaling against MC dropout on the test set, and the uncertainty's AUROC."""
    if not mc.get("mc"):
        return []
    rows = [
        [
            label,
            _fmt(mc[key].get("acc"), "pct"),
            _fmt(mc[key].get("nll")),
            _fmt(mc[key].get("brier")),
            _fmt(mc[key].get("ece"), "pct"),
        ]
        for key, label in (
            ("weight_scaling", "weight scaling (dropout off, one pass)"),
            ("mc", f"MC dropout, T = {mc.get('T')}"),
        )
    ]
    return [
        "<h2>MC dropout</h2>",
        _table(["inference", "test acc", "NLL", "Brier", "ECE"], rows),
        f"<p>AUROC of the uncertainty for spotting wrong predictions: "
        f"{_fmt(mc.get('auroc_entropy'))} (predictive entropy), {_fmt(mc.get('auroc_bald'))} "
        f"(mutual information).</p>",
    ]


def _run_details(numbers: Mapping[str, Any]) -> list[str]:
    """The run's timing and environment, folded."""
    timing = numbers.get("timing")
    env = numbers.get("environment")
    if not (timing or env):
        return []
    return [
        "<details><summary>Run details</summary><pre>"
        + _e(json.dumps({"timing": timing, "environment": env}, indent=2))
        + "</pre></details>"
    ]


def _reproduce(command: str | None, numbers: Mapping[str, Any]) -> list[str]:
    """The command that made the report, where its numbers are, and the run's timing/environment."""
    parts = ["<h2>Reproduce</h2>"]
    if command:
        parts.append(f"<pre>{_e(command)}</pre>")
    parts.append(
        "<p>Every number of this page is in <code>report.json</code>; the searches are in the "
        "Optuna SQLite file <code>search.db</code> (<code>dropkit.tune.load_search</code>).</p>"
    )
    return parts + _run_details(numbers)


def render_html(
    numbers: Mapping[str, Any],
    figures: Mapping[str, tuple[str, str, bytes]],
    *,
    command: str | None = None,
) -> str:
    """The report page for a study's numbers and figures.

    Every figure is an ``<img>`` with a ``data:image/png;base64`` source, so the page needs no
    other file and makes no request (the favicon is an empty data URL too). The page is its
    sections in order, each a function of the numbers it shows that returns nothing when the
    study has no such numbers.

    Example:
        >>> page = render_html({"data": {"name": "toy"}}, {"f": ("A plot", "caption", b"png")})
        >>> page.startswith("<!DOCTYPE html>"), 'src="data:image/png;base64,cG5n"' in page
        (True, True)
    """
    if numbers.get("task") == "regression":
        return render_regression_html(numbers, figures, command=command)
    d = numbers.get("data", {})
    cfg = numbers.get("config", {})
    mc = numbers.get("mc_dropout", {})
    parts = [
        *_head(f"dropkit study — {d.get('name', 'report')}"),
        f"<h1>dropkit study: {_e(d.get('name', ''))}</h1>",
        *_task_line(numbers.get("task_rule")),
        *_data_line(d, cfg),
        *_summary(numbers.get("final", {}), mc),
        *_checks(numbers.get("checks", {})),
        *_overfitting(numbers.get("baseline")),
        *(_figure(name, title, caption, png) for name, (title, caption, png) in figures.items()),
        *_sensitivity(numbers.get("sensitivity")),
        *_chosen(numbers.get("chosen"), cfg),
        *_per_layer_trials(numbers.get("per_layer_search")),
        *_ablation(numbers.get("ablation")),
        *_mc_dropout(mc),
        *_reproduce(command, numbers),
        "</body></html>\n",
    ]
    return "\n".join(parts)


def _pm(mean: Any, se: Any, digits: int = 3) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if se is not None else f"{mean:.{digits}f}"


_REGRESSION_MODELS = {
    "mc_dropout": "MC dropout (T = {T})",
    "weight_scaling": "weight scaling, own (p, τ)",
    "weight_scaling_same_network": "weight scaling, MC's network and τ",
}


def _regression_data_line(d: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[str]:
    """The data set's size, the target's moments and the splits under the title."""
    if d.get("n_rows") is None:
        return []
    return [
        f'<p class="sub">{_e(d.get("source", ""))}: {d["n_rows"]} rows, {d.get("n_features")} '
        f"features, target mean {d.get('target_mean', 0):.4g} and std {d.get('target_std', 0):.4g}. "
        f"{cfg.get('splits')} random splits of {d.get('n_train')} training rows ({d.get('n_fit')} "
        f"to fit and {d.get('n_val')} to validate while choosing p and τ) and {d.get('n_test')} "
        f"test rows; seed {_e(cfg.get('seed'))}.</p>"
    ]


def _regression_task_line(rule: str | None) -> list[str]:
    """How the task was told (``--task`` or the target it was detected from)."""
    if not rule:
        return []
    return [f'<p class="sub">Task: regression ({_e(rule)}).</p>']


def _regression_protocol(cfg: Mapping[str, Any]) -> list[str]:
    """Gal & Ghahramani's protocol as this run applied it: network, training, the (p, τ) grid."""
    return [
        "<p>Gal &amp; Ghahramani's protocol (2016): an MLP "
        f"[D, {', '.join(map(str, cfg.get('hidden', [])))}, 1] with dropout p on its input and hidden "
        "layer, trained with Adam (learning rate "
        f"{_e(cfg.get('lr'))}, batches of {_e(cfg.get('batch_size'))}, {_e(cfg.get('epochs'))} epochs) "
        "on the paper's objective with weight decay λ = l² (1 − p) / (2 N τ) (l = "
        f"{_e(cfg.get('length_scale'))}); inputs and target standardised on the training part, "
        "predictions unstandardised. For each split, (p, τ) is chosen on the validation part by MC "
        "log-likelihood over p ∈ {"
        + ", ".join(f"{p:g}" for p in cfg.get("rates", []))
        + "} and "
        + (
            "the given τ grid"
            if cfg.get("taus")
            else "τ ∈ τ₀ × {¼, ½, 1, 2, 4}, τ₀ the inverse validation residual variance of a first fit"
        )
        + "; the choice is retrained on the whole training split and tested once.</p>"
    ]


def _regression_summary(
    models: Mapping[str, Any],
    cfg: Mapping[str, Any],
    checks: Mapping[str, Any],
    n_splits: int,
) -> list[str]:
    """Test RMSE, log-likelihood and interval coverage per model, and the MC-vs-WS check."""
    if not models:
        return []
    levels = list(models.get("mc_dropout", {}).get("coverage", {}))
    rows = []
    for key, label in _REGRESSION_MODELS.items():
        m = models.get(key)
        if not m:
            continue
        rows.append(
            [
                label.format(T=cfg.get("mc_samples")),
                _pm(m.get("test_rmse"), m.get("test_rmse_se")),
                _pm(m.get("test_log_likelihood"), m.get("test_log_likelihood_se")),
                *[
                    f"{100 * m['coverage'][c]:.1f}% ± {100 * m['coverage_se'][c]:.1f}"
                    for c in levels
                ],
            ]
        )
    parts = [
        "<h2>Summary</h2>",
        _table(
            ["model", "test RMSE", "test log-likelihood"]
            + [f"{100 * float(c):g}% interval coverage" for c in levels],
            rows,
        ),
        "<p>Mean ± standard error over splits. Log-likelihood: per test point, in the target's "
        "units (τ of the standardised target divided by the target's variance); for MC dropout "
        "logsumexp over the T passes − log T − ½ log 2π + ½ log τ.</p>",
    ]
    if checks:
        parts.append(
            "<ul>"
            + _check(
                checks.get("mc_ll_at_least_ws_ll"),
                "MC dropout's test log-likelihood is at least weight scaling's: difference "
                f"{checks.get('mc_ll_minus_ws_ll', 0):+.3f} ± {checks.get('mc_ll_minus_ws_ll_se', 0):.3f} "
                f"(paired over splits; MC at least as good on {checks.get('mc_ll_better_per_split')} "
                f"of {n_splits} splits)",
            )
            + "</ul>"
        )
    return parts


_SPLIT_HEADERS = ["split"] + [
    f"{who} {what}" for who in ("MC", "WS") for what in ("p", "τ", "RMSE", "LL", "95%")
]


def _split_cells(run: Mapping[str, Any]) -> list[str]:
    """One model's chosen p and τ, and its test RMSE, log-likelihood and 95% coverage on a split."""
    return [
        f"{run['p']:g}",
        f"{run['tau']:.3g}",
        f"{run['rmse']:.3f}",
        f"{run['log_likelihood']:.3f}",
        f"{100 * run['coverage'].get('0.95', 0):.0f}%",
    ]


def _regression_splits(splits: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each split's choice and test scores, MC dropout beside weight scaling."""
    if not splits:
        return []
    rows = [
        [r["split"], *_split_cells(r["mc_dropout"]), *_split_cells(r["weight_scaling"])]
        for r in splits
    ]
    return [
        "<h2>Per split</h2>",
        _table(_SPLIT_HEADERS, rows),
        "<p>τ is the precision of the standardised target chosen on validation (MC: by MC "
        "log-likelihood; WS: by weight scaling's). Every validation score of every grid point "
        "is in <code>report.json</code> (<code>splits[i].validation</code>).</p>",
    ]


def render_regression_html(
    numbers: Mapping[str, Any],
    figures: Mapping[str, tuple[str, str, bytes]],
    *,
    command: str | None = None,
) -> str:
    """The report page of a regression study (:func:`dropkit.regression.run_regression_study`).

    Built like :func:`render_html`: its sections in order, each returning nothing when the study
    has no such numbers.

    Example:
        >>> page = render_regression_html({"task": "regression", "data": {"name": "toy"}}, {})
        >>> "dropkit study (regression): toy" in page
        True
    """
    d = numbers.get("data", {})
    cfg = numbers.get("config", {})
    splits = numbers.get("splits", [])
    parts = [
        *_head(f"dropkit study (regression) — {d.get('name', 'report')}"),
        f"<h1>dropkit study (regression): {_e(d.get('name', ''))}</h1>",
        *_regression_data_line(d, cfg),
        *_regression_task_line(numbers.get("task_rule")),
        *_regression_protocol(cfg),
        *_regression_summary(
            numbers.get("models", {}), cfg, numbers.get("checks", {}), len(splits)
        ),
        *(_figure(name, title, caption, png) for name, (title, caption, png) in figures.items()),
        *_regression_splits(splits),
        "<h2>Reproduce</h2>",
        *([f"<pre>{_e(command)}</pre>"] if command else []),
        *_run_details(numbers),
        "</body></html>\n",
    ]
    return "\n".join(parts)
