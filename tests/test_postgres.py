"""Several workers share one study through a real PostgreSQL server; one is killed mid-trial.

The fixture starts a throw-away PostgreSQL cluster (Debian's ``postgresql`` package, which
``.ci/run`` installs) on a free port, as the ``postgres`` user when running as root (the server
refuses to run as root). Where the server or psycopg2 is missing the tests fail and say what to
install; deselect them with ``-m "not postgres"`` on a machine without PostgreSQL.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[1]


def _pg_bindir() -> str | None:
    found = shutil.which("pg_ctl")
    if found:
        return str(Path(found).resolve().parent)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4])
    )
    return str(Path(candidates[-1]).parent) if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """URL of a fresh database on a throw-away PostgreSQL server (stopped and removed after)."""
    try:
        import psycopg2
    except ImportError:
        pytest.fail("psycopg2 is not installed: pip install -e '.[dev]'")

    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail(
            "PostgreSQL's server (pg_ctl, initdb) is not installed: apt-get install postgresql "
            '(.ci/run does), or deselect these tests with -m "not postgres"'
        )
    as_user: list[str] = []
    root = tempfile.mkdtemp(prefix="dropkit-pg-")
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            pytest.fail("running as root and there is no 'postgres' user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else None
        if as_user is None:
            shutil.rmtree(root, ignore_errors=True)
            pytest.fail("running as root without runuser to start the server as 'postgres'")
    data, log = os.path.join(root, "data"), os.path.join(root, "server.log")
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    init = subprocess.run(
        [
            *as_user,
            f"{bindir}/initdb",
            "-D",
            data,
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed: {init.stderr[-500:]}")
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
    )
    start = subprocess.run(
        [
            *as_user,
            f"{bindir}/pg_ctl",
            "-D",
            data,
            "-o",
            options,
            "-l",
            log,
            "-w",
            "-t",
            "60",
            "start",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if start.returncode != 0:
        text = Path(log).read_text() if os.path.exists(log) else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed: {start.stderr[-300:]} {text[-500:]}")
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE dropkit_test")
        conn.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/dropkit_test"
    finally:
        subprocess.run(
            [*as_user, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
            capture_output=True,
            env=env,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def _worker(url: str, study: str, markers: Path, hang_at: int | None = None) -> subprocess.Popen:
    env = {
        **os.environ,
        "DROPKIT_TEST_HANG_AT": str(hang_at or ""),
        "DROPKIT_TEST_MARKERS": str(markers),
        "DROPKIT_TEST_SLEEP": "0.5",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "dropkit.worker",
        "--storage",
        url,
        "--study",
        study,
        "--objective",
        "tests._tune_targets:SLOW_SEARCH",
        "--heartbeat-interval",
        "1",
        "--grace-period",
        "4",
    ]
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _markers_of(markers: Path, pid: int) -> list[Path]:
    return [p for p in markers.iterdir() if p.name.startswith(f"{pid}-")]


def test_two_workers_share_a_study_and_a_killed_workers_trial_is_failed_and_rerun(
    postgres_url, tmp_path
):
    from dropkit.tune import load_search, resolve_storage
    from tests._tune_targets import SLOW_SEARCH

    n_trials = 8
    SLOW_SEARCH.create_study(
        resolve_storage(postgres_url, heartbeat_interval=1, grace_period=4), "pg-kill", n_trials
    )
    markers = tmp_path / "markers"
    markers.mkdir()
    victim = _worker(postgres_url, "pg-kill", markers, hang_at=2)
    survivor = None

    def wait_for_markers(count: int) -> None:
        deadline = time.monotonic() + 60
        while len(_markers_of(markers, victim.pid)) < count:
            assert victim.poll() is None, victim.stdout.read()
            assert time.monotonic() < deadline, "the worker never entered a trial"
            time.sleep(0.05)

    try:
        # The survivor starts once the victim is in its first trial, so both share the study
        # whatever the machine's load; the victim hangs inside its second trial: kill it there.
        wait_for_markers(1)
        survivor = _worker(postgres_url, "pg-kill", markers)
        wait_for_markers(2)
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        snapshot = load_search(postgres_url, "pg-kill")
        out, _ = survivor.communicate(timeout=90)
        assert survivor.returncode == 0, out
    finally:
        for proc in (victim, survivor):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    result = load_search(postgres_url, "pg-kill")
    by_number = {r["trial"]: r for r in result.records}
    counts = result.counts()
    assert counts.get("RUNNING", 0) == 0 and counts.get("WAITING", 0) == 0
    assert counts["COMPLETE"] >= n_trials
    # Nothing finished before the kill was lost or changed.
    for row in snapshot.records:
        if row["state"] == "COMPLETE":
            assert by_number[row["trial"]]["state"] == "COMPLETE"
            assert by_number[row["trial"]]["value"] == row["value"]
    # Exactly the killed trial failed (its worker's heartbeat stopped), and it was re-run.
    running_at_kill = [r["trial"] for r in snapshot.records if r["state"] in ("RUNNING", "FAIL")]
    failed = [r for r in result.records if r["state"] == "FAIL"]
    assert len(failed) == 1 and failed[0]["trial"] in running_at_kill
    retries = [r for r in result.records if r["retry_of"] == failed[0]["trial"]]
    assert len(retries) == 1 and retries[0]["state"] == "COMPLETE"
    assert retries[0]["rates"] == failed[0]["rates"]
    # Both workers did work.
    assert (
        len(_markers_of(markers, victim.pid)) >= 2 and len(_markers_of(markers, survivor.pid)) >= 1
    )
    storage = resolve_storage(postgres_url)
    assert isinstance(storage, optuna.storages.RDBStorage)


def test_a_worker_for_a_missing_study_exits_with_a_clear_error(postgres_url, capsys):
    from dropkit.tune import resolve_storage
    from dropkit.worker import main

    resolve_storage(postgres_url)  # Optuna's tables, whichever test runs first
    assert main(["--storage", postgres_url, "--study", "missing"]) == 2
    err = capsys.readouterr().err
    assert "no study 'missing'" in err and "127.0.0.1" in err


def test_a_worker_adds_no_tables_to_a_database_without_them_unless_asked(postgres_url, capsys):
    import sqlalchemy

    from dropkit.worker import main

    bare = (
        postgres_url.rsplit("/", 1)[0] + "/postgres"
    )  # the server's own database: no Optuna tables
    assert main(["--storage", bare, "--study", "s"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not an Optuna storage" in err[0] and "--create" in err[0]
    engine = sqlalchemy.create_engine(bare)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


def test_a_bare_postgresql_url_works_with_the_installed_driver(postgres_url):
    from dropkit.tune import resolve_storage

    bare = "postgresql://" + postgres_url.split("://", 1)[1]
    storage = resolve_storage(bare)
    assert isinstance(storage, optuna.storages.RDBStorage)
    optuna.create_study(storage=storage, study_name="bare-url")
    assert "bare-url" in optuna.get_all_study_names(storage)


def test_the_docs_multi_machine_example_creates_its_study_on_a_real_server(postgres_url):
    # docs/tuning.md's block names a server at db-host (tests/test_docs.py lists it as not run
    # there): run it as written, pointed at this throw-away server.
    from tests.test_docs import docs_block

    code = docs_block("tuning.md", "@db-host/")
    written = "postgresql+psycopg2://dropkit:secret@db-host/dropkit"
    assert code.count(written) == 1
    namespace = {"__name__": "docs_example"}
    exec(compile(code.replace(written, postgres_url), "docs/tuning.md", "exec"), namespace)
    study = optuna.load_study(study_name="mnist1d-rates", storage=postgres_url)
    assert study.user_attrs["n_trials"] == 60
    assert study.user_attrs["dropkit_builtin"]["dataset"] == "mnist1d"
    assert study.trials == []  # created, for workers to fill
