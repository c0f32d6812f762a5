r"""Counter-based noise for every stochastic layer: torch custom ops with autograd and fake kernels.

The Bernoulli layers' guarantees (:mod:`dropkit.ops`), now for uniform and Gaussian noise too: a
noise tensor is a pure function of a 64-bit seed (:mod:`dropkit.kernels.noise`, contract in
:mod:`dropkit.reference.noise`), and the seed is drawn per call from torch's generator by
:func:`dropkit.rng.draw_seed` (salted per data-parallel rank, shared inside
:func:`dropkit.rng.model_parallel_region`) or, under ``torch.compile``, by the
``dropkit::draw_seed`` op in the same order. So for every layer routed here:

* eager, ``torch.compile`` (aot_eager and inductor) and a checkpoint recompute draw the same noise,
  and a CPU and a GPU run with the same ``torch.manual_seed`` draw the same noise;
* backward regenerates the noise from the seed: what autograd saves is the seed (8 bytes) plus
  whatever the gradient formula needs from the inputs, never the noise.

Ops (``torch.ops.dropkit.*``; each backward is an op too, so compiled graphs keep it opaque and
bit-identical to eager):

* ``noise(shape, seed, normal, dtype, device)``: U[0, 1) or N(0, 1) noise (no gradient);
* ``gaussian_dropout(x, seed, std)``: ``x · (1 + std · z)`` with a constant std (fused kernel);
* ``gaussian_noise_mul(x, std, seed)``: the same with a tensor std (learned, broadcast);
* ``gaussian_reparam(mean, var, seed, eps)``: ``mean + sqrt(var + eps) · z`` (local
  reparameterisation);
* ``concrete_dropout(x, p, seed, temperature, eps)``: Gal et al.'s relaxed-Bernoulli dropout;
* ``standout(a, keep_prob, seed)``: ``a · [u < keep_prob]`` with the local-expectation gradient.

Under ``torch.func`` transforms (``grad``, ``vjp``, ``jacrev``, ``vmap``) custom ops cannot run, so
each rule is computed from the same noise with plain torch ops (autograd then keeps the noise, as
torch's own random ops do); ``vmap``'s ``randomness`` flag is honoured as for torch's dropout:
``"different"`` draws noise over the whole batch, ``"same"`` one sample's noise shared by the
batch, ``"error"`` raises. Double backward: Gaussian dropout's eager path and ``torch.func``
support it; the other ops' backward ops have no autograd formula of their own.

In eager mode Gaussian dropout skips the dispatcher (an ``autograd.Function`` over the same kernel,
the same bits), as :mod:`dropkit.ops` does for the masks: about 15 µs per call instead of 35.

Example:
    >>> import torch
    >>> from dropkit import noise
    >>> _ = torch.manual_seed(0)
    >>> a = noise.normal((2, 3))
    >>> _ = torch.manual_seed(0)
    >>> torch.equal(a, noise.normal((2, 3)))
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dropkit import ops as _ops  # noqa: F401  (registers dropkit::draw_seed)
from dropkit import rng
from dropkit._validate import check_float_dtype, check_shape
from dropkit.kernels import noise as kernels

__all__ = [
    "draw_seed_tensor",
    "uniform",
    "normal",
    "gaussian_dropout",
    "gaussian_noise_mul",
    "gaussian_reparam",
    "concrete_dropout",
    "standout",
]

_MASK64 = (1 << 64) - 1


# ------------------------------------------------------------------------------------------------
# Seeds
# ------------------------------------------------------------------------------------------------
def draw_seed_tensor(generator: torch.Generator | None = None) -> torch.Tensor:
    """One call's seed as an int64 scalar tensor (two's complement of the 64-bit seed).

    Eager: :func:`dropkit.rng.draw_seed` (``generator``, salts). Under ``torch.compile`` with the
    default generator: the ``dropkit::draw_seed`` op, which draws at run time in eager order.

    Example:
        >>> import torch
        >>> from dropkit import noise
        >>> noise.draw_seed_tensor(torch.Generator().manual_seed(1)).dtype
        torch.int64
    """
    if generator is None and torch.compiler.is_compiling():
        return torch.ops.dropkit.draw_seed(torch.empty(0))
    seed = rng.draw_seed(generator)
    return torch.tensor(seed - (1 << 64) if seed >> 63 else seed, dtype=torch.int64)


def _seed_int(seed: torch.Tensor) -> int:
    return int(seed.item()) & _MASK64


def _noise_dtype(dtype: torch.dtype) -> torch.dtype:
    # float64 tensors get float64 noise; every other dtype float32 noise, rounded once to the dtype.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _normal_like(t: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    z = kernels.normal(t.numel(), _seed_int(seed), 0, t.device, _noise_dtype(t.dtype))
    return z.view(t.shape)


def _uniform_like(t: torch.Tensor, seed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    u = kernels.uniform(t.numel(), _seed_int(seed), 0, t.device).view(t.shape)
    return u if dtype == torch.float32 else u.to(dtype)


# ------------------------------------------------------------------------------------------------
# torch.func transforms: the noise as a transform-aware Function, the rules in plain torch ops
# ------------------------------------------------------------------------------------------------
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


def _plain_noise(
    shape: Sequence[int], seed: int, normal: bool, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    if normal:
        z = kernels.normal(n, seed, 0, device, _noise_dtype(dtype))
    else:
        z = kernels.uniform(n, seed, 0, device)
    return z.to(dtype).view(tuple(shape))


class _FuncNoise(torch.autograd.Function):
    """Noise of ``like``'s shape for ``torch.func``: not differentiable; under vmap it follows the
    ``randomness`` flag (``"different"``: noise over the whole batch, each sample its own)."""

    @staticmethod
    def forward(like, seed, normal, dtype):  # noqa: D102
        return _plain_noise(like.shape, seed, normal, dtype, like.device)

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: D102
        ctx.mark_non_differentiable(output)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return None, None, None, None

    @staticmethod
    def vmap(info, in_dims, like, seed, normal, dtype):  # noqa: D102
        if info.randomness == "error":
            raise RuntimeError(
                "vmap: called random operation while in randomness error mode. Please either use "
                "the 'same' or 'different' randomness flags on vmap or perform the randomness "
                "operation out of vmap"
            )
        dim = in_dims[0]
        sample_shape = tuple(like.shape) if dim is None else tuple(like.movedim(dim, 0).shape[1:])
        if info.randomness == "different":
            shape = (info.batch_size, *sample_shape)
            return _plain_noise(shape, seed, normal, dtype, like.device), 0
        return _plain_noise(sample_shape, seed, normal, dtype, like.device), None


def _func_noise(
    like: torch.Tensor, generator: torch.Generator | None, normal: bool, dtype: torch.dtype
) -> torch.Tensor:
    return _FuncNoise.apply(like, rng.draw_seed(generator), normal, dtype)


# ------------------------------------------------------------------------------------------------
# noise: plain U[0, 1) / N(0, 1) tensors
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("dropkit::noise", mutates_args=())
def _noise_op(
    shape: list[int], seed: torch.Tensor, normal: bool, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """U[0, 1) (``normal=False``) or N(0, 1) noise of ``shape`` from (seed, offset 0)."""
    n = 1
    for s in shape:
        n *= s
    if normal:
        z = kernels.normal(n, _seed_int(seed), 0, device, _noise_dtype(dtype))
    else:
        z = kernels.uniform(n, _seed_int(seed), 0, device)
    return z.to(dtype).view(shape)


@_noise_op.register_fake
def _(shape, seed, normal, dtype, device):
    return torch.empty(shape, dtype=dtype, device=device)


def uniform(
    shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """U[0, 1) noise of ``shape`` (the 24-bit grid of ``torch.rand``), counter-based.

    Example:
        >>> import torch
        >>> from dropkit import noise
        >>> u = noise.uniform((1000,), generator=torch.Generator().manual_seed(0))
        >>> bool(u.min() >= 0 and u.max() < 1)
        True
    """
    shape = check_shape(shape)
    dtype = check_float_dtype(dtype)
    device = torch.device("cpu" if device is None else device)
    if _functorch_active():
        return _plain_noise(shape, rng.draw_seed(generator), False, dtype, device)
    return _noise_op(shape, draw_seed_tensor(generator), False, dtype, device)


def normal(
    shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """N(0, 1) noise of ``shape`` (Box–Muller on the Philox stream), counter-based.

    Example:
        >>> import torch
        >>> from dropkit import noise
        >>> noise.normal((2, 2), dtype=torch.float64).dtype
        torch.float64
    """
    shape = check_shape(shape)
    dtype = check_float_dtype(dtype)
    device = torch.device("cpu" if device is None else device)
    if _functorch_active():
        return _plain_noise(shape, rng.draw_seed(generator), True, dtype, device)
    return _noise_op(shape, draw_seed_tensor(generator), True, dtype, device)


# ------------------------------------------------------------------------------------------------
# gaussian_dropout: y = x (1 + std z), std a constant (fused kernel; backward is the same op)
# ------------------------------------------------------------------------------------------------
def _gaussian_dropout_impl(x: torch.Tensor, seed: int, std: float) -> torch.Tensor:
    if x.dtype in (torch.float32, torch.float64):
        return kernels.gaussian_multiply(x.contiguous(), seed, 0, std)
    z = kernels.normal(x.numel(), seed, 0, x.device).view(x.shape)
    return (x.float() * (1.0 + std * z)).to(x.dtype)


@torch.library.custom_op("dropkit::gaussian_dropout", mutates_args=())
def _gaussian_dropout_op(x: torch.Tensor, seed: torch.Tensor, std: float) -> torch.Tensor:
    """x · (1 + std · z), z ~ N(0, 1) from (seed, offset 0) over x's row-major elements."""
    return _gaussian_dropout_impl(x, _seed_int(seed), std)


