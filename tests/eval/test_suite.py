"""Evaluation maths against hand-computed values, and the multiple-choice scorer against a reference loop."""

from __future__ import annotations

import json
import math
import random
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from forgetless.config.evaluation import EvalConfig
from forgetless.errors import UserError
from forgetless.eval import choice, metrics, stats


def test_rouge_counts_japanese_characters_and_english_words():
    # 猫が好きです vs 犬が好きです: 6 characters each, LCS 5 -> P = R = F = 5/6
    assert metrics.rouge_l("猫が好きです", "犬が好きです") == pytest.approx(5 / 6)
    # "the cat sat" vs "the cat sat down": LCS 3, P = 1, R = 3/4 -> F = 6/7
    r = metrics.rouge("The cat sat", "the cat sat down")
    assert r["rouge_l"] == pytest.approx(6 / 7) and r["rouge1"] == pytest.approx(6 / 7)
    assert r["rouge2"] == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))  # bigrams: 2 of 2 and 2 of 3


def test_rouge_equals_rouge_score_to_the_last_digit():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")  # the dev extra installs it

    class Words:  # rouge-score's tokenizer protocol, with forgetless's tokens (Japanese as characters)
        tokenize = staticmethod(metrics.tokens)

    theirs = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=Words())
    rng = random.Random(0)
    vocab = ["the", "cat", "sat", "on", "mat", "a", "猫", "が", "好", "き", "です", "42", "Order"]
    for _ in range(300):
        a, b = (" ".join(rng.choices(vocab, k=rng.randrange(0, 12))) for _ in range(2))
        got, want = metrics.rouge(a, b), theirs.score(b, a)
        names = {"rouge1": "rouge1", "rouge2": "rouge2", "rouge_l": "rougeL"}
        assert got == {ours: want[name].fmeasure for ours, name in names.items()}, (a, b)


