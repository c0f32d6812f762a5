"""``--out`` never loses a file dropkit did not write (issue 12, item 1).

The study itself is stubbed (its own tests run it): these tests check what the CLI and
:mod:`dropkit.report.publish` do around it — refusals, the marker, the lock, a kill between the
renames, leftovers of dead runs, Ctrl-C after publishing and a full disk.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from dropkit import cli, report, study
from dropkit.report import publish

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _table(path) -> str:
    rng = np.random.default_rng(0)
    lines = ["f0,f1,f2,label"]
    lines += [",".join(f"{v:.3f}" for v in rng.normal(size=3)) + f",{r % 2}" for r in range(40)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _tree(root) -> dict[str, bytes | None]:
    """Every path under ``root`` (hidden ones too): file bytes, None for a folder, link target."""
    out: dict[str, bytes | None] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root)
            if os.path.islink(full):
                out[rel] = ("-> " + os.readlink(full)).encode()
            elif os.path.isdir(full):
                out[rel] = None
            else:
                with open(full, "rb") as handle:
                    out[rel] = handle.read()
    return out


def _name(folder) -> str:
    with open(os.path.join(folder, "report.json")) as handle:
        return json.load(handle)["data"]["name"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def stub(monkeypatch):
    """Stubs the study: it writes a search.db into its folder and returns tiny numbers."""
    calls = []

    def run_study(config, workdir, **kwargs):
        calls.append(os.fspath(workdir))
        with open(os.path.join(workdir, "search.db"), "wb") as handle:
            handle.write(b"SQLite format 3\x00" + bytes(100))
        return study.StudyResult({"data": {"name": "new"}}, {})

    monkeypatch.setattr(study, "run_study", run_study)
    monkeypatch.setattr(study, "format_summary", lambda numbers, out=None: "summary")
    return calls


def _study(out, data, *extra: str) -> int:
    return cli.main(["study", "--no-progress", "--data", str(data), "--out", str(out), *extra])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dropkit study: error: ")
    return lines[0]


# --------------------------------------------------------------------------------------------
# Only dropkit's own folders are replaced
# --------------------------------------------------------------------------------------------


def test_out_dot_in_a_git_checkout_with_a_stray_report_json_is_refused_untouched(
    tmp_path, monkeypatch, capsys, stub
):
    checkout = tmp_path / "checkout"
    (checkout / ".git" / "objects").mkdir(parents=True)
    (checkout / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (checkout / "src").mkdir()
    (checkout / "src" / "model.py").write_text("import torch\n")
    (checkout / "report.json").write_text('{"data": {"name": "stray"}}\n')
    _table(checkout / "data.csv")
    before, around = _tree(checkout), sorted(os.listdir(tmp_path))
    monkeypatch.chdir(checkout)
    status = cli.main(["study", "--no-progress", "--data", "data.csv", "--out", "."])
    line = _one_error_line(capsys)
    assert status == cli.EXIT_BAD_INPUT
    assert str(checkout) in line and "refusing to replace" in line and "--out" in line
    assert (
        "remove the folder yourself" in line
        and "'.git'" in line
        and "no dropkit report marker" in line
    )
    assert _tree(checkout) == before
    assert sorted(os.listdir(tmp_path)) == around, "no lock or staging folder beside it"
    assert stub == [], "refused before any work"


def test_a_data_file_inside_an_old_report_folder_is_never_deleted(tmp_path, capsys, stub):
    target = tmp_path / "report"
    report.write_report(target, {"data": {"name": "old"}}, {})
    # A kept file that looks like one of the report's own is refused all the same.
    with pytest.raises(publish.OutputRefused, match="which must be kept"):
        publish.check_target(target, keep=[target / "report.json"])
    data = _table(target / "data.csv")
    before = _tree(target)
    assert _study(target, data) == cli.EXIT_BAD_INPUT
    line = _one_error_line(capsys)
    assert "data.csv" in line and "refusing to replace" in line and "another --out" in line
    assert _tree(target) == before


def test_notes_added_to_an_old_report_folder_are_never_deleted(tmp_path, capsys, stub):
    data = _table(tmp_path / "data.csv")
    target = tmp_path / "report"
    report.write_report(target, {"data": {"name": "old"}}, {})
    (target / "figures" / "my-notes.txt").write_text("what I learned")
    before = _tree(target)
    assert _study(target, data) == cli.EXIT_BAD_INPUT
    line = _one_error_line(capsys)
    assert "did not write" in line and "figures/my-notes.txt" in line and str(target) in line
    assert _tree(target) == before and stub == []


def test_a_report_file_edited_by_the_user_is_never_replaced(tmp_path, capsys, stub):
    data = _table(tmp_path / "data.csv")
    target = tmp_path / "report"
    report.write_report(target, {"data": {"name": "old"}}, {})
    with open(target / "index.html", "a") as handle:
        handle.write("<!-- my notes -->")
    before = _tree(target)
    assert _study(target, data) == cli.EXIT_BAD_INPUT
    assert "changed since" in _one_error_line(capsys) and _tree(target) == before


def test_notes_added_to_the_old_report_during_the_run_are_kept(tmp_path, monkeypatch, capsys, stub):
    data = _table(tmp_path / "data.csv")
    target = tmp_path / "report"
    report.write_report(target, {"data": {"name": "old"}}, {})
    stubbed = study.run_study

    def run_study(config, workdir, **kwargs):
        (target / "notes.txt").write_text("written while the study ran")
        return stubbed(config, workdir, **kwargs)

    monkeypatch.setattr(study, "run_study", run_study)
    assert _study(target, data) == cli.EXIT_BAD_INPUT
    assert "'notes.txt'" in _one_error_line(capsys)
    assert (target / "notes.txt").read_text() == "written while the study ran"
    assert _name(target) == "old"
    assert sorted(os.listdir(tmp_path)) == ["data.csv", "report"]


def test_a_folder_without_the_marker_is_refused_even_with_only_report_files(tmp_path):
    target = tmp_path / "report"
    report.write_report(target, {"data": {"name": "old"}}, {})
    os.remove(target / publish.MARKER)
    with pytest.raises(publish.OutputRefused, match="no dropkit report marker"):
        publish.check_target(target)
    os.remove(target / "report.json")
    with pytest.raises(publish.OutputRefused, match="is not a dropkit report"):
        publish.check_target(target)


def test_a_marker_of_a_newer_format_is_refused(tmp_path):
    target = tmp_path / "report"
    report.write_report(target, {"data": {"name": "old"}}, {})
    marker = json.loads((target / publish.MARKER).read_text())
    marker["version"] = publish.FORMAT_VERSION + 1
    (target / publish.MARKER).write_text(json.dumps(marker))
    with pytest.raises(publish.OutputRefused, match="format version 2"):
        publish.check_target(target)


def test_a_link_in_a_report_folder_is_refused(tmp_path):
    target = tmp_path / "report"
    report.write_report(target, {"data": {"name": "old"}}, {})
    os.symlink(tmp_path, target / "home")
    with pytest.raises(publish.OutputRefused, match="'home'"):
        publish.check_target(target)


def test_an_empty_or_missing_folder_and_a_marked_report_are_replaced(tmp_path, capsys, stub):
    data = _table(tmp_path / "data.csv")
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        assert _study(target, data) == 0, capsys.readouterr().err
        assert _name(target) == "new"
    target = tmp_path / "old"
    report.write_report(target, {"data": {"name": "old"}}, {})
    assert _study(target, data) == 0
    assert _name(target) == "new"
    marker = json.loads((target / publish.MARKER).read_text())
    assert (marker["format"], marker["version"]) == ("dropkit-report", publish.FORMAT_VERSION)
    assert sorted(marker["files"]) == ["index.html", "report.json", "search.db"]
    assert marker["folders"] == ["figures"]
    publish.check_target(target)  # a rerun may replace it again
    assert sorted(os.listdir(tmp_path)) == ["data.csv", "empty", "new", "old"]


# --------------------------------------------------------------------------------------------
# One writer per folder
# --------------------------------------------------------------------------------------------

_LOAD = f"""
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("publish", {publish.__file__!r})
publish = importlib.util.module_from_spec(spec)
spec.loader.exec_module(publish)
"""


def _script(body: str, *args: str) -> subprocess.Popen:
    code = _LOAD + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_second_study_on_the_same_out_refuses_and_a_dead_holder_s_lock_is_taken_over(
    tmp_path, capsys, stub
):
    data = _table(tmp_path / "data.csv")
    target = tmp_path / "report"
    report.write_report(target, {"data": {"name": "old"}}, {})
    before = _tree(target)
    holder = _script(
        """
        with publish.lock(sys.argv[1]):
            print("locked", flush=True)
            sys.stdin.read()
        """,
        str(target),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _study(target, data) == cli.EXIT_BAD_INPUT
        line = _one_error_line(capsys)
        assert f"pid {holder.pid}" in line and "another dropkit run" in line and "--out" in line
        assert _tree(target) == before and stub == []
    finally:
        holder.kill()  # SIGKILL: its lock file stays, naming a dead pid
        holder.wait()
    lock_file = tmp_path / ".report.dropkit-lock"
    assert json.loads(lock_file.read_text())["pid"] == holder.pid
    assert _study(target, data) == 0
    assert _name(target) == "new"
    assert sorted(os.listdir(tmp_path)) == ["data.csv", "report"]


def test_a_waiter_gets_the_lock_once_it_is_released(tmp_path):
    target = tmp_path / "report"
    got = []
    with publish.lock(target):
        with pytest.raises(publish.OutputBusy, match="being written by another dropkit run"):
            with publish.lock(target, timeout=0.2):
                pass

        def wait() -> None:
            with publish.lock(target, timeout=60):
                got.append(True)

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)
        assert got == []
    waiter.join(60)
    assert got == [True]
    assert os.listdir(tmp_path) == []


def test_without_flock_the_lock_is_an_exclusive_file_and_a_dead_pid_s_is_taken_over(
    tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "fcntl", None)  # as on Windows: import fcntl fails
    target = tmp_path / "report"
    with publish.lock(target):
        with pytest.raises(publish.OutputBusy, match=f"pid {os.getpid()}"):
            with publish.lock(target):
                pass
    assert os.listdir(tmp_path) == []
    owner = {"pid": _dead_pid(), "host": socket.gethostname()}
    (tmp_path / ".report.dropkit-lock").write_text(json.dumps(owner))
    with publish.lock(target):
        lock_owner = json.loads((tmp_path / ".report.dropkit-lock").read_text())
        assert lock_owner["pid"] == os.getpid()
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# A run killed while publishing; leftovers of dead runs
# --------------------------------------------------------------------------------------------

_PUBLISH_NEW = """
target = sys.argv[1]
with publish.staging(target) as stage:
    with open(os.path.join(stage, "report.json"), "w") as handle:
        handle.write('{"data": {"name": "new"}}')
