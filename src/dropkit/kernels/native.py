"""An optional C++ autograd node for CPU dropout on small tensors: less per-call overhead.

For a 10^4-element activation (a small MLP's hidden layer) the numba kernel itself takes a few
microseconds; what costs is the Python around it: ``torch.autograd.Function.apply`` and, in
backward, the autograd engine taking the GIL to call a Python node. ``native.cpp`` is the same
operation as a C++ ``torch::autograd::Function`` registered as ``torch.ops.dropkit_native.dropout``:
its forward and backward call dropkit's own numba loop (the serial drivers of
:mod:`dropkit.kernels.cpu`, compiled as C-callable functions with ``numba.cfunc``), so the bits are
exactly those of every other path, and it saves four numbers for backward, no tensor.
On a 2-core machine a (100, 100) forward + backward costs about 28 µs instead of 50 µs (a
``x * 2`` with backward: 21 µs).

**Using it.** :func:`apply` and :func:`apply_seeded` (called by :mod:`dropkit.ops` for a plain
tensor that needs grad, out of place) run the node on the tensors of the small-tensor lane
(:mod:`dropkit.kernels.small`) once the library is loaded, and return None elsewhere (then ops
records its Python ``autograd.Function``).

**Building.** The library is compiled with :func:`torch.utils.cpp_extension.load` (about 15-30 s;
needs a C++ compiler and ninja) by a separate process, ``python -m dropkit.kernels.native``, never
by the process that uses it:

* dropout never waits for it. On first use dropkit starts the build in the background (see
  :mod:`dropkit.kernels.warmup`) and keeps using its Python ``autograd.Function`` (same bits) until
  the library file appears; then it loads it (a few milliseconds) and switches over.
* :func:`load` (explicit) runs the build and waits for it, for at most ``DROPKIT_NATIVE_WAIT``
  seconds (default 300), then gives up and reports why.
* Each build happens in a private staging folder, and the finished library is renamed into place,
  so a killed build leaves no half-written library and no lock anyone waits on: torch's own lock
  file lives in the staging folder, which the next build removes. Builds of the same key are
  serialised by an ``flock`` on ``.dropkit-build.lock``, which the OS releases when its holder
  dies; a builder waits for it at most ``DROPKIT_NATIVE_WAIT`` seconds.
* The build folder is keyed on everything the library depends on (:func:`build_key`: the source,
  the interpreter and its prefix, torch's version, location and C++ ABI, the compiler, the flags),
  so two virtual environments on one machine keep two builds instead of rebuilding in turn. It is
  ``$DROPKIT_NATIVE_DIR/<key>``, else ``~/.cache/dropkit/native/<key>``, else a per-user folder in
  the temp directory.
* Where the build fails (no compiler, no ninja), the reason is kept in ``build-failed.txt`` in the
  build folder and dropkit keeps the Python path; a later process retries after a day, or at once
  when the key changes (a compiler installed). :func:`status` says which path is in use and why.
  ``DROPKIT_NATIVE=0`` turns the node off.

Example:
    >>> from dropkit.kernels import native
    >>> native.status().startswith(
    ...     ("loaded from", "not loaded yet", "building", "disabled", "unavailable"))
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from dropkit.kernels import small

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["apply", "apply_seeded", "build_key", "kernel_addresses", "load", "pending", "status"]

_SOURCE = Path(__file__).with_name("native.cpp")
_NAME = "dropkit_native"
_CFLAGS = ("-O2",)
_LIBRARY = f"{_NAME}.so"
_FAILED = "build-failed.txt"
_LOCK_FILE = ".dropkit-build.lock"
#: A recorded build failure is retried after this many seconds.
_RETRY_FAILED_AFTER = 24 * 3600.0
#: How often a process waiting for a background build looks for the library file.
_POLL_SECONDS = 0.25

_LOCK = threading.Lock()
_STATE: dict[str, object] = {
    "op": None,
    "status": "not loaded yet",
    "tried": False,
    "next_poll": 0.0,
    "directory": None,
}


def status() -> str:
    """Whether the native node is in use: "loaded from <dir>", "not loaded yet", "building in the
    background", "disabled by DROPKIT_NATIVE=0", or "unavailable: <why>"."""
    return str(_STATE["status"])


def pending() -> bool:
    """True until the node is loaded or known to be unavailable (meanwhile the Python path
    serves, and ``load(wait=False)`` looks for the library again every 0.25 s)."""
    return not _STATE["tried"]


