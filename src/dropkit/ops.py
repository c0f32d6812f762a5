r"""The mask path every dropkit layer goes through: counter-based fused dropout and its torch ops.

A mask is a pure function of a 64-bit ``seed`` and a 64-bit element ``offset``: element ``k`` (in
the row-major order of the tensor's *logical* shape) is kept iff the 16-bit Philox4x32-10 word at
stream position ``offset + k`` is ``>= threshold``, ``threshold = floor(p · 2^16 + 1/2)``
(:mod:`dropkit.reference.philox`). So

* forward reads x once and writes y once; backward regenerates the mask from the seed, and what
  autograd saves is O(1) bytes (a seed), never the mask or x;
* the keep probability is exactly ``keep_probability(p) = 1 − threshold / 2^16`` (1 − p to within
  2^-17; exact on the 2^-16 grid); the scales are exact, ``1 / (1 − p)`` as torch computes it
  (:func:`dropout_scale`), so a kept value is bit for bit torch's and the threshold's resolution
  is the only approximation (a relative bias of E[y] of at most 2^-17 / (1 − p));
* the bits are the same on every device: the numba kernel on CPU (:mod:`dropkit.kernels.cpu`),
  Triton on CUDA (:mod:`dropkit.kernels.gpu`), plain torch ops elsewhere
  (:mod:`dropkit.kernels.fallback`), and the NumPy reference all agree;
* a permuted or strided view gets the mask of its contiguous copy, and the output keeps the
  input's memory format (channels-last stays channels-last) as torch's dropout does.

Seeds come from :func:`dropkit.rng.draw_seed` (torch's generator, salted per data-parallel rank);
one fresh seed per call, offset 0.

Public contract (used by :mod:`dropkit.functional` and every layer; the signatures are stable):

- ``keep_probability(p)``: the keep probability the kernels actually use for drop rate ``p``.
- ``dropout_elementwise(x, p, scale, generator=None, inplace=False)``: y = m ⊙ x · scale,
  m ~ Bernoulli(keep_probability(p)) per element; differentiable (grad = m · scale).
- ``keep_mask(shape, p, device, generator=None)``: a bool tensor of ``shape``, True where kept.

Fused ops for transformer blocks: :func:`bias_dropout_add`, :func:`attention_dropout`,
:func:`scaled_dot_product_attention_with_dropout`; explicit seeds: :func:`dropout_with_seed`.

torch integration: the ops are registered with ``torch.library`` in the ``dropkit`` namespace
(``torch.ops.dropkit.draw_seed``, ``dropout_with_seed``, ``bias_dropout_add``, ``keep_mask``) with
autograd formulas and fake (meta) implementations, so ``torch.compile(fullgraph=True)`` traces
them without a graph break. ``draw_seed`` carries ``torch.Tag.nondeterministic_seeded`` and draws
the seed *inside* the op at run time, from the same generator in the same order as eager mode, so
the compiler never merges, reorders or re-draws a dropout and a compiled model drops the same units
as eager mode for the same ``torch.manual_seed`` (see ``docs/integration.md``). In eager mode a
lighter path skips the dispatcher: an ``autograd.Function`` calling :mod:`dropkit.kernels` (or,
for small CPU tensors that need grad, the C++ node of :mod:`dropkit.kernels.native`); it produces
the same bits.

Layout: this module holds autograd (the Functions, the choice of node), the custom-op
registrations and the public functions' bodies; which kernel runs (the small-tensor lane, numba,
its cold-start stand-in, Triton, torch) is decided by :mod:`dropkit.kernels` itself, and seeds by
:mod:`dropkit.rng`. See ``docs/architecture.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dropkit import kernels, rng
from dropkit._validate import (
    check_float_tensor,
    check_generator,
    check_probability,
    check_real,
    check_shape,
)
from dropkit.kernels import native
from dropkit.kernels.philox import THRESHOLD_RANGE, threshold_from_p

__all__ = [
    "THRESHOLD_RANGE",
    "threshold",
    "keep_probability",
    "dropout_scale",
    "dropout_elementwise",
    "keep_mask",
    "dropout_with_seed",
    "bias_dropout_add",
    "attention_dropout",
    "scaled_dot_product_attention_with_dropout",
]

_MASK64 = (1 << 64) - 1
_THRESHOLDS: dict[float, int] = {}  # p -> threshold; checked once per distinct rate


# ------------------------------------------------------------------------------------------------
# Rates
# ------------------------------------------------------------------------------------------------
def threshold(p: float) -> int:
    """The kernels' integer keep threshold for drop rate ``p``: ``floor(p · 65536 + 1/2)``.

    An element is kept iff its 16-bit random word is >= this threshold.

    Args:
        p: drop probability in [0, 1].

    Example:
        >>> from dropkit import ops
        >>> ops.threshold(0.1), ops.threshold(0.5), ops.threshold(1.0)
        (6554, 32768, 65536)
    """
    cached = _THRESHOLDS.get(p) if type(p) is float else None
    if cached is None:
        cached = threshold_from_p(check_probability(p))
        if type(p) is float and len(_THRESHOLDS) < 4096:
            _THRESHOLDS[p] = cached
    return cached


def keep_probability(p: float) -> float:
    """The keep probability the kernels actually use for drop rate ``p``: 1 − threshold(p)/65536.

    Exact for p on the 2^-16 grid (0.5, 0.25, …), within 2^-17 of 1 − p otherwise. The scales do
    not use it: they are the exact 1/(1 − p) and 1 − p (see :func:`dropout_scale`), so for p off
    the grid inverted dropout's mean is x · keep_probability(p)/(1 − p), within a relative
    2^-17/(1 − p) of x (the 16-bit threshold's resolution, as in FlashAttention's and Transformer
    Engine's dropout, which also quantise the threshold and scale by the exact 1/(1 − p)).

    Example:
        >>> from dropkit import ops
        >>> ops.keep_probability(0.5), ops.keep_probability(0.1)
        (0.5, 0.899993896484375)
    """
    return 1.0 - threshold(p) / THRESHOLD_RANGE


def dropout_scale(p: float) -> float:
    """Inverted dropout's factor ``1 / (1 − p)``, computed as torch does (in double, rounded to the
    tensor's opmath type by the kernel); 0 at p = 1 so nothing becomes inf or NaN.

    Example:
        >>> from dropkit import ops
        >>> ops.dropout_scale(0.5), ops.dropout_scale(0.8), ops.dropout_scale(1.0)
        (2.0, 5.000000000000001, 0.0)
    """
    keep = 1.0 - check_probability(p)
    return 0.0 if keep == 0.0 else 1.0 / keep


# ------------------------------------------------------------------------------------------------
# Seeds as op arguments
# ------------------------------------------------------------------------------------------------
def _seed_tensor(seed: int) -> torch.Tensor:
    # A 64-bit seed kept in an int64 scalar (two's complement); _seed_int undoes it.
    return torch.tensor(seed - (1 << 64) if seed >= 1 << 63 else seed, dtype=torch.int64)


def _seed_int(seed: torch.Tensor) -> int:
    return int(seed.item()) & _MASK64


def _dropout_(x: torch.Tensor, seed: int, offset: int, thresh: int, scale: float) -> torch.Tensor:
    """In-place dropout of x (the bits of kernels.dropout_forward)."""
    kernels.dropout_forward_out(x, x, seed, offset, thresh, scale)
    # The kernel wrote through a raw pointer: tell autograd x changed, as x.mul_ would.
    torch.autograd.graph.increment_version(x)
    return x


# ------------------------------------------------------------------------------------------------
# Autograd: the eager Function, the torch.func-aware Functions, bias + dropout + residual
# ------------------------------------------------------------------------------------------------
class _DropoutFunction(torch.autograd.Function):
    """y = m ⊙ x · scale; saves only the stream (seed, offset, threshold, scale) as Python numbers."""

    @staticmethod
    def forward(ctx, x, stream, inplace):  # noqa: D102
        ctx.stream = stream
        if inplace:
            ctx.mark_dirty(x)
            return _dropout_(x, *stream)
        return kernels.dropout_forward(x, *stream)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        # Regenerate the mask: ∂L/∂x = m · scale ⊙ ∂L/∂y, i.e. the same dropout of the gradient
        # (differentiable again for double backward).
        if grad.requires_grad and torch.is_grad_enabled():
            return _eager(grad, *ctx.stream, False), None, None
        return kernels.dropout_forward(grad, *ctx.stream), None, None


def _batched_dropout(function, info, in_dims, x, stream):
    """vmap rule shared by the two transform-aware Functions below: ``"different"`` randomness
    masks the whole batch as one tensor (each sample its own units), otherwise one mask of a
    sample's shape is shared by the batch."""
    dim = in_dims[0]
    if info.randomness == "different":
        batch = x.expand(info.batch_size, *x.shape) if dim is None else x.movedim(dim, 0)
        return function.apply(batch.contiguous(), stream), 0
    if dim is None:
        return function.apply(x, stream), None
    batch = x.movedim(dim, 0)
    # Kept units are x * scale (the kernel's rounding), dropped ones exactly 0, as in the kernel.
    seed, offset, thresh, scale = stream
    ones = torch.ones(batch.shape[1:], dtype=batch.dtype)
    kept = kernels.dropout_forward(ones, seed, offset, thresh, 1.0).to(batch.device) != 0
    return torch.where(kept, batch * scale, torch.zeros((), dtype=batch.dtype)), 0


class _FuncMask(torch.autograd.Function):
    """m ⊙ x · scale for a stream already drawn (dropout's backward under ``torch.func``): linear,
    deterministic, its own backward. Under vmap the mask follows the forward's batching (see
    :func:`_batched_dropout`)."""

    @staticmethod
    def forward(x, stream):  # noqa: D102
        return kernels.dropout_forward(x, *stream)

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: D102
        ctx.stream = inputs[1]

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return _FuncMask.apply(grad, ctx.stream), None

    @staticmethod
    def vmap(info, in_dims, x, stream):  # noqa: D102
        return _batched_dropout(_FuncMask, info, in_dims, x, stream)


class _FuncDropout(_FuncMask):
    """Dropout for ``torch.func`` transforms (grad, vjp, jacrev, vmap, ...). vmap's ``randomness``
    decides the masks: ``"different"`` draws one mask over the whole batch (each sample its own
    units), ``"same"`` one mask of a sample's shape shared by the batch, ``"error"`` (vmap's
    default) raises, as torch's own dropout does."""

    @staticmethod
    def vmap(info, in_dims, x, stream):  # noqa: D102
        if info.randomness == "error":
            raise RuntimeError(
                "vmap: called random operation while in randomness error mode. Please either use "
                "the 'same' or 'different' randomness flags on vmap or perform the randomness "
                "operation out of vmap"
            )
        return _batched_dropout(_FuncDropout, info, in_dims, x, stream)


def _backward_apply(ctx, grad):
    # The autograd engine calls the node's ``apply``; torch's BackwardCFunction.apply looks the
    # user function up again on every call (backward vs vjp, boxed grads). This Function has a
    # plain backward, so call it directly.
    return _DropoutFunction.backward(ctx, grad)


try:
    if _DropoutFunction._backward_cls.apply is torch.autograd.function.BackwardCFunction.apply:
        _DropoutFunction._backward_cls.apply = _backward_apply
except AttributeError:  # pragma: no cover - other torch builds
    pass

try:
    # autograd.Function.apply minus its Python prologue (default-argument binding, which this
    # Function has none of, and unwrapping functorch wrappers, done below only under functorch):
    # about 2 µs of the per-call cost on a 10^4-element tensor.
    _RAW_APPLY = torch._C._FunctionBase.__dict__["apply"].__get__(None, _DropoutFunction)
except (AttributeError, KeyError, TypeError):  # pragma: no cover - other torch builds
    _RAW_APPLY = None

_functorch_active = rng.functorch_active


def _functorch_dropout(x: torch.Tensor, stream: tuple, inplace: bool) -> torch.Tensor:
    # Under torch.func every call goes through the transform-aware Function (a batched or wrapped
    # tensor has no memory the kernel could read); in place is out of place, then copied back.
    y = _FuncDropout.apply(x, stream)
    return x.copy_(y) if inplace else y


def _eager(
    x: torch.Tensor, seed: int, offset: int, thresh: int, scale: float, inplace: bool
) -> torch.Tensor:
    """Dropout of x with a drawn stream, recorded for autograd where x needs grad: under
    ``torch.func`` the transform-aware Function; a plain tensor the C++ node of
    :mod:`dropkit.kernels.native` where it serves x (small CPU tensors, out of place: same kernel,
    same bits, the same four numbers saved), else :class:`_DropoutFunction`; no grad, the kernel."""
    if _functorch_active():
        return _functorch_dropout(x, (seed, offset, thresh, scale), inplace)
    if x.requires_grad and torch.is_grad_enabled():
        if _RAW_APPLY is None or type(x) is not torch.Tensor:
            return _DropoutFunction.apply(x, (seed, offset, thresh, scale), inplace)
        if not inplace:
            y = native.apply(x, seed, offset, thresh, scale)
            if y is not None:
                return y
        return _RAW_APPLY(x, (seed, offset, thresh, scale), inplace)
    if inplace:
        return _dropout_(x, seed, offset, thresh, scale)
    return kernels.dropout_forward(x, seed, offset, thresh, scale)


def dropout_prechecked(x: torch.Tensor, thresh: int, scale: float, inplace: bool) -> torch.Tensor:
    """:func:`dropout_elementwise` with torch's default generator, for arguments already checked.

    For :func:`dropkit.functional.dropout`'s fast path, which has checked that ``x`` is a plain
    floating-point ``torch.Tensor`` and derived ``thresh`` (:func:`threshold`) and ``scale`` (a
    finite float) from a checked rate: this skips the checks and goes straight to the seed draw
    and the kernel. Same bits, same seed order as :func:`dropout_elementwise`. Under
    ``torch.compile`` it takes the custom-op path.

    Example:
        >>> import torch
        >>> from dropkit import ops
        >>> _ = torch.manual_seed(0)
        >>> y = ops.dropout_prechecked(torch.ones(8), ops.threshold(0.5), 2.0, False)
        >>> _ = torch.manual_seed(0)
        >>> torch.equal(y, ops.dropout_elementwise(torch.ones(8), 0.5, 2.0))
        True
    """
    if torch.compiler.is_compiling():
        y = _dropout_with_seed_op(x, _traced_seed(), 0, thresh, scale)
        return x.copy_(y) if inplace else y
    if not rng.unsalted():  # a salt, a torch.func transform, or tracing: the general path
        return _eager(x, rng.draw_seed(), 0, thresh, scale, inplace)
    if x.requires_grad and torch.is_grad_enabled():
        if not inplace:
            # The native node draws the same seed from the same generator itself: one call.
            y = native.apply_seeded(x, thresh, scale)
            if y is not None:
                return y
        # (where the seeded node does not serve x, the node with an explicit seed does not either)
        stream = (rng.draw_unsalted(), 0, thresh, scale)
        if _RAW_APPLY is None:
            return _DropoutFunction.apply(x, stream, inplace)
        return _RAW_APPLY(x, stream, inplace)
    if inplace:
        return _dropout_(x, rng.draw_unsalted(), 0, thresh, scale)
    return kernels.dropout_forward(x, rng.draw_unsalted(), 0, thresh, scale)


class _BiasDropoutAddFunction(torch.autograd.Function):
    """y = residual + m ⊙ (x + bias) · scale; saves only the stream and the input shapes."""

    @staticmethod
    def forward(ctx, x, bias, residual, seed, thresh, scale):  # noqa: D102
        ctx.stream = (seed, 0, thresh, scale)
        ctx.shapes = (x.shape, None if bias is None else bias.shape, residual.shape)
        return _bias_dropout_add_impl(x, bias, residual, seed, thresh, scale)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x_shape, bias_shape, residual_shape = ctx.shapes
        need_x, need_bias, need_residual = ctx.needs_input_grad[:3]
        grad_h = _eager(grad, *ctx.stream, False) if (need_x or need_bias) else None
        return (
            grad_h.sum_to_size(x_shape) if need_x else None,
            grad_h.sum_to_size(bias_shape) if need_bias else None,
            grad.sum_to_size(residual_shape) if need_residual else None,
            None,
            None,
            None,
        )


def _bias_dropout_add_impl(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    seed: int,
    thresh: int,
    scale: float,
) -> torch.Tensor:
    if (
        bias is not None
        and x.dim() >= 1
        and bias.shape == x.shape[-1:]
        and residual.shape == x.shape
        and x.dtype == bias.dtype == residual.dtype
    ):
        return kernels.bias_dropout_add(
            x.contiguous(), bias.contiguous(), residual.contiguous(), seed, 0, thresh, scale
        )
    # Any other broadcast: the same bits, unfused (the mask follows the shape of x + bias).
    h = x if bias is None else x + bias
    return residual + kernels.dropout_forward(h, seed, 0, thresh, scale)


# ------------------------------------------------------------------------------------------------
# torch.library custom ops (the torch.compile path, and torch.ops.dropkit.* for users)
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op(
    "dropkit::draw_seed", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,)
)
def _draw_seed_op(anchor: torch.Tensor) -> torch.Tensor:
    """Draws one 64-bit seed with :func:`dropkit.rng.draw_seed`: an int64 scalar (two's complement).

    ``anchor`` is an empty tensor made fresh for each call and otherwise unused: AOTAutograd's
    common-subexpression pass ignores the ``nondeterministic_seeded`` tag (it keeps a fixed list of
    aten random ops) and would merge two draws with equal arguments, i.e. two dropouts of the same
    tensor would share a mask. ``aten.empty`` is never merged, so neither are the draws. The tag
    itself keeps Inductor from reordering or constant-folding the draws, and makes activation
    checkpointing replay them under the saved RNG state.
    """
    return _seed_tensor(rng.draw_seed())


