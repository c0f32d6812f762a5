r"""The ``dropkit`` command.

Subcommands:

- ``dropkit study`` — the main job (:mod:`dropkit.study`): baseline, overfitting gap, rate search
  (one rate, then per layer), ablation, MC dropout, on MNIST-1D or ``--data FILE --label COLUMN``;
  writes an HTML + JSON report folder atomically and prints a summary table. With
  ``--task regression`` (or a continuous label) it runs Gal & Ghahramani's regression protocol
  instead (:mod:`dropkit.regression`): (p, τ) on validation, K random splits, MC dropout against
  weight scaling.
- ``dropkit bench`` — the kernel benchmark (``dropkit.bench``, also runnable as ``benchmarks/bench_kernels.py``
  where the package ships it): dropkit's fused dropout against torch eager, ``torch.compile`` and
  ``x.clone()``; prints its table. Arguments after ``bench`` go to the benchmark (``--quick``).
- ``dropkit tune-worker`` — joins a shared rate search (:mod:`dropkit.worker`).

Bad input (a missing or empty file, an unknown label column, non-numeric features, NaNs, a data
set too small to split, a bad flag value) prints one line ``dropkit <cmd>: error: …`` on stderr,
exits with status 2 and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from dropkit._validate import check_int_range, check_rates, check_seed

__all__ = ["main", "build_parser"]

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
#: The report could not be written (a full disk, an I/O error); nothing was half-written.
EXIT_WRITE_FAILED = 1


def _rate_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated rates such as 0.1,0.2,0.3, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one rate")
    return values


def _positive_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0.5,1,2, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated widths such as 100,100, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one width")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``dropkit`` command."""
    parser = argparse.ArgumentParser(
        prog="dropkit",
        description="dropkit: dropout for PyTorch. Run the study, the benchmark or a search worker.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{study,bench,tune-worker}")
    sub.required = True

    study = sub.add_parser(
        "study",
        help="baseline, overfitting gap, rate search, ablation and MC dropout, with an HTML report",
        description=(
            "Trains an MLP without dropout, shows its overfitting gap, searches the dropout rate "
            "(one rate on the seeds' grid, then one per layer) on a validation split, runs the "
            "ablation and MC dropout, tests the final models once and writes a report folder."
        ),
    )
    study.add_argument(
        "--data",
        metavar="FILE",
        help="a CSV or NPZ file, or 'diabetes' (scikit-learn's, bundled) (default: MNIST-1D)",
    )
    study.add_argument(
        "--label", default="label", metavar="COLUMN", help="label column of --data (default: label)"
    )
    study.add_argument(
        "--task",
        choices=("auto", "classification", "regression"),
        default="auto",
        help="auto (default) detects it from the label where unambiguous: text or few distinct "
        "integers are classes, non-integer numbers a regression target",
    )
    study.add_argument("--seed", type=int, default=0, help="seeds everything (default 0)")
    study.add_argument(
        "--quick", action="store_true", help="fewer epochs, trials and samples (under a minute)"
    )
    study.add_argument(
        "--out",
        default="dropkit-report",
        metavar="DIR",
        help="report folder (default ./dropkit-report)",
    )
    study.add_argument(
        "--epochs",
        type=int,
        help="epochs per model (default 100, --quick 25; regression 400, --quick 40)",
    )
    study.add_argument("--trials", type=int, help="per-layer TPE trials (default 10, --quick 3)")
    study.add_argument(
        "--seeds", type=int, help="seeds of the sensitivity analysis (default 2, --quick 1)"
    )
    study.add_argument(
        "--final-seeds", type=int, help="seeds of the final models (default 3, --quick 1)"
    )
    study.add_argument(
        "--mc-samples",
        type=int,
        metavar="T",
        help="MC dropout passes (default 100, --quick 30; regression 1000, --quick 100)",
    )
    study.add_argument(
        "--hidden",
        type=_int_list,
        default=None,
        metavar="W,W",
        help="hidden widths (default 100,100; regression 50)",
    )
    study.add_argument(
        "--lr", type=float, default=None, help="Adam learning rate (default 0.01; regression 0.001)"
    )
    study.add_argument(
        "--batch-size", type=int, default=None, help="batch size (default 100; regression 128)"
    )
    study.add_argument(
        "--grid",
        type=_rate_list,
        default=None,
        metavar="P,P",
        help="rate grid (default 0.1,...,0.5; regression 0.005,0.01,0.05,0.1)",
    )
    study.add_argument(
        "--metric",
        choices=("val_acc", "val_loss"),
        default=None,
        help="validation metric that chooses the rates (default val_acc)",
    )
    study.add_argument(
        "--splits",
        type=int,
        default=None,
        help="regression: random train/test splits (default 20, --quick 3)",
    )
    study.add_argument(
        "--tau",
        type=_positive_list,
        default=None,
        metavar="T,T",
        help="regression: the τ grid, precisions of the standardised target (default: "
        "τ0 × 0.25,0.5,1,2,4 with τ0 from a first fit)",
    )
    study.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: small models run faster)",
    )
    study.add_argument("--no-progress", action="store_true", help="no progress bars")

    bench = sub.add_parser(
        "bench",
        help="benchmark dropkit's dropout kernels against torch (prints a table)",
        description="Runs dropkit's kernel benchmark and prints its table.",
    )
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")

    worker = sub.add_parser(
        "tune-worker",
        help="join a shared rate search (storage URL + study name)",
        add_help=False,
    )
    worker.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _error(command: str, err: BaseException | str, *, status: int = EXIT_BAD_INPUT) -> int:
    text = str(err) if not isinstance(err, BaseException) else (str(err) or type(err).__name__)
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    one_line = " ".join(text.split())
    print(f"dropkit {command}: error: {one_line}", file=sys.stderr)
    return status


