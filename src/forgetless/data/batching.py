"""Seeded, resumable batch order and padding collation.

The order of epoch e is a permutation drawn from a generator seeded with (seed, e), so the
position (epoch, micro-batch index) is all a checkpoint needs to resume the data stream
exactly where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from forgetless.data.packing import collate_packed, padding_share
from forgetless.model.likelihood import IGNORE


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row; padding is masked out of attention and loss.

    `rehearsal` marks the rows that came from general (rehearsal) data, so the loss can treat
    task rows and rehearsal rows differently; `replay` marks the rehearsal rows that are an earlier
    run's training rows (its task's real answers, replayed with CE under preset full too).
    """
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        mask[i, :n] = 1
    rehearsal = torch.tensor([bool(r.get("rehearsal", False)) for r in rows])
    replay = torch.tensor([bool(r.get("replay", False)) for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "rehearsal": rehearsal, "replay": replay}


class Batches:
    """Micro-batches of `rows` in a seeded order per epoch, starting at any position.

    pack: padding-free micro-batches (`packing.collate_packed`) with sequences of up to `pack`
    tokens, laid out by `pack_cost` (`packing.attention_cost`); group_by_length: each micro-batch
    takes rows of similar length (less padding).
    """

    def __init__(
        self,
        rows: list[dict],
        batch_size: int,
        seed: int,
        pad_id: int,
        collate_fn=collate,
        *,
        pack: int | None = None,
        pack_cost: float = math.inf,
        group_by_length: bool = False,
    ):
        self.rows, self.batch_size, self.seed, self.pad_id = rows, batch_size, seed, pad_id
        self.collate = collate_fn  # data.preference.collate_pairs for preference pairs
        self.pack, self.pack_cost, self.group_by_length = pack, pack_cost, group_by_length
        if pack is not None:
            self.collate = lambda rows, pad_id: collate_packed(rows, pad_id, pack, pack_cost)

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.rows), generator=g).tolist()

    def micro_batches(self, epoch: int) -> list[list[int]]:
        """Row indices of each micro-batch of an epoch; every row exactly once.

        Grouped by length (as HF's LengthGroupedSampler): the seeded permutation is cut into
        chunks of GROUP micro-batches, each chunk sorted by length and cut into micro-batches,
        and those micro-batches are shuffled with the same seed.
        """
        order, size = self.order(epoch), self.batch_size
        if not self.group_by_length:
            return [order[b : b + size] for b in range(0, len(order), size)]
        out = []
        for c in range(0, len(order), GROUP * size):
            chunk = sorted(order[c : c + GROUP * size], key=lambda i: -len(self.rows[i]["input_ids"]))
            out += [chunk[b : b + size] for b in range(0, len(chunk), size)]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 17)
        return [out[i] for i in torch.randperm(len(out), generator=g).tolist()]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Micro-batches of one epoch from micro-batch index `start` on."""
        for idx in self.micro_batches(epoch)[start:]:
            yield self.collate([self.rows[i] for i in idx], self.pad_id)

    def lengths(self, epoch: int = 0) -> list[list[list[int]]]:
        """Row lengths of each micro-batch's separately collated parts (for `packing.padding_share`)."""
        return [[[len(self.rows[i]["input_ids"]) for i in idx]] for idx in self.micro_batches(epoch)]

    def padding_note(self) -> tuple[str, dict[str, float]]:
        """One line and the numbers: the share of padding in an epoch as batched, and padded."""
        layout = self.lengths(0)
        padded = padding_share(layout, None)
        now = padding_share(layout, self.pack, self.pack_cost) if self.pack is not None else padded
        how = f"packed into sequences of up to {self.pack} tokens" if self.pack else "padded per micro-batch"
        grouped = ", grouped by length" if self.group_by_length else ""
        note = f"batches: {how}{grouped}: padding is {100 * now:.1f}% of the computed tokens"
        if self.pack:
            note += f" (padded: {100 * padded:.1f}%)"
        return note, {"padding_share": round(now, 4), "padding_share_padded": round(padded, 4)}


GROUP = 50  # micro-batches per length-sorted chunk (HF's megabatch multiplier)


def length_order(rows: list[dict]) -> list[int]:
    """The row indices in `fixed_batches`' order: shortest first (stable)."""
    return sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))


def fixed_batches(rows: list[dict], batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Validation batches, sorted by length to waste less padding (row k of batch b is
    rows[length_order(rows)[b * batch_size + k]])."""
    ordered = [rows[i] for i in length_order(rows)]
    return [collate(ordered[i : i + batch_size], pad_id) for i in range(0, len(ordered), batch_size)]
