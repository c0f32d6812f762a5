"""``run_study``: the study's steps in order, timed, and its numbers made JSON-ready."""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import numpy as np
import torch

from dropkit import data as _data
from dropkit.study import steps
from dropkit.study.config import StudyConfig, StudyResult, load_study_data
from dropkit.study.figures import study_figures


def run_study(
    config: StudyConfig,
    workdir: str | os.PathLike,
    *,
    dataset: _data.Dataset | None = None,
    log: TextIO | None = None,
) -> StudyResult:
    r"""Runs the study and returns its numbers and figures; the Optuna studies go to ``workdir``.

    The report itself is written by :func:`dropkit.report.write_report` (the CLI does both, and
    writes atomically). ``workdir`` must exist; it receives ``search.db``, the SQLite file holding
    the grid and per-layer searches (load them with :func:`dropkit.tune.load_search`).

    The body is the seven steps of :mod:`dropkit.study` in order, each a function of
    :mod:`dropkit.study.steps` that reads what it needs and returns its part of the numbers.

    Args:
        config: the settings (``None`` fields take the mode's defaults).
        workdir: folder for the search storage.
        dataset: the data (default :func:`load_study_data`).
        log: where one line per step goes (default: nowhere).

    Returns:
        A :class:`StudyResult`.

    Example:
        >>> import tempfile, torch
        >>> from dropkit.data import Dataset
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(120, 4, generator=g); y = (x[:, 0] > 0).long()
        >>> ds = Dataset("toy", x[:100], y[:100], x[100:], y[100:], n_classes=2)
        >>> cfg = StudyConfig(quick=True, epochs=2, trials=2, seeds=1, mc_samples=4,
        ...                   hidden=(8,), progress=False)
        >>> result = run_study(cfg, tempfile.mkdtemp(), dataset=ds)
        >>> sorted(result.numbers["final"])
        ['baseline', 'dropout']
    """
    cfg = config.resolved()
    started = time.perf_counter()
    timing: dict[str, float] = {}
    ds = dataset if dataset is not None else load_study_data(cfg)
    if ds.task != "classification":
        raise ValueError(f"dropkit study handles classification data, got task {ds.task!r}")
    timing["data_s"] = time.perf_counter() - started

    s = steps.prepare(cfg, ds, workdir, log)
    numbers = steps.describe(s)
    with _timed(timing, "baseline_s"):
        numbers["baseline"] = steps.train_baseline(s)
    with _timed(timing, "grid_search_s"):
        grid = steps.search_one_rate(s)
        numbers["grid_search"] = steps.search_record(grid)
    with _timed(timing, "sensitivity_s"):
        numbers["sensitivity"] = steps.sensitivity(s, numbers["baseline"], grid)
    one_rate = steps.choose_one_rate(s, numbers["sensitivity"])
    with _timed(timing, "per_layer_search_s"):
        per_layer = steps.search_per_layer(s, one_rate)
        numbers["per_layer_search"] = steps.search_record(per_layer)
    numbers["chosen"] = steps.choose_rates(s, grid, one_rate, per_layer)
    chosen_rates = numbers["chosen"]["rates"]
    with _timed(timing, "ablation_s"):
        numbers["ablation"] = steps.ablate(s, chosen_rates)
    with _timed(timing, "final_s"):
        numbers["final"], dropout_model = steps.train_final(s, chosen_rates)
    with _timed(timing, "mc_dropout_s"):
        numbers["mc_dropout"], mc_arrays = steps.mc_dropout(
            dropout_model, ds.x_test, ds.y_test, cfg.mc_samples, cfg.seed, cfg.progress
        )
    numbers["checks"] = steps.checks(s, numbers["final"])

    with _timed(timing, "figures_s"):
        figures = study_figures(
            numbers,
            numbers["sensitivity"]["records"],
            numbers["ablation"]["records"],
            per_layer,
            mc_arrays,
            cfg,
        )
    timing["total_s"] = time.perf_counter() - started
    numbers["environment"] = _environment()
    numbers = json_ready(numbers)
    numbers["timing"] = {k: round(v, 2) for k, v in timing.items()}
    return StudyResult(numbers=numbers, figures=figures)


@contextmanager
def _timed(timing: dict[str, float], key: str) -> Iterator[None]:
    """Records the block's wall time as ``timing[key]`` (seconds)."""
    start = time.perf_counter()
    yield
    timing[key] = time.perf_counter() - start


def _environment() -> dict[str, str]:
    from dropkit import __version__

    return {
        "dropkit": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def json_ready(value: Any) -> Any:
    """JSON-ready copy: NaN/inf → None, tuples → lists, numpy/torch scalars → Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