@_gaussian_dropout_op.register_fake
def _(x, seed, std):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _gd_setup(ctx, inputs, output):
    _, seed, ctx.std = inputs
    ctx.save_for_backward(seed)


def _gd_backward(ctx, grad):
    (seed,) = ctx.saved_tensors
    return torch.ops.dropkit.gaussian_dropout(grad, seed, ctx.std), None, None


_gaussian_dropout_op.register_autograd(_gd_backward, setup_context=_gd_setup)


class _GaussianDropoutFunction(torch.autograd.Function):
    """Eager fast path of ``dropkit::gaussian_dropout`` (same kernel, same bits): skips the
    dispatcher's ~20 µs per call; keeps the seed and std as Python numbers, no tensor."""

    @staticmethod
    def forward(ctx, x, seed, std):  # noqa: D102
        ctx.stream = (seed, std)
        return _gaussian_dropout_impl(x, seed, std)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        # ∂L/∂x = (1 + std z) ⊙ ∂L/∂y with z regenerated; linear in grad, so differentiable again.
        return _GaussianDropoutFunction.apply(grad, *ctx.stream), None, None


def _plain(x: torch.Tensor) -> bool:
    return (type(x) is torch.Tensor or type(x) is torch.nn.Parameter) and not (
        torch.compiler.is_compiling()
    )