def test_exact_match_bleu_and_chrf():
    s = metrics.score(["a b c", "x"], ["a  b c", "y"])
    assert s["exact_match"] == 0.5
    same = metrics.bleu_chrf(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same["bleu"] == pytest.approx(100.0) and same["chrf"] == pytest.approx(100.0)
    assert 0 < metrics.bleu_chrf(["猫が好きです"], ["犬が好きです"])["bleu"] < 100  # char tokenization for CJK


def test_classification_accuracy_and_macro_f1_by_hand():
    labels = ["billing", "shipping", "refund"]
    preds = ["category: billing", "It is SHIPPING.", "billing", "no idea"]
    refs = ["billing", "shipping", "refund", "refund"]
    s = metrics.classification(preds, refs, labels)
    # billing: tp 1, fp 1 -> F1 2/3; shipping: tp 1 -> 1; refund: fn 2 -> 0; macro = (2/3 + 1 + 0) / 3
    assert s["accuracy"] == 0.5 and s["macro_f1"] == pytest.approx((2 / 3 + 1) / 3) and s["unparsed"] == 0.25
    assert metrics.extract_label("refund, not billing", labels) == "refund"


def test_custom_metric_from_module_function(tmp_path, monkeypatch):
    (tmp_path / "mymetrics.py").write_text("def length_ratio(p, r):\n    return {'mean': 2.0}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert metrics.score(["a"], ["a"], custom=["mymetrics:length_ratio"])["length_ratio.mean"] == 2.0
    with pytest.raises(UserError, match="cannot load 'mymetrics:nope'"):
        metrics.score(["a"], ["a"], custom=["mymetrics:nope"])


def test_bootstrap_intervals_cover_the_mean_and_shrink_with_more_items():
    lo, hi = stats.bootstrap_ci([1, 0] * 10)
    assert lo < 0.5 < hi
    lo2, hi2 = stats.bootstrap_ci([1, 0] * 200)
    assert hi2 - lo2 < hi - lo
    assert stats.bootstrap_ci([1, 1, 1]) == (1, 1)
    d = stats.compare([0] * 10 + [1] * 10, [1] * 20)
    assert d["diff"] == 0.5 and d["diff_ci"][0] > 0 and d["diff_ci"][1] <= 1


def _write_mc(path):
    rows = [
        {"question": "2 + 2?", "choices": ["3", "4"], "answer": 1, "fewshot": True},
        {"question": "Capital of France?", "choices": ["Paris", "Rome", "Lima"], "answer": "A"},
        {"question": "Color of the sky?", "choices": ["green", "blue sky and clouds"], "answer": 1},
        {"question": "日本の首都は？", "choices": ["東京", "大阪"], "answer": 0},
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_mc_scorer_matches_a_one_at_a_time_reference(tiny_dir, tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    items, shots = choice.read_items(str(_write_mc(tmp_path / "mc.jsonl")))
    assert len(items) == 3 and len(shots) == 1 and items[0].answer == 0
    got = choice.score_items(model, tokenizer, items, shots)
    raw, norm = [], []
    for it in items:  # reference: one unpadded sequence per choice, log-softmax, sum over the choice tokens
        sums, per_byte = [], []
        for c in it.choices:
            ctx = tokenizer(choice.prompt(it, shots))["input_ids"]
            cont = tokenizer(" " + c, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ctx + cont])).logits[0]
            lp = sum(torch.log_softmax(logits[len(ctx) - 1 + j], -1)[t].item() for j, t in enumerate(cont))
            sums.append(lp)
            per_byte.append(lp / len((" " + c).encode()))
        raw.append(float(sums.index(max(sums)) == it.answer))
        norm.append(float(per_byte.index(max(per_byte)) == it.answer))
    assert got["raw"] == raw and got["norm"] == norm
    assert got["acc"] == pytest.approx(sum(raw) / 3) and got["acc_norm"] == pytest.approx(sum(norm) / 3)
    lp = choice.choice_logprobs(model, tokenizer, items, shots)
    assert all(math.isfinite(x) for row in lp for x in row)
    # the shared-prompt path (KV cache repeated per choice) gives the same sums up to float rounding
    shared = choice.shared_prefix_logprobs(model, tokenizer, items, shots)
    assert [x for row in shared for x in row] == pytest.approx([x for row in lp for x in row], abs=1e-4)
    two = choice.shared_prefix_logprobs(model, tokenizer, items, shots, batch_size=2)  # batches of unequal prompts
    assert [x for row in two for x in row] == pytest.approx([x for row in lp for x in row], abs=1e-4)


def test_spread_picks_evenly_in_order():
    assert stats.spread(list(range(10)), 4) == [0, 2, 5, 7]
    assert stats.spread(list(range(10)), 1) == [0]
    assert stats.spread([3, 1], None) == [3, 1] and stats.spread([3, 1], 5) == [3, 1]


def test_max_questions_keeps_both_languages_of_the_bundled_file():
    every, _ = choice.read_items("builtin:general/mc.jsonl")
    some, shots = choice.read_items("builtin:general/mc.jsonl", 12)
    assert len(every) == 60 and len(some) == 12 and len(shots) == 2 and set(some) <= set(every)
    japanese = [it for it in some if re.search("[\u3040-\u30ff\u4e00-\u9fff]", it.question)]
    assert 0 < len(japanese) < 12  # the file is English first, then Japanese: the first 12 would be English


def test_caps_join_the_cache_key_only_when_set():
    """Base-side scores shipped for the default settings (assets/generated/) keep their key."""
    default = EvalConfig().key_fields()
    assert not {"max_perplexity_rows", "max_questions"} & set(default)
    assert EvalConfig(max_questions=12).key_fields() == default | {"max_questions": 12}


def test_mc_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"question": "q", "choices": ["a", "b"], "answer": 1}\n{"question": "q", "choices": ["a"], "answer": 0}\n'
    )
    with pytest.raises(UserError, match=r"bad.jsonl:2: 'choices' must be a list of at least two"):
        choice.read_items(str(bad))
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": "C"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:1: 'answer' must be a choice index 0..1 or a letter"):
        choice.read_items(str(bad))


class FixedModel(torch.nn.Module):
    """A 'language model' whose next-token distribution is the same fixed one at every position."""

    def __init__(self, probs: list[float]):
        super().__init__()
        self.logits = torch.log(torch.tensor(probs))
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask=None):
        out = self.logits.expand(*input_ids.shape, -1)
        return type("Out", (), {"logits": out})()


