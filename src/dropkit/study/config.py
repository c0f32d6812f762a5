"""The study's settings (:class:`StudyConfig`), its result (:class:`StudyResult`) and its data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from dropkit import data as _data
from dropkit import tune
from dropkit._validate import (
    check_choice,
    check_open_unit,
    check_positive_finite,
    check_positive_int,
    check_seed,
)

#: The MNIST-1D paper's MLP test accuracy (Greydanus 2020, table 1), the baseline's reference.
PAPER_MLP_TEST_ACC = 0.68


@dataclass
class StudyConfig:
    r"""Settings of one ``dropkit study`` run; ``None`` fields take the mode's default.

    Defaults follow the MNIST-1D paper's MLP (two hidden layers of 100 ReLU units, Adam with
    learning rate 10⁻², batches of 100). ``quick`` shrinks epochs, trials, seeds and MC samples so
    the run finishes in well under a minute; the pipeline is the same.

    Args:
        data: a CSV or NPZ file (see :func:`dropkit.data.load_table`); None for MNIST-1D.
        label: the label column of ``data``.
        seed: seeds the data split, every model, the searches and the MC samples.
        quick: the fast variant.
        epochs: training epochs of every model (default 100, quick 25).
        hidden: hidden layer widths.
        lr, batch_size: the trainer's settings.
        val_fraction: share of the training data held out for validation (every choice uses it).
        grid: the rates of the one-rate search (the seeds' grid).
        trials: per-layer TPE trials (default 10, quick 3).
        seeds: seeds of the sensitivity analysis, the grid search's included (default 2, quick 1).
        final_seeds: seeds of the final models; test numbers are their mean (default 3, quick 1).
        mc_samples: T, the number of MC dropout passes (default 100, quick 30).
        metric: the validation metric that chooses rates: ``"val_acc"`` (maximised) or
            ``"val_loss"`` (minimised, the seeds' p* = argmin L_val(p)).
        epsilon: the overfitting threshold ε on A_train − A_val.
        progress: draw tqdm progress bars on stderr.
    """

    data: str | None = None
    label: str = "label"
    seed: int = 0
    quick: bool = False
    epochs: int | None = None
    hidden: tuple[int, ...] = (100, 100)
    lr: float = 1e-2
    batch_size: int = 100
    val_fraction: float = 0.2
    grid: tuple[float, ...] = tune.DEFAULT_GRID
    trials: int | None = None
    seeds: int | None = None
    final_seeds: int | None = None
    mc_samples: int | None = None
    metric: str = "val_acc"
    epsilon: float = 0.05
    progress: bool = True

    def resolved(self) -> StudyConfig:
        """A copy with every ``None`` replaced by the mode's default, every field checked."""
        quick = bool(self.quick)
        out = StudyConfig(**asdict(self))
        out.epochs = check_positive_int(
            self.epochs if self.epochs is not None else (25 if quick else 100), "epochs"
        )
        out.trials = check_positive_int(
            self.trials if self.trials is not None else (3 if quick else 10), "trials"
        )
        out.seeds = check_positive_int(
            self.seeds if self.seeds is not None else (1 if quick else 2), "seeds"
        )
        out.final_seeds = check_positive_int(
            self.final_seeds if self.final_seeds is not None else (1 if quick else 3), "final_seeds"
        )
        out.mc_samples = check_positive_int(
            self.mc_samples if self.mc_samples is not None else (30 if quick else 100), "mc_samples"
        )
        out.hidden = tuple(check_positive_int(h, "hidden") for h in self.hidden)
        if not out.hidden:
            raise ValueError("hidden must hold at least one layer width, got none")
        out.batch_size = check_positive_int(self.batch_size, "batch_size")
        check_positive_finite(self.lr, "lr")
        check_open_unit(self.val_fraction, "val_fraction")
        check_choice(self.metric, "metric", ("val_acc", "val_loss"))
        check_seed(self.seed, "seed")
        # Seeds seed .. seed + k − 1 seed NumPy's legacy generator and Optuna's samplers: 32 bits.
        largest = 2**32 - max(out.seeds, out.final_seeds)
        if self.seed > largest:
            raise ValueError(
                f"seed must be an int in [0, {largest}] (seeds up to seed + "
                f"{max(out.seeds, out.final_seeds) - 1} are used, and they are 32-bit), got {self.seed}"
            )
        out.grid = tuple(float(p) for p in self.grid)
        return out


@dataclass
class StudyResult:
    """What :func:`run_study` found: every number (``numbers``, JSON-ready) and the figures.

    ``figures`` maps a figure's name to ``(title, caption, png_bytes)``, in report order.
    """

    numbers: dict[str, Any]
    figures: dict[str, tuple[str, str, bytes]] = field(default_factory=dict)


def load_study_data(config: StudyConfig) -> _data.Dataset:
    """The study's data set: MNIST-1D (4000 train / 1000 test) or the user's table.

    Raises before any work (FileNotFoundError, ValueError) on a missing, empty or malformed file
    and on a data set too small for train, validation and test parts.

    Example:
        >>> d = load_study_data(StudyConfig())
        >>> d.name, tuple(d.x_train.shape), tuple(d.x_test.shape)
        ('mnist1d', (4000, 40), (1000, 40))
    """
    if config.data is None:
        return _data.load_mnist1d()
    dataset = _data.load_table(config.data, label=config.label, seed=config.seed)
    n_train = int(dataset.x_train.shape[0])
    n_val = int(round(n_train * config.val_fraction))
    if n_val < 1 or n_train - n_val < 2:
        raise ValueError(
            f"data file {config.data!r}: {n_train} training rows are too few to split into "
            f"train and validation parts (val_fraction={config.val_fraction})"
        )
    return dataset