def gaussian_dropout(
    x: torch.Tensor, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x · (1 + std · z)``, z ~ N(0, 1) per element; autograd saves only the seed.

    Example:
        >>> import torch
        >>> from dropkit import noise
        >>> noise.gaussian_dropout(torch.ones(3), 0.0)
        tensor([1., 1., 1.])
    """
    if _functorch_active():
        if x.dtype in (torch.float32, torch.float64):
            return x * (1.0 + float(std) * _func_noise(x, generator, True, x.dtype))
        z = _func_noise(x, generator, True, torch.float32)
        return (x.float() * (1.0 + float(std) * z)).to(x.dtype)
    if _plain(x):
        return _GaussianDropoutFunction.apply(x, rng.draw_seed(generator), float(std))
    return _gaussian_dropout_op(x, draw_seed_tensor(generator), float(std))


# ------------------------------------------------------------------------------------------------
# gaussian_noise_mul: y = x (1 + std z), std a (broadcast, learned) tensor
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("dropkit::gaussian_noise_mul", mutates_args=())
def _noise_mul_op(x: torch.Tensor, std: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """x · (1 + std · z), std broadcast to x, z ~ N(0, 1) of x's shape from (seed, offset 0)."""
    z = _normal_like(x, seed).to(x.dtype)
    return x * (1.0 + std * z)


@_noise_mul_op.register_fake
def _(x, std, seed):
    return torch.empty_like(x * std, memory_format=torch.contiguous_format)


@torch.library.custom_op("dropkit::gaussian_noise_mul_backward", mutates_args=())
def _noise_mul_backward_op(
    grad: torch.Tensor, x: torch.Tensor, std: torch.Tensor, seed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂x, ∂L/∂std) of :func:`gaussian_noise_mul`, the noise regenerated from the seed."""
    z = _normal_like(x, seed).to(x.dtype)
    grad_x = grad * (1.0 + std * z)
    grad_std = (grad * x * z).sum_to_size(std.shape)
    return grad_x, grad_std


@_noise_mul_backward_op.register_fake
def _(grad, x, std, seed):
    return torch.empty_like(grad), torch.empty_like(std)


def _nm_setup(ctx, inputs, output):
    x, std, seed = inputs
    ctx.save_for_backward(x, std, seed)


def _nm_backward(ctx, grad):
    x, std, seed = ctx.saved_tensors
    grad_x, grad_std = torch.ops.dropkit.gaussian_noise_mul_backward(grad, x, std, seed)
    return grad_x, grad_std, None


_noise_mul_op.register_autograd(_nm_backward, setup_context=_nm_setup)


def gaussian_noise_mul(
    x: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x · (1 + std · z)`` with a tensor ``std`` (broadcast to x); saves x, std and the seed.

    Example:
        >>> import torch
        >>> from dropkit import noise
        >>> noise.gaussian_noise_mul(torch.ones(2, 3), torch.zeros(3)).tolist()
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """
    if _functorch_active():
        return x * (1.0 + std * _func_noise(x, generator, True, x.dtype))
    return _noise_mul_op(x, std, draw_seed_tensor(generator))


# ------------------------------------------------------------------------------------------------
# gaussian_reparam: y = mean + sqrt(var + eps) z (local reparameterisation)
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("dropkit::gaussian_reparam", mutates_args=())
def _reparam_op(
    mean: torch.Tensor, var: torch.Tensor, seed: torch.Tensor, eps: float
) -> torch.Tensor:
    """mean + sqrt(var + eps) · z, z ~ N(0, 1) of mean's shape from (seed, offset 0)."""
    z = _normal_like(mean, seed).to(mean.dtype)
    return mean + torch.sqrt(var + eps) * z


@_reparam_op.register_fake
def _(mean, var, seed, eps):
    return torch.empty_like(mean, memory_format=torch.contiguous_format)


@torch.library.custom_op("dropkit::gaussian_reparam_backward", mutates_args=())
def _reparam_backward_op(
    grad: torch.Tensor, var: torch.Tensor, seed: torch.Tensor, eps: float
) -> torch.Tensor:
    """∂L/∂var = grad · z / (2 sqrt(var + eps)), the noise regenerated from the seed."""
    z = _normal_like(grad, seed).to(grad.dtype)
    return grad * z / (2.0 * torch.sqrt(var + eps))


@_reparam_backward_op.register_fake
def _(grad, var, seed, eps):
    return torch.empty_like(var)


def _rp_setup(ctx, inputs, output):
    _, var, seed, ctx.eps = inputs
    ctx.save_for_backward(var, seed)


def _rp_backward(ctx, grad):
    var, seed = ctx.saved_tensors
    grad_var = None
    if ctx.needs_input_grad[1]:
        grad_var = torch.ops.dropkit.gaussian_reparam_backward(grad, var, seed, ctx.eps)
    return grad, grad_var, None, None


_reparam_op.register_autograd(_rp_backward, setup_context=_rp_setup)


def gaussian_reparam(
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``mean + sqrt(var + eps) · z`` (var of mean's shape); saves var and the seed, not z.

    Example:
        >>> import torch
        >>> from dropkit import noise
        >>> noise.gaussian_reparam(torch.ones(3), torch.zeros(3), 0.0).tolist()
        [1.0, 1.0, 1.0]
    """
    if _functorch_active():
        return mean + torch.sqrt(var + float(eps)) * _func_noise(mean, generator, True, mean.dtype)
    return _reparam_op(mean, var, draw_seed_tensor(generator), float(eps))


# ------------------------------------------------------------------------------------------------
# concrete_dropout: y = x (1 − sigmoid((logit p + logit u) / t)) / (1 − p)
# ------------------------------------------------------------------------------------------------
def _concrete_keep(
    x: torch.Tensor, p: torch.Tensor, seed: torch.Tensor, temperature: float, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep mask, sigmoid) of Gal et al.'s relaxation, u from (seed, offset 0), as in the paper."""
    u = _uniform_like(x, seed, p.dtype)
    logit = (
        torch.log(p + eps)
        - torch.log(1.0 - p + eps)
        + torch.log(u + eps)
        - torch.log(1.0 - u + eps)
    )
    dropped = torch.sigmoid(logit / temperature)
    return 1.0 - dropped, dropped


@torch.library.custom_op("dropkit::concrete_dropout", mutates_args=())
def _concrete_op(
    x: torch.Tensor, p: torch.Tensor, seed: torch.Tensor, temperature: float, eps: float
) -> torch.Tensor:
    """x · m̃ / (1 − p), m̃ the relaxed Bernoulli keep mask of x's shape from (seed, offset 0)."""
    keep, _ = _concrete_keep(x, p, seed, temperature, eps)
    return x * keep / (1.0 - p)


@_concrete_op.register_fake
def _(x, p, seed, temperature, eps):
    return torch.empty_like(x * p, memory_format=torch.contiguous_format)


@torch.library.custom_op("dropkit::concrete_dropout_backward", mutates_args=())
def _concrete_backward_op(
    grad: torch.Tensor,
    x: torch.Tensor,
    p: torch.Tensor,
    seed: torch.Tensor,
    temperature: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂x, ∂L/∂p) of :func:`concrete_dropout`, the uniform noise regenerated."""
    keep, dropped = _concrete_keep(x, p, seed, temperature, eps)
    one_minus_p = 1.0 - p
    grad_x = grad * keep / one_minus_p
    # ∂m̃/∂p = −σ'(·)/t · (1/(p + eps) + 1/(1 − p + eps)); ∂(1/(1 − p))/∂p = 1/(1 − p)².
    d_keep = (
        -(dropped * (1.0 - dropped)) / temperature * (1.0 / (p + eps) + 1.0 / (one_minus_p + eps))
    )
    d_out = d_keep / one_minus_p + keep / (one_minus_p * one_minus_p)
    grad_p = (grad * x * d_out).sum_to_size(p.shape)
    return grad_x, grad_p


@_concrete_backward_op.register_fake
def _(grad, x, p, seed, temperature, eps):
    return torch.empty_like(x), torch.empty_like(p)


def _cd_setup(ctx, inputs, output):
    x, p, seed, ctx.temperature, ctx.eps = inputs
    ctx.save_for_backward(x, p, seed)


def _cd_backward(ctx, grad):
    x, p, seed = ctx.saved_tensors
    grad_x, grad_p = torch.ops.dropkit.concrete_dropout_backward(
        grad, x, p, seed, ctx.temperature, ctx.eps
    )
    return grad_x, grad_p, None, None, None


_concrete_op.register_autograd(_cd_backward, setup_context=_cd_setup)


def concrete_dropout(
    x: torch.Tensor,
    p: torch.Tensor,
    temperature: float,
    eps: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Concrete dropout's training rule ``x · m̃ / (1 − p)``; saves x, p and the seed, not u.

    Example:
        >>> import torch
        >>> from dropkit import noise
        >>> noise.concrete_dropout(torch.zeros(3), torch.tensor(0.2), 0.1, 1e-7).tolist()
        [0.0, 0.0, 0.0]
    """
    if _functorch_active():
        u = _func_noise(x, generator, False, p.dtype)
        logit = (
            torch.log(p + eps)
            - torch.log(1.0 - p + eps)
            + torch.log(u + eps)
            - torch.log(1.0 - u + eps)
        )
        return x * (1.0 - torch.sigmoid(logit / temperature)) / (1.0 - p)
    return _concrete_op(x, p, draw_seed_tensor(generator), float(temperature), float(eps))


# ------------------------------------------------------------------------------------------------
# standout: y = a · [u < π], gradient in π by the local expectation (∂y/∂π = a)
# ------------------------------------------------------------------------------------------------
def _standout_mask(a: torch.Tensor, keep_prob: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    u = _uniform_like(a, seed, keep_prob.dtype)
    return (u < keep_prob).to(a.dtype)


@torch.library.custom_op("dropkit::standout", mutates_args=())
def _standout_op(a: torch.Tensor, keep_prob: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """a · m, m = [u < keep_prob] with u ~ U[0, 1) of a's shape from (seed, offset 0)."""
    return a * _standout_mask(a, keep_prob, seed)


@_standout_op.register_fake
def _(a, keep_prob, seed):
    return torch.empty_like(a, memory_format=torch.contiguous_format)


@torch.library.custom_op("dropkit::standout_backward", mutates_args=())
def _standout_backward_op(
    grad: torch.Tensor, a: torch.Tensor, keep_prob: torch.Tensor, seed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂a, ∂L/∂π) = (m ⊙ grad, a ⊙ grad summed to π's shape), m regenerated."""
    return grad * _standout_mask(a, keep_prob, seed), (grad * a).sum_to_size(keep_prob.shape)


@_standout_backward_op.register_fake
def _(grad, a, keep_prob, seed):
    return torch.empty_like(a), torch.empty_like(keep_prob)


def _so_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _so_backward(ctx, grad):
    a, keep_prob, seed = ctx.saved_tensors
    grad_a, grad_pi = torch.ops.dropkit.standout_backward(grad, a, keep_prob, seed)
    return grad_a, grad_pi, None


_standout_op.register_autograd(_so_backward, setup_context=_so_setup)


def standout(
    a: torch.Tensor, keep_prob: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Standout's training rule ``a · [u < π]``; saves a, π and the seed, not the mask.

    Example:
        >>> import torch
        >>> from dropkit import noise
        >>> noise.standout(torch.ones(3), torch.ones(3)).tolist()
        [1.0, 1.0, 1.0]
    """
    if _functorch_active():
        mask = (_func_noise(a, generator, False, keep_prob.dtype) < keep_prob).to(a.dtype)
        # The value is m ⊙ a, the gradient in π the local expectation's.
        return a * (keep_prob + (mask - keep_prob).detach())
    return _standout_op(a, keep_prob, draw_seed_tensor(generator))
