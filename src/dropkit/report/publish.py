r"""Publishing a report folder without ever losing a file dropkit did not write.

The rules, in one place (``dropkit study`` and any other command that writes a report folder
use them through :func:`check_target` and :func:`staging`):

- **Only dropkit's own folders are replaced.** A published report carries a marker file,
  ``.dropkit-report.json`` (format name, format version, and the size and SHA-256 of every file
  the report wrote), written last. A folder is replaced only if it is missing, empty, or carries
  a marker of a known version and holds nothing else: no file the marker does not list, none
  changed since. Anything else is refused with one line naming the folder and the ways out.
  A ``keep`` path (the ``--data`` file) inside the folder is refused too.
- **One writer per folder.** ``.<name>.dropkit-lock`` next to the folder is held (``flock``) for
  the whole run and holds the writer's pid; a second run refuses at once, or waits up to
  ``timeout`` seconds. The kernel drops the lock of a dead process, so a stale lock file is
  taken over.
- **Stage, write, publish.** Files go to ``.<name>.dropkit-stage-<pid>-<token>/report`` next to
  the folder (its ``owner.json`` names the pid). Publishing writes the marker, syncs, and swaps
  the staged folder with the target in one ``renameat2(RENAME_EXCHANGE)`` (Linux;
  ``renamex_np(RENAME_SWAP)`` on macOS), so a run killed at any instant leaves the old or the
  new report complete at the target. Where the file system cannot swap, two renames are used
  (old aside into the staging folder, new in); a run killed between them is rolled back to the
  old report by the next run.
- **Leftovers are cleaned by the next run** on the same folder: staging folders whose
  ``owner.json`` names a dead pid on this host, or that are older than a day. Nothing without
  the staging name and ``owner.json`` is touched.

Only the standard library is imported, so the file can be loaded on its own.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = [
    "MARKER",
    "FORMAT_VERSION",
    "OutputRefused",
    "OutputBusy",
    "Stage",
    "check_target",
    "staging",
    "lock",
    "clean_stale",
]

#: The marker file of a published report folder.
MARKER = ".dropkit-report.json"
#: The marker's format version; a marker of a newer version is not replaced.
FORMAT_VERSION = 1
_FORMAT = "dropkit-report"
_STAGE_FORMAT = "dropkit-stage"
_OWNER = "owner.json"
#: A staging folder older than this is stale even when its pid looks alive (pid reuse, other host).
STALE_AFTER_S = 24 * 3600.0

_HINT = "choose another --out, or remove the folder yourself"


class OutputRefused(ValueError):
    """The output folder may not be replaced (it holds something dropkit did not write)."""


class OutputBusy(OutputRefused):
    """Another dropkit run holds the output folder's lock."""


# --------------------------------------------------------------------------------------------
# What may be replaced
# --------------------------------------------------------------------------------------------


def _names(parent: str, name: str) -> tuple[str, str]:
    """(staging prefix, lock path) of the target ``parent/name``."""
    return f".{name}.dropkit-stage-", os.path.join(parent, f".{name}.dropkit-lock")