@_draw_seed_op.register_fake
def _(anchor):
    return torch.empty((), dtype=torch.int64)


def _traced_seed() -> torch.Tensor:
    return _draw_seed_op(torch.empty(0))


@torch.library.custom_op("dropkit::dropout_with_seed", mutates_args=())
def _dropout_with_seed_op(
    x: torch.Tensor, seed: torch.Tensor, offset: int, threshold: int, scale: float
) -> torch.Tensor:
    """y = m ⊙ x · scale, m from (seed, offset); seed an int64 scalar (two's complement)."""
    return kernels.dropout_forward(x, _seed_int(seed), offset, threshold, scale)


@_dropout_with_seed_op.register_fake
def _(x, seed, offset, threshold, scale):
    return torch.empty_like(x)


def _with_seed_setup(ctx, inputs, output):
    _, seed, ctx.offset, ctx.threshold, ctx.scale = inputs
    ctx.save_for_backward(seed)  # 8 bytes, whatever the size of x


def _with_seed_backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    grad_x = torch.ops.dropkit.dropout_with_seed(grad, seed, ctx.offset, ctx.threshold, ctx.scale)
    return grad_x, None, None, None, None


_dropout_with_seed_op.register_autograd(_with_seed_backward, setup_context=_with_seed_setup)