def _wait_seconds() -> float:
    try:
        return max(0.0, float(os.environ.get("DROPKIT_NATIVE_WAIT", "300")))
    except ValueError:
        return 300.0


def _compiler_identity() -> str:
    """The C++ compiler torch's builder will run ($CXX or c++): its resolved path, size and mtime
    (an upgrade changes them), or its name when it is not on PATH."""
    name = os.environ.get("CXX", "c++")
    found = shutil.which(name.split()[0]) if name.strip() else None
    if not found:
        return f"{name} (not found)"
    real = os.path.realpath(found)
    try:
        st = os.stat(real)
    except OSError:
        return real
    return f"{name} -> {real} {st.st_size} {st.st_mtime_ns}"


def build_key() -> dict[str, str]:
    """Everything the built library depends on; the build folder is named by its hash.

    Example:
        >>> {"python", "torch", "cxx11_abi", "compiler", "flags"} <= set(build_key())
        True
    """
    return {
        "source_sha256": hashlib.sha256(_SOURCE.read_bytes()).hexdigest(),
        "python": sys.executable,
        "prefix": sys.prefix,
        "python_version": sys.version,
        "ext_suffix": str(sysconfig.get_config_var("EXT_SUFFIX")),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "torch_git": str(getattr(torch.version, "git_version", "")),
        "torch_dir": os.path.dirname(os.path.abspath(torch.__file__)),
        "cxx11_abi": str(bool(torch._C._GLIBCXX_USE_CXX11_ABI)),
        "compiler": _compiler_identity(),
        "flags": " ".join(_CFLAGS),
        "env_flags": " ".join(
            f"{k}={os.environ[k]}" for k in ("CFLAGS", "CXXFLAGS", "LDFLAGS") if k in os.environ
        ),
    }


def _build_directory() -> Path:
    """``<base>/<hash of build_key()>``, created; ``build-key.json`` in it says what the hash is of."""
    key = build_key()
    tag = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    configured = os.environ.get("DROPKIT_NATIVE_DIR")
    if configured:
        directory = Path(configured) / tag
        directory.mkdir(parents=True, exist_ok=True)
    else:
        try:
            directory = Path.home() / ".cache" / "dropkit" / "native" / tag
            directory.mkdir(parents=True, exist_ok=True)
        except (OSError, RuntimeError):  # no home, or a read-only one: a per-user temp folder
            user = getattr(os, "getuid", lambda: "user")()
            directory = Path(tempfile.gettempdir()) / f"dropkit-native-{user}" / tag
            directory.mkdir(parents=True, exist_ok=True)
    described = directory / "build-key.json"
    if not described.exists():
        try:
            _write_atomically(described, json.dumps(key, indent=1, sort_keys=True) + "\n")
        except OSError:
            pass
    return directory


def _write_atomically(path: Path, text: str) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class BuildBusy(RuntimeError):
    """Another process holds the build lock of this key for longer than the wait allowed."""


@contextmanager
def _build_lock(directory: Path, wait: float) -> Iterator[None]:
    """An exclusive ``flock`` on the build folder's lock file, waited for at most ``wait`` s.

    The kernel releases an flock when its holder exits or is killed, so no lock outlives a build.
    """
    if fcntl is None:  # pragma: no cover - not POSIX
        raise OSError("the native build needs fcntl.flock (POSIX)")
    fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BuildBusy(
                        f"another process has been building {directory} for more than {wait:g} s"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


def _ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the ``ninja`` wheel's binary counts too."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _recent_failure(directory: Path) -> str | None:
    failed = directory / _FAILED
    try:
        if time.time() - failed.stat().st_mtime < _RETRY_FAILED_AFTER:
            return failed.read_text().strip().splitlines()[0][:400] or "build failed"
    except (OSError, IndexError):
        pass
    return None


def build(wait: float | None = None) -> Path:
    """Builds the library into the keyed folder (if it is not there yet) and returns its path.

    Runs in the builder process (``python -m dropkit.kernels.native``): it loads the library into
    *this* process as a side effect of torch's builder. Waits at most ``wait`` seconds (default
    ``DROPKIT_NATIVE_WAIT``) for another builder of the same key. A failure is recorded in
    ``build-failed.txt`` and raised.
    """
    directory = _build_directory()
    library = directory / _LIBRARY
    if library.exists():
        return library
    with _build_lock(directory, _wait_seconds() if wait is None else wait):
        if library.exists():  # built by the process we waited for
            return library
        # Staging folders left by killed builds: ours (dropkit names them), and nobody else is
        # building this key while we hold the lock.
        for leftover in directory.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=directory))
        try:
            from torch.utils import cpp_extension

            _ninja_on_path()
            cpp_extension.load(
                name=_NAME,
                sources=[str(_SOURCE)],
                build_directory=str(staging),
                extra_cflags=list(_CFLAGS),
                is_python_module=False,
                verbose=False,
            )
            os.replace(staging / _LIBRARY, library)
            (directory / _FAILED).unlink(missing_ok=True)
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            try:
                _write_atomically(directory / _FAILED, f"{type(error).__name__}: {first}\n")
            except OSError:
                pass
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return library


