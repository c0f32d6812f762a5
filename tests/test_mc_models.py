"""MC dropout on the models people run: Hugging Face GPT-2, BERT and ViT built from configs (tiny,
no downloads), functional dropout, any inputs and outputs, dead dropout.

Each model has only the dropout under test non-zero, so "the samples vary" can only come from it.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as TF
from stats import assert_fraction_close
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    ViTConfig,
    ViTForImageClassification,
)

import dropkit
from dropkit.convert import convert_dropout
from dropkit.diagnostics import audit
from dropkit.integrations import huggingface
from dropkit.mc import DeadDropoutWarning, find_dropout_sites, mc_dropout, mc_plan, predict

IMPLEMENTATIONS = ["eager", "sdpa"]


def gpt2(impl: str, attn: float = 0.5, resid: float = 0.0) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=16, vocab_size=40, n_positions=16, attn_pdrop=attn,
        resid_pdrop=resid, embd_pdrop=0.0, summary_first_dropout=0.0, bos_token_id=0,
        eos_token_id=0, attn_implementation=impl,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def bert(impl: str) -> BertModel:
    torch.manual_seed(0)
    config = BertConfig(
        num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=32,
        vocab_size=40, max_position_embeddings=16, attention_probs_dropout_prob=0.5,
        hidden_dropout_prob=0.0, attn_implementation=impl,
    )  # fmt: skip
    return BertModel(config).eval()


def vit(impl: str) -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, attention_probs_dropout_prob=0.5,
        hidden_dropout_prob=0.0, num_labels=3, attn_implementation=impl,
    )  # fmt: skip
    return ViTForImageClassification(config).eval()


def ids(n: int = 3, length: int = 6) -> torch.Tensor:
    return torch.randint(0, 40, (n, length), generator=torch.Generator().manual_seed(1))


def all_distinct(samples: torch.Tensor) -> bool:
    """Every pair of the T samples differs somewhere."""
    flat = samples.flatten(1)
    return all(
        not torch.equal(flat[i], flat[j]) for i in range(len(flat)) for j in range(i + 1, len(flat))
    )


# ------------------------------------------------------------------------------------------------
# Hugging Face attention dropout, eager and sdpa
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_gpt2_attention_only_dropout_is_sampled(impl):
    model = gpt2(impl)
    x = ids()
    out = predict(model, x, T=6, seed=0, use_cache=False)
    assert type(out).__name__ == "CausalLMOutputWithCrossAttentions"
    assert out.logits.shape == (6, 3, 6, 40)
    assert all_distinct(out.logits)
    loop = predict(model, x, T=6, seed=0, use_cache=False, batched=False)
    torch.testing.assert_close(out.logits, loop.logits, rtol=1e-5, atol=1e-6)
    sites = find_dropout_sites(model, x, use_cache=False)
    assert sites.owners == ["transformer.h.0.attn", "transformer.h.1.attn"]
    assert sites.covered == {
        "transformer.h.0.attn.attn_dropout",
        "transformer.h.1.attn.attn_dropout",
    }
    assert not model.training and not model.transformer.h[0].attn.training  # restored


def test_eager_and_sdpa_attention_draw_the_same_masks():
    # Both route to one stream per attention call: the samples agree to float rounding.
    x = ids()
    eager = predict(gpt2("eager"), x, T=4, seed=3, use_cache=False).logits
    sdpa = predict(gpt2("sdpa"), x, T=4, seed=3, use_cache=False).logits
    torch.testing.assert_close(eager, sdpa, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_bert_attention_only_dropout_is_sampled_with_an_attention_mask(impl):
    model = bert(impl)
    x = ids()
    mask = torch.ones_like(x)
    mask[0, 4:] = 0
    out = predict(model, x, attention_mask=mask, T=5, seed=1)
    assert type(out).__name__ == "BaseModelOutputWithPoolingAndCrossAttentions"
    assert out.last_hidden_state.shape == (5, 3, 6, 16) and out.pooler_output.shape == (5, 3, 16)
    assert all_distinct(out.last_hidden_state)
    loop = predict(model, x, attention_mask=mask, T=5, seed=1, batched=False)
    torch.testing.assert_close(out.last_hidden_state, loop.last_hidden_state, rtol=1e-5, atol=1e-6)
    # The mask still masks: each sample equals the model run on that sample's masks alone.
    assert find_dropout_sites(model, x, attention_mask=mask).owners == [
        "encoder.layer.0.attention.self",
        "encoder.layer.1.attention.self",
    ]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_vit_attention_dropout_held_as_a_float_is_sampled(impl):
    # ViT keeps the rate as a float attribute (no module): found through its SDPA/F.dropout call.
    model = vit(impl)
    pixels = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = predict(model, pixels, T=5, seed=0, transform=lambda o: o.logits.softmax(-1))
    assert out.shape == (5, 2, 3)
    assert all_distinct(out)
    torch.testing.assert_close(out.sum(-1), torch.ones(5, 2))


def test_convert_dropout_routes_hf_attention_through_dropkit_and_mc_still_samples_it():
    model = gpt2("sdpa")
    x = ids()
    reference = predict(model, x, T=4, seed=2, use_cache=False).logits
    model, swapped = convert_dropout(model)
    assert model.config._attn_implementation == huggingface.NAME
    assert "transformer.h.0.attn.attn_dropout" in swapped
    converted = predict(model, x, T=4, seed=2, use_cache=False).logits
    torch.testing.assert_close(converted, reference, rtol=1e-4, atol=1e-5)


def test_mc_dropout_without_example_warns_that_hf_attention_dropout_never_ran():
    model, x = gpt2("sdpa"), ids()
    with pytest.warns(DeadDropoutWarning, match="attn_dropout"), torch.no_grad():
        with mc_dropout(model):
            a, b = model(x).logits, model(x).logits
    assert torch.equal(a, b)  # nothing sampled: hence the warning
    with torch.no_grad(), mc_dropout(model, x) as names:
        assert "transformer.h.0.attn" in names
        assert not torch.equal(model(x).logits, model(x).logits)


# ------------------------------------------------------------------------------------------------
# The dropkit attention implementation in training
# ------------------------------------------------------------------------------------------------
def test_dropkit_attention_drops_a_fraction_p_of_the_weights():
    # q = k = 0: uniform weights 1/S; v = I: out[l, s] = m_ls (1/S) / keep, so zeros are drops.
    module = nn.Module()
    n, heads, length, p = 4, 2, 64, 0.3
    q = torch.zeros(n, heads, length, 8)
    v = torch.eye(length).expand(n, heads, length, length)
    out, weights = huggingface.attention_forward(
        module, q, q[..., :8], v, None, dropout=p, is_causal=False
    )
    assert weights is None and out.shape == (n, length, heads, length)
    dropped = int((out == 0).sum())
    assert_fraction_close(dropped, out.numel(), p)
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / length / (1 - p)), rtol=1e-3, atol=0)


def test_dropkit_attention_matches_sdpa_in_eval_and_is_checkpoint_exact_in_training():
    model = gpt2("sdpa", attn=0.3, resid=0.1)
    x = ids()
    expected = model(x).logits
    huggingface.use_dropkit_attention(model)
    torch.testing.assert_close(model(x).logits, expected)  # eval: torch's attention, no dropout
    model.train()

    def grads(checkpointing: bool) -> list[torch.Tensor]:
        # transformers 5.x names it activation checkpointing (the old name warns).
        prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
        getattr(model, f"{prefix}_checkpointing_{'enable' if checkpointing else 'disable'}")()
        model.zero_grad()
        torch.manual_seed(7)
        model(x, labels=x, use_cache=False).loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain, checkpointed = grads(False), grads(True)
    assert all(torch.equal(a, b) for a, b in zip(plain, checkpointed, strict=True))
    torch.manual_seed(8)
    other = model(x, labels=x, use_cache=False).loss
    torch.manual_seed(7)
    assert model(x, labels=x, use_cache=False).loss != other  # the masks follow the seed


def test_use_dropkit_attention_refuses_other_models():
    with pytest.raises(TypeError, match="model must be a transformers PreTrainedModel, got Linear"):
        huggingface.use_dropkit_attention(nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------------
# Functional dropout in a plain model
# ------------------------------------------------------------------------------------------------
class FunctionalNet(nn.Module):
    """Dropout written as functional calls gated on the module's flag, BatchNorm beside it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 16, 3)
        self.p = 0.3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = TF.dropout2d(self.norm(self.conv(x)).relu(), self.p, self.training)
        h = TF.dropout(h.flatten(1), self.p, training=self.training)
        return self.fc(TF.alpha_dropout(h, 0.1, self.training))


