r"""The study's report folder: one self-contained HTML page and a JSON file of every number.

The folder holds ``index.html`` (plots embedded as base64 PNG, inline CSS, no script, no external
URL: it opens offline and can be mailed), ``report.json`` (every number of the run),
``figures/*.png`` (the same plots as files) and ``search.db`` (the SQLite file of the Optuna
searches, readable with :func:`dropkit.tune.load_search`).

Writing is atomic: everything goes into a hidden temporary folder next to the target, which is
renamed onto the target only once complete (:func:`staging`). An interrupted run leaves the
previous report, or none, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

from dropkit.report.html import render_html

__all__ = ["check_target", "staging", "write_files", "write_report", "render_html", "REPORT_FILES"]

#: The files a report folder holds; a non-empty folder without ``report.json`` is never replaced.
REPORT_FILES = ("index.html", "report.json", "figures", "search.db")


def check_target(out_dir: str | os.PathLike) -> str:
    """Checks that ``out_dir`` may receive a report, before any work; returns its absolute path.

    A missing folder is fine (its parent is created when the report is written); an existing one
    must be empty or a previous dropkit report (it holds ``report.json``), so a typo can never
    replace a folder of the user's own files.

    Raises:
        ValueError: ``out_dir`` is a file, or a non-empty folder that is not a dropkit report.

    Example:
        >>> import tempfile, os
        >>> check_target(os.path.join(tempfile.mkdtemp(), "report")).endswith("report")
        True
    """
    path = os.path.abspath(os.fspath(out_dir))
    if os.path.lexists(path):
        if not os.path.isdir(path) or os.path.islink(path):
            raise ValueError(f"output {path!r} exists and is not a folder; choose another --out")
        entries = os.listdir(path)
        if entries and "report.json" not in entries:
            raise ValueError(
                f"output folder {path!r} is not empty and holds no dropkit report; refusing to "
                "replace it (choose another --out)"
            )
    parent = os.path.dirname(path)
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write the report under {probe!r}: not a writable folder")
    return path


@contextlib.contextmanager
def staging(out_dir: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary folder next to ``out_dir``; on success it replaces ``out_dir`` atomically.

    On any exception (KeyboardInterrupt included) the temporary folder is removed and ``out_dir``
    is left as it was. The replacement is two renames on the same file system: the old report is
    moved aside, the new one moved in, then the old one deleted.

    Example:
        >>> import os, tempfile
        >>> target = os.path.join(tempfile.mkdtemp(), "report")
        >>> with staging(target) as tmp:
        ...     _ = open(os.path.join(tmp, "report.json"), "w").write("{}")
        >>> os.listdir(target)
        ['report.json']
    """
    target = check_target(out_dir)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        yield tmp
        _fsync_tree(tmp)
        if os.path.lexists(target):
            check_target(target)
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rename(target, os.path.join(old, name))
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(root: str) -> None:
    for folder, _, files in os.walk(root):
        for filename in files:
            fd = os.open(os.path.join(folder, filename), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def write_files(
    folder: str,
    numbers: Mapping[str, Any],
    figures: Mapping[str, tuple[str, str, bytes]],
    *,
    command: str | None = None,
) -> None:
    """Writes ``index.html``, ``report.json`` and ``figures/*.png`` into ``folder`` (no atomicity).

    Args:
        folder: an existing folder (normally the one :func:`staging` yields).
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

    Example:
        >>> import os, tempfile
        >>> target = os.path.join(tempfile.mkdtemp(), "report")
        >>> _ = write_report(target, {"data": {"name": "toy"}}, {})
        >>> sorted(os.listdir(target))
        ['figures', 'index.html', 'report.json']
    """
    with staging(out_dir) as tmp:
        write_files(tmp, numbers, figures, command=command)
    return os.path.abspath(os.fspath(out_dir))
