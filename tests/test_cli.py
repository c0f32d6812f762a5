"""The ``dropkit`` command: bad input gives one line on stderr, a non-zero status and no files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dropkit import cli


def _table(path, rows: int = 40, features: int = 3, *, cell=None) -> str:
    rng = np.random.default_rng(0)
    lines = [",".join([f"f{i}" for i in range(features)] + ["label"])]
    for r in range(rows):
        values = [f"{v:.3f}" for v in rng.normal(size=features)]
        if cell is not None and r == rows // 2:
            values[1] = cell
        lines.append(",".join(values + [str(r % 2)]))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _run_bad(tmp_path, capsys, *args: str) -> str:
    out = tmp_path / "report"
    before = set(os.listdir(tmp_path))
    status = cli.main(["study", "--no-progress", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert status == cli.EXIT_BAD_INPUT
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dropkit study: error: ")
    assert not out.exists()
    assert set(os.listdir(tmp_path)) == before, "a bad input must write nothing"
    return lines[0]


def test_missing_file_is_one_line_error_and_writes_nothing(tmp_path, capsys):
    line = _run_bad(tmp_path, capsys, "--data", str(tmp_path / "nope.csv"))
    assert "does not exist" in line and "nope.csv" in line


def test_empty_file_is_rejected(tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("")
    line = _run_bad(tmp_path, capsys, "--data", str(tmp_path / "empty.csv"))
    assert "is empty" in line


def test_header_only_file_is_rejected(tmp_path, capsys):
    (tmp_path / "header.csv").write_text("a,b,label\n")
    line = _run_bad(tmp_path, capsys, "--data", str(tmp_path / "header.csv"))
    assert "no data rows" in line


def test_empty_npz_is_rejected(tmp_path, capsys):
    np.savez(tmp_path / "empty.npz")
    line = _run_bad(tmp_path, capsys, "--data", str(tmp_path / "empty.npz"), "--label", "y")
    assert "empty" in line


def test_unknown_label_column_names_the_columns(tmp_path, capsys):
    data = _table(tmp_path / "t.csv")
    line = _run_bad(tmp_path, capsys, "--data", data, "--label", "target")
    assert "'target'" in line and "'f0'" in line and "'label'" in line


def test_non_numeric_feature_names_line_and_column(tmp_path, capsys):
    data = _table(tmp_path / "t.csv", cell="red")
    line = _run_bad(tmp_path, capsys, "--data", data)
    assert "non-numeric" in line and "'red'" in line and "'f1'" in line and "line 22" in line


@pytest.mark.parametrize("cell", ["", "NaN", "nan", "NA"])
def test_missing_values_are_rejected(tmp_path, capsys, cell):
    data = _table(tmp_path / "t.csv", cell=cell)
    line = _run_bad(tmp_path, capsys, "--data", data)
    assert "missing value" in line and "NaN" in line


def test_nan_in_npz_features_is_rejected(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(40, 3))
    x[5, 2] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 2)
    line = _run_bad(tmp_path, capsys, "--data", str(tmp_path / "d.npz"), "--label", "y")
    assert "NaN" in line and "row 5" in line


def test_non_numeric_npz_features_are_rejected(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x=np.array([["a", "b"]] * 20), y=np.arange(20) % 2)
    line = _run_bad(tmp_path, capsys, "--data", str(tmp_path / "d.npz"), "--label", "y")
    assert "non-numeric" in line


def test_too_small_to_split_is_rejected(tmp_path, capsys):
    data = _table(tmp_path / "t.csv", rows=5)
    line = _run_bad(tmp_path, capsys, "--data", data)
    assert "too few to split" in line and "5 rows" in line


def test_a_single_class_is_rejected(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("a,label\n" + "".join(f"{i},1\n" for i in range(20)))
    line = _run_bad(tmp_path, capsys, "--data", str(tmp_path / "t.csv"))
    assert "single class" in line


def test_bad_flag_value_is_rejected_before_any_work(tmp_path, capsys):
    line = _run_bad(tmp_path, capsys, "--epochs", "0")
    assert "epochs" in line and "got 0" in line


def test_a_folder_of_other_files_is_never_replaced(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    status = cli.main(["study", "--no-progress", "--out", str(folder)])
    err = capsys.readouterr().err
    assert status == cli.EXIT_BAD_INPUT and len(err.strip().splitlines()) == 1
    assert "refusing to replace" in err
    assert os.listdir(folder) == ["thesis.tex"]


def test_unknown_subcommand_fails_with_usage(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_installed_command_reports_bad_input_in_one_line(tmp_path):
    exe = shutil.which("dropkit", path=os.path.dirname(sys.executable)) or shutil.which("dropkit")
    if exe is None:
        pytest.skip("the dropkit console script is not installed (pip install -e .)")
    (tmp_path / "empty.csv").write_text("")
    proc = subprocess.run(
        [exe, "study", "--data", str(tmp_path / "empty.csv"), "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"dropkit study: error: data file {str(tmp_path / 'empty.csv')!r} is empty"
    ]
    assert proc.stdout == ""
    assert os.listdir(tmp_path) == ["empty.csv"]


def test_bench_runs_the_kernel_benchmark_script(capsys):
    # --help is handed to the benchmark's own parser: proves the wiring without the long run.
    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("usage: dropkit bench")
        and "--quick" in out
        and "--device" in out
        and "--allocator" in out
    )


def test_bench_reports_bad_benchmark_arguments(capsys):
    assert cli.main(["bench", "--device", "tpu"]) == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("grid", "needle"), [("0,0.2", "(0, 1)"), ("0.2,0.2", "repeat"), ("a,b", "0.1,0.2")]
)
def test_bad_grid_is_rejected_before_any_work(tmp_path, capsys, grid, needle):
    out = tmp_path / "report"
    assert cli.main(["study", "--no-progress", "--out", str(out), "--grid", grid]) == 2
    assert needle in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_duplicate_column_names_are_rejected(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = ["a,a,label,label"] + [
        f"{rng.normal():.3f},{rng.normal():.3f},{r % 2},{r // 2 % 2}" for r in range(40)
    ]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    line = _run_bad(tmp_path, capsys, "--data", str(tmp_path / "t.csv"))
    assert "duplicate column names" in line
    assert "'a' (columns 1, 2)" in line and "'label' (columns 3, 4)" in line


@pytest.mark.parametrize("cell", ["inf", "-inf", "Infinity", "+nan"])
def test_infinite_csv_feature_is_rejected_up_front(tmp_path, capsys, cell):
    data = _table(tmp_path / "t.csv", cell=cell)
    line = _run_bad(tmp_path, capsys, "--data", data)
    assert f"line 22, column 'f1': non-finite feature {cell!r}" in line


@pytest.mark.parametrize("suffix", ["csv", "npz"])
def test_feature_whose_square_overflows_is_rejected_not_zeroed(tmp_path, capsys, suffix):
    x = np.random.default_rng(0).normal(size=(40, 3))
    x[3, 1], x[7, 1] = 1e300, -1e300
    y = np.arange(40) % 2
    if suffix == "csv":
        rows = ["f0,f1,f2,label"] + [
            ",".join([*(repr(float(v)) for v in row), str(c)]) for row, c in zip(x, y, strict=True)
        ]
        (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
        args, column = ("--data", str(tmp_path / "d.csv")), "'f1'"
    else:
        np.savez(tmp_path / "d.npz", x=x, y=y)
        args, column = ("--data", str(tmp_path / "d.npz"), "--label", "y"), "'x[1]'"
    line = _run_bad(tmp_path, capsys, *args)
    assert f"column {column}: values up to 1e+300 in magnitude overflow standardisation" in line


def test_complex_npz_features_are_rejected_not_made_real(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)) + 1j * rng.normal(size=(40, 3))
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 2)
    line = _run_bad(tmp_path, capsys, "--data", str(tmp_path / "d.npz"), "--label", "y")
    assert "complex features (array 'x' has dtype complex128)" in line
    assert "real numbers" in line


@pytest.mark.parametrize(
    ("content", "what"), [(b"a,b,label\n1,2,0\n", "not a zip file"), (b"\x93NUMPY\x01\x00", ".npy")]
)
def test_a_file_named_npz_that_is_not_an_archive_says_so(tmp_path, capsys, content, what):
    (tmp_path / "d.npz").write_bytes(content)
    line = _run_bad(tmp_path, capsys, "--data", str(tmp_path / "d.npz"))
    assert "'" + str(tmp_path / "d.npz") + "' is not an NPZ archive" in line and what in line
    assert "pickle" not in line


def test_threads_beyond_the_cores_is_one_line_not_a_crash(tmp_path):
    # A subprocess: before the check, torch.set_num_threads(100000) killed the process.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dropkit.cli",
            "study",
            "--no-progress",
            "--threads",
            "100000",
            "--out",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"dropkit study: error: --threads must be an int in [1, {cores}] (the CPU cores this "
        "process may use), got 100000"
    ]
    assert os.listdir(tmp_path) == []


def test_hidden_width_too_large_for_memory_is_refused_with_the_estimate(tmp_path, capsys):
    line = _run_bad(tmp_path, capsys, "--hidden", "1099511627776")
    assert line.startswith("dropkit study: error: --hidden 1099511627776 needs at least ")
    assert "PiB of memory" in line and "iB is available; choose smaller widths" in line


@pytest.mark.parametrize("out", ["/proc/dropkit-report", "/sys/dropkit-report/nested"])
def test_unwritable_out_is_refused_before_any_work(tmp_path, capsys, out):
    line = _run_bad(tmp_path, capsys, "--out", out)
    parent = "/" + out.split("/")[1]
    assert line.startswith(
        f"dropkit study: error: --out {out!r}: cannot write a report under {parent!r}"
    )
    assert not os.path.exists(out)


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (["--seed", "4294967296"], "[0, 4294967295]"),
        (["--seed", "-1"], "[0, 4294967295]"),
        (["--seed", "4294967295", "--final-seeds", "3"], "[0, 4294967293]"),
    ],
)
def test_seed_outside_32_bits_names_the_flag_and_the_range(tmp_path, capsys, args, allowed):
    line = _run_bad(tmp_path, capsys, *args)
    assert line.startswith(f"dropkit study: error: --seed must be an int in {allowed}")
    assert line.endswith(f"got {args[1]}")
