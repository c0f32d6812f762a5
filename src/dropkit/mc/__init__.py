r"""Monte-Carlo dropout: dropout kept on at inference as samples from an approximate posterior.

Gal & Ghahramani (2016) show that a network trained with dropout before its weight layers
approximates a deep Gaussian process; keeping dropout on at test time and averaging T stochastic
forward passes gives the predictive distribution

    p(y | x) ≈ (1/T) Σ_t p(y | x, ω̂_t),   ω̂_t ~ q(ω)   (one dropout mask per pass).

This module does three things:

* :func:`mc_dropout` — a context manager that puts the model in eval mode but switches *only* the
  stochastic-regularisation modules (:func:`is_stochastic_module`) to training mode, so BatchNorm
  and everything else keep their inference rule. Every module's ``training`` flag is restored on
  exit, also when the body raises.

**Which modules are sampled** — :func:`is_stochastic_module`: dropkit's and torch.nn's dropout
modules (:func:`dropkit.is_dropout_module`: every :class:`~dropkit.DropoutBase` subclass, i.e. the
elementwise, channel, alpha, Gaussian, structured, DropConnect, WeightDrop, embedding, locked,
Concrete and variational-dropout modules, and torch.nn's ``Dropout*``), plus every module whose
class sets ``mc_stochastic = True``: dropkit's :class:`~dropkit.Standout`,
:class:`~dropkit.VariationalLinear`, :class:`~dropkit.LinearSVDO` and :class:`~dropkit.Conv2dSVDO`,
which are weight layers (no single rate ``p``, so they are not ``DropoutBase``) but whose training
forward is a draw from the noise they were trained with. A user's own stochastic module opts in
with the same class attribute. What MC means for each is its *training* forward, the distribution
the layer was fitted with:

- Standout (Ba & Frey 2013): y = m ⊙ a with m_j ~ Bernoulli(π_j) (eval: the expectation π ⊙ a);
- VariationalLinear (Kingma et al. 2015) and LinearSVDO/Conv2dSVDO (Molchanov et al. 2017): the
  pre-activations drawn from the factorised Gaussian posterior N(θ, σ²) by the local
  reparameterisation trick. For SVDO this is the *full* posterior q(W), the one the ELBO was fitted
  with: weights the eval rule prunes (log α > threshold, dropout rate > 0.95) are sampled with
  their (huge) noise rather than zeroed; the deterministic pruned mean is the layer's eval mode,
  i.e. the "weight-scaling" counterpart of the MC average. The local trick draws independent
  weights per input row — the same marginal predictive p(y | x) per row as one shared weight
  sample, which is all MC averaging uses.

torch.nn's RNN/LSTM/GRU with inter-layer dropout (``dropout > 0``, two or more layers) are
sampled too: their training mode differs from eval only by that dropout.

Only the stochastic module's own flag is switched (not its children's): a Standout's or
ConcreteDropout's wrapped layer, and a WeightDrop's RNN unless it has inter-layer dropout of its
own, stay in eval.
* :func:`predict` — T samples of ``model(x)`` as one (T, N, ...) tensor, fast:

  - the T samples run *batched*: the batch is repeated T times along dim 0 to (T·N, ...) and run
    in one forward pass, chunked so that one pass stays within a memory budget
    (``max_batch_size`` rows and/or ``max_memory_bytes`` of activations, estimated on the first
    sample; by default passes of about 1 MiB, which measured fastest);
  - the deterministic *trunk* — everything before the first active dropout module — runs once on
    the N rows and only its output is repeated. ``nn.Sequential`` models (nested ones too) are
    split at the first child that is or holds a dropout module; other models are traced with
    ``torch.fx`` and every graph node that does not depend on a dropout call is computed once. If
    the model cannot be traced, or a trunk value that the rest needs depends on the input but is
    not a batch tensor (``x.size(0)`` used after the dropout, say), the whole model runs on the
    repeated input instead; :func:`mc_plan` says which strategy a model gets and why.
* **Reproducible sampling that does not depend on batching.** Sample t's masks are a function of
  (``seed``, t) alone, whatever the chunking, so ``predict(..., batched=False)`` — a plain Python
  loop of T forward passes of ``model(x)`` — gives the same numbers as the batched call:

  - elementwise dropout (``dropkit.Dropout`` without ``noise_shape``, ``torch.nn.Dropout``), the
    k-th dropout call of a forward pass: one counter-based mask stream with key
    ``mix_seed(seed, k)``; sample t uses stream positions [t·M, (t+1)·M) where M is the number of
    elements of one sample's (N, ...) input. A chunk of samples t0 … t1 − 1 is therefore one call
    of :func:`dropkit.ops.dropout_with_seed` at offset t0·M, and the loop's pass t is the same
    call at offset t·M;
  - every other stochastic module (channel, alpha, Gaussian, DropBlock, DropConnect, WeightDrop,
    concrete and variational dropout, Standout, the SVDO and VariationalLinear layers, … and
    torch.nn's channel and alpha variants) is called once per sample block, in order, with its
    seeds drawn from a per-sample ``torch.Generator`` seeded by ``mix_seed(seed, 2^62 + t)``
    (dropkit's functional forms get it as ``generator=``; other modules see torch's global
    generators re-seeded from it). Shared-mask variants therefore draw one mask per sample, never
    one for all T copies; a stochastic module nested in another sees one sample at a time, with
    the call count it has in the loop. A WeightDrop'd RNN must be ``batch_first``; its hidden
    states are joined along their batch dim (1).

  Matmuls over T·N rows may round differently from N-row ones, so the two modes agree to float
  rounding (the masks are bit-identical).

Batching assumes what MC dropout itself assumes: dim 0 of the inputs, of every dropout's input and
of the outputs is the batch, and rows do not interact (true in eval mode for BatchNorm, LayerNorm,
convolutions, attention within a sample). Where the shapes show otherwise (a sequence-first RNN, a
loss over the batch) the remaining samples run as a loop with the same masks.

* **Functional dropout** gated on a module's flag — ``F.dropout(x, p, self.training)``, the
  channel and alpha variants, ``scaled_dot_product_attention(dropout_p=p if self.training else 0)``
  as Hugging Face's attention writes it — is found by :func:`find_dropout_sites`
  (:mod:`dropkit.dropout_sites`: eval passes with the candidate modules' flags switched on one
  way and checked to change nothing but dropout) and sampled: the *owner* modules' flags are
  switched on and a ``TorchFunctionMode`` routes their calls to the same per-sample streams
  (``F.dropout`` and SDPA's dropout: the elementwise stream of their call; the channel and alpha
  variants: the per-sample generators). :func:`predict` does this on its inputs;
  :func:`mc_dropout` given example inputs too.
* **Any inputs and outputs**: ``predict(model, *args, T=…, **kwargs)``; outputs nested in tuples,
  lists, dicts, dataclasses and Hugging Face ``ModelOutput``\ s come back leaf by leaf with a
  leading T dim.
* **Dead dropout**: :func:`predict` warns (:class:`DeadDropoutWarning`; ``strict=True`` raises)
  when an active dropout module never ran, a rate was read but never applied, an owner's flag
  gates more than dropout, or all T samples are identical.
"""

from dropkit.dropout_sites import DropoutSites
from dropkit.mc.plan import DEFAULT_PASS_BYTES, MCPlan
from dropkit.mc.sampling import mc_plan, predict
from dropkit.mc.switch import (
    DeadDropoutWarning,
    find_dropout_sites,
    is_stochastic_module,
    mc_dropout,
)

__all__ = [
    "mc_dropout",
    "predict",
    "mc_plan",
    "MCPlan",
    "DEFAULT_PASS_BYTES",
    "is_stochastic_module",
    "find_dropout_sites",
    "DropoutSites",
    "DeadDropoutWarning",
]