def test_perplexity_of_a_model_whose_probabilities_are_set():
    from forgetless.data.batching import collate
    from forgetless.eval.suite import mean_nll

    model = FixedModel([0.5, 0.25, 0.25])
    # targets after the first token: 0, 1, 2 -> NLL ln 2, ln 4, ln 4 -> mean (ln 2 + 2 ln 4) / 3 = 5/3 ln 2
    batch = collate([{"input_ids": [0, 0, 1, 2], "labels": [0, 0, 1, 2]}], pad_id=0)
    nll = mean_nll(model, [batch])
    assert nll == pytest.approx(5 / 3 * math.log(2))
    assert math.exp(nll) == pytest.approx(2 ** (5 / 3))


def test_early_stopping_fires_on_a_rising_validation_curve(tmp_path):
    from forgetless.training.monitor import Monitor

    m = Monitor(patience=2, stop_on_overfit=True)
    val = [2.0, 1.5, 1.2, 1.3, 1.4]  # best at the third validation, then rises twice
    train = [2.5, 2.0, 1.6, 1.2, 0.9]  # while the training loss keeps falling
    events = []
    for step, (v, t) in enumerate(zip(val, train, strict=True), start=1):
        m.train_loss(t)
        events.append(m.update(step * 10, {"val_loss": v}))
    assert [e[1] for e in events] == [None, None, None, None, "overfitting"]
    assert (m.best_step, m.best_val) == (30, 1.2) and [e[0] for e in events] == [True, True, True, False, False]
    warn_only = Monitor(patience=2, stop_on_overfit=False)
    for v, t in zip(val, train, strict=True):
        warn_only.train_loss(t)
        assert warn_only.update(1, {"val_loss": v})[1] is None
    # rising validation loss while the training loss also rises is not overfitting
    flat = Monitor(patience=2, stop_on_overfit=True)
    for v in val:
        flat.train_loss(1.0 + v)
        assert flat.update(1, {"val_loss": v})[1] is None


def test_forgetting_budget_warns_or_stops(capsys):
    from forgetless.training.monitor import Monitor

    assert Monitor(max_kl=0.1).update(5, {"retention_kl": 0.2}) == (False, None)
    assert "above eval.max_kl=0.1" in capsys.readouterr().out
    assert Monitor(max_kl=0.1, stop_on_kl=True).update(5, {"retention_kl": 0.2})[1] == "max_kl"
    assert Monitor(max_kl=0.1, stop_on_kl=True).update(5, {"retention_kl": 0.05})[1] is None


def test_the_history_rebuilt_on_resume_reads_the_task_loss_and_survives_a_half_written_line(tmp_path):
    """The live check fed the task loss (`ce`), the rebuilt one `loss` (CE plus the forgetting terms):
    after a resume the two were mixed. A last line without its newline (being written) crashed it."""
    from forgetless.training.monitor import Monitor

    rows = [{"step": 1, "loss": 9.0, "ce": 2.0}, {"step": 2, "loss": 8.0, "ce": 1.5}, {"step": 2, "val_loss": 1.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo', encoding="utf-8")
    rebuilt = Monitor()
    rebuilt.replay(path)
    live = Monitor()
    for r in rows[:2]:
        live.train_loss(r["ce"])
    live.update(2, {"val_loss": 1.0})
    assert rebuilt.train == live.train == [1.75] and rebuilt.val == [1.0]
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"metrics.jsonl:2: not a JSON line"):
        Monitor().replay(path)


def test_task_eval_scores_answers_it_is_given_without_generating(tmp_path):
    """GRPO hands task_eval the greedy answers its rewards scored: they are scored as given (no model
    is called: model=None), and a count that does not match the chats is refused."""
    from forgetless import api
    from forgetless.data.formats import Example
    from forgetless.eval.task import task_eval

    cfg = api.load_config("grpo", [f"output_dir={tmp_path}/run"])
    chats = [
        Example(f"t.jsonl:{i}", ({"role": "user", "content": q}, {"role": "assistant", "content": a}))
        for i, (q, a) in enumerate([("2+3?", "5"), ("4+4?", "8")], 1)
    ]
    got = task_eval(None, None, chats, cfg, answers=["2 + 3 = 5", "9"])
    assert got["n"] == 2 and got["numeric_match"] == 0.5 and got["exact_match"] == 0.0
    assert got["samples"][0] == {"prompt": "2+3?", "reference": "5", "answer": "2 + 3 = 5"}
    with pytest.raises(ValueError, match="1 answers for 2"):
        task_eval(None, None, chats, cfg, answers=["5"])
