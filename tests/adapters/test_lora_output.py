"""LoRA's update accumulated into the base output by one addmm_ (adapters/lora_output.py): the same values
and gradients as PEFT's forward (on a full-precision and on a 4-bit base), the scales set after fusing
honoured, and every case it does not cover handed to PEFT's own forward."""

from __future__ import annotations

import contextlib
import copy

import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from forgetless.adapters import attaching, dropout, lora_output
from forgetless.adapters.lora_output import LoraLinear4bit
from forgetless.config.schema import ModelConfig, PeftConfig
from forgetless.model import loader as models
from tests.conftest import lora_model


def _loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def _pefts_forward_refused(cls):
    """PEFT's own forward raises inside: a fused layer that fell back to it fails the test."""

    def refuse(*_, **__):
        raise AssertionError("PEFT's forward ran: the fused form was not taken")

    saved, cls.forward = cls.forward, refuse
    try:
        yield
    finally:
        cls.forward = saved


def test_values_and_gradients_equal_pefts_with_shared_dropout(tiny_dir):
    peft = lora_model(tiny_dir)
    dropout.share_masks(peft)
    fused = copy.deepcopy(peft)
    layers = 7 * peft.config.num_hidden_layers
    assert lora_output.fuse_outputs(fused) == layers
    assert sum(type(m) is lora_output.FusedOutputLinear for m in fused.modules()) == layers
    ids = torch.randint(10, 500, (2, 24))
    peft.train(), fused.train()
    torch.manual_seed(5)  # the same dropout masks on both sides
    want_loss, want = _loss_and_grads(peft, ids)
    torch.manual_seed(5)
    with _pefts_forward_refused(LoraLinear):  # the fused form itself ran, not PEFT's behind it
        got_loss, got = _loss_and_grads(fused, ids)
    assert torch.allclose(got_loss, want_loss, atol=1e-5)
    assert want.keys() == got.keys() and len(want) == 2 * layers
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-6), name


def test_a_scale_set_after_fusing_and_the_base_view_are_honoured(tiny_dir):
    model = lora_model(tiny_dir).eval()
    ids = torch.randint(10, 500, (1, 16))
    with torch.no_grad():
        trained = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    lora_output.fuse_outputs(model)
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, trained, atol=1e-5)
        with model.disable_adapter():  # disabled adapters take PEFT's forward: the base model
            assert torch.allclose(model(input_ids=ids).logits, base, atol=1e-6)
        for m in layers:
            m.scaling.update({k: 0.0 for k in m.scaling})  # what tune-scale does, at scale 0
        assert torch.allclose(model(input_ids=ids).logits, base, atol=1e-5)


def test_a_merged_layer_and_a_per_row_adapter_call_take_pefts_forward(tiny_dir):
    model = lora_model(tiny_dir).eval()
    lora_output.fuse_outputs(model)
    layer = next(m for m in model.modules() if isinstance(m, lora_output.FusedOutputLinear))
    x = torch.randn(3, 5, layer.in_features)
    with torch.no_grad():
        unmerged, base = layer(x), layer.base_layer(x)
        by_row = layer(x, adapter_names=["default", "__base__", "default"])
        layer.merge()
        merged = layer(x)
    assert not torch.allclose(unmerged, base, atol=1e-3)  # the adapter changes the output
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert torch.allclose(by_row[0], unmerged[0], atol=1e-6) and torch.allclose(by_row[2], unmerged[2], atol=1e-6)
    assert torch.allclose(by_row[1], base[1], atol=1e-6)


def test_a_4bit_base_is_fused_with_the_same_values_and_gradients(tiny_dir):
    """QLoRA: PEFT's LoRA linear on bitsandbytes' NF4 base takes the fused forward too."""
    base, _, _ = models.load(ModelConfig(name=tiny_dir, quantization="4bit", precision="fp32"))
    torch.manual_seed(0)
    peft = attaching.attach(base, PeftConfig(r=4, dropout=0.0), quantized=True, grad_checkpointing=False)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    fused = copy.deepcopy(peft)
    layers = 7 * peft.config.num_hidden_layers
    assert lora_output.fuse_outputs(fused) == layers
    assert all(type(m) is lora_output.FusedOutputLinear4bit for m in fused.modules() if isinstance(m, LoraLinear4bit))
    ids = torch.randint(10, 500, (2, 24))
    want_loss, want = _loss_and_grads(peft, ids)
    with _pefts_forward_refused(LoraLinear4bit):
        got_loss, got = _loss_and_grads(fused, ids)
    assert torch.allclose(got_loss, want_loss, atol=1e-5)
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-6), name


def test_under_autocast_the_base_runs_once_through_pefts_forward(tiny_dir):
    """Autocast (the GPU path) casts per operation: the fused form steps aside before computing anything."""
    model = lora_model(tiny_dir).eval()
    ids = torch.randint(10, 500, (1, 16))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(input_ids=ids).logits
    lora_output.fuse_outputs(model)
    calls = []
    for m in model.modules():
        if isinstance(m, lora_output.FusedOutputLinear):
            m.base_layer.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(input_ids=ids).logits
    assert len(calls) == 7 * model.config.num_hidden_layers  # once per layer, not once more for a fallback
    assert torch.equal(got, want)