#: Flags that only one kind of study reads (a flag the chosen study would ignore is an error).
_CLASSIFICATION_ONLY = ("trials", "seeds", "final_seeds", "metric")
_REGRESSION_ONLY = ("splits", "tau")


def _decide_task(args: argparse.Namespace) -> tuple[str, str]:
    """(task, the rule that chose it); raises ValueError where the choice is impossible."""
    from dropkit import data as _data
    from dropkit import regression

    if args.data is None:
        if args.task == "regression":
            raise ValueError(
                "--task regression needs --data: a CSV/NPZ file with a continuous label, or "
                "'diabetes' (the default data, MNIST-1D, is a classification data set)"
            )
        return "classification", "MNIST-1D, the default data, is a classification data set"
    if args.data in regression.BUILTIN and not os.path.exists(args.data):
        if args.task == "classification":
            raise ValueError(
                f"--data {args.data} is a regression data set (a continuous target); "
                "use --task regression"
            )
        return "regression", f"the built-in data set {args.data!r} is a regression data set"
    if args.task != "auto":
        return args.task, f"--task {args.task} was given"
    _, _, labels = _data.read_table(args.data, args.label)
    return _data.detect_task(labels, path=args.data, label=args.label)


def _check_flags(args: argparse.Namespace, task: str) -> None:
    unused = _REGRESSION_ONLY if task == "classification" else _CLASSIFICATION_ONLY
    for name in unused:
        if getattr(args, name) is not None:
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"{flag} applies to {'regression' if task == 'classification' else 'classification'} "
                f"studies only, and this study is a {task} one"
            )
    check_seed(args.seed, "--seed")
    # torch.set_num_threads(100000) asks OpenMP for that many threads and crashes the process.
    check_int_range(
        args.threads, "--threads", 1, _usable_cores(), note="the CPU cores this process may use"
    )
    _check_writable(args.out)


def _usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _check_writable(out: str) -> None:
    """Refuses an --out under which no folder can be made, before any work.

    ``os.access`` says yes to root everywhere, /proc and /sys included, so a folder is made and
    removed in the nearest existing parent: the report's staging folder will be made there.
    """
    import tempfile

    parent = os.path.dirname(os.path.abspath(out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return  # a file where a folder should be: the output check names it
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".dropkit-probe-", dir=parent))
    except OSError as err:
        raise ValueError(
            f"--out {out!r}: cannot write a report under {parent!r} ({err.strerror or err}); "
            "choose a writable folder"
        ) from None


