"""LoRA's shared input dropout (adapters/dropout.py): its rate and scale, its gradient, one mask per shared
input in a real decoder block, the seed deciding every mask, and checkpointing replaying them."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from forgetless.adapters import dropout
from tests.conftest import lora_model

P = 0.05


def test_mask_drops_p_of_the_elements_and_the_seed_decides_it():
    torch.manual_seed(3)
    keep = dropout.keep_mask(torch.Size([1000, 1000]), P)
    again = dropout.keep_mask(torch.Size([1000, 1000]), P)
    torch.manual_seed(3)
    assert torch.equal(dropout.keep_mask(torch.Size([1000, 1000]), P), keep)
    assert not torch.equal(again, keep)  # each call draws a new mask
    # 1e6 Bernoulli draws: the rate's standard error is 2.2e-4, so 0.002 is nine of them
    assert (~keep).float().mean().item() == pytest.approx(P, abs=2e-3)
    assert dropout.keep_mask(torch.Size([10_000]), 0.0).all()


def test_values_and_gradient_are_inverted_dropout():
    torch.manual_seed(0)
    module = dropout.SharedDropout(P, dropout._Last())
    x = (torch.rand(64, 32) + 0.5).requires_grad_()  # no zeros: a zero output means dropped
    grad = torch.randn(64, 32)
    out = module(x)
    out.backward(grad)
    kept = out != 0
    assert torch.allclose(out[kept], x.detach()[kept] / (1 - P))
    assert torch.allclose(x.grad, torch.where(kept, grad / (1 - P), 0.0))
    assert 0 < (~kept).sum() < 0.2 * x.numel()
    module.eval()
    assert module(x) is x  # the identity outside training, as nn.Dropout


def test_modules_reading_one_tensor_share_its_mask_and_others_do_not():
    last = dropout._Last()
    a, b = dropout.SharedDropout(P, last), dropout.SharedDropout(P, last)
    x, y = torch.randn(256, 64), torch.randn(256, 64)
    first = a(x)
    assert b(x) is first  # the same tensor: one mask, one saved copy
    other = b(y)
    assert a(y) is other and not torch.equal(other != 0, first != 0)
    x.add_(1.0)  # changed in place: a new input, a new mask
    assert a(x) is not first


def test_a_decoder_block_draws_one_mask_per_input(tiny_dir):
    model = lora_model(tiny_dir)
    assert dropout.share_masks(model) == 7 * model.config.num_hidden_layers
    model.train()
    seen: dict[str, torch.Tensor] = {}

    def remember(name):
        return lambda module, args: seen.__setitem__(name, args[0])

    block = model.base_model.model.model.layers[0]
    for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"):
        block.get_submodule(part).lora_A["default"].register_forward_pre_hook(remember(part.split(".")[1]))
    for part in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        block.get_submodule(part).lora_A["default"].register_forward_pre_hook(remember(part.split(".")[1]))
    model(torch.randint(0, 100, (2, 12)))
    assert seen["q_proj"] is seen["k_proj"] is seen["v_proj"]
    assert seen["gate_proj"] is seen["up_proj"]
    distinct = {id(seen[k]) for k in ("q_proj", "o_proj", "gate_proj", "down_proj")}
    assert len(distinct) == 4


def test_checkpointing_recomputes_the_same_masks():
    weight = torch.randn(32, 32)

    def block(x):
        module = dropout.SharedDropout(P, dropout._Last())
        return (module(x) @ weight).tanh()

    grads = []
    for use_checkpoint in (False, True):
        torch.manual_seed(7)
        x = torch.randn(16, 32, requires_grad=True)
        out = checkpoint(block, x, use_reentrant=False) if use_checkpoint else block(x)
        out.sum().backward()
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1])
