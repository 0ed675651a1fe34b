"""`forward.needed_part`: the teacher's forward pass cut after the last KL position of each row or segment
gives the very hidden states the whole batch gives there, in the same order, on less input."""

from __future__ import annotations

import pytest
import torch

from forgetless.config.schema import ForgettingConfig
from forgetless.data.batching import collate
from forgetless.data.packing import collate_packed
from forgetless.model import forward
from forgetless.objectives.forgetting import kl_positions, masks_of
from tests.conftest import lora_model, token_rows


def _rows() -> list[dict]:
    return token_rows([12, 5, 9]) + token_rows([10, 7], start=50, rehearsal=True)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("tokens", [["context", "rehearsal"], ["rehearsal"], ["context"], ["answers"]])
def test_states_at_the_kl_positions_equal_the_whole_batch(tiny_dir, packed, tokens):
    rows = _rows()
    batch = collate_packed(rows, 0, capacity=24) if packed else collate(rows, 0)
    where = kl_positions(masks_of(batch), ForgettingConfig(preset="lwf", lwf={"tokens": tokens}).kl_tokens)
    model = lora_model(tiny_dir).eval()
    with torch.no_grad():
        whole = forward.hidden(model, batch).states[:, :-1][where]
        part, at = forward.needed_part(batch, where)
        cut = forward.hidden(model, part).states[at]
    torch.testing.assert_close(cut, whole, rtol=1e-5, atol=1e-5)
    computed = int(part["attention_mask"].sum())
    assert computed < int(batch["attention_mask"].sum())  # every variant leaves something out
    task, general = ([len(r["input_ids"]) for r in rows if r["rehearsal"] == g] for g in (False, True))
    if tokens == ["rehearsal"]:  # only the general rows run, each to its last token but one
        if packed:
            assert computed == sum(n - 1 for n in general)
        else:
            assert part["input_ids"].shape[0] == len(general)
    if tokens == ["answers"] and packed:  # the answers end the task rows: all of those, none of the general
        assert computed == sum(n - 1 for n in task)


def test_sampled_positions_and_rows_without_any():
    """A row (or segment) with no chosen position is dropped, one with a chosen position keeps its prefix."""
    batch = collate(token_rows([6, 8, 4]), 0)
    where = torch.zeros(3, 7, dtype=torch.bool)
    where[0, 2] = where[2, 1] = True
    part, at = forward.needed_part(batch, where)
    assert part["input_ids"].tolist() == [batch["input_ids"][0, :3].tolist(), batch["input_ids"][2, :3].tolist()]
    assert at.nonzero().tolist() == [[0, 2], [1, 1]]
    packed = collate_packed(token_rows([6, 8, 4]), 0, capacity=20)  # one sequence of three segments
    where = torch.zeros(1, packed["input_ids"].shape[1] - 1, dtype=torch.bool)
    starts = (packed["position_ids"][0] == 0).nonzero().flatten().tolist()
    where[0, starts[0] + 1] = where[0, starts[2] + 2] = True  # the first and the third segment
    part, at = forward.needed_part(packed, where)
    assert part["position_ids"].tolist() == [[0, 1, 0, 1, 2]]
    ids = packed["input_ids"][0]
    want = torch.cat([ids[starts[0] : starts[0] + 2], ids[starts[2] : starts[2] + 3]])
    assert part["input_ids"][0].tolist() == want.tolist()
    assert at.nonzero()[:, 1].tolist() == [1, 4]
