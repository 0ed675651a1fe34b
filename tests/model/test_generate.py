"""Batched greedy generation: batches of similar prompt lengths, answers in the callers' order."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from forgetless.eval.metrics import normalize
from forgetless.model.generate import _batches, generate, may_still_equal
from forgetless.model.loader import load_tokenizer


def test_answers_come_back_in_order_and_equal_one_prompt_at_a_time(tiny_dir):
    torch.manual_seed(0)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_dir), load_tokenizer(tiny_dir)
    words = ["short", "a much longer prompt " * 6, "mid length prompt here", "x", "another long one " * 9, "two words"]
    chats = [[{"role": "user", "content": w}] for w in words]
    one_by_one = [generate(model, tokenizer, [c], max_new_tokens=6, batch_size=1)[0] for c in chats]
    batched = generate(model, tokenizer, chats, max_new_tokens=6, batch_size=4)
    assert batched == one_by_one  # sorted into batches by length, put back in the callers' order
    assert len(set(one_by_one)) > 1  # the prompts' answers differ, so a mix-up would show


def test_a_target_stops_only_rows_that_can_no_longer_equal_it(tiny_dir):
    torch.manual_seed(0)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_dir), load_tokenizer(tiny_dir)
    chats = [[{"role": "user", "content": w}] for w in ["one", "two words", "three words here", "four", "five", "six"]]
    whole = generate(model, tokenizer, chats, max_new_tokens=10, batch_size=3)
    # a row's own answer (runs to its end), half of it and then something else, unrelated text, no target
    targets = [whole[0], whole[1][: len(whole[1]) // 2] + " zzz", "unrelated", whole[3], None, "q"]
    cut = generate(model, tokenizer, chats, max_new_tokens=10, batch_size=3, targets=targets)
    for answer, short, target in zip(whole, cut, targets, strict=True):
        if target is None:
            assert short == answer
        else:  # the verdict "equals its target" is never changed by stopping early
            assert (normalize(short) == normalize(target)) == (normalize(answer) == normalize(target))
    assert cut[0] == whole[0] and cut[3] == whole[3]
    assert len(cut[2]) < len(whole[2]) and len(cut[5]) < len(whole[5])  # parted at once: stopped early
    assert whole[1].startswith(cut[1]) and len(cut[1]) < len(whole[1])
    # grouped by where rows are expected to part (a hint only): the same answers
    hinted = generate(
        model, tokenizer, chats, max_new_tokens=10, batch_size=3, targets=targets, parts_at=[None, 2, 0, None, None, 0]
    )
    assert hinted == cut


def test_prompts_run_their_common_head_once_and_answer_the_same(tiny_dir, monkeypatch):
    from forgetless.model import generate as generating

    torch.manual_seed(0)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_dir), load_tokenizer(tiny_dir)
    system = {"role": "system", "content": "You triage the help desk's tickets into one line of fields."}
    words = ["short", "a much longer ticket " * 5, "mid length ticket here", "x", "two words"]
    chats = [[system, {"role": "user", "content": w}] for w in words]
    heads = []
    real = generating.prefix_of
    monkeypatch.setattr(generating, "prefix_of", lambda *a: heads.append(real(*a)) or heads[-1])
    shared = generate(model, tokenizer, chats, max_new_tokens=8, batch_size=2)  # three batches
    assert heads and len(heads[0].tokens) > 10  # the system turn and more, in the cache
    monkeypatch.setattr(generating, "prefix_of", lambda *a: None)
    assert shared == generate(model, tokenizer, chats, max_new_tokens=8, batch_size=2)
    assert len(set(shared)) > 1


def test_rows_expected_to_run_to_the_end_get_batches_of_their_own():
    lengths = [5, 9, 7, 3, 8]
    assert _batches(lengths, 2) == [[1, 4], [2, 0], [3]]  # longest prompts first
    assert _batches(lengths, 2, [None, 4, 1, None, 4]) == [[0, 3], [1, 4], [2]]


def test_a_row_that_parts_late_rides_with_the_rows_that_run_to_their_end():
    # cost in row-steps (STEP_ROWS 15, PREFILL 0.67, prompts of 10 tokens): [[0], [1, 2, 3, 4], [5]] as
    # batches of 4 by parting would cost 64·16 + 52·19 + 2·16 (+ prefill) = 2,064; [[0, 1], [2, 3, 4, 5]]:
    # 64·17 + 2·19 (+ the same prefill) = 1,126, the least of any cuts
    assert _batches([10] * 6, 4, [None, 50, 0, 0, 0, 0], 64) == [[0, 1], [2, 3, 4, 5]]
    # rows that part at once are not held open by one that parts late: it gets a batch of its own
    assert _batches([10] * 6, 4, [0, 0, 0, 60, 0, 0], 64) == [[3], [0, 1, 2, 4], [5]]


def test_a_partial_answer_may_still_equal_its_target_by_hand():
    assert may_still_equal("Hello wor", "Hello world")  # the last word can still grow
    assert may_still_equal("  Hello\n\nworld ", "Hello world!")  # whitespace runs count as one space
    assert may_still_equal("", "anything")
    assert may_still_equal("caf\ufffd", "café")  # a character split across tokens: undecided
    assert not may_still_equal("Hello x", "Hello world")
    assert not may_still_equal("Hello world and", "Hello world")
