"""Batched greedy generation: batches of similar prompt lengths, answers in the callers' order."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from forgetless.model.generate import generate
from forgetless.model.loader import load_tokenizer


def test_answers_come_back_in_order_and_equal_one_prompt_at_a_time(tiny_dir):
    torch.manual_seed(0)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_dir), load_tokenizer(tiny_dir)
    words = ["short", "a much longer prompt " * 6, "mid length prompt here", "x", "another long one " * 9, "two words"]
    chats = [[{"role": "user", "content": w}] for w in words]
    one_by_one = [generate(model, tokenizer, [c], max_new_tokens=6, batch_size=1)[0] for c in chats]
    batched = generate(model, tokenizer, chats, max_new_tokens=6, batch_size=4)
    assert batched == one_by_one  # sorted into batches by length, put back in the callers' order
    assert len(set(one_by_one)) > 1  # the prompts' answers differ, so a mix-up would show
