r"""Hugging Face ``transformers``: attention dropout through dropkit's counter-based kernel.

A transformers model does not drop attention probabilities through its ``nn.Dropout`` module: its
attention module reads the rate, ``dropout=self.attn_dropout.p if self.training else 0.0``, and
passes it to the attention function the config names (``eager``: ``F.dropout`` on the weights;
``sdpa``: ``scaled_dot_product_attention(dropout_p=…)``). Swapping the module
(:func:`dropkit.convert.convert_dropout`) therefore leaves attention dropout on torch's RNG and
kernel. This module registers one more attention function, ``"dropkit"``, in transformers'
``AttentionInterface`` (and the ``sdpa`` mask builder under the same name) and switches a model to
it:

* with dropout (training, p > 0): softmax(QKᵀ·s + M) is dropped by
  :func:`dropkit.ops.scaled_dot_product_attention_with_dropout`, the mask a pure function of
  (seed, offset) drawn from torch's generator — regenerated in backward (what autograd keeps is a
  seed, not the (N, H, L, S) mask) and reproduced exactly by ``torch.utils.checkpoint`` (HF's
  gradient checkpointing), which restores torch's RNG state before recomputing;
* without dropout (eval, p = 0): ``scaled_dot_product_attention`` itself, so inference keeps
  torch's fused kernels;
* under :func:`dropkit.mc.predict`: ``scaled_dot_product_attention`` with ``dropout_p``, which MC
  dropout routes to its per-sample streams (the same masks batched or looped).

Like ``sdpa`` it returns no attention weights (``output_attentions`` needs ``eager``).

Example:
    >>> import torch
    >>> from transformers import GPT2Config, GPT2LMHeadModel
    >>> from dropkit.integrations.huggingface import use_dropkit_attention
    >>> model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=11,
    ...                                    n_positions=8, bos_token_id=0, eos_token_id=0))
    >>> use_dropkit_attention(model)
    ['transformer.h.0.attn']
    >>> model.config._attn_implementation
    'dropkit'
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as TF

from dropkit import ops
from dropkit.dropout_sites import intercepting

__all__ = [
    "NAME",
    "attention_forward",
    "register",
    "use_dropkit_attention",
    "is_transformers_model",
]

#: The attention implementation's name in transformers' ``AttentionInterface``.
NAME = "dropkit"


def attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract (as ``sdpa``), dropout by dropkit's kernel.

    Args:
        module: the calling attention module (its ``is_causal`` and ``num_key_value_groups`` are read).
        query: (N, H, L, E); key, value: (N, H_kv, S, E).
        attention_mask: a mask from the ``sdpa`` mask builder (bool, True = attend, or additive
            float) or None.
        dropout: the attention-dropout rate transformers passes (0 in eval).
        scaling: the logit scale (default 1/√E).
        is_causal: as transformers passes it; None reads ``module.is_causal``.

    Returns:
        ``(output (N, L, H, E), None)``.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    # As transformers' sdpa: causal only for a full query block with no explicit mask.
    causal = bool(query.shape[2] > 1 and attention_mask is None and causal)
    if dropout == 0.0 or intercepting():
        out = TF.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=dropout,
            is_causal=causal,
            scale=scaling,
        )
    else:
        out = ops.scaled_dot_product_attention_with_dropout(
            query, key, value, dropout, attn_mask=attention_mask, is_causal=causal, scale=scaling
        )
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Registers ``"dropkit"`` in transformers' attention and attention-mask interfaces."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(NAME, attention_forward)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def is_transformers_model(model: object) -> bool:
    """True for a transformers ``PreTrainedModel`` (checked without importing transformers)."""
    return any(
        cls.__name__ == "PreTrainedModel" and cls.__module__.startswith("transformers.")
        for cls in type(model).__mro__
    )


def use_dropkit_attention(model: nn.Module) -> list[str]:
    """Switches a transformers model's attention to ``"dropkit"`` (registered on first use).

    Only models written on transformers' attention interface can switch
    (``_supports_attention_backend``: GPT-2, BERT, ViT, Llama, …); their attention modules keep
    their weights and their rate.

    Args:
        model: a transformers ``PreTrainedModel``.

    Returns:
        The qualified names of the attention modules that now drop through dropkit (modules that
        hold an attention-dropout rate: ``attn_dropout``/``dropout``/``attention_dropout``).

    Raises:
        TypeError: ``model`` is not a transformers model.
        ValueError: the model does not use transformers' attention interface.
    """
    if not is_transformers_model(model):
        raise TypeError(f"model must be a transformers PreTrainedModel, got {type(model).__name__}")
    if not getattr(model, "_supports_attention_backend", False):
        raise ValueError(
            f"model ({type(model).__name__}) does not dispatch attention through transformers' "
            "AttentionInterface (_supports_attention_backend is False), so its attention dropout "
            "cannot be routed to dropkit"
        )
    register()
    model.set_attn_implementation(NAME)
    names = []
    for name, module in model.named_modules():
        config = getattr(module, "config", None)
        if config is None or module is model or isinstance(module, type(model)):
            continue
        if (
            "Attention" in type(module).__name__
            and any(
                hasattr(module, attr) for attr in ("attn_dropout", "attention_dropout", "dropout")
            )
            and any(
                isinstance(c, nn.Linear) or type(c).__name__ == "Conv1D" for c in module.children()
            )
        ):
            names.append(name)
    return names
