"""Rehearsal mixing: the exact general share per batch, deterministic and resumable."""

from __future__ import annotations

from fractions import Fraction
from itertools import islice

import pytest

from forgetless.data.batching import Batches
from forgetless.data.mixture import MixedBatches, general_per_batch
from forgetless.errors import UserError


def _rows(n: int, start: int, rehearsal: bool = False) -> list[dict]:
    return [{"input_ids": [start + i, 1], "labels": [start + i, 1]} for i in range(n)]


def test_rehearsal_rows_per_batch_are_exact_and_epoch_covers_the_task_once():
    task, general = _rows(10, 1000), _rows(7, 5000)
    mixed = MixedBatches(task, general, batch_size=4, ratio=0.3, seed=3, pad_id=0)
    # general rows g on top of b task rows so that g / (b + g) ≈ ratio: g = round(b·r / (1 − r))
    assert general_per_batch(4, 0.3) == 2 and general_per_batch(10, 0.3) == 4
    assert len(mixed) == 3  # an epoch is defined by the task rows: ceil(10 / 4)
    plain = [b["input_ids"].tolist() for b in Batches(task, 4, 3, 0).epoch(0)]
    seen = []
    for (t, g), same in zip(mixed.epoch(0), plain, strict=True):
        assert t["input_ids"].tolist() == same  # the task stream is exactly the one without rehearsal
        assert g["input_ids"].shape[0] == 2 and bool(g["rehearsal"].all()) and not bool(t["rehearsal"].any())
        assert all(i >= 5000 for i in g["input_ids"][:, 0].tolist())
        seen += t["input_ids"][:, 0].tolist()
    assert sorted(seen) == list(range(1000, 1010))


def test_rehearsal_mixing_is_deterministic_and_resumable():
    def stream(seed, epoch, start=0):
        m = MixedBatches(_rows(10, 1000), _rows(7, 5000), 4, 0.3, seed, 0)
        return [[b["input_ids"][:, 0].tolist() for b in pair] for pair in m.epoch(epoch, start)]

    assert stream(3, 1) == stream(3, 1)
    assert stream(3, 1)[1:] == stream(3, 1, start=1)  # a checkpoint's position resumes the same rows
    assert stream(3, 1) != stream(4, 1)
    # the general stream continues across epochs: every general row is used before any repeats
    general = [i for e in (0, 1) for _, g in stream(3, e) for i in g]
    assert sorted(general[:7]) == list(range(5000, 5007))


def test_a_share_under_one_row_per_batch_is_spread_and_exact_over_the_run():
    # 10% of batches of 4 task rows is 4/9 of a row per micro-batch: 4 rows in every 9 micro-batches
    assert general_per_batch(4, 0.1) == Fraction(4, 9) and general_per_batch(4, 0.2) == 1
    task, general = _rows(36, 1000), _rows(50, 5000)
    mixed = MixedBatches(task, general, batch_size=4, ratio=0.1, seed=3, pad_id=0)
    items = list(mixed.epoch(0))
    per_batch = [len(item[1]["input_ids"]) if isinstance(item, list) else 0 for item in items]
    assert per_batch == [0, 0, 1, 0, 1, 0, 1, 0, 1]  # ⌊(g+1)·4/9⌋ − ⌊g·4/9⌋: never two in a row
    assert sum(per_batch) / (sum(per_batch) + len(task)) == pytest.approx(0.1)
    plain = [b["input_ids"].tolist() for b in Batches(task, 4, 3, 0).epoch(0)]
    tasks = [(item[0] if isinstance(item, list) else item)["input_ids"].tolist() for item in items]
    assert tasks == plain  # the task stream is unchanged
    # the next epoch continues the count (micro-batch 9 onwards) and resumes exactly from a position
    later = [len(i[1]["input_ids"]) if isinstance(i, list) else 0 for i in mixed.epoch(1)]
    assert later == per_batch and [len(x) for x in mixed.lengths(0)] == [1 + n for n in per_batch]
    resumed = [i[1]["input_ids"].tolist() for i in mixed.epoch(1, start=4) if isinstance(i, list)]
    assert resumed == [i[1]["input_ids"].tolist() for i in list(mixed.epoch(1))[4:] if isinstance(i, list)]
    assert "4 general rows added to every 9 micro-batches" in mixed.describe() and "(10% general)" in mixed.describe()


def test_rows_promised_for_replay_come_next_and_resume_at_their_positions():
    """On-policy replay's refreshed rows are drawn at the next general positions, ahead of the permutation,
    after what the loop was already handed, one promise after the other; a resumed stream that is told the
    same positions draws the same rows."""

    def firsts(item) -> list[int]:
        return item[1]["input_ids"][:, 0].tolist() if isinstance(item, list) else []

    mixed = MixedBatches(_rows(40, 1000), _rows(300, 5000), batch_size=4, ratio=0.3, seed=3, pad_id=0)
    plain = [firsts(i) for i in MixedBatches(_rows(40, 1000), _rows(300, 5000), 4, 0.3, 3, 0).epoch(0)]
    handed = [firsts(i) for i in islice(mixed.epoch(0), 2)]  # two micro-batches (2 general rows each) taken
    assert handed == plain[:2] and mixed.drawn == 4
    assert mixed.replay_next([7, 8, 9]) == [4, 5, 6] and mixed.replay_next([11]) == [7]
    rest = [firsts(i) for i in mixed.epoch(0, start=2)]
    assert rest[:2] == [[5007, 5008], [5009, 5011]] and rest[2:] == plain[4:]  # then the stream's own order
    assert mixed.replay_next([12]) == [20]  # after everything handed out (10 micro-batches × 2)
    resumed = MixedBatches(_rows(40, 1000), _rows(300, 5000), 4, 0.3, 3, 0)
    resumed.replay.update({4: 7, 5: 8, 6: 9, 7: 11})
    assert [firsts(i) for i in resumed.epoch(0, start=2)] == rest


def test_rehearsal_needs_general_rows():
    with pytest.raises(UserError, match="no general rows"):
        MixedBatches(_rows(4, 0), [], 2, 0.3, 0, 0)
