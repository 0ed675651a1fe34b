"""Seeded, resumable batch order and padding collation.

The order of epoch e is a permutation drawn from a generator seeded with (seed, e), so the
position (epoch, micro-batch index) is all a checkpoint needs to resume the data stream
exactly where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from forgetless.data.render import IGNORE


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row; padding is masked out of attention and loss.

    `rehearsal` marks the rows that came from general (rehearsal) data, so the loss can treat
    task rows and rehearsal rows differently.
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
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "rehearsal": rehearsal}


class Batches:
    """Micro-batches of `rows` in a seeded order per epoch, starting at any position."""

    def __init__(self, rows: list[dict], batch_size: int, seed: int, pad_id: int, collate_fn=collate):
        self.rows, self.batch_size, self.seed, self.pad_id = rows, batch_size, seed, pad_id
        self.collate = collate_fn  # data.preference.collate_pairs for preference pairs

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.rows), generator=g).tolist()

    def epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Micro-batches of one epoch from micro-batch index `start` on."""
        order = self.order(epoch)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.collate([self.rows[i] for i in idx], self.pad_id)


def fixed_batches(rows: list[dict], batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Validation batches in file order (sorted by length to waste less padding)."""
    ordered = sorted(rows, key=lambda r: len(r["input_ids"]))
    return [collate(ordered[i : i + batch_size], pad_id) for i in range(0, len(ordered), batch_size)]