def kernel_addresses() -> tuple[int, int, int, int]:
    """Addresses of the C-callable float32, float64, float16, bfloat16 dropout loops
    (:mod:`dropkit.kernels.cfuncs`, disk-cached; compiled on first call when not cached) that the
    library's ``set_kernels`` takes."""
    from dropkit.kernels import cfuncs

    return (
        cfuncs.dropout_f32.address,
        cfuncs.dropout_f64.address,
        cfuncs.dropout_f16.address,
        cfuncs.dropout_bf16.address,
    )


def _load_library(library: Path) -> object:
    torch.ops.load_library(str(library))
    torch.ops.dropkit_native.set_kernels(*kernel_addresses())
    _STATE["status"] = f"loaded from {library.parent}"
    return torch.ops.dropkit_native.dropout.default


def _run_builder(wait: float) -> None:
    """Runs ``python -m dropkit.kernels.native`` and waits for it (at most ``wait`` s to get the
    lock, plus the build). Raises with the builder's reason when it fails."""
    from dropkit.kernels.warmup import child_env

    env = {**child_env(), "DROPKIT_NATIVE_WAIT": str(wait)}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dropkit.kernels.native"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=wait + 900.0,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"the native build took more than {wait + 900.0:g} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(lines[-1] if lines else f"builder exited with {done.returncode}")


def _build() -> object:
    """Builds (in a builder process, waiting for it) or finds the library, then loads it."""
    directory = _build_directory()
    library = directory / _LIBRARY
    if not library.exists():
        failure = _recent_failure(directory)
        if failure is not None:
            raise RuntimeError(f"{failure} (recorded in {directory / _FAILED})")
        _run_builder(_wait_seconds())
    return _load_library(library)


def load(wait: bool = True) -> object | None:
    """The native op ``dropout(x, seed, offset, thresh, scale)``, or None where unavailable.

    ``wait=True``: builds (in a builder process, waiting at most ``DROPKIT_NATIVE_WAIT`` s for
    another build of the same key) or loads the cached build; later calls return at once.
    ``wait=False`` (dropkit's own calls): never waits. Loads the library if it is built, else
    starts the background build (:mod:`dropkit.kernels.warmup`) and returns None until the library
    appears (:func:`pending` is True meanwhile).

    ``seed`` is passed as a signed 64-bit integer with the key's bits (``seed - 2**64`` for keys of
    2^63 or more).
    """
    if _STATE["tried"]:
        return _STATE["op"]
    if not wait and time.monotonic() < float(_STATE.get("next_poll", 0.0)):  # type: ignore[arg-type]
        return None
    with _LOCK:
        if _STATE["tried"]:
            return _STATE["op"]
        try:
            if os.environ.get("DROPKIT_NATIVE", "1") == "0":
                _STATE["status"] = "disabled by DROPKIT_NATIVE=0"
            elif wait:
                _STATE["op"] = _build()
            else:
                return _poll_background()
        except Exception as error:  # any build or load failure: keep the Python path
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            _STATE["status"] = f"unavailable: {type(error).__name__}: {first}"[:500]
        _STATE["tried"] = True
    return _STATE["op"]


