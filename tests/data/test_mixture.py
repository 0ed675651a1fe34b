"""Rehearsal mixing: the exact general share per batch, deterministic and resumable."""

from __future__ import annotations

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
    assert general_per_batch(4, 0.3) == 2 and general_per_batch(10, 0.3) == 4 and general_per_batch(4, 0.1) == 1
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


def test_rehearsal_needs_general_rows():
    with pytest.raises(UserError, match="no general rows"):
        MixedBatches(_rows(4, 0), [], 2, 0.3, 0, 0)
