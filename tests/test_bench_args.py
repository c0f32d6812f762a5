"""The kernel benchmark's ``--allocator`` choices (how the benchmark is re-run under each) and its
argument errors."""

import os
import subprocess
import sys

import pytest
import torch

from dropkit import bench, cli


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for key in ("DROPKIT_BENCH_ALLOCATOR", "LD_PRELOAD", "MALLOC_CONF", *bench.WARM_ALLOCATOR):
        monkeypatch.delenv(key, raising=False)


def test_default_runs_in_this_process():
    assert bench.allocator_env("default") is None


def test_warm_sets_glibc_tunables_and_the_marker():
    env = bench.allocator_env("warm")
    assert env["MALLOC_MMAP_MAX_"] == "0"
    assert int(env["MALLOC_TRIM_THRESHOLD_"]) >= 1 << 32
    assert env["DROPKIT_BENCH_ALLOCATOR"] == "warm"
    assert "LD_PRELOAD" not in env


@pytest.mark.parametrize("name", ["jemalloc", "tcmalloc"])
def test_preload_puts_the_found_library_first(monkeypatch, name):
    monkeypatch.setattr(bench, "find_allocator", lambda n: f"lib{n}-test.so.9")
    monkeypatch.setenv("LD_PRELOAD", "libother.so")
    env = bench.allocator_env(name)
    assert env["LD_PRELOAD"] == f"lib{name}-test.so.9 libother.so"
    assert env["DROPKIT_BENCH_ALLOCATOR"] == name
    assert env.get("MALLOC_CONF") == (bench.JEMALLOC_CONF if name == "jemalloc" else None)


def test_jemalloc_keeps_the_users_malloc_conf(monkeypatch):
    monkeypatch.setattr(bench, "find_allocator", lambda n: "libjemalloc.so.2")
    monkeypatch.setenv("MALLOC_CONF", "narenas:1")
    assert bench.allocator_env("jemalloc")["MALLOC_CONF"] == "narenas:1"


def test_jemalloc_conf_keeps_large_blocks():
    # The point of the settings: large blocks stay in the process instead of going back to the OS.
    conf = dict(item.split(":") for item in bench.JEMALLOC_CONF.split(","))
    assert conf["dirty_decay_ms"] == "-1" and conf["muzzy_decay_ms"] == "-1"
    assert conf["oversize_threshold"] == "1"


@pytest.mark.parametrize(
    ("name", "package"), [("jemalloc", "libjemalloc2"), ("tcmalloc", "libtcmalloc-minimal4")]
)
def test_missing_allocator_is_a_clear_error(monkeypatch, name, package):
    monkeypatch.setattr(bench, "find_allocator", lambda n: None)
    with pytest.raises(
        ValueError, match=rf"--allocator {name}: .*no {name}.*{package}.*--allocator warm"
    ):
        bench.allocator_env(name)


def test_missing_allocator_exits_2_from_the_cli(monkeypatch, capsys):
    monkeypatch.setattr(bench, "find_allocator", lambda n: None)
    assert cli.main(["bench", "--allocator", "jemalloc", "--sizes", "12"]) == 2
    assert "--allocator jemalloc" in capsys.readouterr().err


def test_unknown_allocator_is_named():
    with pytest.raises(
        ValueError,
        match=r"--allocator must be one of default, warm, jemalloc, tcmalloc; got 'mimalloc'",
    ):
        bench.allocator_env("mimalloc")


def test_rerun_that_did_not_load_the_preload_is_an_error(monkeypatch):
    # The re-run process (marker set) checks that the allocator really is mapped in.
    monkeypatch.setenv("DROPKIT_BENCH_ALLOCATOR", "jemalloc")
    monkeypatch.setenv("LD_PRELOAD", "libjemalloc.so.2")
    monkeypatch.setattr(bench, "loaded_allocator", lambda: None)
    with pytest.raises(
        ValueError, match=r"--allocator jemalloc: LD_PRELOAD='libjemalloc.so.2' did not load"
    ):
        bench.allocator_env("jemalloc")


def test_rerun_under_its_allocator_does_not_rerun_again(monkeypatch):
    monkeypatch.setenv("DROPKIT_BENCH_ALLOCATOR", "warm")
    assert bench.allocator_env("warm") is None
    monkeypatch.setenv("DROPKIT_BENCH_ALLOCATOR", "tcmalloc")
    monkeypatch.setattr(bench, "loaded_allocator", lambda: "tcmalloc")
    assert bench.allocator_env("tcmalloc") is None


def test_this_process_reports_glibc():
    # pytest itself runs without a preloaded allocator (the fixture clears LD_PRELOAD only for
    # children; the check reads this process's own memory map).
    if os.environ.get("LD_PRELOAD"):
        pytest.skip("the test process itself was started with LD_PRELOAD")
    assert bench.loaded_allocator() is None
    assert bench.allocator_info().startswith("allocator: default")


def test_cli_rerun_reaches_the_benchmark():
    # `dropkit bench` re-executes itself for the allocator: as `python -m dropkit.bench`, not as the
    # program name `dropkit bench` (which is no file).
    env = {k: v for k, v in os.environ.items() if k != "DROPKIT_BENCH_ALLOCATOR"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "dropkit.cli",
            "bench",
            "--allocator",
            "warm",
            "--sizes",
            "12",
            "--repeats",
            "1",
            "--no-compile",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "allocator: warm (glibc MALLOC_MMAP_MAX_=0" in run.stdout
    assert "| 2^12 |" in run.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_device_is_a_clear_error(capsys):
    assert cli.main(["bench", "--device", "cuda", "--sizes", "12"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: no CUDA device is available here" in err and "--device cpu" in err