def _walk(folder: str) -> tuple[list[str], list[str], list[str]]:
    """(files, folders, others) under ``folder`` as sorted '/'-joined relative paths, no links followed."""
    files: list[str] = []
    folders: list[str] = []
    others: list[str] = []
    pending = [""]
    while pending:
        rel = pending.pop()
        with os.scandir(os.path.join(folder, rel) if rel else folder) as entries:
            for entry in entries:
                path = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_symlink():
                    others.append(path)
                elif entry.is_dir():
                    folders.append(path)
                    pending.append(path)
                elif entry.is_file():
                    files.append(path)
                else:
                    others.append(path)
    return sorted(files), sorted(folders), sorted(others)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _show(paths: list[str]) -> str:
    shown = ", ".join(repr(p) for p in paths[:3])
    return shown + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def _why_not_ours(path: str) -> str | None:
    """Why the existing folder ``path`` may not be replaced, or None when it may."""
    files, folders, others = _walk(path)
    if not files and not folders and not others:
        return None
    marker = _read_json(os.path.join(path, MARKER))
    top = sorted({p.split("/", 1)[0] for p in files + folders + others})
    if not isinstance(marker, dict) or marker.get("format") != _FORMAT:
        if "report.json" in top:  # a stray report.json, or a report of a dropkit before markers
            return f"holds {_show(top)} but no dropkit report marker ({MARKER})"
        return f"is not empty and is not a dropkit report (it holds {_show(top)})"
    version = marker.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        return (
            f"carries a dropkit report marker of format version {version!r}, which this dropkit "
            f"(format {FORMAT_VERSION}) does not know"
        )
    listed = marker.get("files") if isinstance(marker.get("files"), dict) else {}
    listed_folders = set(marker.get("folders") or ())
    foreign = [p for p in files if p != MARKER and p not in listed]
    foreign += [p for p in folders if p not in listed_folders] + others
    if foreign:
        return f"holds files the report did not write ({_show(sorted(foreign))})"
    changed = []
    for rel in files:
        if rel == MARKER:
            continue
        entry = listed[rel]
        full = os.path.join(path, rel)
        if not isinstance(entry, dict) or os.path.getsize(full) != entry.get("size"):
            changed.append(rel)
        elif _sha256(full) != entry.get("sha256"):
            changed.append(rel)
    if changed:
        return f"holds files changed since the report wrote them ({_show(changed)})"
    return None


