"""torch.compile(fullgraph=True) of a model using dropkit's ops: no graph break, same bits as eager.

One small model exercises every op the compiler sees (draw_seed, dropout_with_seed,
bias_dropout_add, keep_mask), two dropouts of the same tensor (which must not be merged) and an
activation-checkpointed block (whose recomputation must replay the same seeds). ``aot_eager`` runs
Dynamo, fake tensors, AOTAutograd and the partitioner in a few seconds; Inductor adds its own graph
passes and code generation and is slow on 2 cores, so it is marked slow.
"""

from __future__ import annotations

import pytest
import torch
import torch.utils.checkpoint as checkpoint_utils

import dropkit
from dropkit import ops


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.drop = dropkit.Dropout(0.3)
        self.fc2 = torch.nn.Linear(16, 16, bias=False)
        self.bias = torch.nn.Parameter(torch.randn(16))

    def block(self, h):
        return ops.bias_dropout_add(self.fc2(h), self.bias, h, 0.2)

    def forward(self, x):
        h = self.drop(torch.relu(self.fc1(x)))
        h = checkpoint_utils.checkpoint(self.block, h, use_reentrant=False)
        a, b = self.drop(h), self.drop(h)  # same input twice: two masks, never one merged call
        rows = ops.keep_mask((h.shape[0], 1), 0.5, h.device)
        return a + 2.0 * b * rows, a, b


def _run(model, x):
    torch.manual_seed(1)
    out, a, b = model(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return out.detach(), a.detach(), b.detach(), grads, torch.rand(4)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_model_has_no_graph_break_and_matches_eager(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(6, 8)
    eager = _run(net, x)
    compiled_net = torch.compile(net, fullgraph=True, backend=backend)  # raises on a graph break
    compiled = _run(compiled_net, x)
    assert torch.equal(eager[0], compiled[0])
    for g_eager, g_compiled in zip(eager[3], compiled[3], strict=True):
        torch.testing.assert_close(g_compiled, g_eager, rtol=1e-5, atol=1e-6)
    assert torch.equal(eager[4], compiled[4])  # the same number of draws from torch's generator
    a, b = compiled[1], compiled[2]
    assert not torch.equal(a != 0, b != 0)  # the two dropouts of h were not merged
    torch.manual_seed(2)
    assert not torch.equal(compiled_net(x)[0], compiled[0])  # a new seed gives new masks
