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