def check_target(out_dir: str | os.PathLike, *, keep: Iterable[str | os.PathLike] = ()) -> str:
    """Checks that ``out_dir`` may receive a report, before any work; returns its absolute path.

    A missing or empty folder is fine (a missing parent is created when the report is
    published); an existing one must be a dropkit report holding nothing the report did not
    write. Nothing is written.

    Args:
        out_dir: the report folder.
        keep: files that must survive the replacement (the study's ``--data`` file): refused when
            they lie inside ``out_dir``.

    Raises:
        OutputRefused: (a ValueError) ``out_dir`` is a file or a link, a folder that is not a
            dropkit report or holds files it did not write, holds a ``keep`` file, or its parent
            is not a writable folder.

    Example:
        >>> import tempfile, os
        >>> check_target(os.path.join(tempfile.mkdtemp(), "report")).endswith("report")
        True
    """
    path = os.path.abspath(os.fspath(out_dir))
    if os.path.lexists(path):
        if os.path.islink(path) or not os.path.isdir(path):
            raise OutputRefused(f"output {path!r} exists and is not a folder; choose another --out")
        why = _why_not_ours(path)
        if why is not None:
            raise OutputRefused(f"output folder {path!r} {why}; refusing to replace it: {_HINT}")
    real = os.path.realpath(path)
    for kept in keep:
        if os.path.commonpath([real, os.path.realpath(os.fspath(kept))]) == real:
            raise OutputRefused(
                f"output folder {path!r} holds {os.fspath(kept)!r}, which must be kept; refusing "
                "to replace it: choose another --out"
            )
    probe = os.path.dirname(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise OutputRefused(f"cannot write the report under {probe!r}: not a writable folder")
    return path


# --------------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------------


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Lock:
    """An exclusive lock on ``path`` held by this process; the file holds the pid."""

    def __init__(self, path: str, target: str, timeout: float) -> None:
        self.path, self.fd = path, -1
        deadline = time.monotonic() + max(float(timeout), 0.0)
        while True:
            if self._try():
                return
            if time.monotonic() >= deadline:
                owner = _read_json(path) or {}
                who = f"pid {owner['pid']}" if isinstance(owner.get("pid"), int) else "a process"
                raise OutputBusy(
                    f"output folder {target!r} is being written by another dropkit run ({who}, "
                    f"lock {path!r}); wait for it to finish, or choose another --out"
                )
            time.sleep(0.1)

    def _try(self) -> bool:
        try:
            import fcntl
        except ImportError:  # Windows: O_EXCL, and a dead pid's file is taken over
            return self._try_exclusive()
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            # The holder before us may have unlinked the file between our open and our flock:
            # then we hold a lock on a file nobody else will open; open the path again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                self._write_owner()
                return True
            os.close(fd)
        return False  # pragma: no cover - the file replaced 100 times in a row

    def _try_exclusive(self, retry: bool = True) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _read_json(self.path) or {}
            if owner.get("host") == socket.gethostname() and not _pid_alive(owner.get("pid")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                return retry and self._try_exclusive(retry=False)
            return False
        self.fd = fd
        self._write_owner()
        return True

    def _write_owner(self) -> None:
        text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def release(self) -> None:
        if self.fd < 0:
            return
        # Unlinked while still held, so a waiter that opened this file sees it is gone and retries.
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = -1


@contextlib.contextmanager
def lock(out_dir: str | os.PathLike, *, timeout: float = 0.0) -> Iterator[None]:
    """Holds the lock of the report folder ``out_dir`` (``.<name>.dropkit-lock`` beside it).

    Raises:
        OutputBusy: another process holds it for longer than ``timeout`` seconds.
    """
    target = os.path.abspath(os.fspath(out_dir))
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    held = _Lock(_names(parent, name)[1], target, timeout)
    try:
        yield
    finally:
        held.release()


# --------------------------------------------------------------------------------------------
# Leftovers of dead runs
# --------------------------------------------------------------------------------------------


def _stale(holder: str, owner: Any) -> bool:
    if not isinstance(owner, dict) or owner.get("format") != _STAGE_FORMAT:
        return False
    try:
        age = time.time() - os.lstat(holder).st_mtime
    except OSError:
        return False
    if age > STALE_AFTER_S:
        return True
    if owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    # Called under the lock, before this run's own staging folder exists: one of this process's
    # is a leftover of an earlier, interrupted call.
    return pid == os.getpid() or not _pid_alive(pid)


def clean_stale(out_dir: str | os.PathLike) -> list[str]:
    """Removes the staging folders that dead runs left next to ``out_dir``; returns their paths.

    Call it holding :func:`lock`. Only folders named ``.<name>.dropkit-stage-*`` that hold an
    ``owner.json`` written by dropkit are candidates: those of a dead pid on this host, of this
    process (an earlier call cut short), or older than :data:`STALE_AFTER_S`. A run killed
    between the two renames of the fallback swap left the target missing and the old report in
    its staging folder: the old report is moved back first.
    """
    target = os.path.abspath(os.fspath(out_dir))
    parent, name = os.path.split(target)
    prefix = _names(parent, name)[0]
    removed = []
    try:
        candidates = sorted(e for e in os.listdir(parent) if e.startswith(prefix))
    except FileNotFoundError:
        return removed
    for entry in candidates:
        holder = os.path.join(parent, entry)
        if os.path.islink(holder) or not os.path.isdir(holder):
            continue
        if not _stale(holder, _read_json(os.path.join(holder, _OWNER))):
            continue
        old = os.path.join(holder, "old")
        if not os.path.lexists(target) and os.path.isdir(old) and _why_not_ours(old) is None:
            os.rename(old, target)
            _fsync_dir(parent)
        shutil.rmtree(holder, ignore_errors=True)
        removed.append(holder)
    return removed


# --------------------------------------------------------------------------------------------
# Stage, write, publish
# --------------------------------------------------------------------------------------------


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_marker(folder: str) -> None:
    """Syncs every file under ``folder``, then writes and syncs the marker that lists them."""
    files, folders, others = _walk(folder)
    if others:
        raise OutputRefused(f"a report may hold only files and folders, got {_show(others)}")
    listing = {}
    for rel in files:
        full = os.path.join(folder, rel)
        _fsync_file(full)
        listing[rel] = {"size": os.path.getsize(full), "sha256": _sha256(full)}
    for rel in ["", *folders]:
        _fsync_dir(os.path.join(folder, rel))
    marker = {
        "format": _FORMAT,
        "version": FORMAT_VERSION,
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "folders": folders,
        "files": listing,
    }
    path = os.path.join(folder, MARKER)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(marker, handle, indent=1)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(folder)


def _load_swap():
    """A function swapping two paths atomically, or None where the system has none."""
    import ctypes
    import sys

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover
        return None
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        at_fdcwd, rename_exchange = -100, 2

        def swap(a: str, b: str) -> None:
            if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange):
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), a, None, b)

        return swap
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):  # pragma: no cover
        rename_swap = 2

        def swap(a: str, b: str) -> None:
            if libc.renamex_np(os.fsencode(a), os.fsencode(b), rename_swap):
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), a, None, b)

        return swap
    return None  # pragma: no cover


