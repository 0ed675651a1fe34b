"""Padding-free batches: the rows of a micro-batch packed into few sequences, without padding.

A micro-batch keeps exactly the rows it would have padded (same order in the data stream, same
rehearsal share); only their layout changes: the rows are spread over the number of sequences
that computes least (`bins`): few sequences waste no padding, but under SDPA a packed sequence
pays attention across its rows, so rows that are long already stay apart. Each row's position
ids start again at 0, and the model is called without an attention mask: transformers then
builds a block-diagonal causal mask from the position ids (FlashAttention uses them as variable-
length boundaries), so no token attends to another row and each row's logits equal its padded
logits. The loss masks drop the position that would predict the next row's first token
(`losses.position_masks`).

The padded tail of a sequence gets its own position ids from 0: it forms a segment of its own
that no real token attends to.
"""

from __future__ import annotations

import math

import torch

from forgetless.model.likelihood import IGNORE


def attention_cost(config, attention: str) -> float:
    """Tokens of sequence length at which attention costs as much per token as the linear layers.

    Per layer and token the linear layers cost ~2(4H² + 3HI) FLOPs and attention over a sequence
    of W tokens ~4WH; SDPA with a block mask computes every block, so a packed sequence pays for
    attention across its rows: W / (2H + 1.5I) more per token. FlashAttention-2 (variable-length)
    skips other rows' blocks: no such cost.
    """
    if attention == "flash_attention_2":
        return math.inf
    # forgetless's row-by-row SDPA (packed_attention.NAME) skips those blocks too, but one SDPA call per row
    # costs more than one batched call on rows that need no packing (4 x 256 tokens: 8% slower a LoRA step,
    # measured): priced like SDPA, long rows stay one per sequence and take the batched call.
    return 2 * config.hidden_size + 1.5 * config.intermediate_size


def work(lengths: list[int], capacity: int, cost: float = math.inf) -> tuple[float, int]:
    """Estimated compute (token units, attention included) and computed tokens of `bins`' layout."""
    groups = bins(lengths, capacity, cost)
    width = max((sum(lengths[i] for i in g) for g in groups), default=0)
    return len(groups) * width * (1 + width / cost), len(groups) * width


def together(parts: list[list[int]], capacity: int, cost: float = math.inf) -> bool:
    """Whether a micro-batch's parts (task rows, rehearsal rows) compute less packed together than
    each packed on its own (the loop runs a list of batches as one micro-batch): four full task
    rows and one short rehearsal row are cheaper apart than padded to one width."""
    if len(parts) == 1:
        return True
    return work([n for p in parts for n in p], capacity, cost)[0] <= sum(work(p, capacity, cost)[0] for p in parts)


def bins(lengths: list[int], capacity: int, cost: float = math.inf) -> list[list[int]]:
    """Row indices grouped into sequences of about `capacity` tokens or fewer, in the layout that
    computes least: n sequences padded to the longest one cost n·W·(1 + W/cost) (`attention_cost`),
    tried from the fewest sequences up; with cost = inf the fewest always win. For n sequences the
    rows go longest first into the least-filled one (LPT scheduling), so they end up nearly equally
    long. Deterministic: ties go to the lower index."""
    if not lengths:
        return []
    best: tuple[float, list[list[int]]] | None = None
    for n in range(max(1, math.ceil(sum(lengths) / capacity)), len(lengths) + 1):
        groups, width = _balanced(lengths, n)
        work = n * width * (1 + width / cost)
        if best is None or work < best[0]:
            best = (work, groups)
        if math.isinf(cost):
            break
    return best[1]


def _balanced(lengths: list[int], n: int) -> tuple[list[list[int]], int]:
    groups: list[list[int]] = [[] for _ in range(n)]
    fill = [0] * n
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        g = min(range(n), key=lambda g: fill[g])
        groups[g].append(i)
        fill[g] += lengths[i]
    return [sorted(g) for g in groups if g], max(fill)


def collate_packed(rows: list[dict], pad_id: int, capacity: int, cost: float = math.inf) -> dict[str, torch.Tensor]:
    """Like `batching.collate`, packed: (S, W) tensors for S sequences, plus `position_ids` and a
    per-token `rehearsal` and `replay` flags (a sequence may hold task and rehearsal rows)."""
    groups = bins([len(r["input_ids"]) for r in rows], capacity, cost)
    width = max(sum(len(rows[i]["input_ids"]) for i in g) for g in groups)
    shape = (len(groups), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    rehearsal = torch.zeros(shape, dtype=torch.bool)
    replay = torch.zeros(shape, dtype=torch.bool)
    for s, group in enumerate(groups):
        at = 0
        for i in group:
            r = rows[i]
            n = len(r["input_ids"])
            ids[s, at : at + n] = torch.tensor(r["input_ids"])
            labels[s, at : at + n] = torch.tensor(r["labels"])
            labels[s, at] = IGNORE  # nothing predicts a row's first token across the boundary
            mask[s, at : at + n] = 1
            positions[s, at : at + n] = torch.arange(n)
            rehearsal[s, at : at + n] = bool(r.get("rehearsal", False))
            replay[s, at : at + n] = bool(r.get("replay", False))
            at += n
        positions[s, at:] = torch.arange(width - at)  # the padded tail: a segment of its own
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels, "rehearsal": rehearsal, "replay": replay}
    return out | {"position_ids": positions}


def padded_tokens(lengths: list[int]) -> int:
    return len(lengths) * max(lengths, default=0)


def padding_share(micro_batches: list[list[list[int]]], capacity: int | None, cost: float = math.inf) -> float:
    """Share of the computed tokens that are padding, over micro-batches given as the row lengths of
    their parts; capacity None: each part padded to its longest row; else packed as the batches do
    (`together`, `bins`)."""
    real = sum(sum(part) for mb in micro_batches for part in mb)
    total = 0
    for mb in micro_batches:
        if capacity is None:
            total += sum(padded_tokens(part) for part in mb)
        elif together(mb, capacity, cost):
            total += work([n for part in mb for n in part], capacity, cost)[1]
        else:
            total += sum(work(part, capacity, cost)[1] for part in mb)
    return 1 - real / max(total, 1)
