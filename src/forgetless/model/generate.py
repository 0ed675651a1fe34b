"""Greedy batched generation for held-out conversations (task scores, samples, chat)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from forgetless.model import forward
from forgetless.model.chat_format import prompt_text, with_system
from forgetless.model.prefix import copies, prefix_of


class _Ticks(StoppingCriteria):
    """Moves a progress bar one decoding step at a time and never stops anything: a batch of long
    answers takes a minute on a CPU, and a bar that moves per batch looks frozen."""

    def __init__(self, bar):
        self.bar = bar

    def __call__(self, input_ids, scores, **kwargs):
        self.bar.update(1)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def may_still_equal(partial: str, target: str) -> bool:
    """Whether some continuation of the answer `partial` can equal `target` after whitespace
    normalisation (runs of whitespace as one space, ends stripped, as `eval.metrics.normalize`).

    The normalised answer always starts with the normalised partial answer (more text can only
    lengthen its last word or add words), so a partial answer whose normalised form is no prefix of
    the normalised target never equals it. A partial answer that ends inside a character split across
    tokens (U+FFFD) is undecided until the character is complete."""
    if partial.endswith("\ufffd"):
        return True
    return " ".join(target.split()).startswith(" ".join(partial.split()))


class _Diverged(StoppingCriteria):
    """Stops each row whose answer can no longer equal its target (`may_still_equal`); rows without a
    target run to their end. Generation then ends when every row has ended or diverged."""

    def __init__(self, tokenizer, start: int, targets: list[str | None]):
        self.tokenizer, self.start, self.targets = tokenizer, start, targets

    def __call__(self, input_ids, scores, **kwargs):
        texts = self.tokenizer.batch_decode(input_ids[:, self.start :], skip_special_tokens=True)
        stop = [t is not None and not may_still_equal(a, t) for a, t in zip(texts, self.targets, strict=True)]
        return torch.tensor(stop, dtype=torch.bool, device=input_ids.device)


# one piece: the tokenizer's padding side and the model's mode change for the whole batch loop and
# come back in its `finally`
@torch.no_grad()
def generate(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int = 64,
    batch_size: int = 32,
    desc: str | None = None,
    targets: list[str | None] | None = None,
    parts_at: list[int | None] | None = None,
    **sampling,
) -> list[str]:
    """Answer the last user turn of each conversation; returns the decoded answers. With `desc`, a
    progress bar counts decoding steps (at most max_new_tokens per batch; a batch that ends early
    jumps ahead).

    `targets` (greedy only): a row stops as soon as its answer can no longer equal its target (after
    whitespace normalisation) and returns the text so far; it equals its target exactly when the
    full answer would. For a question that only needs "is the answer unchanged?" (retention): most
    answers of a fine-tuned model part from the base model's within a few tokens. A batch ends when
    its last row ends, so `parts_at` (per row the answer token where it is expected to part from its
    target, None: never) groups the rows by where they part (`_batches`). It changes no answer (batching
    never does: tested)."""
    if targets is not None and (sampling or getattr(tokenizer, "clean_up_tokenization_spaces", False)):
        # sampling: a stopped row would change the random stream of the others; the clean-up rewrites
        # spaces around punctuation, so a partial answer's text is no prefix of the whole answer's
        targets = None
    texts = [prompt_text(tokenizer, conv) for conv in conversations]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    batches = _batches([len(r) for r in ids], batch_size, parts_at if targets is not None else None, max_new_tokens)
    bar = tqdm(total=len(batches) * max_new_tokens, desc=desc, unit="step", disable=desc is None or not texts)
    was_training = model.training
    model.eval()
    answers = [""] * len(texts)
    try:
        # the prompts' common head (the chat template's system turn, a shared instruction) runs once: each
        # batch starts from a copy of its KV cache (model/prefix.py)
        head = prefix_of(model, ids) if len(ids) > 1 else None
        for n, rows in enumerate(batches):
            enc = _encode([ids[i] for i in rows], len(head.tokens) if head else 0, tokenizer.pad_token_id, model.device)
            if head is not None:
                enc[forward.cache_argument(model)] = copies(head.cache, len(rows), model.device)
            ticks = StoppingCriteriaList([_Ticks(bar)])
            if targets is not None:
                ticks.append(_Diverged(tokenizer, enc["input_ids"].shape[1], [targets[i] for i in rows]))
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
            for i, text in zip(rows, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
                answers[i] = text.strip()
    finally:
        model.train(was_training)
        bar.close()
    return answers


def _encode(rows: list[list[int]], head: int, pad: int, device) -> dict[str, torch.Tensor]:
    """A batch of prompts whose first `head` tokens are in the KV cache, padded on the left of their own tokens
    (generation continues on the right): [head][padding][own tokens]. The mask's gap keeps the padding out of
    attention, and generate numbers the positions from the mask, so each row's own tokens follow its head.
    Without a head: plain left padding."""
    width = max(len(r) for r in rows)
    ids = [r[:head] + [pad] * (width - len(r)) + r[head:] for r in rows]
    mask = [[1] * head + [0] * (width - len(r)) + [1] * (len(r) - head) for r in rows]
    return {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device)}


# What a batch costs, in row-steps (one row's share of a decoding step), to group the rows of a retention
# pass (`_batches`): a decoding step costs about STEP_ROWS rows whatever its size (streaming the weights;
# SmolLM2-135M on a 2-core AVX2 CPU: 100 ms a step + 6.6 ms a row), and a prompt token's prefill about
# PREFILL of a row-step (4.4 ms). Only the grouping depends on them, never an answer.
STEP_ROWS = 15
PREFILL = 0.67


def _batches(
    lengths: list[int], batch_size: int, parts_at: list[int | None] | None = None, max_new_tokens: int = 64
) -> list[list[int]]:
    """Row indices per batch. Batches of similar prompt lengths (longest first): a batch is padded to
    its longest prompt, so mixing a 20-token prompt with a 300-token one computes 280 pad positions at
    every decoding step. With `parts_at`, a batch runs until its last row parts, so the rows are taken
    latest parting first (expected to run to their end: first of all) and cut into the batches that
    cost least (`_cheapest_cuts`): a row that parts late rides with the rows that run to their end
    instead of holding 31 rows that parted at once for 60 steps."""
    rows = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if parts_at is None:
        return [rows[j : j + batch_size] for j in range(0, len(rows), batch_size)]
    # a row stops a step or two after its first different token (the text is compared once decoded)
    steps = [max_new_tokens if p is None else min(max_new_tokens, p + 2) for p in parts_at]
    rows.sort(key=lambda i: -steps[i])  # stable: similar lengths stay together within a parting
    return _cheapest_cuts(rows, [steps[i] for i in rows], [lengths[i] for i in rows], batch_size)


def _cheapest_cuts(rows: list[int], steps: list[int], lengths: list[int], batch_size: int) -> list[list[int]]:
    """`rows` (in order, `steps` not increasing) cut into consecutive batches of at most `batch_size` at
    the least total cost: a batch of b rows runs its first row's steps at (STEP_ROWS + b) row-steps each,
    after a prefill of b × its longest prompt tokens. Exact (dynamic programming over the cut points)."""
    best = [0.0] + [float("inf")] * len(rows)  # best[i]: the cheapest cuts of the first i rows
    cut = [0] * (len(rows) + 1)
    for i in range(1, len(rows) + 1):
        longest = 0
        for j in range(i - 1, max(i - batch_size, 0) - 1, -1):  # the last batch is rows[j:i]
            longest = max(longest, lengths[j])
            b = i - j
            cost = best[j] + steps[j] * (STEP_ROWS + b) + PREFILL * b * longest
            if cost < best[i]:
                best[i], cut[i] = cost, j
    batches, i = [], len(rows)
    while i > 0:
        batches.append(rows[cut[i] : i])
        i = cut[i]
    return batches[::-1]


def split_prompt(messages, system_prompt: str | None = None) -> tuple[list[dict], str]:
    """(conversation up to the last assistant answer, that answer) for scoring."""
    msgs = with_system(tuple(messages), system_prompt)
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return msgs[:last], msgs[last]["content"]
