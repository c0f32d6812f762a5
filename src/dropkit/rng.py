r"""Seeds for dropkit's counter-based masks: drawn from torch's generators, salted per rank.

A dropkit mask is a pure function of a 64-bit ``seed`` and a 64-bit element ``offset``
(:mod:`dropkit.reference.philox`). This module decides which seed a call uses:

* **One fresh seed per call, from torch's generator.** :func:`draw_seed` takes 64 bits from
  ``generator`` (default: ``torch.default_generator``, the CPU one, whatever device the tensor is
  on) and the call's stream starts at offset 0. The generator's state is the call counter: two
  calls never share a key unless two 64-bit draws collide (probability about k²/2^65 for k calls),
  ``torch.manual_seed(s)`` replays a run bit for bit, and because the CPU generator is used for CUDA
  tensors too, a CPU run and a CUDA run with the same ``torch.manual_seed`` drop the same units.
* **Activation checkpointing** (``torch.utils.checkpoint``, reentrant or not, eager or compiled)
  saves torch's CPU RNG state before the forward and restores it before recomputing, so the
  recomputation draws the same seeds and regenerates exactly the same masks. (An explicit
  ``generator=`` is not restored by checkpoint, as for torch's own dropout.)
* **Distributed salts.** The drawn seed is mixed with a *salt* (SplitMix64, Steele et al. 2014):

  - by default, when ``torch.distributed`` is initialised, the salt is the rank in the
    data-parallel group (:func:`set_data_parallel_group`; default the whole world), so
    data-parallel ranks draw different masks even after the same ``torch.manual_seed``;
  - inside :func:`model_parallel_region` ``(group)`` the salt is the group's first global rank, so
    every rank of a tensor-parallel group draws the *same* mask (for activations replicated across
    the group) while different groups still differ;
  - inside ``tracker.fork(name)`` of an :class:`RNGStatesTracker` (Megatron-LM's
    ``CudaRNGStatesTracker`` is the anchor) the salt is the seed registered under ``name``, e.g.
    ``base + 2718 + tp_rank`` for masks that must differ across tensor-parallel ranks.

  Unlike Megatron's tracker, a named state is not a separate generator: it is a key mixed into the
  draw from torch's generator. So ``torch.utils.checkpoint`` reproduces forked masks with no
  special checkpoint function. Enter regions and forks *inside* a checkpointed function (as
  Megatron layers do), since the recomputation runs under whatever region is active then.
  Without ``torch.distributed`` and outside any region the seed is the raw draw.

Example:
    >>> import torch
    >>> from dropkit import rng
    >>> _ = torch.manual_seed(0)
    >>> a, b = rng.draw_seed(), rng.draw_seed()
    >>> _ = torch.manual_seed(0)
    >>> (a, b) == (rng.draw_seed(), rng.draw_seed()) and a != b
    True
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch

__all__ = [
    "draw_seed",
    "draw_unsalted",
    "unsalted",
    "functorch_active",
    "current_salt",
    "mix_seed",
    "set_data_parallel_group",
    "model_parallel_region",
    "RNGStatesTracker",
    "get_rng_tracker",
    "model_parallel_manual_seed",
]

MASK64 = (1 << 64) - 1
_GOLDEN64 = 0x9E3779B97F4A7C15
# A region's salt and a tracker state's salt are tagged so they never equal a data-parallel rank.
_REGION_TAG = 0x5245474E << 32  # "REGN"
_TRACKER_TAG = 0x54524B52 << 32  # "TRKR"


class _Context(threading.local):
    def __init__(self) -> None:
        self.salts: list[int] = []
        self.scratch: dict[torch.device, torch.Tensor] = {}
        self.cpu_scratch = torch.empty((), dtype=torch.int64)
        # A NumPy view of the same 8 bytes: reading it skips a dispatcher trip (.item()).
        self.cpu_scratch_view = self.cpu_scratch.numpy()


_CONTEXT = _Context()
_DATA_PARALLEL_GROUP: list = [None]  # [ProcessGroup | None]; None = the default (world) group


def _splitmix64(z: int) -> int:
    # Steele, Lea & Flood 2014 (SplitMix64) finaliser: a bijection on 64-bit words.
    z = (z + _GOLDEN64) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def mix_seed(seed: int, salt: int) -> int:
    """Mixes a 64-bit ``salt`` into a 64-bit ``seed``: ``splitmix64(seed ⊕ splitmix64(salt))``.

    For a fixed salt this is a bijection of the seed, so distinct draws stay distinct; for a fixed
    seed, different salts give unrelated keys (Philox keys that differ in any bit give independent
    streams).

    Example:
        >>> from dropkit.rng import mix_seed
        >>> mix_seed(1, 0) != mix_seed(1, 1) and 0 <= mix_seed(1, 0) < 2**64
        True
    """
    return _splitmix64((seed & MASK64) ^ _splitmix64(salt & MASK64))


if torch.distributed.is_available():
    _dist_initialized = torch.distributed.is_initialized
else:  # pragma: no cover - torch built without distributed

    def _dist_initialized() -> bool:
        return False


def set_data_parallel_group(group: object | None) -> None:
    """Sets the process group whose rank salts the seed by default (None: the whole world).

    With tensor parallelism, pass the data-parallel group so that the ranks of one model replica
    share the default salt; :func:`model_parallel_region` does the same for a region only.

    Example:
        >>> from dropkit import rng
        >>> rng.set_data_parallel_group(None)
    """
    _DATA_PARALLEL_GROUP[0] = group


def current_salt() -> int | None:
    """The salt :func:`draw_seed` mixes in now: innermost region or fork, else the data-parallel
    rank when ``torch.distributed`` is initialised, else None (the raw draw is used).

    Example:
        >>> from dropkit import rng
        >>> rng.current_salt() is None
        True
    """
    if _CONTEXT.salts:
        return _CONTEXT.salts[-1]
    if _dist_initialized():
        return torch.distributed.get_rank(_DATA_PARALLEL_GROUP[0])
    return None


#: Whether a ``torch.func`` transform (grad, vmap, ...) is active: ``torch._C``'s own test, read on
#: every draw.
functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)
# torch.jit.is_tracing() minus its Python wrapper (which first asks whether TorchScript is
# compiling this code; it never is: nothing here is scriptable).
_is_tracing = getattr(torch._C, "_is_tracing", torch.jit.is_tracing)


def _raw_draw(generator: torch.Generator | None) -> int:
    if generator is None:
        scratch = _CONTEXT.cpu_scratch
    else:
        scratch = _CONTEXT.scratch.get(generator.device)
        if scratch is None:
            scratch = torch.empty((), dtype=torch.int64, device=generator.device)
            _CONTEXT.scratch[generator.device] = scratch
    # from=-2**63, to=None draws all 64 bits (two 32-bit words of the Mersenne Twister on CPU).
    return scratch.random_(-(1 << 63), None, generator=generator).item() & MASK64


def raise_traced_training() -> None:
    """The error for a mask drawn under ``torch.jit.trace``: the trace would record the seed as a
    constant, so the traced module would drop the same units on every call."""
    raise RuntimeError(
        "dropkit's dropout cannot be traced by torch.jit.trace in training mode: the trace would "
        "record the mask's seed as a constant and drop the same units on every call. Trace the "
        "model in eval mode (model.eval()), or use torch.compile or torch.export for training"
    )


def draw_seed(generator: torch.Generator | None = None) -> int:
    """Draws the 64-bit seed of one dropout call from ``generator`` and salts it (see module doc).

    Args:
        generator: a ``torch.Generator`` (any device); default ``torch.default_generator`` (CPU).

    Returns:
        An int in [0, 2^64).

    Example:
        >>> import torch
        >>> from dropkit import rng
        >>> g = torch.Generator().manual_seed(3)
        >>> s = rng.draw_seed(g)
        >>> s == rng.draw_seed(torch.Generator().manual_seed(3))
        True
    """
    if _is_tracing():
        raise_traced_training()
    context = _CONTEXT
    if functorch_active():
        # Under torch.func transforms the draw is the generator's, as in eager: functorch must not
        # see it (grad forbids the in-place draw into a captured tensor; vmap would batch it).
        with torch._C._DisableFuncTorch():
            seed = _raw_draw(generator)
    elif generator is None:
        context.cpu_scratch.random_(-(1 << 63), None)
        seed = int(context.cpu_scratch_view) & MASK64
    else:
        seed = _raw_draw(generator)
    if not context.salts and not _dist_initialized():  # the common case: no salt
        return seed
    salt = current_salt()
    return seed if salt is None else mix_seed(seed, salt)


def unsalted() -> bool:
    """Whether :func:`draw_seed` with the default generator returns the generator's raw 64 bits
    now: no region or fork salt, ``torch.distributed`` not initialised, no ``torch.func``
    transform, not tracing. Then :func:`draw_unsalted` is that draw, and a native op may draw the
    same bits from torch's default CPU generator itself.

    Example:
        >>> import torch
        >>> from dropkit import rng
        >>> rng.unsalted()
        True
        >>> with rng.model_parallel_region():
        ...     rng.unsalted()
        False
    """
    return not (_CONTEXT.salts or _dist_initialized() or functorch_active() or _is_tracing())


def draw_unsalted() -> int:
    """:func:`draw_seed` ``()`` for a caller that found :func:`unsalted` True: the next 64 bits
    of torch's default CPU generator, without the checks.

    Example:
        >>> import torch
        >>> from dropkit import rng
        >>> _ = torch.manual_seed(0)
        >>> a = rng.draw_unsalted()
        >>> _ = torch.manual_seed(0)
        >>> a == rng.draw_seed()
        True
    """
    context = _CONTEXT
    context.cpu_scratch.random_(-(1 << 63), None)
    return int(context.cpu_scratch_view) & MASK64


@contextlib.contextmanager
def _salted(salt: int) -> Iterator[None]:
    _CONTEXT.salts.append(salt & MASK64)
    try:
        yield
    finally:
        _CONTEXT.salts.pop()


def model_parallel_region(group: object | None = None) -> contextlib.AbstractContextManager[None]:
    """Inside, every rank of ``group`` draws the same masks (one salt per group).

    For dropout on activations that are replicated across a tensor-parallel group (after a
    row-parallel all-reduce): all ranks must drop the same units. Different groups (different
    data-parallel replicas) still get different masks: the salt is the group's first global rank.
    Outside ``torch.distributed`` it is a no-op salt shared by everyone.

    Args:
        group: a ``torch.distributed`` process group (None: the whole world).

    Example:
        >>> import torch
        >>> from dropkit import rng
        >>> with rng.model_parallel_region():
        ...     s = rng.draw_seed(torch.Generator().manual_seed(0))
        >>> isinstance(s, int)
        True
    """
    first_rank = 0
    if _dist_initialized():
        first_rank = min(
            torch.distributed.get_process_group_ranks(group or torch.distributed.group.WORLD)
        )
    return _salted(_REGION_TAG | first_rank)


class RNGStatesTracker:
    """Named RNG states for model parallelism, after Megatron-LM's ``CudaRNGStatesTracker``.

    ``add(name, seed)`` registers a state; ``with tracker.fork(name):`` makes every dropkit draw
    inside use it. A state here is a salt mixed into the draw from torch's generator (see the
    module doc), so torch's checkpointing reproduces forked masks and nothing else is saved.

    Example:
        >>> import torch
        >>> from dropkit import rng
        >>> tracker = rng.RNGStatesTracker()
        >>> tracker.add("model-parallel-rng", 1234 + 2718 + 0)  # base + offset + tp rank
        >>> g = torch.Generator().manual_seed(0)
        >>> with tracker.fork("model-parallel-rng"):
        ...     forked = rng.draw_seed(g)
        >>> forked != rng.draw_seed(torch.Generator().manual_seed(0))
        True
    """

    def __init__(self) -> None:
        self._states: dict[str, int] = {}

    def reset(self) -> None:
        """Forgets every state."""
        self._states.clear()

    def get_states(self) -> dict[str, int]:
        """A copy of the name → seed table."""
        return dict(self._states)

    def set_states(self, states: dict[str, int]) -> None:
        """Replaces the table (e.g. from :meth:`get_states`)."""
        self._states = {str(k): int(v) for k, v in states.items()}

    def add(self, name: str, seed: int) -> None:
        """Registers state ``name`` with an integer ``seed``; both must be new (as Megatron)."""
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r} of type {type(name).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r} of type {type(seed).__name__}")
        if name in self._states:
            raise ValueError(
                f"RNG state {name!r} already exists; registered names: {sorted(self._states)}"
            )
        if seed in self._states.values():
            raise ValueError(f"seed {seed} is already used by another RNG state")
        self._states[name] = seed

    def fork(self, name: str = "model-parallel-rng") -> contextlib.AbstractContextManager[None]:
        """Context manager: dropkit draws inside use state ``name``."""
        if name not in self._states:
            raise ValueError(
                f"RNG state {name!r} is not registered; registered names: {sorted(self._states)}"
            )
        return _salted(_TRACKER_TAG ^ _splitmix64(self._states[name] & MASK64))


_TRACKER = RNGStatesTracker()


def get_rng_tracker() -> RNGStatesTracker:
    """The process-wide tracker (Megatron's ``get_cuda_rng_tracker``).

    Example:
        >>> from dropkit import rng
        >>> rng.get_rng_tracker() is rng.get_rng_tracker()
        True
    """
    return _TRACKER


def model_parallel_manual_seed(seed: int, tensor_parallel_group: object | None = None) -> None:
    """Megatron's ``model_parallel_cuda_manual_seed``: seeds torch and the process-wide tracker.

    ``torch.manual_seed(seed)`` for the default stream, and a ``"model-parallel-rng"`` state with
    seed ``seed + 2718 + tp_rank`` (different on every tensor-parallel rank) for
    ``get_rng_tracker().fork()``. The tracker is reset first.

    Args:
        seed: the base seed (the same on every rank).
        tensor_parallel_group: the tensor-parallel process group (rank 0 when not distributed).

    Example:
        >>> from dropkit import rng
        >>> rng.model_parallel_manual_seed(42)
        >>> rng.get_rng_tracker().get_states()
        {'model-parallel-rng': 2760}
    """
    tp_rank = torch.distributed.get_rank(tensor_parallel_group) if _dist_initialized() else 0
    torch.manual_seed(seed)
    _TRACKER.reset()
    _TRACKER.add("model-parallel-rng", seed + 2718 + tp_rank)