@torch.library.custom_op("dropkit::bias_dropout_add", mutates_args=())
def _bias_dropout_add_op(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    seed: torch.Tensor,
    threshold: int,
    scale: float,
) -> torch.Tensor:
    """residual + m ⊙ (x + bias) · scale, m from (seed, offset 0)."""
    return _bias_dropout_add_impl(x, bias, residual, _seed_int(seed), threshold, scale)


@_bias_dropout_add_op.register_fake
def _(x, bias, residual, seed, threshold, scale):
    h = x if bias is None else x + bias
    return torch.empty_like(h + residual, memory_format=torch.contiguous_format)


def _bda_setup(ctx, inputs, output):
    x, bias, residual, seed, ctx.threshold, ctx.scale = inputs
    ctx.shapes = (x.shape, None if bias is None else bias.shape, residual.shape)
    ctx.save_for_backward(seed)


def _bda_backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    x_shape, bias_shape, residual_shape = ctx.shapes
    grad_h = torch.ops.dropkit.dropout_with_seed(grad, seed, 0, ctx.threshold, ctx.scale)
    grad_bias = None if bias_shape is None else grad_h.sum_to_size(bias_shape)
    return (
        grad_h.sum_to_size(x_shape),
        grad_bias,
        grad.sum_to_size(residual_shape),
        None,
        None,
        None,
    )


