"""The tokens every row of an evaluation or a generation starts with, run once.

Chat rows open with the same template head: the system turn, and often the same instruction (the
quickstart's task rows share 27 of their ~80 tokens, the retention prompts 24 of ~106). A teacher-forced
evaluation (the KL to the base, the task perplexity) runs that head once per model side, keeps its KV
cache, and runs each batch from the first token where the rows differ, with a copy of the cache per row.
The multiple-choice scorer does the same with its few-shot examples (eval/choice.py), and batched
generation with its prompts' common head (model/generate.py).

Only models whose hidden states `forward.hidden` hands out (a known family, no virtual tokens) and
whose cache can be copied per row take this path; the rest, and batches that do not start with the
head or score a position inside it, run whole. Equal to the whole batch up to float rounding (tested).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from forgetless.model import forward
from forgetless.model.shared_heads import common_prefix


@dataclass
class Prefix:
    tokens: list[int]
    cache: object  # the model's KV cache after `tokens`, batch 1


def cache_of(out):
    """The KV cache a model call returned (transformers 5 renamed `past_key_values` to `cache`; the old
    name warns)."""
    return getattr(out, "cache", None) or getattr(out, "past_key_values", None)


@torch.no_grad()
def prefix_of(model, rows: list[list[int]]) -> Prefix | None:
    """`model`'s cache after the rows' common head (None: no head, or a model that cannot take the path).
    Made under the adapter state that will read it: the base side (adapters off) makes its own."""
    tokens = common_prefix(rows) if rows else []
    if not tokens or not forward.lean(model):
        return None
    ids = torch.tensor([tokens], device=model.device)
    cache = cache_of(model(input_ids=ids, use_cache=True, logits_to_keep=1))
    return Prefix(tokens, cache) if hasattr(cache, "reorder_cache") else None


def copies(cache, rows: int, device) -> object:
    """A fresh cache holding `rows` copies of a batch-1 `cache` (the model call extends the cache it is given)."""
    cache = copy.deepcopy(cache)
    cache.reorder_cache(torch.zeros(rows, dtype=torch.long, device=device))
    return cache


def logits_at(model, batch: dict[str, torch.Tensor], where: torch.Tensor, prefix: Prefix | None) -> torch.Tensor:
    """`forward.logits_at` on a padded batch whose rows start with `prefix`'s tokens: the rest of each row
    runs after a copy of the head's cache. Without a prefix, or on a batch it does not fit, the whole batch."""
    ids, n = batch["input_ids"], len(prefix.tokens) if prefix else 0
    head = torch.tensor(prefix.tokens, device=ids.device) if prefix else None
    if not n or ids.shape[1] <= n or bool(where[:, :n].any()) or not bool((ids[:, :n] == head).all()):
        return forward.logits_at(model, batch, where)
    rest = {"input_ids": ids[:, n:], "attention_mask": batch["attention_mask"]}  # the mask covers head and rest
    at = torch.arange(n, ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
    extra = {"position_ids": at, forward.cache_argument(model): copies(prefix.cache, ids.shape[0], ids.device)}
    out = forward.hidden(model, rest, **extra)
    return out.head(out.states[:, :-1][where[:, n:]])