"""


def _killed(body: str, target) -> None:
    proc = _script(textwrap.dedent(body) + _PUBLISH_NEW, str(target))
    proc.communicate(timeout=60)
    assert proc.returncode == 137


def test_a_run_killed_right_after_the_swap_leaves_the_new_report_complete(tmp_path):
    target = tmp_path / "report"
    report.write_report(target, {"data": {"name": "old"}}, {})
    _killed(
        """
        real = publish._swap
        def swap(a, b):
            real(a, b)
            os._exit(137)
        publish._swap = swap
        """,
        target,
    )
    assert _name(target) == "new"
    publish.check_target(target)  # complete: the marker lists every file
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".report.dropkit-stage-")]
    assert len(leftovers) == 1  # holding the old report, cleaned by the next run
    with publish.lock(target):
        assert publish.clean_stale(target) == [str(tmp_path / leftovers[0])]
    assert os.listdir(tmp_path) == ["report"] and _name(target) == "new"


_KILL_BETWEEN_RENAMES = """
publish._swap = None
real, calls = os.rename, []
def rename(a, b):
    calls.append(a)
    if len(calls) == 2:
        os._exit(137)
    real(a, b)
os.rename = rename
"""


def test_a_run_killed_between_two_renames_is_rolled_back_to_the_old_report(tmp_path, capsys, stub):
    data = _table(tmp_path / "data.csv")
    target = tmp_path / "report"
    report.write_report(target, {"data": {"name": "old"}}, {})
    old = _tree(target)
    # A file system without an atomic swap: the old report moved aside, then killed.
    _killed(_KILL_BETWEEN_RENAMES, target)
    assert not target.exists()
    with publish.lock(target):
        publish.clean_stale(target)
    assert _tree(target) == old
    assert sorted(os.listdir(tmp_path)) == ["data.csv", "report"]
    # The same through the command: the next run rolls back first, then replaces.
    _killed(_KILL_BETWEEN_RENAMES, target)
    assert not target.exists()
    assert _study(target, data) == 0, capsys.readouterr().err
    assert _name(target) == "new"
    assert sorted(os.listdir(tmp_path)) == ["data.csv", "report"]


@pytest.mark.parametrize("swap", ["none", "unsupported"])
def test_the_fallback_without_a_swap_publishes_a_complete_report(tmp_path, monkeypatch, swap):
    def unsupported(a, b):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), a)

    monkeypatch.setattr(publish, "_swap", None if swap == "none" else unsupported)
    target = tmp_path / "report"
    report.write_report(target, {"data": {"name": "one"}}, {})
    report.write_report(target, {"data": {"name": "two"}}, {})
    assert _name(target) == "two"
    publish.check_target(target)
    assert os.listdir(tmp_path) == ["report"]


def _holder(parent, name: str, pid: int, *, host: str | None = None, age_s: float = 0.0) -> str:
    path = parent / name
    (path / "report").mkdir(parents=True)
    (path / "report" / "report.json").write_text("{}")
    owner = {"format": "dropkit-stage", "pid": pid, "host": host or socket.gethostname()}
    (path / "owner.json").write_text(json.dumps(owner))
    if age_s:
        stamp = time.time() - age_s
        os.utime(path, (stamp, stamp))
    return name


def test_staging_folders_of_dead_runs_are_cleaned_and_nothing_else(tmp_path, capsys, stub):
    data = _table(tmp_path / "data.csv")
    dead, alive = _dead_pid(), os.getppid()
    removed = {
        _holder(tmp_path, f".report.dropkit-stage-{dead}-aaaa", dead),
        _holder(tmp_path, f".report.dropkit-stage-{alive}-bbbb", alive, age_s=2 * 86400),
        _holder(
            tmp_path, f".report.dropkit-stage-{dead}-cccc", dead, host="elsewhere", age_s=2 * 86400
        ),
    }
    kept = {
        _holder(tmp_path, f".report.dropkit-stage-{alive}-dddd", alive),  # a live run's
        _holder(tmp_path, f".report.dropkit-stage-{dead}-eeee", dead, host="elsewhere"),
        _holder(tmp_path, f".other.dropkit-stage-{dead}-ffff", dead),  # another folder's
    }
    (tmp_path / ".report.dropkit-stage-mine").mkdir()  # no owner.json: not dropkit's
    (tmp_path / ".report.dropkit-stage-mine" / "thesis.tex").write_text("precious")
    (tmp_path / ".report.tmp-notes").write_text("precious")
    kept |= {".report.dropkit-stage-mine", ".report.tmp-notes"}
    assert _study(tmp_path / "report", data) == 0, capsys.readouterr().err
    names = set(os.listdir(tmp_path))
    assert names == kept | {"data.csv", "report"}
    assert not names & removed


# --------------------------------------------------------------------------------------------
# Ctrl-C and a full disk
# --------------------------------------------------------------------------------------------


def _run_expecting_no_traceback(target, data) -> int:
    try:
        return _study(target, data)
    except KeyboardInterrupt:  # pragma: no cover - the bug this guards against
        pytest.fail("KeyboardInterrupt escaped the command")


def test_ctrl_c_after_the_report_is_published_does_not_say_no_report_written(
    tmp_path, monkeypatch, capsys, stub
):
    data = _table(tmp_path / "data.csv")
    target = tmp_path / "report"
    report.write_report(target, {"data": {"name": "old"}}, {})
    real_rmtree, hits = shutil.rmtree, []

    def rmtree(path, *args, **kwargs):
        if not hits:  # the first removal: the old report, after the new one is in place
            hits.append(path)
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    assert _run_expecting_no_traceback(target, data) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "no report written" not in err and f"the report is complete at {target}" in err
    assert _name(target) == "new"
    publish.check_target(target)
    # Ctrl-C while the summary prints, after publishing: the same.
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)

    def summary(numbers, out=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(study, "format_summary", summary)
    assert _run_expecting_no_traceback(target, data) == cli.EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "no report written" not in err and "the report is complete" in err
    # The interrupted cleanup's leftover went with the next run.
    assert sorted(os.listdir(tmp_path)) == ["data.csv", "report"]


def test_ctrl_c_during_the_swap_is_handled_after_it(tmp_path, monkeypatch):
    target = tmp_path / "report"
    report.write_report(target, {"data": {"name": "old"}}, {})
    real = publish._swap

    def swap(a, b):
        os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of publishing
        real(a, b)

    monkeypatch.setattr(publish, "_swap", swap)
    with pytest.raises(KeyboardInterrupt):
        with publish.staging(target) as stage:
            with open(os.path.join(stage, "report.json"), "w") as handle:
                handle.write('{"data": {"name": "new"}}')
    assert stage.published and _name(target) == "new"


def test_a_full_disk_is_one_line_and_leaves_the_old_report_intact(
    tmp_path, monkeypatch, capsys, stub
):
    data = _table(tmp_path / "data.csv")
    target = tmp_path / "report"
    report.write_report(target, {"data": {"name": "old"}}, {})
    before = _tree(target)

    def disk_full(folder, numbers, figures, command=None):
        with open(os.path.join(folder, "index.html"), "w") as handle:
            handle.write("<html>half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(folder, "report.json"))

    monkeypatch.setattr(report, "write_files", disk_full)
    status = _study(target, data)
    line = _one_error_line(capsys)
    assert status != 0 and status == cli.EXIT_WRITE_FAILED
    assert "No space left on device" in line and str(target) in line and "unchanged" in line
    assert _tree(target) == before
    assert sorted(os.listdir(tmp_path)) == ["data.csv", "report"]
    # Full while writing the marker, the last file: the same.
    monkeypatch.undo()
    monkeypatch.setattr(study, "run_study", lambda *a, **k: study.StudyResult({"data": {}}, {}))

    def marker_full(folder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(publish, "_write_marker", marker_full)
    assert _study(target, data) == cli.EXIT_WRITE_FAILED
    assert "No space left on device" in _one_error_line(capsys)
    assert _tree(target) == before
    assert sorted(os.listdir(tmp_path)) == ["data.csv", "report"]


# --------------------------------------------------------------------------------------------
# End to end: a real study holds the folder while it runs
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_real_study_refuses_while_the_first_runs_then_the_first_replaces(tmp_path, capsys):
    data = _table(tmp_path / "data.csv")
    target = tmp_path / "report"
    report.write_report(target, {"data": {"name": "old"}}, {})
    quick = ["--quick", "--hidden", "8", "--epochs", "30", "--trials", "2", "--seeds", "1"]
    first = subprocess.Popen(
        [sys.executable, "-m", "dropkit.cli", "study", "--no-progress", "--data", data]
        + ["--out", str(target), *quick, "--mc-samples", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not any(n.startswith(".report.dropkit-stage-") for n in os.listdir(tmp_path)):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the first run never started"
        time.sleep(0.05)
    assert _study(target, data, *quick) == cli.EXIT_BAD_INPUT
    assert f"pid {first.pid}" in _one_error_line(capsys)
    assert _name(target) == "old"
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert _name(target) != "old" and "report:" in out
    publish.check_target(target)
    assert sorted(os.listdir(tmp_path)) == ["data.csv", "report"]