_bias_dropout_add_op.register_autograd(_bda_backward, setup_context=_bda_setup)


@torch.library.custom_op("dropkit::keep_mask", mutates_args=())
def _keep_mask_op(
    shape: list[int], seed: torch.Tensor, threshold: int, device: torch.device
) -> torch.Tensor:
    """A bool keep mask of ``shape`` from (seed, offset 0)."""
    n = math.prod(shape)
    return kernels.keep_mask(n, _seed_int(seed), 0, threshold, device).view(shape)


@_keep_mask_op.register_fake
def _(shape, seed, threshold, device):
    return torch.empty(shape, dtype=torch.bool, device=device)


def _use_custom_ops(x: torch.Tensor | None, generator: torch.Generator | None) -> bool:
    """True while torch.compile traces (or for tensor subclasses such as FakeTensor).

    The ops draw from torch's default generator; an explicit ``generator`` cannot be an op argument,
    so that case takes the eager path (a graph break under torch.compile).
    """
    if generator is not None:
        return False
    if torch.compiler.is_compiling():
        return True
    return x is not None and type(x) is not torch.Tensor and not isinstance(x, torch.nn.Parameter)


# ------------------------------------------------------------------------------------------------
# Public functions
# ------------------------------------------------------------------------------------------------
def dropout_elementwise(
    x: torch.Tensor,
    p: float,
    scale: float,
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    r"""y = m ⊙ x · scale with m_k ~ Bernoulli(keep_probability(p)), one fresh seed per call.

    The mask is regenerated in backward from the seed (∂L/∂x = m · scale ⊙ ∂L/∂y), so autograd
    keeps no mask and no copy of x. Element k of the mask is the counter-based word at position k of
    x's logical row-major order, whatever x's strides: a view and its contiguous copy get the same
    mask. Dropped elements give 0 even where x is inf or NaN.

    Args:
        x: float16, bfloat16, float32 or float64 tensor, any shape, layout and device.
        p: drop probability in [0, 1].
        scale: factor for kept units (1 / keep_probability(p) for inverted dropout; 0 at p = 1).
        generator: the ``torch.Generator`` the seed is drawn from (default: torch's CPU generator).
        inplace: write the result into ``x``.

    Shape:
        x any shape; output the same shape, dtype and memory format.

    Example:
        >>> import torch
        >>> from dropkit import ops
        >>> _ = torch.manual_seed(0)
        >>> y = ops.dropout_elementwise(torch.ones(2, 4), 0.5, 2.0)
        >>> sorted(set(y.flatten().tolist()))
        [0.0, 2.0]
    """
    check_float_tensor(x)
    thresh = threshold(p)
    if type(scale) is not float or not math.isfinite(scale):
        scale = check_real(scale, "scale")
    if generator is not None:
        check_generator(generator)
    if _use_custom_ops(x, generator):
        y = _dropout_with_seed_op(x, _traced_seed(), 0, thresh, scale)
        return x.copy_(y) if inplace else y
    return _eager(x, rng.draw_seed(generator), 0, thresh, scale, inplace)


def keep_mask(
    shape: Sequence[int],
    p: float,
    device: torch.device | str | None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""A bool tensor of ``shape``, True where kept: m_k ~ Bernoulli(keep_probability(p)).

    Entry k (row-major) is the counter-based word at position k of a freshly seeded stream, so a
    mask of the same seed is the same on every device. Used for broadcast (shared) masks.

    Args:
        shape: the mask's shape (ints >= 0).
        p: drop probability in [0, 1].
        device: where the mask lives (None: CPU).
        generator: the ``torch.Generator`` the seed is drawn from.

    Example:
        >>> import torch
        >>> from dropkit import ops
        >>> m = ops.keep_mask((3, 1), 0.5, "cpu")
        >>> m.shape, m.dtype
        (torch.Size([3, 1]), torch.bool)
    """
    if torch.jit.is_tracing():  # before the shape check: traced sizes are tensors
        rng.raise_traced_training()
    shape = check_shape(shape)
    thresh = threshold(p)
    check_generator(generator)
    device = torch.device("cpu" if device is None else device)
    if _use_custom_ops(None, generator):
        return _keep_mask_op(shape, _traced_seed(), thresh, device)
    seed = rng.draw_seed(generator)
    return kernels.keep_mask(math.prod(shape), seed, 0, thresh, device).view(shape)


def dropout_with_seed(
    x: torch.Tensor,
    p: float,
    seed: int,
    offset: int = 0,
    scale: float | None = None,
) -> torch.Tensor:
    r"""Dropout with an explicit 64-bit ``seed`` and stream ``offset``: element k uses position
    offset + k (64-bit), so slices of one big mask can be computed piecewise (e.g. one shard per
    tensor-parallel rank: ``offset = shard_start``).

    Args:
        x: float tensor, any shape and layout (the mask follows its logical row-major index).
        p: drop probability in [0, 1].
        seed: int in [0, 2^64).
        offset: int >= 0 with offset + x.numel() <= 2^63.
        scale: factor for kept units (default: dropout_scale(p)).

    Example:
        >>> import torch
        >>> from dropkit import ops
        >>> x = torch.ones(16)
        >>> whole = ops.dropout_with_seed(x, 0.5, seed=7)
        >>> halves = [ops.dropout_with_seed(x[:8], 0.5, 7, 0), ops.dropout_with_seed(x[8:], 0.5, 7, 8)]
        >>> torch.equal(whole, torch.cat(halves))
        True
    """
    check_float_tensor(x)
    thresh = threshold(p)
    scale = dropout_scale(p) if scale is None else check_real(scale, "scale")
    for name, value, limit in (("seed", seed, 1 << 64), ("offset", offset, 1 << 63)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
        if not 0 <= value < limit:
            raise ValueError(f"{name} must be in [0, {limit}), got {value}")
    if offset + x.numel() > 1 << 63:
        raise ValueError(f"offset + x.numel() must be at most 2**63, got {offset} + {x.numel()}")
    if _use_custom_ops(x, None):
        return _dropout_with_seed_op(x, _seed_tensor(seed), offset, thresh, scale)
    return _eager(x, seed, offset, thresh, scale, False)


def bias_dropout_add(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    p: float,
    *,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""The transformer block's residual branch in one pass: y = r + m ⊙ (x + b) / keep.

    With keep = keep_probability(p) and m ~ Bernoulli(keep) drawn over the elements of x + b (so
    the mask is that of ``dropout_elementwise(x + bias, …)`` for the same seed). One read of x, b
    and r, one write of y; backward regenerates the mask (∂L/∂x = m/keep ⊙ g, ∂L/∂b = Σ m/keep ⊙ g
    over the broadcast dims, ∂L/∂r = g) and autograd saves only the seed. Eval (``training=False``)
    or p = 0: y = r + (x + b).

    Args:
        x: float tensor (..., H), e.g. the attention or MLP output before its bias.
        bias: (H,) bias broadcast over x's last dim, or None (plain dropout + add).
        residual: tensor of x's shape (the skip connection).
        p: drop probability in [0, 1].
        training: apply dropout (True) or not.
        generator: the ``torch.Generator`` the seed is drawn from.

    Shape:
        x (..., H), bias (H,), residual (..., H); output (..., H).

    Example:
        >>> import torch
        >>> from dropkit import ops
        >>> x, b, r = torch.zeros(2, 3), torch.ones(3), torch.ones(2, 3)
        >>> y = ops.bias_dropout_add(x, b, r, 0.5)
        >>> sorted(set(y.flatten().tolist())) in ([1.0, 3.0], [1.0], [3.0])
        True
    """
    check_float_tensor(x, "x")
    if bias is not None:
        check_float_tensor(bias, "bias")
    check_float_tensor(residual, "residual")
    thresh = threshold(p)
    check_generator(generator)
    try:
        out_shape = torch.broadcast_shapes(
            x.shape, () if bias is None else bias.shape, residual.shape
        )
    except RuntimeError:
        out_shape = None
    if out_shape != x.shape:
        raise ValueError(
            f"x + bias + residual must have x's shape {tuple(x.shape)}, got shapes x "
            f"{tuple(x.shape)}, bias {None if bias is None else tuple(bias.shape)}, residual "
            f"{tuple(residual.shape)}"
        )
    if not training or thresh == 0:
        return residual + (x if bias is None else x + bias)
    scale = dropout_scale(p)
    if _use_custom_ops(x, generator):
        return _bias_dropout_add_op(x, bias, residual, _traced_seed(), thresh, scale)
    seed = rng.draw_seed(generator)
    tensors = (x, residual) if bias is None else (x, bias, residual)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _BiasDropoutAddFunction.apply(x, bias, residual, seed, thresh, scale)
    return _bias_dropout_add_impl(x, bias, residual, seed, thresh, scale)


def attention_dropout(
    probs: torch.Tensor,
    p: float,
    *,
    training: bool = True,
    generator: torch.Generator | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    r"""Dropout on attention probabilities (Vaswani et al. 2017, sec. 5.4): P' = m ⊙ P / keep.

    For attention code that computes softmax(QKᵀ/√d) itself instead of passing ``dropout_p`` to
    ``F.scaled_dot_product_attention``. The mask is elementwise over (…, L, S) and regenerated in
    backward, so the (…, L, S) mask that eager torch keeps for backward is never stored.

    Args:
        probs: attention probabilities (…, L, S), rows summing to 1.
        p: drop probability in [0, 1].
        training: apply dropout (True) or return ``probs``.
        generator: the ``torch.Generator`` the seed is drawn from.
        inplace: write into ``probs``.

    Shape:
        probs (…, L, S); output the same.

    Example:
        >>> import torch
        >>> from dropkit import ops
        >>> probs = torch.softmax(torch.randn(2, 4, 5, 5), dim=-1)
        >>> ops.attention_dropout(probs, 0.1).shape
        torch.Size([2, 4, 5, 5])
    """
    check_float_tensor(probs, "probs")
    p = check_probability(p)
    if not training or p == 0.0:
        return probs
    return dropout_elementwise(probs, p, dropout_scale(p), generator=generator, inplace=inplace)


def scaled_dot_product_attention_with_dropout(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    p: float = 0.0,
    *,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    training: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Reference attention with dropkit's dropout on the probabilities.

    out = dropout(softmax(Q Kᵀ · s + M)) V with s = 1/√E by default and M the additive mask
    (−inf where a bool ``attn_mask`` is False or above the diagonal when ``is_causal``): the maths
    of ``torch.nn.functional.scaled_dot_product_attention``, with the mask drawn by
    :func:`attention_dropout` (reproducible, same bits on every device, none stored).

    Args:
        query: (…, L, E).
        key: (…, S, E).
        value: (…, S, Ev).
        p: dropout probability on the attention weights.
        attn_mask: bool (True = attend) or float (added) mask broadcastable to (…, L, S).
        is_causal: mask out j > i (needs ``attn_mask`` None).
        scale: the logit scale (default 1/√E).
        training: apply dropout.
        generator: the ``torch.Generator`` the seed is drawn from.

    Shape:
        output (…, L, Ev).

    Example:
        >>> import torch
        >>> from dropkit import ops
        >>> q = k = v = torch.randn(2, 3, 4, 8)
        >>> out = ops.scaled_dot_product_attention_with_dropout(q, k, v, 0.0)
        >>> torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, k, v), atol=1e-6)
        True
    """
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_float_tensor(t, name)
    if query.dim() < 2 or key.dim() < 2 or value.dim() < 2:
        raise ValueError(
            f"query, key and value must have rank >= 2, got shapes {tuple(query.shape)}, "
            f"{tuple(key.shape)}, {tuple(value.shape)}"
        )
    if query.shape[-1] != key.shape[-1] or key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"need query (…, L, E), key (…, S, E), value (…, S, Ev); got {tuple(query.shape)}, "
            f"{tuple(key.shape)}, {tuple(value.shape)}"
        )
    if is_causal and attn_mask is not None:
        raise ValueError("is_causal=True needs attn_mask=None (the causal mask is implied)")
    p = check_probability(p)
    logit_scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else check_real(scale, "scale")
    scores = torch.matmul(query, key.transpose(-2, -1)) * logit_scale
    if is_causal:
        length, source = query.shape[-2], key.shape[-2]
        allowed = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    elif attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    probs = torch.softmax(scores, dim=-1)
    probs = attention_dropout(probs, p, training=training, generator=generator)
    return torch.matmul(probs, value)
