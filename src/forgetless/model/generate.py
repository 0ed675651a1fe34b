"""Greedy batched generation for held-out conversations (task scores, samples, chat)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from forgetless.data.render import prompt_text, with_system


class _Ticks(StoppingCriteria):
    """Moves a progress bar one decoding step at a time and never stops anything: a batch of long
    answers takes a minute on a CPU, and a bar that moves per batch looks frozen."""

    def __init__(self, bar):
        self.bar = bar

    def __call__(self, input_ids, scores, **kwargs):
        self.bar.update(1)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int = 64,
    batch_size: int = 32,
    desc: str | None = None,
    **sampling,
) -> list[str]:
    """Answer the last user turn of each conversation; returns the decoded answers. With `desc`, a
    progress bar counts decoding steps (at most max_new_tokens per batch; a batch that ends early
    jumps ahead)."""
    texts = [prompt_text(tokenizer, conv) for conv in conversations]
    # Batches of similar prompt lengths (longest first), answers put back in the callers' order: a batch
    # is padded to its longest prompt, so mixing a 20-token prompt with a 300-token one computes 280
    # pad positions at every decoding step. Within a batch, row order does not change any answer.
    order = sorted(range(len(texts)), key=lambda i: -len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]))
    prompts = [texts[i] for i in order]
    batches = range(0, len(prompts), batch_size)
    bar = tqdm(total=len(batches) * max_new_tokens, desc=desc, unit="step", disable=desc is None or not prompts)
    ticks = StoppingCriteriaList([_Ticks(bar)])
    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues on the right
    was_training = model.training
    model.eval()
    answers: list[str] = []
    try:
        for n, i in enumerate(batches):
            enc = tokenizer(prompts[i : i + batch_size], add_special_tokens=False, padding=True, return_tensors="pt")
            enc = {k: v.to(model.device) for k, v in enc.items()}
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                do_sample=bool(sampling),
                stopping_criteria=ticks,
                **sampling,
            )
            bar.update((n + 1) * max_new_tokens - bar.n)  # the steps an early end of the batch skipped
            new = out[:, enc["input_ids"].shape[1] :]
            answers += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
        bar.close()
    in_order = [""] * len(answers)
    for i, answer in zip(order, answers, strict=True):
        in_order[i] = answer
    return in_order


def split_prompt(messages, system_prompt: str | None = None) -> tuple[list[dict], str]:
    """(conversation up to the last assistant answer, that answer) for scoring."""
    msgs = with_system(tuple(messages), system_prompt)
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return msgs[:last], msgs[last]["content"]
