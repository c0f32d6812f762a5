r"""A from-scratch NumPy MLP with dropout, written straight from the seeds. Never imports torch.

This is the oracle dropkit's torch layers are tested against, and the place to read what dropout
does to a network, forward and backward, with nothing hidden.

The network (L linear layers, ReLU between them, softmax cross-entropy on the logits)::

    a⁽⁰⁾ = x
    z⁽ˡ⁾ = W⁽ˡ⁾ (m⁽ˡ⁻¹⁾ ⊙ a⁽ˡ⁻¹⁾) + b⁽ˡ⁾          m⁽ˡ⁻¹⁾ ~ Bernoulli(1 − p⁽ˡ⁻¹⁾), one per unit
    a⁽ˡ⁾ = relu(z⁽ˡ⁾)  for l < L                    (a fresh mask on every training step)
    ŷ = softmax(m⁽ᴸ⁾ ⊙ z⁽ᴸ⁾)                        (output dropout, p⁽ᴸ⁾ = 0 by default)
    loss = −(1/N) Σₙ log ŷₙ[yₙ]

Backward, with the seeds' formula for the masked layer::

    ∂L/∂z⁽ᴸ⁾   = m⁽ᴸ⁾ ⊙ (ŷ − onehot(y)) / N
    ∂L/∂W⁽ˡ⁾   = ∂L/∂z⁽ˡ⁾ᵀ (m⁽ˡ⁻¹⁾ ⊙ a⁽ˡ⁻¹⁾)        ∂L/∂b⁽ˡ⁾ = Σₙ ∂L/∂z⁽ˡ⁾
    ∂L/∂a⁽ˡ⁻¹⁾ = m⁽ˡ⁻¹⁾ ⊙ (W⁽ˡ⁾)ᵀ ∂L/∂z⁽ˡ⁾
    ∂L/∂z⁽ˡ⁻¹⁾ = ∂L/∂a⁽ˡ⁻¹⁾ ⊙ [z⁽ˡ⁻¹⁾ > 0]

The two scalings (rows are batch samples, so W x is written x Wᵀ in the code):

* ``"inverted"``: the mask is m/(1 − p) in training; nothing is scaled at test time.
* ``"inference"`` (the seeds' "standard" dropout): the mask is m in training; at test time every
  unit is kept and scaled, a⁽ˡ⁾ = f(W⁽ˡ⁾ · (1 − p⁽ˡ⁻¹⁾) · a⁽ˡ⁻¹⁾ + b⁽ˡ⁾).

Masks are either passed in (a list with one boolean array per dropout site, so another
implementation can be run on the very same mask) or drawn from a ``numpy.random.Generator``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ReferenceMLP",
    "Gradients",
    "StepResult",
    "draw_mask",
    "train_scale",
    "eval_scale",
    "dropout_train",
    "dropout_eval",
    "softmax_cross_entropy",
]

SCALINGS = ("inverted", "inference")


def _check_p(p: object, name: str = "p") -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {p!r}")
    return float(p)


def _check_scaling(scaling: object) -> str:
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
    return str(scaling)


def train_scale(p: float, scaling: str) -> float:
    """What a kept unit is multiplied by in training: 1/(1 − p) (inverted; 0 if p = 1) or 1.

    Example:
        >>> train_scale(0.5, "inverted"), train_scale(0.5, "inference"), train_scale(1.0, "inverted")
        (2.0, 1.0, 0.0)
    """
    if _check_scaling(scaling) == "inference":
        return 1.0
    keep = 1.0 - _check_p(p)
    return 0.0 if keep == 0.0 else 1.0 / keep


def eval_scale(p: float, scaling: str) -> float:
    """What every unit is multiplied by at test time: 1 − p (inference) or 1 (inverted).

    Example:
        >>> eval_scale(0.25, "inference"), eval_scale(0.25, "inverted")
        (0.75, 1.0)
    """
    return 1.0 - _check_p(p) if _check_scaling(scaling) == "inference" else 1.0


def draw_mask(shape: tuple[int, ...], p: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean keep-mask, each entry True with probability 1 − p: the seeds' ``rand() > p``.

    ``>=`` rather than ``>`` so p = 0 keeps every unit even if ``rng.random()`` returns 0.0.

    Example:
        >>> bool(draw_mask((2, 3), 0.0, np.random.default_rng(0)).all())
        True
    """
    return rng.random(shape) >= _check_p(p)


def dropout_train(a: np.ndarray, mask: np.ndarray, p: float, scaling: str) -> np.ndarray:
    """Training rule: m ⊙ a · s, s = train_scale(p, scaling); a dropped unit is exactly 0.

    Example:
        >>> dropout_train(np.array([1.0, 2.0, 3.0]), np.array([True, False, True]), 0.5, "inverted")
        array([2., 0., 6.])
    """
    return np.where(mask, a * train_scale(p, scaling), 0.0)


