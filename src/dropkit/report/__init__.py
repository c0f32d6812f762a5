r"""The study's report folder: one self-contained HTML page and a JSON file of every number.

The folder holds ``index.html`` (plots embedded as base64 PNG, inline CSS, no script, no external
URL: it opens offline and can be mailed), ``report.json`` (every number of the run),
``figures/*.png`` (the same plots as files) and ``search.db`` (the SQLite file of the Optuna
searches, readable with :func:`dropkit.tune.load_search`).

Writing goes through :mod:`dropkit.report.publish`: a hidden staging folder next to the target,
published in one atomic swap once complete and marked as dropkit's (``.dropkit-report.json``,
written last). An interrupted run leaves the previous report, or none, never half of one; a
folder holding anything the report did not write is never replaced; one run writes a folder at a
time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from dropkit.report import publish
from dropkit.report.pages import render_html
from dropkit.report.publish import MARKER, OutputBusy, OutputRefused, Stage, check_target, staging

__all__ = [
    "check_target",
    "staging",
    "write_files",
    "write_report",
    "render_html",
    "publish",
    "Stage",
    "OutputRefused",
    "OutputBusy",
    "MARKER",
    "REPORT_FILES",
]

#: The files a study's report folder holds, besides the marker :data:`MARKER`.
REPORT_FILES = ("index.html", "report.json", "figures", "search.db")


def write_files(
    folder: str | os.PathLike,
    numbers: Mapping[str, Any],
    figures: Mapping[str, tuple[str, str, bytes]],
    *,
    command: str | None = None,
) -> None:
    """Writes ``index.html``, ``report.json`` and ``figures/*.png`` into ``folder`` (no atomicity).

    Args:
        folder: an existing folder (normally the :class:`Stage` that :func:`staging` yields).
        numbers: JSON-ready numbers (NaN must already be None).
        figures: name → (title, caption, PNG bytes), in report order.
        command: the command line that reproduces the run, shown in the page.
    """
    with open(os.path.join(folder, "report.json"), "w", encoding="utf-8") as handle:
        json.dump(numbers, handle, indent=2, allow_nan=False, sort_keys=False)
        handle.write("\n")
    figure_dir = os.path.join(folder, "figures")
    os.makedirs(figure_dir, exist_ok=True)
    for name, (_, _, png) in figures.items():
        with open(os.path.join(figure_dir, f"{name}.png"), "wb") as handle:
            handle.write(png)
    with open(os.path.join(folder, "index.html"), "w", encoding="utf-8") as handle:
        handle.write(render_html(numbers, figures, command=command))


def write_report(
    out_dir: str | os.PathLike,
    numbers: Mapping[str, Any],
    figures: Mapping[str, tuple[str, str, bytes]],
    *,
    command: str | None = None,
) -> str:
    """Writes a complete report folder atomically and returns its path.

    ``out_dir`` must be missing, empty or a dropkit report holding nothing else
    (:func:`check_target`); otherwise :class:`OutputRefused` is raised and nothing is written.

    Example:
        >>> import os, tempfile
        >>> target = os.path.join(tempfile.mkdtemp(), "report")
        >>> _ = write_report(target, {"data": {"name": "toy"}}, {})
        >>> sorted(os.listdir(target))
        ['.dropkit-report.json', 'figures', 'index.html', 'report.json']
    """
    with staging(out_dir) as stage:
        write_files(stage, numbers, figures, command=command)
    return stage.target