def _poll_background() -> object | None:
    """One non-blocking look: load the library if it is there, else make sure it is being built.

    Called with ``_LOCK`` held. Returns the op, or None (with ``_STATE["tried"]`` still False while
    a build may yet deliver it). Raises what makes the node unavailable.
    """
    from dropkit.kernels import warmup

    directory = _STATE.get("directory")
    if directory is None:
        directory = _STATE["directory"] = _build_directory()
    library = directory / _LIBRARY  # type: ignore[operator]
    if library.exists():
        _STATE["op"] = _load_library(library)
        _STATE["tried"] = True
        return _STATE["op"]
    failure = _recent_failure(directory)  # type: ignore[arg-type]
    if failure is not None:
        raise RuntimeError(f"{failure} (recorded in {directory / _FAILED})")  # type: ignore[operator]
    _STATE["next_poll"] = time.monotonic() + _POLL_SECONDS
    if warmup.start() or warmup.running():
        _STATE["status"] = "building in the background (dropkit.kernels.warmup)"
        return None
    if warmup.disabled():  # no background build: an explicit load() may still build it
        _STATE["status"] = "not built (DROPKIT_WARMUP=0: native.load() builds it)"
        return None
    # The background process ended (or could not start) without a library or a recorded failure.
    raise RuntimeError(f"the background build ended without {library} ({warmup.outcome()})")


# ----------------------------------------------------------------------------------------------
# Using the node (dropkit.ops): for the small-tensor lane's tensors, once it is loaded
# ----------------------------------------------------------------------------------------------
# [dropout(x, seed, offset, thresh, scale), dropout_seeded(x, thresh, scale)]: the ops' builtins
# once loaded, Nones once known unavailable, _UNLOADED while a background build may deliver it.
_UNLOADED = object()
_NODES: list = [_UNLOADED, None]
_LIMIT = small.LIMIT
_READY = small.READY


def _nodes() -> list:
    """Loads the node if it has been built (never waits for a build: the Python path serves
    meanwhile); [None, None] while it is pending, without recording that."""
    op = load(wait=False)
    if op is None:
        if pending():  # being built in the background: look again on a later call
            return [None, None]
        _NODES[:] = [None, None]
    else:
        # The overloads' underlying builtins: OpOverload.__call__ only forwards to them.
        seeded = torch.ops.dropkit_native.dropout_seeded.default
        _NODES[:] = [getattr(op, "_op", op), getattr(seeded, "_op", seeded)]
    return _NODES


def apply(
    x: torch.Tensor, seed: int, offset: int, threshold: int, scale: float
) -> torch.Tensor | None:
    """``y = m ⊙ x · scale`` through the C++ node (recorded for autograd, saving four numbers),
    or None where the node does not serve ``x``.

    It serves the tensors of the small-tensor lane (:func:`dropkit.kernels.small.accepts`: a
    contiguous CPU float tensor below ``PARALLEL_MIN`` elements) once it is loaded: the first call
    for such a tensor loads it if it has been built, else starts the background build
    (:func:`load` with ``wait=False``) and returns None until it appears. For
    :mod:`dropkit.ops`, whose arguments are checked: ``seed`` in [0, 2^64) (passed to the node as
    the signed 64-bit integer of the same bits), ``offset``, ``threshold`` and ``scale`` as the
    kernels take them.
    """
    node = _NODES[0]
    if node is None:
        return None
    if not (
        x.is_cpu
        and 0 < x.numel() < _LIMIT
        and x.is_contiguous()
        and (x.dtype in _READY or small.accepts(x))
    ):
        return None
    if node is _UNLOADED:
        node = _nodes()[0]
        if node is None:
            return None
    return node(x, seed - (1 << 64) if seed >> 63 else seed, offset, threshold, scale)


def apply_seeded(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor | None:
    """:func:`apply` with the seed drawn by the node itself from torch's default CPU generator,
    exactly as :func:`dropkit.rng.draw_seed` draws it where no salt applies (one ``random64()``),
    and offset 0: one dispatcher call per dropout. None where the node does not serve ``x``.

    For callers that know the seed is unsalted (:func:`dropkit.rng.unsalted`).
    """
    if _NODES[0] is None:
        return None
    if not (
        x.is_cpu
        and 0 < x.numel() < _LIMIT
        and x.is_contiguous()
        and (x.dtype in _READY or small.accepts(x))
    ):
        return None
    node = _NODES[1]
    if node is None:
        node = _nodes()[1]
        if node is None:
            return None
    return node(x, threshold, scale)


def _main() -> int:
    """``python -m dropkit.kernels.native``: compile the numba cfuncs, then build the library."""
    try:
        kernel_addresses()  # numba's disk cache then holds them for the process that loads the library
        library = build()
    except Exception as error:  # one line for the parent, which reports it
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        print(f"{type(error).__name__}: {first}", file=sys.stderr)
        return 1
    print(library)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
