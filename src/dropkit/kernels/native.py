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

It is built on first use with :func:`torch.utils.cpp_extension.load` (about 15 s, once per machine
and torch version; the build is cached under ``$DROPKIT_NATIVE_DIR``, else
``~/.cache/dropkit/native``, else a per-user folder in the temp directory) and needs a C++
compiler and ninja. Where either is missing or the build fails, dropkit keeps using its Python
``autograd.Function``: same bits, a little slower; :func:`status` says which path is in use and
why. ``DROPKIT_NATIVE=0`` turns it off.

Example:
    >>> from dropkit.kernels import native
    >>> native.status().startswith(("loaded from", "not loaded yet", "disabled", "unavailable"))
    True
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

__all__ = ["load", "status"]

_SOURCE = Path(__file__).with_name("native.cpp")
_LOCK = threading.Lock()
_STATE: dict[str, object] = {"op": None, "status": "not loaded yet", "tried": False}
#: A build lock older than this is treated as left behind by a killed build.
_STALE_LOCK_SECONDS = 600.0


def status() -> str:
    """Whether the native node is in use: "loaded from <dir>", "not loaded yet", or why not."""
    return str(_STATE["status"])


def _kernels() -> tuple[int, int, int, int]:
    """Addresses of the C-callable float32, float64, float16, bfloat16 dropout loops (numba
    cfuncs, disk-cached)."""
    from dropkit.kernels import _cfuncs

    return (
        _cfuncs.dropout_f32.address,
        _cfuncs.dropout_f64.address,
        _cfuncs.dropout_f16.address,
        _cfuncs.dropout_bf16.address,
    )


def _build_directory() -> Path:
    source = _SOURCE.read_bytes()
    tag = hashlib.sha256(source + torch.__version__.encode()).hexdigest()[:16]
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
    lock = directory / "lock"  # torch's FileBaton; a killed build leaves it behind
    try:
        if time.time() - lock.stat().st_mtime > _STALE_LOCK_SECONDS:
            lock.unlink()
    except FileNotFoundError:
        pass
    return directory


def _ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from PATH; the ``ninja`` wheel's binary counts too."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _build() -> object:
    from torch.utils import cpp_extension

    _ninja_on_path()
    directory = _build_directory()
    cpp_extension.load(
        name="dropkit_native",
        sources=[str(_SOURCE)],
        build_directory=str(directory),
        extra_cflags=["-O2"],
        is_python_module=False,
        verbose=False,
    )
    torch.ops.dropkit_native.set_kernels(*_kernels())
    _STATE["status"] = f"loaded from {directory}"
    return torch.ops.dropkit_native.dropout.default


def load() -> object | None:
    """The native op ``dropout(x, seed, offset, thresh, scale)``, or None where unavailable.

    Builds (or loads the cached build) on the first call; later calls return the result at once.
    ``seed`` is passed as a signed 64-bit integer with the key's bits (``seed - 2**64`` for keys of
    2^63 or more).
    """
    if _STATE["tried"]:
        return _STATE["op"]
    with _LOCK:
        if _STATE["tried"]:
            return _STATE["op"]
        if os.environ.get("DROPKIT_NATIVE", "1") == "0":
            _STATE["status"] = "disabled by DROPKIT_NATIVE=0"
        else:
            try:
                _STATE["op"] = _build()
            except Exception as error:  # any build or load failure: keep the Python path
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                _STATE["status"] = f"unavailable: {type(error).__name__}: {first}"[:500]
        _STATE["tried"] = True
    return _STATE["op"]