def _check_memory(hidden: Sequence[int], n_features: int, n_outputs: int, rows: int) -> None:
    """Refuses widths whose model cannot fit in memory, before it is built.

    A floor, not a guess: one MLP trained with Adam holds its weights, their gradients and
    Adam's two moments (4 float32 per parameter), and a forward pass over ``rows`` examples
    holds every layer's activations. Past the available memory the run can only crash.
    """
    sizes = [n_features, *hidden, n_outputs]
    parameters = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))
    needed = 4 * (4 * parameters + rows * sum(sizes))
    available = _available_memory()
    if available is not None and needed > available:
        widths = ",".join(map(str, hidden))
        raise ValueError(
            f"--hidden {widths} needs at least {_bytes(needed)} of memory ({parameters:,} parameters "
            f"with gradients and Adam's moments, plus activations), but {_bytes(available)} is "
            "available; choose smaller widths"
        )


def _available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup limit; None if unknown."""
    found: list[int] = []
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            with open(limit) as a, open(usage) as b:
                found.append(int(a.read().strip()) - int(b.read().strip()))
        except (OSError, ValueError):
            continue
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    return max(min(found), 0)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def _study(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from dropkit import report, study, tune

    try:
        task, rule = _decide_task(args)
        _check_flags(args, task)
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        return _error("study", err)
    if task == "regression":
        return _regression_study(args, argv, rule)
    config = study.StudyConfig(
        data=args.data,
        label=args.label,
        seed=args.seed,
        quick=args.quick,
        epochs=args.epochs,
        hidden=args.hidden if args.hidden is not None else (100, 100),
        lr=args.lr if args.lr is not None else 1e-2,
        batch_size=args.batch_size if args.batch_size is not None else 100,
        grid=args.grid if args.grid is not None else tune.DEFAULT_GRID,
        trials=args.trials,
        seeds=args.seeds,
        final_seeds=args.final_seeds,
        mc_samples=args.mc_samples,
        metric=args.metric if args.metric is not None else "val_acc",
        progress=not args.no_progress,
    )
    # Everything that can be wrong with the input is checked before any file is written.
    try:
        try:
            resolved = config.resolved()
        except (ValueError, TypeError) as err:
            raise type(err)(_flag_name(str(err))) from None
        check_rates(resolved.grid, "--grid")
        keep = [args.data] if args.data else []
        out_dir = report.check_target(args.out, keep=keep)
        dataset = study.load_study_data(resolved)
        rows = min(resolved.batch_size, len(dataset.x_train))
        _check_memory(resolved.hidden, dataset.n_features, dataset.n_classes, rows)
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        return _error("study", err)

    def run(stage):
        result = study.run_study(config, stage, dataset=dataset)
        result.numbers["task_rule"] = rule
        return result

    return _run_and_publish(args, argv, out_dir, keep, run, study.format_summary)


def _run_and_publish(args, argv, out_dir, keep, run, summary) -> int:
    """Runs ``run(stage)`` at ``args.threads`` threads, writes its report into the staging folder
    and publishes it at ``out_dir``; every failure is one line and an exit code."""
    import torch

    from dropkit import report

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    command = "dropkit " + " ".join(shlex.quote(a) for a in argv)
    # SIGTERM (a killed job, a CI timeout) unwinds like Ctrl-C, so the staging folder is removed.
    _SIGNALLED.clear()
    previous = _on_sigterm(_raise_interrupt)
    stage = None
    try:
        with report.staging(out_dir, keep=keep) as stage:
            result = run(stage)
            report.write_files(stage, result.numbers, result.figures, command=command)
            if _SIGNALLED:
                # The handler's KeyboardInterrupt can land where Python ignores exceptions (a
                # weakref callback, a __del__): the flag still keeps the report from being published.
                raise KeyboardInterrupt
        print(summary(result.numbers, args.out))
    except KeyboardInterrupt:
        return _interrupted("study", stage)
    except (ValueError, TypeError, FloatingPointError) as err:
        return _error("study", err)
    except OSError as err:
        return _write_failed("study", err, stage)
    finally:
        _on_sigterm(previous)
        torch.set_num_threads(threads)
    return 0


def _interrupted(command: str, stage) -> int:
    """The line for Ctrl-C or SIGTERM: whether the new report was published before it."""
    if stage is not None and stage.published:
        print(
            f"dropkit {command}: interrupted; the report is complete at {stage.target}",
            file=sys.stderr,
        )
    else:
        print(f"dropkit {command}: interrupted; no report written", file=sys.stderr)
    return EXIT_INTERRUPTED


def _write_failed(command: str, err: OSError, stage) -> int:
    """One line for a failed write (a full disk): what failed, and that nothing was half-written."""
    if stage is not None and stage.published:
        left = f"the report is complete at {stage.target}"
    elif stage is not None:
        left = f"nothing was written to {stage.target}; what was there is unchanged"
    else:
        left = "nothing was written"
    what = err.strerror or str(err)
    return _error(command, f"could not write the report ({what}); {left}", status=EXIT_WRITE_FAILED)


_FLAGS = {
    "rates": "--grid",
    "taus": "--tau",
    "splits": "--splits",
    "epochs": "--epochs",
    "mc_samples": "--mc-samples",
    "hidden": "--hidden",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "seed": "--seed",
    "final_seeds": "--final-seeds",
    "trials": "--trials",
    "metric": "--metric",
}


def _flag_name(message: str) -> str:
    """A config error names the flag (``--grid``), not the field (``rates``)."""
    for field, flag in _FLAGS.items():
        if message.startswith(field):
            return flag + message[len(field) :]
    return message


def _regression_study(args: argparse.Namespace, argv: Sequence[str], rule: str) -> int:
    import numpy as np

    from dropkit import regression, report

    config = regression.RegressionConfig(
        data=args.data,
        label=args.label,
        seed=args.seed,
        quick=args.quick,
        splits=args.splits,
        epochs=args.epochs,
        hidden=args.hidden if args.hidden is not None else (50,),
        lr=args.lr if args.lr is not None else 1e-3,
        batch_size=args.batch_size if args.batch_size is not None else 128,
        rates=args.grid if args.grid is not None else regression.DEFAULT_RATES,
        taus=args.tau,
        mc_samples=args.mc_samples,
        progress=not args.no_progress,
    )
    try:
        try:
            resolved = config.resolved()
        except (ValueError, TypeError) as err:
            raise type(err)(_flag_name(str(err))) from None
        keep = [args.data] if args.data and os.path.exists(args.data) else []
        out_dir = report.check_target(args.out, keep=keep)
        dataset = regression.load_regression_data(resolved.data, resolved.label)
        regression.check_splits(len(dataset.y), resolved, f"data {dataset.name!r}")
        _check_memory(
            resolved.hidden, dataset.x.shape[1], 1, min(resolved.batch_size, len(dataset.y))
        )
        if not (np.isfinite(dataset.x).all()):
            raise ValueError(f"data {dataset.name!r}: the features hold NaN or infinite values")
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        return _error("study", err)

    def run(stage):
        return regression.run_regression_study(config, dataset=dataset, task_rule=rule)

    return _run_and_publish(args, argv, out_dir, keep, run, regression.format_regression_summary)


_SIGNALLED: list[int] = []


def _raise_interrupt(signum, frame) -> None:
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt


def _on_sigterm(handler):
    """Installs ``handler`` for SIGTERM (main thread only); returns the previous one."""
    import signal
    import threading

    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _bench_main():
    """The kernel benchmark's ``main`` (``dropkit.bench``, also ``benchmarks/bench_kernels.py``)."""
    from dropkit.bench import main

    return main