_swap = _load_swap()
# The swap's errors that mean "not supported here": fall back to two renames.
_NO_SWAP = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM arriving inside the block are handled when it ends (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    saved = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        saved[signum] = signal.signal(signum, lambda n, _frame: pending.append(n))
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        for signum in pending:
            handler = saved[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), signum)


class Stage(os.PathLike):
    """A report being written: files go under :attr:`path`; :meth:`publish` makes it the target.

    It is path-like (``os.path.join(stage, "report.json")`` works). :attr:`published` turns
    true at the instant the new report is in place, so a caller knows what an interruption
    left behind.
    """

    def __init__(self, target: str, holder: str, keep: Iterable[str] = ()) -> None:
        self.target = target
        self.holder = holder
        self.keep = list(keep)
        self.path = os.path.join(holder, "report")
        self.published = False

    def __fspath__(self) -> str:
        return self.path

    def __str__(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"Stage(target={self.target!r}, path={self.path!r}, published={self.published})"

    def publish(self) -> str:
        """Writes the marker, then puts the staged report at the target; returns the target.

        Raises:
            OutputRefused: the target changed during the run and may no longer be replaced (the
                new report is discarded: a user's file is never traded for it).
            OSError: the disk is full, or the file system refused (the old report is intact).
        """
        if self.published:
            return self.target
        _write_marker(self.path)
        parent = os.path.dirname(self.target)
        check_target(self.target, keep=self.keep)  # it may have changed since the run began
        with _signals_deferred():
            if os.path.lexists(self.target):
                self._replace()
            else:
                os.rename(self.path, self.target)
            self.published = True
            _fsync_dir(parent)
        return self.target

    def _replace(self) -> None:
        if _swap is not None:
            try:
                _swap(self.path, self.target)
                return
            except OSError as err:
                if err.errno not in _NO_SWAP:
                    raise
        # Two renames: a run killed between them is rolled back by the next run (clean_stale).
        old = os.path.join(self.holder, "old")
        os.rename(self.target, old)
        try:
            os.rename(self.path, self.target)
        except BaseException:
            os.rename(old, self.target)
            raise


def _make_holder(parent: str, name: str) -> str:
    prefix = _names(parent, name)[0]
    holder = os.path.join(parent, f"{prefix}{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(holder, 0o755)
    try:
        owner = {
            "format": _STAGE_FORMAT,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "created": time.time(),
        }
        with open(os.path.join(holder, _OWNER), "w", encoding="utf-8") as handle:
            json.dump(owner, handle)
        os.mkdir(os.path.join(holder, "report"), 0o755)
    except BaseException:
        shutil.rmtree(holder, ignore_errors=True)
        raise
    return holder


@contextlib.contextmanager
def staging(
    out_dir: str | os.PathLike,
    *,
    keep: Iterable[str | os.PathLike] = (),
    timeout: float = 0.0,
) -> Iterator[Stage]:
    """Locks ``out_dir``, yields a :class:`Stage` to write into, publishes it on a clean exit.

    On the way in: :func:`check_target`, the lock (refused at once, or after ``timeout``
    seconds), :func:`clean_stale`, a fresh staging folder. On any exception before publishing
    (KeyboardInterrupt and a full disk included) the staging folder is removed and ``out_dir``
    is left exactly as it was. The lock is released on the way out in every case.

    Example:
        >>> import os, tempfile
        >>> target = os.path.join(tempfile.mkdtemp(), "report")
        >>> with staging(target) as stage:
        ...     _ = open(os.path.join(stage, "report.json"), "w").write("{}")
        >>> sorted(os.listdir(target))
        ['.dropkit-report.json', 'report.json']
    """
    keep = [os.fspath(k) for k in keep]
    target = check_target(out_dir, keep=keep)
    parent, name = os.path.split(target)
    with lock(target, timeout=timeout):
        check_target(target, keep=keep)
        clean_stale(target)
        holder = _make_holder(parent, name)
        stage = Stage(target, holder, keep)
        try:
            yield stage
            stage.publish()
        finally:
            shutil.rmtree(holder, ignore_errors=True)
