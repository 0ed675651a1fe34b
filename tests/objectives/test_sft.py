"""Forgetting controls: loss maths by hand, the adapter-free teacher, exact rehearsal mixing, caches."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from forgetless.adapters import views
from forgetless.config.schema import ForgettingConfig
from forgetless.model.likelihood import IGNORE
from forgetless.objectives.losses import batch_seed, kl_sum, position_masks, sample_positions
from forgetless.objectives.sft import counts, kl_positions, objective
from forgetless.reference.fisher import make_anchor
from tests.conftest import lora_model


def test_teacher_is_exactly_the_adapter_free_base(tiny_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    model = lora_model(tiny_dir).eval()
    ids = torch.tensor([[5, 17, 300, 42, 9]])
    with torch.no_grad(), views.base_view(model) as teacher:
        t = teacher(input_ids=ids).logits
    with torch.no_grad():
        torch.testing.assert_close(t, base(input_ids=ids).logits, rtol=0, atol=0)
        assert not torch.allclose(model(input_ids=ids).logits, t)


def _batch(tokenizer, rehearsal_flags):
    from forgetless.data.batching import collate
    from forgetless.data.formats import Example
    from forgetless.data.render import encode

    rows = []
    for i, flag in enumerate(rehearsal_flags):
        ex = Example(
            "x", messages=({"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "ok"})
        )
        rows.append({**encode(tokenizer, ex), "rehearsal": flag})
    return collate(rows, tokenizer.pad_token_id)


def test_lwf_adds_no_parameter_memory_and_logs_every_term(tiny_dir, tokenizer):
    model = lora_model(tiny_dir)
    before = {p.data_ptr() for p in model.parameters()}
    n_before = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    cfg = ForgettingConfig(preset="full", l2=0.1, rehearsal={"weight": 0.5})
    batch = _batch(tokenizer, [False, False, True])
    norms = {k: float(v) for k, v in counts(batch, cfg).items()}
    terms = objective(cfg, make_anchor(model)).loss(model, batch, norms)
    sum(terms.values()).backward()
    assert set(terms) == {"ce", "ce_rehearsal", "lwf", "l2"}
    assert terms["lwf"].item() > 0 and terms["l2"].item() == pytest.approx(0.0)
    assert {p.data_ptr() for p in model.parameters()} == before
    assert sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()) == n_before


def test_task_ce_ignores_rehearsal_rows_and_kl_tokens_follow_config(tiny_dir, tokenizer):
    model = lora_model(tiny_dir).eval()  # no dropout: two forwards must agree
    batch = _batch(tokenizer, [False, True])
    c_default = counts(batch, ForgettingConfig(preset="full"))
    c_answers = counts(batch, ForgettingConfig(preset="full", lwf={"tokens": ["answers"]}))
    assert c_answers["kl"] == c_default["targets"]  # KL on the task answers only
    assert c_default["kl"] == int(batch["attention_mask"][:, 1:].sum()) - c_default["targets"]
    cfg = ForgettingConfig(preset="none")
    norms = {k: float(v) for k, v in counts(batch, cfg).items()}
    ce = objective(cfg).loss(model, batch, norms)["ce"]
    only_task = {k: v[:1] for k, v in batch.items()}
    logits = model(input_ids=only_task["input_ids"], attention_mask=only_task["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(logits[0, :-1], only_task["labels"][0, 1:], ignore_index=IGNORE)
    torch.testing.assert_close(ce, expected)


def test_rehearsal_ce_weight_is_automatic_unless_set():
    """Unset: CE on rehearsal rows only when no LwF KL covers them (measured in docs/forgetting.md)."""
    assert ForgettingConfig(preset="full").rehearsal_ce_weight == 0.0
    assert ForgettingConfig(preset="rehearsal").rehearsal_ce_weight == 1.0
    assert ForgettingConfig(preset="full", lwf={"tokens": ["context"]}).rehearsal_ce_weight == 1.0
    assert ForgettingConfig(preset="full", lwf={"weight": 0}).rehearsal_ce_weight == 1.0
    assert ForgettingConfig(preset="full", rehearsal={"weight": 0.3}).rehearsal_ce_weight == 0.3


def test_sampled_kl_positions_are_an_unbiased_estimate_of_the_full_term():
    where = torch.tensor([[True, False, True, True], [True, True, False, True]])
    values = torch.arange(1.0, 9.0).view(2, 4)
    assert torch.equal(sample_positions(where, 1.0, 0), where)
    kept = [sample_positions(where, 0.25, seed) for seed in range(4000)]
    assert all(not bool((k & ~where).any()) for k in kept)  # only KL positions are ever kept
    assert torch.equal(kept[7], sample_positions(where, 0.25, 7))  # the same seed, the same positions
    estimate = sum(float(values[k].sum()) / 0.25 for k in kept) / len(kept)
    assert estimate == pytest.approx(float(values[where].sum()), rel=0.03)  # 31; the mean of 4000 draws


def test_lwf_term_on_sampled_positions_is_scaled_by_the_share(tiny_dir, tokenizer):
    """The objective's lwf term with positions=0.5 equals the KL over the sampled positions, computed by
    hand from the student's and the base's logits, over (every KL position × 0.5)."""
    model = lora_model(tiny_dir).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # move the student off the base: a KL of zero would prove nothing
    batch = _batch(tokenizer, [False, True, False])
    cfg = ForgettingConfig(preset="lwf", lwf={"positions": 0.5, "weight": 1.0})
    norms = {k: float(v) for k, v in counts(batch, cfg).items()}
    got = objective(cfg).loss(model, batch, norms)["lwf"]
    where = sample_positions(
        kl_positions(
            position_masks(batch["labels"], batch["attention_mask"], batch["rehearsal"]), ["context", "rehearsal"]
        ),
        0.5,
        batch_seed(batch),
    )
    assert 0 < int(where.sum()) < norms["kl"]  # some positions sampled out, some kept
    with torch.no_grad():
        s = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        with views.base_view(model) as base:
            t = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    want = kl_sum(s[where], t[where]) / (norms["kl"] * 0.5)
    torch.testing.assert_close(got.detach(), want, rtol=1e-4, atol=1e-6)
