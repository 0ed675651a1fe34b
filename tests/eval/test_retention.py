"""Retention against the base model."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from forgetless.config import pipeline as pipeline_config
from forgetless.eval.retention import kl_to_base
from tests.conftest import lora_model


def test_retention_kl_is_zero_for_the_base_against_itself(tiny_dir, tokenizer):
    from forgetless.data.formats import Example

    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    refs = [Example("x", messages=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}))]
    assert kl_to_base(base, tokenizer, refs, base=base) == 0.0
    assert kl_to_base(lora_model(tiny_dir).eval(), tokenizer, refs) > 0


def test_the_base_side_kept_between_calls_gives_the_kl_measured_afresh(tiny_dir, tokenizer):
    """The dials measure one model at many adapter scales: the base's logits are computed on the first call
    and read on the next, and each KL equals the one measured with a fresh base forward."""
    from forgetless.data.formats import Example

    model = lora_model(tiny_dir).eval()
    layers = [m for m in model.modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict)]
    refs = [
        Example(str(i), messages=({"role": "user", "content": q}, {"role": "assistant", "content": a}))
        for i, (q, a) in enumerate([("hi", "hello there"), ("name a colour", "blue, of course"), ("2+2?", "4")] * 4)
    ]
    held, seen = [], []
    for scale in (1.0, 0.5, 0.25):
        for m in layers:
            m.scaling = {k: scale for k in m.scaling}
        fresh = kl_to_base(model, tokenizer, refs, batch_size=4)
        assert kl_to_base(model, tokenizer, refs, batch_size=4, base_logits=held) == pytest.approx(fresh, rel=1e-6)
        assert len(held) == 3  # one entry per batch, filled once
        seen.append(fresh)
    assert seen[0] > seen[1] > seen[2] > 0  # the scales took effect: a cached side that went stale would show


def test_task_kl_is_base_to_tuned_per_answer_token(tiny_dir, tokenizer):
    """KL(p_base ‖ p_tuned) = Σ_v p_b(v) (log p_b(v) − log p_t(v)), averaged over the answer tokens
    (labels ≠ -100 shifted by one), computed here directly from the two models' logits."""
    import torch

    from forgetless.adapters.views import base_view
    from forgetless.data.batching import fixed_batches
    from forgetless.eval.retention import kl_on_rows, task_kl
    from forgetless.eval.suite import mean_nll
    from forgetless.model.likelihood import IGNORE

    model = lora_model(tiny_dir).eval()
    ids = torch.tensor([5, 17, 42, 99, 7, 8, 300, 2])
    rows = [{"input_ids": ids.tolist(), "labels": [IGNORE] * 4 + ids[4:].tolist(), "rehearsal": False}]
    with torch.no_grad():
        tuned = model(input_ids=ids[None]).logits[0, 3:7].log_softmax(-1)
        with base_view(model) as b:
            base = b(input_ids=ids[None]).logits[0, 3:7].log_softmax(-1)
    by_hand = float((base.exp() * (base - tuned)).sum(-1).mean())
    reverse = float((tuned.exp() * (tuned - base)).sum(-1).mean())
    got, nll = task_kl(model, rows, tokenizer.pad_token_id)
    assert got["n"] == 1 and abs(got["kl_base_to_tuned"] - by_hand) < 1e-5
    # the perplexity from the same pass is the one mean_nll gives, to the bit
    assert nll == mean_nll(model, fixed_batches(rows, 4, tokenizer.pad_token_id))
    assert abs(kl_on_rows(model, rows, tokenizer.pad_token_id) - reverse) < 1e-5
    assert abs(by_hand - reverse) > 1e-4  # the two directions differ here, so the test tells them apart


def test_first_parting_counts_answer_tokens_before_the_first_greedy_miss():
    import torch

    from forgetless.eval.retention import first_parting

    # 2 rows, 5 positions, vocabulary 3; answers are positions 2-4 (row 0) and 1-4 (row 1)
    where = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]], dtype=torch.bool)
    labels = torch.tensor([[0, 0, 1, 2, 0], [0, 2, 2, 1, 1]])
    greedy = torch.tensor([[2, 2, 1, 1, 0], [1, 2, 2, 1, 1]])  # row 0 misses its 2nd answer token; row 1 none
    # a miss before the answer (row 0, position 0) counts not: only the positions in `where` are handed over
    assert first_parting(greedy[where], labels[where], where) == [1, None]