def _bench(args: argparse.Namespace) -> int:
    try:
        bench_main = _bench_main()
    except ImportError as err:
        return _error("bench", err)
    argv = [a for a in args.args if a != "--"]
    saved = sys.argv
    # The benchmark script parses sys.argv; give it its own name and the arguments after `bench`.
    sys.argv = ["dropkit bench", *argv]
    try:
        status = bench_main(argv) if _takes_argv(bench_main) else bench_main()
    except SystemExit as exit_:
        status = exit_.code
    finally:
        sys.argv = saved
    return int(status or 0)


def _takes_argv(fn) -> bool:
    import inspect

    try:
        return len(inspect.signature(fn).parameters) >= 1
    except (TypeError, ValueError):
        return False


def _tune_worker(args: argparse.Namespace) -> int:
    from dropkit import worker

    return int(worker.main(list(args.args)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``dropkit`` command; returns the exit status.

    Example:
        >>> main(["study", "--data", "/no/such/file.csv"])
        2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # `bench` and `tune-worker` hand every later argument (--help included) to their own parser.
    if argv and argv[0] == "bench":
        return _bench(argparse.Namespace(args=argv[1:]))
    if argv and argv[0] == "tune-worker":
        return _tune_worker(argparse.Namespace(args=argv[1:]))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if args.command == "study":
        return _study(args, argv)
    if args.command == "bench":
        return _bench(args)
    return _tune_worker(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