def dropout_eval(a: np.ndarray, p: float, scaling: str) -> np.ndarray:
    """Test rule: a · (1 − p) (inference) or a (inverted).

    Example:
        >>> dropout_eval(np.array([1.0, 2.0]), 0.5, "inference")
        array([0.5, 1. ])
    """
    return a * eval_scale(p, scaling)


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient
    (softmax − onehot)/N with respect to the logits.

    Example:
        >>> loss, grad = softmax_cross_entropy(np.zeros((1, 2)), np.array([0]))
        >>> round(loss, 6), grad.tolist()
        (0.693147, [[-0.5, 0.5]])
    """
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = logits.shape[0]
    loss = -float(log_probs[np.arange(n), labels].mean())
    grad = np.exp(log_probs)
    grad[np.arange(n), labels] -= 1.0
    return loss, grad / n


@dataclass
class Gradients:
    """∂L/∂W⁽ˡ⁾ (out, in), ∂L/∂b⁽ˡ⁾ and ∂L/∂x, one entry per linear layer, first layer first."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    input: np.ndarray


@dataclass
class StepResult:
    """What a training step saw: the loss before the update, the gradients and the masks used."""

    loss: float
    gradients: Gradients
    masks: list[np.ndarray | None]


@dataclass
class _Cache:
    inputs: list[np.ndarray]  # a⁽ˡ⁻¹⁾ entering layer l's dropout
    factors: list[np.ndarray | float]  # m⁽ˡ⁻¹⁾·s (training) or the test factor
    pre_activations: list[np.ndarray]  # z⁽ˡ⁾
    output_factor: np.ndarray | float
    logits: np.ndarray  # m⁽ᴸ⁾ ⊙ z⁽ᴸ⁾