def test_retention_gives_the_same_numbers_cut_or_whole(tiny_dir, tokenizer):
    """Answers cut where they part from the base model's (and batched by the teacher-forced parting)
    give the verdicts of whole answers; the shown samples stay whole."""
    from forgetless.data.formats import Example
    from forgetless.eval import retention
    from forgetless.model.generate import generate

    model = lora_model(tiny_dir).eval()
    words = ["hi", "tell me more", "x", "a longer question about things", "why", "ok then", "zz", "one two"]
    chats = [[{"role": "user", "content": w}] for w in words]
    own = generate(model, tokenizer, chats, max_new_tokens=8)  # some references are the model's own answers
    refs = [
        Example(str(i), messages=(*c, {"role": "assistant", "content": own[i] if i % 3 == 0 else "base says this"}))
        for i, c in enumerate(chats)
    ]
    whole, whole_answers = retention.agreement(model, tokenizer, refs, 8, whole=len(refs))
    got = retention.retention(model, tokenizer, refs, 8, samples=2)
    assert got["agreement"] == sum(whole) / len(whole) and sum(whole) == 3  # rows 0, 3, 6 are unchanged
    assert [s["finetuned"] for s in got["samples"]] == whole_answers[:2]


def test_the_probe_kl_from_the_whole_pass_equals_the_probe_alone(tiny_dir, tokenizer):
    """retention(probe=k) reads the KL over the probe's k references out of the pass over all of them
    (rows batched by length, so not in their order): the number the training loop's probe computes."""
    from forgetless.data.formats import Example
    from forgetless.eval.retention import probe_of, retention

    answers = ["hello there", "a much longer answer about rivers and the weather today", "no", "fine, thanks", "ok"]
    refs = [
        Example(f"r{i}", messages=({"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": a}))
        for i, a in enumerate(answers)
    ]
    model = lora_model(tiny_dir).eval()
    result = retention(model, tokenizer, refs, max_new_tokens=3, probe=2)
    assert [r.where for r in probe_of(refs, 2)] == ["r0", "r2"]  # spread through the prompts, not the first two
    assert result["probe_kl"] == pytest.approx(kl_to_base(model, tokenizer, probe_of(refs, 2)), rel=1e-5)
    assert result["probe_kl"] != pytest.approx(result["kl_per_token"], rel=1e-3)  # a subset, not the whole
    assert "probe_kl" not in retention(model, tokenizer, refs, max_new_tokens=3)


def test_a_retention_measure_over_no_prompt_is_not_measured_anywhere(tiny_overrides, tmp_path, monkeypatch):
    """Every base answer empty (seen with a small Qwen2): every retention prompt was left out and the
    report printed "KL to base per token (0 held-out prompts) | 0 | 0.0000", a perfect row over nothing,
    which a registry gate on KL passed."""
    import json

    import forgetless
    from forgetless.deploy import registry
    from forgetless.reference import answers

    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(answers, "generate", lambda model, tok, prompts, *a, **k: [""] * len(prompts))
    ev = ["eval.retention=true", "eval.benchmarks=[]", "eval.report=true", "eval.retention_max_prompts=4"]
    summary = forgetless.train({}, [*tiny_overrides, "train.max_steps=1", *ev])
    run = tmp_path / "run"
    prompts = json.loads((run / "eval.json").read_text())["retention"]["prompts"]
    assert prompts["n"] == 0 and prompts["kl_per_token"] is None and prompts["agreement"] is None
    assert "base-model answer" in prompts["not_measured"] and summary["retention"]["not_measured"]
    report = (run / "report.md").read_text()
    assert "not measured: no held-out general prompt" in report and "0 held-out prompts" not in report
    failed = registry.check_gates(registry.metrics(run), pipeline_config.gates({}, max_kl=0.5))
    assert failed == ["KL to base not measured > 0.5"]
