"""The rows' common head run once (model/prefix.py): the same logits as the whole batch, from fewer tokens."""

from __future__ import annotations

import torch

from forgetless.adapters.views import base_view
from forgetless.data.batching import fixed_batches
from forgetless.model import forward
from forgetless.model.likelihood import IGNORE
from forgetless.model.prefix import logits_at, prefix_of
from forgetless.model.shared_heads import common_prefix
from tests.conftest import lora_model


def test_common_prefix_is_on_token_ids_and_leaves_each_row_a_token():
    assert common_prefix([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 3, 4, 5]]) == [1, 2, 3]
    assert common_prefix([[1, 2, 3], [1, 2, 3, 4]]) == [1, 2]  # the shortest row keeps its last token
    assert common_prefix([[7, 1], [8, 1]]) == [] and common_prefix([[5], [5]]) == []


def _rows():
    head = [11, 12, 13, 14, 15, 16]
    bodies = [[40, 41, 42], [50, 51], [60, 61, 62, 63, 64], [70]]
    answers = [[200, 201], [210, 211, 212], [220], [230, 231, 232, 233]]
    return [
        {"input_ids": head + b + a, "labels": [IGNORE] * (len(head) + len(b)) + a, "rehearsal": False}
        for b, a in zip(bodies, answers, strict=True)
    ]


def _widths(model) -> list[int]:
    """Records the sequence length of every call of the model's embedding."""
    seen: list[int] = []
    model.get_input_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape[1]))
    return seen


@torch.no_grad()
def test_the_head_run_once_gives_the_whole_batch_logits_on_both_sides(tiny_dir, tokenizer):
    model = lora_model(tiny_dir).eval()
    rows = _rows()
    (batch,) = fixed_batches(rows, 4, tokenizer.pad_token_id)
    where = (batch["labels"][:, 1:] != IGNORE) & batch["attention_mask"][:, 1:].bool()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    widths = _widths(model)
    head = prefix_of(model, [r["input_ids"] for r in rows])
    assert head is not None and head.tokens == [11, 12, 13, 14, 15, 16]
    got = logits_at(model, inputs, where, head)
    assert widths == [6, batch["input_ids"].shape[1] - 6]  # the head once, then the rest of every row
    whole = forward.logits_at(model, inputs, where)
    assert got.shape == whole.shape == (int(where.sum()), model.config.vocab_size)
    torch.testing.assert_close(got, whole, atol=1e-5, rtol=1e-5)
    with base_view(model) as b:  # the adapter-off side makes its own head: it differs from the adapted one
        base_head = prefix_of(b, [r["input_ids"] for r in rows])
        torch.testing.assert_close(logits_at(b, inputs, where, base_head), forward.logits_at(b, inputs, where))
    assert not torch.allclose(got, logits_at(model, inputs, where, base_head), atol=1e-3)  # a wrong head shows


@torch.no_grad()
def test_a_batch_the_head_does_not_fit_runs_whole(tiny_dir, tokenizer):
    model = lora_model(tiny_dir).eval()
    rows = _rows()
    (batch,) = fixed_batches(rows, 4, tokenizer.pad_token_id)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    head = prefix_of(model, [r["input_ids"] for r in rows])
    inside = torch.zeros_like(batch["labels"][:, 1:], dtype=torch.bool)
    inside[:, 2] = True  # a position inside the head is scored: its state is not in the rest's run
    widths = _widths(model)
    torch.testing.assert_close(logits_at(model, inputs, inside, head), forward.logits_at(model, inputs, inside))
    assert widths == [batch["input_ids"].shape[1]] * 2
    other = dict(inputs, input_ids=inputs["input_ids"].clone())
    other["input_ids"][1, 0] = 99  # a row that does not start with the head
    answers = (batch["labels"][:, 1:] != IGNORE) & batch["attention_mask"][:, 1:].bool()
    widths.clear()
    torch.testing.assert_close(logits_at(model, other, answers, head), forward.logits_at(model, other, answers))
    assert widths == [batch["input_ids"].shape[1]] * 2
