"""Packed rows that open alike run their common head once (model/shared_heads.py): the layout holds every
token of the batch, each row's own tokens see the head, and the hidden states equal the plain packed
forward's; a training forward with dropout keeps the rows apart."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from forgetless.data.packing import collate_packed
from forgetless.model import forward, packed_attention, shared_heads

HEAD = list(range(40, 52))  # 12 tokens every task row opens with (a system turn and an instruction)


def _rows() -> list[dict]:
    """Four rows opening with HEAD, one (a rehearsal row) opening otherwise, one short row."""
    own = [[3, 4, 5], [6, 7], [8, 9, 10, 11], [12]]
    rows = [HEAD + o for o in own] + [list(range(60, 75)), [5, 6, 7]]
    return [{"input_ids": r, "labels": r} for r in rows]


def test_the_layout_holds_every_token_once_and_each_head_once():
    batch = collate_packed(_rows(), pad_id=0, capacity=128)
    layout = shared_heads.plan(batch)
    # all six rows fit one sequence; the head is laid out once instead of four times
    assert batch["input_ids"].shape == (1, 4 * 12 + 10 + 15 + 3)
    assert layout.input_ids.shape == (1, 12 + 10 + 15 + 3)
    real = batch["attention_mask"].flatten().bool()
    assert torch.equal(layout.input_ids.flatten()[layout.index][real], batch["input_ids"].flatten()[real])
    assert torch.equal(layout.position_ids.flatten()[layout.index][real], batch["position_ids"].flatten()[real])
    # segments: the head, the four rows' own tokens (each continuing the head), the two other rows
    sizes = (layout.bounds[1:] - layout.bounds[:-1]).tolist()
    assert sizes == [12, 3, 2, 4, 1, 15, 3] and layout.heads == [-1, 0, 0, 0, 0, -1, -1]
    assert layout.longest == 16  # a row's own tokens see their head's 12 keys too


def test_rows_that_share_no_head_keep_the_plain_layout():
    rows = [{"input_ids": list(range(10 * i, 10 * i + 9)), "labels": [1] * 9} for i in range(1, 4)]
    assert shared_heads.plan(collate_packed(rows, pad_id=0, capacity=64)) is None


def test_hidden_states_equal_the_plain_packed_forward(tiny_dir, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation=packed_attention.NAME).eval()
    # two sequences: the second ends in a padded tail
    batch = collate_packed(_rows() + _rows()[:3], pad_id=0, capacity=64)
    assert batch["input_ids"].shape[0] == 2 and shared_heads.plan(batch) is not None
    seen = []
    original = model.model.forward

    def widths(*args, **kwargs):
        seen.append(kwargs["input_ids"].shape[1])
        return original(*args, **kwargs)

    model.model.forward = widths
    with torch.no_grad():
        shared = forward.hidden(model, batch).states
    monkeypatch.setattr(shared_heads, "plan", lambda batch: None)  # the rows' own layout
    with torch.no_grad():
        plain = forward.hidden(model, batch).states
    assert seen[0] < seen[1] == batch["input_ids"].shape[1]  # the shared layout ran, narrower
    real = batch["attention_mask"].bool()
    assert torch.allclose(shared[real], plain[real], atol=1e-5)


def test_a_training_forward_with_dropout_keeps_the_rows_apart(tiny_dir):
    from peft import LoraConfig, get_peft_model

    def lora(p: float):
        base = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation=packed_attention.NAME)
        config = LoraConfig(r=4, lora_alpha=8, lora_dropout=p, target_modules=["q_proj", "v_proj"])
        return get_peft_model(base, config)

    model = lora(0.1).train()
    assert not shared_heads.deterministic(model)  # each copy of a head would draw its own dropout mask
    with model.disable_adapter():  # LwF's teacher: the adapters (and their dropout) switched off
        assert shared_heads.deterministic(model)
    assert shared_heads.deterministic(model.eval()) and shared_heads.deterministic(lora(0.0).train())
    widths = []
    decoder = model.get_base_model().model
    hook = decoder.register_forward_pre_hook(
        lambda _m, _a, kw: widths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    batch = collate_packed(_rows(), pad_id=0, capacity=128)
    forward.hidden(model.train(), batch)
    with torch.no_grad(), model.disable_adapter():
        forward.hidden(model, batch)
    hook.remove()
    assert widths == [batch["input_ids"].shape[1], shared_heads.plan(batch).input_ids.shape[1]]


def test_gradients_through_a_shared_head_equal_the_plain_layout(tiny_dir, monkeypatch):
    """A training forward that draws no dropout (peft.dropout 0) shares heads too: each copy's gradient adds up
    in the one head, as the copies' gradients add up in the shared weights."""
    model = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation=packed_attention.NAME).train()
    batch = collate_packed(_rows(), pad_id=0, capacity=128)
    real = batch["attention_mask"].bool()

    def grads():
        model.zero_grad()
        states = forward.hidden(model, batch).states
        (states[real] * torch.linspace(-1, 1, states.shape[-1])).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    assert shared_heads.deterministic(model) and shared_heads.plan(batch) is not None
    shared = grads()
    monkeypatch.setattr(shared_heads, "plan", lambda batch: None)
    plain = grads()
    assert shared.keys() == plain.keys() and len(plain) > 10
    for name, g in plain.items():
        assert torch.allclose(shared[name], g, atol=1e-4, rtol=1e-4), name
