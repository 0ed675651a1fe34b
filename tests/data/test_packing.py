"""Packing: bins, packed collation, length grouping, rehearsal parts."""

from __future__ import annotations

from forgetless.data.batching import Batches
from forgetless.data.mixture import MixedBatches
from forgetless.data.packing import bins, collate_packed, padding_share
from forgetless.model.likelihood import IGNORE
from tests.conftest import token_rows


def test_bins_are_few_and_balanced():
    assert bins([5, 3, 4, 2], 8) == [[0, 3], [1, 2]]  # 14 tokens -> 2 sequences: 5+2 | 4+3
    assert bins([10, 2], 6) == [[0], [1]]
    assert bins([13, 87, 94, 26], 128) == [[0, 2], [1, 3]]  # 107 | 113 instead of 94+26 | 87+13
    assert bins([], 8) == []
    # Under SDPA (cost 3456: SmolLM2's 2H + 1.5I) four full rows stay apart; with FlashAttention's
    # variable-length kernel (cost inf) they share one sequence.
    assert bins([256] * 4, 1024, 3456) == [[0], [1], [2], [3]]
    assert bins([256] * 4, 1024) == [[0, 1, 2, 3]]
    assert bins([60, 70, 50, 40, 120], 1024, 3456) == [[2, 4], [0, 1, 3]]  # 170 + 170: no padding, shorter W


def test_packed_collate_resets_positions_and_masks_row_boundaries():
    rows = token_rows([4, 3, 5]) + token_rows([2], rehearsal=True)
    b = collate_packed(rows, pad_id=0, capacity=8)
    assert b["input_ids"].shape == (2, 7)  # rows [2, 3] (5+2) | [0, 1] (4+3): no padding at all
    assert int(b["attention_mask"].sum()) == 14
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1]
    assert b["position_ids"][1].tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert b["labels"][0, 5].item() == IGNORE  # nothing predicts the next row's first token
    assert b["rehearsal"][0].tolist() == [False] * 5 + [True] * 2
    b = collate_packed(token_rows([4, 2]), pad_id=0, capacity=4)
    assert b["position_ids"][1].tolist() == [0, 1, 0, 1]  # the padded tail: a segment of its own


def test_length_grouping_keeps_every_row_once_and_cuts_padding():
    rows = token_rows([5 + (37 * i) % 90 for i in range(64)])
    plain, grouped = Batches(rows, 4, 0, 0), Batches(rows, 4, 0, 0, group_by_length=True)
    for b in (plain, grouped):
        assert sorted(i for mb in b.micro_batches(1) for i in mb) == list(range(64))
    assert padding_share(grouped.lengths(), None) < padding_share(plain.lengths(), None) / 2
    packed = Batches(rows, 4, 0, 0, pack=128)
    assert padding_share(packed.lengths(), 128) < padding_share(plain.lengths(), None) / 2
    note, numbers = packed.padding_note()
    assert "packed" in note and numbers["padding_share"] < numbers["padding_share_padded"]


def test_packed_rehearsal_batches_hold_the_same_rows():
    task, general = token_rows([6, 9, 4, 7]), token_rows([20, 15, 18], start=90)
    padded = MixedBatches(task, general, 2, 0.4, 0, 0)
    packed = MixedBatches(task, general, 2, 0.4, 0, 0, pack=64)
    for (t, g), p in zip(padded.epoch(0), packed.epoch(0), strict=True):
        assert isinstance(p, dict)  # short rows: one packed batch
        assert int(p["attention_mask"].sum()) == int(t["attention_mask"].sum() + g["attention_mask"].sum())
        assert int(p["rehearsal"][p["attention_mask"].bool()].sum()) == int(g["attention_mask"].sum())
    assert len(padded.lengths()[0]) == 2  # task and general parts, padded separately
    # Four full rows and a short rehearsal row: apart, as the padded batches would be.
    full = MixedBatches(token_rows([256] * 4), token_rows([97]), 4, 0.2, 0, 0, pack=1024, pack_cost=3456)
    first = next(full.epoch(0))
    assert isinstance(first, list) and [b["input_ids"].shape for b in first] == [(4, 256), (1, 97)]
    assert padding_share(full.lengths(), 1024, 3456) == 0
