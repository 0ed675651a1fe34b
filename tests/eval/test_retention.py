"""Retention against the base model."""

from __future__ import annotations

from transformers import AutoModelForCausalLM

from forgetless.eval.retention import kl_to_base
from tests.conftest import lora_model


def test_retention_kl_is_zero_for_the_base_against_itself(tiny_dir, tokenizer):
    from forgetless.data.formats import Example

    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    refs = [Example("x", messages=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}))]
    assert kl_to_base(base, tokenizer, refs, base=base) == 0.0
    assert kl_to_base(lora_model(tiny_dir).eval(), tokenizer, refs) > 0


def test_task_kl_is_base_to_tuned_per_answer_token(tiny_dir, tokenizer):
    """KL(p_base ‖ p_tuned) = Σ_v p_b(v) (log p_b(v) − log p_t(v)), averaged over the answer tokens
    (labels ≠ -100 shifted by one), computed here directly from the two models' logits."""
    import torch

    from forgetless.adapters.methods import base_view
    from forgetless.data.batching import fixed_batches
    from forgetless.data.render import IGNORE
    from forgetless.eval.retention import kl_on_rows, task_kl
    from forgetless.eval.suite import mean_nll

    model = lora_model(tiny_dir).eval()
    ids = torch.tensor([5, 17, 42, 99, 7, 8, 300, 2])
    rows = [{"input_ids": ids.tolist(), "labels": [IGNORE] * 4 + ids[4:].tolist(), "rehearsal": False}]
    with torch.no_grad():
        tuned = model(input_ids=ids[None]).logits[0, 3:7].log_softmax(-1)
        with base_view(model) as b:
            base = b(input_ids=ids[None]).logits[0, 3:7].log_softmax(-1)
    by_hand = float((base.exp() * (base - tuned)).sum(-1).mean())
    reverse = float((tuned.exp() * (tuned - base)).sum(-1).mean())
    got, nll = task_kl(model, rows, tokenizer.pad_token_id)
    assert got["n"] == 1 and abs(got["kl_base_to_tuned"] - by_hand) < 1e-5
    # the perplexity from the same pass is the one mean_nll gives, to the bit
    assert nll == mean_nll(model, fixed_batches(rows, 4, tokenizer.pad_token_id))
    assert abs(kl_on_rows(model, rows, tokenizer.pad_token_id) - reverse) < 1e-5
    assert abs(by_hand - reverse) > 1e-4  # the two directions differ here, so the test tells them apart
