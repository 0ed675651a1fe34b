"""Packed rows that open with the same tokens: that head run once per sequence, not once per row.

Chat rows of one task open alike: the quickstart's task rows share the chat template's system turn and
the instruction, 27 of their ~77 tokens, and LwF's teacher (the frozen base, under no gradient) runs
on the task rows' context up to their answers (`forward.needed_part`), ~62 tokens a row of which 27 are
that head. In a packed sequence (data/packing.py) the rows' copies of the head are the same tokens at
the same positions, so their keys, values and hidden states are the same: this layout keeps one copy per
sequence and lets each row's own tokens attend to it.

`plan(batch)` turns a packed batch (rows numbered from position 0) into that layout: in each sequence,
the rows whose first MIN_HEAD tokens agree form a group; a group of two or more becomes its common head
(`common_prefix`: each row keeps a token of its own) followed by each row's rest, numbered on
from the head's length. The row-by-row attention (packed_attention.by_rows) runs each rest after its head's
keys and values. `index` maps every token of the batch as given to its place in the new layout, so
`states.flatten(0, 1)[index]` are the batch's hidden states, position for position.

Exact only where every copy of the head computes the same: a forward that draws no dropout
(`deterministic`). LoRA's dropout draws a mask per token, so a training forward with active dropout keeps
its rows apart; `forward.hidden` takes this layout for LwF's teacher (adapters off), the cached teacher's
pass, and a training forward at `peft.dropout: 0`, where each copy's gradient adds up in the one head.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

# Rows group on their first MIN_HEAD tokens: a shorter common opening (a template's "<|im_start|>system\n")
# saves too little to pay for a segment of its own.
MIN_HEAD = 8


def common_prefix(rows: list[list[int]]) -> list[int]:
    """The tokens every row starts with, leaving each row at least one of its own. Found on the token ids,
    not the text: BPE merges across a text boundary ("\\n\\n" + "Question"), so a head tokenized alone is
    not always a prefix of the rows."""
    n = max(min(len(r) for r in rows) - 1, 0)
    for i in range(n):
        if any(r[i] != rows[0][i] for r in rows):
            return rows[0][:i]
    return rows[0][:n]


@dataclass
class Layout:
    input_ids: torch.Tensor  # (S, W') the shared layout
    position_ids: torch.Tensor
    bounds: torch.Tensor  # cumulative segment boundaries over the flattened (S × W') tokens
    heads: list[int]  # per segment: the index of the head segment it continues, or -1
    longest: int  # the most keys a segment's queries see (its head's included)
    index: torch.Tensor  # (S × W,) per token of the batch as given: its flat place in the layout

    def inputs(self) -> dict:
        """Keyword arguments of the model call on this layout, for the row-by-row attention (no mask, no cache)."""
        size = {"max_length_q": self.longest, "max_length_k": self.longest}
        rows = {"cu_seq_lens_q": self.bounds, "cu_seq_lens_k": self.bounds, "shared_heads": self.heads} | size
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "use_cache": False} | rows


def deterministic(model) -> bool:
    """Whether a forward of `model` draws no dropout, so that every copy of a head computes the same: no
    dropout module with p > 0 in training mode that will run (the adapters' dropout does not while PEFT's
    adapters are switched off, as for LwF's teacher), and no attention dropout."""
    if model.training and getattr(getattr(model, "config", None), "attention_dropout", 0.0):
        return False
    idle: set[int] = set()
    for m in model.modules():
        if hasattr(m, "lora_dropout") and getattr(m, "disable_adapters", False):
            idle.update(id(d) for d in m.lora_dropout.values())
    dropouts = (m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd))
    return not any(m.training and m.p > 0 and id(m) not in idle for m in dropouts)


def plan(batch: dict[str, torch.Tensor]) -> Layout | None:
    """The shared-head layout of a packed batch, or None when no two rows of a sequence share a head."""
    ids, pos = batch["input_ids"].tolist(), batch["position_ids"].tolist()
    real = batch["attention_mask"].tolist() if "attention_mask" in batch else [[1] * len(r) for r in ids]
    sequences = [_sequence(ids[s], pos[s], real[s]) for s in range(len(ids))]
    if all(h < 0 for pieces, _ in sequences for _, _, h in pieces):
        return None
    wide = max(sum(len(tokens) for tokens, _, _ in pieces) for pieces, _ in sequences)
    out_ids, out_pos, sizes, heads, index = [], [], [], [], []
    for s, (pieces, where) in enumerate(sequences):
        seq_ids, seq_pos, at, first = [], [], [], len(sizes)
        for tokens, start, head in pieces:
            at.append(len(seq_ids))
            seq_ids += tokens
            seq_pos += range(start, start + len(tokens))
            sizes.append(len(tokens))
            heads.append(first + head if head >= 0 else -1)
        tail = wide - len(seq_ids)  # padded as packing pads: a segment of its own, numbered from 0
        if tail:
            sizes.append(tail)
            heads.append(-1)
        out_ids.append(seq_ids + [ids[s][-1]] * tail)
        out_pos.append(seq_pos + list(range(tail)))
        pad = s * wide + (len(seq_ids) if tail else 0)  # where the batch's padding goes: its states are unused
        index += [s * wide + at[p] + o if p >= 0 else pad for p, o in where]
    dev = batch["input_ids"].device
    bounds = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    longest = max(start + len(tokens) for pieces, _ in sequences for tokens, start, _ in pieces)
    tensor = lambda x: torch.tensor(x, dtype=torch.long, device=dev)  # noqa: E731
    return Layout(tensor(out_ids), tensor(out_pos), bounds, heads, longest, tensor(index))


def _sequence(ids: list[int], pos: list[int], real: list[int]) -> tuple[list[tuple], list[tuple[int, int]]]:
    """One packed sequence's pieces, (tokens, first position, index of the head piece they continue or -1),
    and per token of the sequence as given its (piece, offset) ((-1, 0): padding)."""
    starts = [t for t in range(len(ids)) if pos[t] == 0] + [len(ids)]
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for a, b in itertools.pairwise(starts):
        if real[a]:  # the padded tail is no row
            groups.setdefault(tuple(ids[a : a + MIN_HEAD]) if b - a > MIN_HEAD else (-1, a), []).append((a, b))
    pieces: list[tuple] = []
    where = [(-1, 0)] * len(ids)
    for rows in groups.values():
        head = common_prefix([ids[a:b] for a, b in rows]) if len(rows) > 1 else []
        n, h = len(head), len(pieces) if head else -1
        if head:
            pieces.append((head, 0, -1))
        for a, b in rows:
            where[a : a + n] = [(h, o) for o in range(n)]
            where[a + n : b] = [(len(pieces), o) for o in range(b - a - n)]
            pieces.append((ids[a + n : b], n, h))
    return pieces, where