class ReferenceMLP:
    r"""A NumPy MLP, ReLU hidden layers, softmax cross-entropy, dropout before every layer.

    Args:
        sizes: units per layer, input first, output last.
        p: a number (every hidden layer; input and output 0, as ``dropkit.MLP``), or one rate per
            dropout site: ``len(sizes) - 1`` rates (input and hidden layers) or ``len(sizes)``
            (plus the output's).
        scaling: ``"inverted"`` or ``"inference"``.
        rng: the generator masks and initial weights are drawn from (or an int seed).
        weights, biases: initial parameters, W⁽ˡ⁾ of shape (sizes[l], sizes[l-1]) (torch's
            ``nn.Linear.weight`` layout); default He-normal weights and zero biases.

    Example:
        >>> net = ReferenceMLP([4, 8, 3], p=[0.2, 0.5], rng=0)
        >>> x, y = np.ones((5, 4)), np.array([0, 1, 2, 0, 1])
        >>> first = net.train_step(x, y, lr=0.1).loss
        >>> loss, accuracy = net.test_step(x, y)
        >>> net.forward(x, training=False)[0].shape
        (5, 3)
    """

    def __init__(
        self,
        sizes: Sequence[int],
        p: float | Sequence[float] = 0.0,
        scaling: str = "inverted",
        rng: np.random.Generator | int | None = None,
        weights: Sequence[np.ndarray] | None = None,
        biases: Sequence[np.ndarray] | None = None,
    ) -> None:
        self.sizes = [int(s) for s in sizes]
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise ValueError(f"sizes must be at least 2 positive ints, got {list(sizes)}")
        n_layers = len(self.sizes) - 1
        if isinstance(p, numbers.Real):
            rates = [0.0] + [float(p)] * (n_layers - 1) + [0.0]
        else:
            rates = [float(r) for r in p]
            if len(rates) == n_layers:
                rates.append(0.0)
            elif len(rates) != n_layers + 1:
                raise ValueError(f"p needs {n_layers} or {n_layers + 1} rates, got {len(rates)}")
        self.p = [_check_p(r, f"p[{i}]") for i, r in enumerate(rates)]
        self.scaling = _check_scaling(scaling)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        if weights is None:
            weights = [
                self.rng.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_out, fan_in))
                for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:], strict=True)
            ]
        if biases is None:
            biases = [np.zeros(n) for n in self.sizes[1:]]
        self.weights = [np.array(w, dtype=np.float64) for w in weights]
        self.biases = [np.array(b, dtype=np.float64) for b in biases]
        for layer, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            expected = (self.sizes[layer + 1], self.sizes[layer])
            if w.shape != expected or b.shape != expected[:1]:
                raise ValueError(
                    f"layer {layer + 1}: weight {w.shape} / bias {b.shape}, expected {expected}"
                )

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    def draw_masks(
        self, batch_size: int, rng: np.random.Generator | None = None
    ) -> list[np.ndarray | None]:
        """One keep-mask per dropout site (None where p = 0): (N, sizes[l]) for l = 0 … L."""
        rng = self.rng if rng is None else rng
        return [
            None if rate == 0.0 else draw_mask((batch_size, size), rate, rng)
            for rate, size in zip(self.p, self.sizes, strict=True)
        ]

    def _factor(self, site: int, masks: list[np.ndarray | None] | None, training: bool):
        rate = self.p[site]
        if not training:
            return eval_scale(rate, self.scaling)
        mask = None if masks is None else masks[site]
        if mask is None:
            if rate != 0.0:
                raise ValueError(f"training with p[{site}] = {rate} needs a mask for site {site}")
            return 1.0
        return np.where(mask, train_scale(rate, self.scaling), 0.0)

    def _forward(
        self, x: np.ndarray, masks: list[np.ndarray | None] | None, training: bool
    ) -> _Cache:
        if masks is not None and len(masks) != len(self.p):
            raise ValueError(
                f"masks needs {len(self.p)} entries (None for p = 0), got {len(masks)}"
            )
        inputs, factors, pre_activations = [], [], []
        a = np.asarray(x, dtype=np.float64)
        for layer in range(self.n_layers):
            factor = self._factor(layer, masks, training)
            inputs.append(a)
            factors.append(factor)
            # z⁽ˡ⁾ = W⁽ˡ⁾(m⁽ˡ⁻¹⁾ ⊙ a⁽ˡ⁻¹⁾) + b⁽ˡ⁾
            z = (factor * a) @ self.weights[layer].T + self.biases[layer]
            pre_activations.append(z)
            a = np.maximum(z, 0.0) if layer < self.n_layers - 1 else z
        output_factor = self._factor(self.n_layers, masks, training)
        return _Cache(inputs, factors, pre_activations, output_factor, output_factor * a)

    def forward(
        self,
        x: np.ndarray,
        masks: list[np.ndarray | None] | None = None,
        *,
        training: bool = True,
    ) -> tuple[np.ndarray, list[np.ndarray | None] | None]:
        """Logits for x (N, sizes[0]) and the masks used (drawn when training without masks)."""
        if training and masks is None:
            masks = self.draw_masks(np.asarray(x).shape[0])
        return self._forward(x, masks, training).logits, masks

    def loss_and_gradients(
        self,
        x: np.ndarray,
        labels: np.ndarray,
        masks: list[np.ndarray | None] | None = None,
        *,
        training: bool = True,
    ) -> tuple[float, Gradients]:
        """The mean cross-entropy and its gradients, with the given masks (training) or the test
        rule (training=False)."""
        cache = self._forward(x, masks, training)
        loss, grad_logits = softmax_cross_entropy(cache.logits, np.asarray(labels))
        grad_z = cache.output_factor * grad_logits  # ∂L/∂z⁽ᴸ⁾ = m⁽ᴸ⁾ ⊙ ∂L/∂ŷ-logits
        grad_w: list[np.ndarray] = [np.empty(0)] * self.n_layers
        grad_b: list[np.ndarray] = [np.empty(0)] * self.n_layers
        grad_input = np.empty(0)
        for layer in reversed(range(self.n_layers)):
            masked_input = cache.factors[layer] * cache.inputs[layer]
            grad_w[layer] = grad_z.T @ masked_input
            grad_b[layer] = grad_z.sum(axis=0)
            # Seeds: ∂L/∂a⁽ˡ⁻¹⁾ = m⁽ˡ⁻¹⁾ ⊙ (W⁽ˡ⁾)ᵀ ∂L/∂z⁽ˡ⁾ (rows are samples: grad_z W).
            grad_a = cache.factors[layer] * (grad_z @ self.weights[layer])
            if layer == 0:
                grad_input = grad_a
            else:
                grad_z = grad_a * (cache.pre_activations[layer - 1] > 0.0)
        return loss, Gradients(grad_w, grad_b, grad_input)

    def train_step(
        self,
        x: np.ndarray,
        labels: np.ndarray,
        lr: float = 0.1,
        *,
        masks: list[np.ndarray | None] | None = None,
        rng: np.random.Generator | None = None,
    ) -> StepResult:
        """One SGD step on (x, labels) with fresh masks (or the given ones); W ← W − lr ∂L/∂W."""
        if masks is None:
            masks = self.draw_masks(np.asarray(x).shape[0], rng)
        loss, grads = self.loss_and_gradients(x, labels, masks, training=True)
        for layer in range(self.n_layers):
            self.weights[layer] -= lr * grads.weights[layer]
            self.biases[layer] -= lr * grads.biases[layer]
        return StepResult(loss, grads, masks)

    def test_step(self, x: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        """The test-time loss and accuracy: every unit kept, × (1 − p) under inference scaling."""
        logits = self._forward(x, None, training=False).logits
        loss, _ = softmax_cross_entropy(logits, np.asarray(labels))
        return loss, float((logits.argmax(axis=1) == np.asarray(labels)).mean())
