"""Search targets imported by worker processes in tests (``tests._tune_targets:SLOW_SEARCH``).

The trial is made observable: on entering training it writes a marker file named after the
worker's pid into ``$DROPKIT_TEST_MARKERS`` and sleeps ``$DROPKIT_TEST_SLEEP`` seconds. The
``$DROPKIT_TEST_HANG_AT``-th trial of a process hangs instead (sleeps two minutes), so a test can
kill that worker knowing it is inside a trial. The validation loss is a known function of the
rates, so no real training is needed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dropkit
from dropkit.tune import RateSearch, dropout_layers


def _build():
    return dropkit.MLP([4, 4, 2], p=0.0)


_TRIALS_HERE = [0]


def _slow_train(model, report):
    _TRIALS_HERE[0] += 1
    marker_dir = os.environ.get("DROPKIT_TEST_MARKERS")
    if marker_dir:
        Path(marker_dir, f"{os.getpid()}-{time.monotonic_ns()}").write_text("in trial")
    if os.environ.get("DROPKIT_TEST_HANG_AT") == str(_TRIALS_HERE[0]):
        time.sleep(120)
    time.sleep(float(os.environ.get("DROPKIT_TEST_SLEEP", "0.5")))
    report(0)


def _eval(model):
    return sum((m.p - 0.3) ** 2 for m in dropout_layers(model).values())


SLOW_SEARCH = RateSearch(_build, _slow_train, _eval, mode="per_layer", n_startup_trials=2, seed=0)


def _quick_train(model, report):
    report(0)


# A two-point grid whose trials take no time: for the worker's command-line tests.
QUICK_GRID = RateSearch(_build, _quick_train, _eval, mode="grid", grid=[0.1, 0.3], seed=0)