def test_functional_dropout_is_sampled_batched_equal_to_loop_with_batchnorm_in_eval():
    torch.manual_seed(0)
    net = FunctionalNet()
    net.norm.running_mean.fill_(0.5)
    x = torch.randn(5, 1, 4, 4)
    samples = predict(net, x, T=8, seed=4)
    assert samples.shape == (8, 5, 3) and all_distinct(samples)
    torch.testing.assert_close(samples, predict(net, x, T=8, seed=4, batched=False))
    assert torch.equal(net.norm.running_mean, torch.full((4,), 0.5))  # BatchNorm stayed in eval
    assert net.training  # restored
    sites = find_dropout_sites(net, x)
    assert sites.owners == [""]
    assert [(name, rate) for _, name, rate in sites.functional] == [
        ("dropout2d", 0.3),
        ("dropout", 0.3),
        ("alpha_dropout", 0.1),
    ]
    assert mc_plan(net, x).strategy == "fx"  # the conv trunk runs once


def test_functional_dropout_drops_a_fraction_p_per_sample():
    class Drop(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return TF.dropout(x, 0.25, self.training)

    samples = predict(Drop(), torch.ones(10, 100), T=20, seed=5)
    assert_fraction_close(int((samples == 0).sum()), samples.numel(), 0.25)


def test_multihead_attention_dropout_is_sampled():
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    net, x = Block(), torch.randn(3, 5, 8)
    samples = predict(net, x, T=4, seed=0)
    assert samples.shape == (4, 3, 5, 8) and all_distinct(samples)
    torch.testing.assert_close(samples, predict(net, x, T=4, seed=0, batched=False))


def test_transformer_encoder_layer_residual_dropout_is_sampled():
    # Only the residual dropout modules are on (in eval the layer may take a fused fast path
    # that skips them: the samples must still vary).
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.5, batch_first=True)
    layer.self_attn.dropout, layer.dropout.p = 0.0, 0.0
    x = torch.randn(3, 5, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples = predict(layer, x, T=4, seed=0)
    assert all_distinct(samples)
    torch.testing.assert_close(samples, predict(layer, x, T=4, seed=0, batched=False))


def test_a_flag_that_gates_more_than_dropout_is_left_alone_and_reported():
    class Tricky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.drop = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = TF.dropout(self.fc(x), 0.2, self.training)
            return self.drop(h * 2 if self.training else h)  # the flag also rescales

    net, x = Tricky(), torch.randn(3, 4)
    sites = find_dropout_sites(net, x)
    assert sites.owners == [] and list(sites.unsafe) == [""]
    with pytest.warns(DeadDropoutWarning, match="left in eval"):
        samples = predict(net, x, T=4, seed=0)
    assert all_distinct(samples)  # the module dropout is still sampled
    with pytest.raises(ValueError, match="left in eval"):
        predict(net, x, T=4, seed=0, strict=True)


# ------------------------------------------------------------------------------------------------
# Any inputs and outputs
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Prediction:
    mean: torch.Tensor
    extra: torch.Tensor | None = None


class Heads(nn.Module):
    """Two inputs (one keyword), outputs in the shape asked for."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.a, self.b = nn.Linear(4, 6), nn.Linear(2, 6)
        self.drop = dropkit.Dropout(0.5)
        self.loc, self.scale = nn.Linear(6, 2), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor, z: torch.Tensor, *, shift: float = 0.0):
        h = self.drop(torch.relu(self.a(x) + self.b(z))) + shift
        loc, scale = self.loc(h), TF.softplus(self.scale(h))
        if self.kind == "dict":
            return {"loc": loc, "scale": scale}
        if self.kind == "list":
            return [loc, (scale, None)]
        if self.kind == "dataclass":
            return Prediction(loc)
        return loc


@pytest.mark.parametrize("kind", ["dict", "list", "dataclass", "tensor"])
def test_structured_outputs_and_two_inputs_come_back_with_a_leading_t(kind):
    torch.manual_seed(0)
    net = Heads(kind)
    x, z = torch.randn(5, 4), torch.randn(5, 2)
    out = predict(net, x, z, T=7, seed=1, shift=1.0)
    loop = predict(net, x, z=z, T=7, seed=1, shift=1.0, batched=False)
    if kind == "dict":
        assert set(out) == {"loc", "scale"} and out["scale"].shape == (7, 5, 2)
        leaf, looped = out["loc"], loop["loc"]
    elif kind == "list":
        assert isinstance(out, list) and out[1][1] is None and out[1][0].shape == (7, 5, 2)
        leaf, looped = out[0], loop[0]
    elif kind == "dataclass":
        assert isinstance(out, Prediction) and out.extra is None
        leaf, looped = out.mean, loop.mean
    else:
        leaf, looped = out, loop
    assert leaf.shape == (7, 5, 2) and all_distinct(leaf)
    torch.testing.assert_close(leaf, looped)


def test_transform_runs_first_on_the_model_output():
    model, x = gpt2("sdpa"), ids()
    probs = predict(model, x, T=3, seed=0, transform=lambda out: out.logits.softmax(-1))
    assert probs.shape == (3, 3, 6, 40)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 3, 6))


def test_a_loss_over_the_batch_is_served_by_the_loop():
    torch.manual_seed(0)
    net = Heads("tensor")
    x, z = torch.randn(4, 4), torch.randn(4, 2)

    class WithLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x, z):
            out = self.net(x, z)
            return {"out": out, "loss": out.square().mean()}

    model = WithLoss()
    result = predict(model, x, z, T=5, seed=0)
    assert result["loss"].shape == (5,) and result["out"].shape == (5, 4, 2)
    torch.testing.assert_close(result["loss"], result["out"].square().mean((1, 2)))
    assert mc_plan(model, x, z).strategy == "loop"


def test_t_as_the_old_positional_argument_still_works():
    net, x = dropkit.MLP([4, 8, 2], p=0.5), torch.randn(3, 4)
    torch.testing.assert_close(predict(net, x, 6, seed=0), predict(net, x, T=6, seed=0))


# ------------------------------------------------------------------------------------------------
# Dead dropout
# ------------------------------------------------------------------------------------------------
class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)
        self.spare = nn.Dropout(0.3)  # never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x))


def test_a_dropout_module_that_never_runs_warns_and_raises_when_strict():
    net, x = Unused(), torch.randn(3, 4)
    with pytest.warns(DeadDropoutWarning, match="'spare'.*never ran"):
        predict(net, x, T=3, seed=0)
    with pytest.raises(ValueError, match="'spare'.*never ran"):
        predict(net, x, T=3, seed=0, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predict(dropkit.MLP([4, 8, 2], p=0.5), x, T=3, seed=0)  # a healthy model: silent


def test_identical_samples_warn():
    class Zeroed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.drop(torch.zeros_like(x))  # drops nothing that matters

    with pytest.warns(DeadDropoutWarning, match="all T = 4 samples are identical"):
        predict(Zeroed(), torch.randn(2, 3), T=4, seed=0)


class IgnoresRate(nn.Module):
    """Reads its dropout module's rate for an attention call that never applies it."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.attn_dropout = nn.Dropout(0.4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        rate = self.attn_dropout.p if self.training else 0.0
        return self._attend(q, k, v, rate)

    @staticmethod
    def _attend(q, k, v, dropout):  # a backend that drops the rate on the floor
        return TF.scaled_dot_product_attention(q, k, v)


def test_audit_reports_a_rate_read_but_never_applied_and_a_module_never_run():
    findings = {(f.code, f.path) for f in audit(IgnoresRate().eval(), torch.randn(2, 5, 8))}
    assert ("dropout-rate-never-applied", "attn_dropout") in findings
    findings = {(f.code, f.path) for f in audit(Unused().eval(), torch.randn(2, 4))}
    assert ("dropout-never-runs", "spare") in findings
    hf = {f.code for f in audit(gpt2("sdpa"), ids())}
    assert not hf & {"dropout-rate-never-applied", "dropout-never-runs"}  # attention is applied


# ------------------------------------------------------------------------------------------------
# Errors: one clear line naming the argument
# ------------------------------------------------------------------------------------------------
def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text and "fx" not in text and "Proxy" not in text, text
    return text


def test_errors_are_one_clear_line():
    model, x = gpt2("sdpa"), ids()
    with pytest.raises(TypeError, match=r"model output\.cache is a DynamicCache") as err:
        predict(model, x, T=2, seed=0)
    one_line(err)
    with pytest.raises(ValueError, match=r"failed on inputs \(\(3, 6\), use_cache=bool\)") as err:
        predict(model, x.float(), T=2, seed=0, use_cache=False)
    one_line(err)
    with pytest.raises(ValueError, match="transform must keep the leading sample dim") as err:
        predict(model, x, T=2, seed=0, transform=lambda o: o.logits[0])
    one_line(err)
    traced = dropkit.MLP([4, 8, 2], p=0.5)
    with pytest.raises(ValueError, match=r"failed on x of shape \(2, 5\)") as err:
        predict(traced, torch.randn(2, 5), T=3)
    one_line(err)
    with pytest.raises(TypeError, match="x must be a torch.Tensor") as err:
        predict(traced, "text")
    one_line(err)
    with pytest.raises(TypeError, match="strict must be a bool"):
        predict(traced, torch.randn(2, 4), strict="yes")
