"""Task batches with an exact number of rehearsal (general) rows added to every micro-batch.

Every micro-batch keeps its `batch_size` task rows, in exactly the order training without
rehearsal would see them, and gets general rows on top: `general_per_batch(batch_size, ratio)`
of them in every micro-batch, so that they make up `ratio` of it rounded to whole rows. When that
is less than one row (10% of a batch of 4 task rows is 0.44 rows), rounding up would double the
share, so the rows are spread instead: micro-batch g gets ⌊(g+1)·x⌋ − ⌊g·x⌋ of them (0 or 1, x =
rows per micro-batch), and the run's share is `ratio` exactly (4 rows in every 9 micro-batches
at 10%). An epoch is one pass over the task rows. General rows come from an endless stream of
seeded permutations, addressed by the global micro-batch index, so a checkpoint's (epoch,
micro-batch) position still resumes exactly. On-policy replay (eval/on_policy.py) puts the rows it has
just refreshed at the stream's next positions (`replay_next`), ahead of the permutation's own order:
drawn one at a time from a pool of hundreds, a refreshed row would otherwise seldom come up in a
short run. The two kinds are padded separately (a micro-batch is the pair [task batch, general
batch]): the base model's general answers are several times longer than typical task answers, and
padding short task rows to them would double the compute.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

import torch

from forgetless.data.batching import Batches, collate
from forgetless.data.packing import together
from forgetless.errors import UserError


def general_per_batch(batch_size: int, ratio: float) -> Fraction:
    """General rows per micro-batch of `batch_size` task rows that make them `ratio` of the whole: a
    whole number when it is one row or more (rounded), else the exact fraction (spread over batches)."""
    share = Fraction(ratio).limit_denominator(10_000)  # 0.1 is 1/10, not the float's binary fraction
    rows = batch_size * share / (1 - share)
    return Fraction(round(rows)) if rows >= 1 else rows


class MixedBatches(Batches):
    def __init__(
        self,
        rows: list[dict],
        general: list[dict],
        batch_size: int,
        ratio: float,
        seed: int,
        pad_id: int,
        collate_fn=collate,
        **layout,
    ):
        if not general:
            raise UserError("rehearsal is on but there are no general rows; check forgetting.rehearsal.source")
        self.n_general = general_per_batch(batch_size, ratio)
        super().__init__(rows, batch_size, seed, pad_id, collate_fn, **layout)
        self.general = [{**r, "rehearsal": True} for r in general]
        self._cycles: dict[int, list[int]] = {}
        self.replay: dict[int, int] = {}  # stream position -> general row drawn there instead of the permutation's
        self.drawn = 0  # the first stream position not yet handed to training

    def describe(self) -> str:
        n, total = self.n_general, self.batch_size + self.n_general
        every = (
            f"{n} general rows added to the {self.batch_size} task rows of every micro-batch"
            if n.denominator == 1
            else f"{n.numerator} general rows added to every {n.denominator} micro-batches of {self.batch_size} "
            f"task rows, spread evenly"
        )
        return f"rehearsal: {every} ({100 * float(n / total):.0f}% general) from {len(self.general)} general rows"

    def replay_next(self, indices: list[int]) -> list[int]:
        """General rows `indices` drawn at the next stream positions not yet handed out or already promised
        (one each, in order); returns those positions (recorded, so a resumed run promises them again)."""
        start = max(self.drawn, max(self.replay, default=-1) + 1)
        positions = list(range(start, start + len(indices)))
        self.replay.update(zip(positions, indices, strict=True))
        return positions

    def _general_index(self, position: int) -> int:
        if position in self.replay:
            return self.replay[position]
        cycle, offset = divmod(position, len(self.general))
        if cycle not in self._cycles:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 7_919 * (cycle + 1))
            self._cycles = {cycle: torch.randperm(len(self.general), generator=g).tolist()}
        return self._cycles[cycle][offset]

    def _positions(self, epoch: int, micro: int) -> range:
        g = epoch * len(self) + micro  # rows before micro-batch g: ⌊g·n⌋ (exact: n is a Fraction)
        return range(int(g * self.n_general), int((g + 1) * self.n_general))

    def _general_rows(self, epoch: int, micro: int) -> list[dict]:
        return [self.general[self._general_index(k)] for k in self._positions(epoch, micro)]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[list[dict[str, torch.Tensor]] | dict[str, torch.Tensor]]:
        """Per micro-batch [task batch, general batch] (the task batches equal `Batches.epoch`'s), or,
        packed, one batch holding both when that computes less (`packing.together`)."""
        for micro, idx in enumerate(self.micro_batches(epoch)[start:], start):
            task, general = [self.rows[i] for i in idx], self._general_rows(epoch, micro)
            self.drawn = max(self.drawn, self._positions(epoch, micro).stop)  # the loop takes what it is handed
            if not general:  # a micro-batch without its share when the share is under one row
                yield self.collate(task, self.pad_id)
            elif self.pack is None:  # task rows may be preference pairs (collate_fn): general rows are plain
                yield [self.collate(task, self.pad_id), collate(general, self.pad_id)]
            elif together([[len(r["input_ids"]) for r in part] for part in (task, general)], self.pack, self.pack_cost):
                yield self.collate(task + general, self.pad_id)
            else:
                yield [self.collate(task, self.pad_id), self.collate(general, self.pad_id)]

    def lengths(self, epoch: int = 0) -> list[list[list[int]]]:
        out = []
        for micro, idx in enumerate(self.micro_batches(epoch)):
            general = [len(r["input_ids"]) for r in self._general_rows(epoch, micro)]
            out.append([[len(self.rows[i]["input_ids"]) for i in idx], general][: 2 if general else 1])
        return out
