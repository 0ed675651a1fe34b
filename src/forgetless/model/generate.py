"""Greedy batched generation for held-out conversations (task scores, samples, chat)."""

from __future__ import annotations

import torch

from forgetless.data.render import prompt_text, with_system


@torch.no_grad()
def generate(
    model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 64, batch_size: int = 32, **sampling
) -> list[str]:
    """Answer the last user turn of each conversation; returns the decoded answers."""
    prompts = [prompt_text(tokenizer, conv) for conv in conversations]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues on the right
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i : i + batch_size], add_special_tokens=False, padding=True, return_tensors="pt")
            enc = {k: v.to(model.device) for k, v in enc.items()}
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                do_sample=bool(sampling),
                **sampling,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            answers += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def split_prompt(messages, system_prompt: str | None = None) -> tuple[list[dict], str]:
    """(conversation up to the last assistant answer, that answer) for scoring."""
    msgs = with_system(tuple(messages), system_prompt)
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return msgs[:last], msgs[last]["content"]
