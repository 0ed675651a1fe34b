"""Forgetting controls: loss maths by hand, the adapter-free teacher, exact rehearsal mixing, caches."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import forgetless
from forgetless import adapters, generated
from forgetless.config import ForgettingConfig, PeftConfig
from forgetless.data.batching import Batches
from forgetless.data.mixture import MixedBatches, general_per_batch
from forgetless.errors import UserError
from forgetless.eval.retention import kl_to_base
from forgetless.forgetting import counts, make_anchor, make_loss
from forgetless.losses import IGNORE, ewc_penalty, kl_sum, l2_penalty, position_masks
from tests.conftest import write_jsonl

HALF = [math.log(0.5), math.log(0.5)]
QUARTER = [math.log(0.25), math.log(0.75)]


@pytest.mark.parametrize(
    ("temperature", "direction", "expected"),
    [
        # p_s = (.5, .5), p_t = (.25, .75): KL(s‖t) = .5 ln(.5/.25) + .5 ln(.5/.75) = .5 ln(4/3)
        (1.0, "finetuned_base", 0.5 * math.log(4 / 3)),
        # KL(t‖s) = .25 ln(.25/.5) + .75 ln(.75/.5)
        (1.0, "base_finetuned", 0.25 * math.log(0.5) + 0.75 * math.log(1.5)),
        # T=2: p_t ∝ (√.25, √.75) = (.366025, .633975), p_s stays uniform; times T² = 4
        (2.0, "finetuned_base", 4 * (0.5 * math.log(0.5 / 0.3660254) + 0.5 * math.log(0.5 / 0.6339746))),
    ],
)
def test_kl_matches_hand_computed_values(temperature, direction, expected):
    student, teacher = torch.tensor([HALF, HALF]), torch.tensor([QUARTER, QUARTER])
    got = kl_sum(student, teacher, temperature, direction)
    assert got.item() == pytest.approx(2 * expected, abs=1e-6)  # two identical rows, summed


def test_kl_is_zero_for_identical_distributions_and_unknown_direction_fails():
    x = torch.randn(3, 7)
    assert kl_sum(x, x).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        kl_sum(x, x, direction="sideways")


def test_l2_and_ewc_on_known_tensors():
    params = [torch.tensor([1.0, 2.0]), torch.tensor([3.0])]
    initial = [torch.tensor([0.0, 0.0]), torch.tensor([1.0])]
    fisher = [torch.tensor([0.5, 2.0]), torch.tensor([0.25])]
    assert l2_penalty(params, initial).item() == pytest.approx(1 + 4 + 4)  # (1-0)² + (2-0)² + (3-1)²
    assert ewc_penalty(params, initial, fisher).item() == pytest.approx(0.5 * 1 + 2 * 4 + 0.25 * 4)


def test_position_masks_split_task_answers_context_and_rehearsal():
    labels = torch.tensor([[IGNORE, IGNORE, 7, 8, IGNORE], [IGNORE, 5, 6, IGNORE, IGNORE]])
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    m = position_masks(labels, attention, torch.tensor([False, True]))
    # shifted: position t predicts token t+1
    assert m["task_answers"].tolist() == [[False, True, True, False], [False] * 4]
    assert m["context"].tolist() == [[True, False, False, True], [False] * 4]
    assert m["rehearsal_answers"].tolist() == [[False] * 4, [True, True, False, False]]
    assert m["rehearsal"].tolist() == [[False] * 4, [True, True, False, False]]


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


def _lora_model(tiny_dir, seed=0):
    torch.manual_seed(seed)
    model = adapters.attach(
        AutoModelForCausalLM.from_pretrained(tiny_dir), PeftConfig(r=4), quantized=False, grad_checkpointing=False
    )
    with torch.no_grad():  # move the adapters off zero so that they change the output
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


def test_teacher_is_exactly_the_adapter_free_base(tiny_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    model = _lora_model(tiny_dir).eval()
    ids = torch.tensor([[5, 17, 300, 42, 9]])
    with torch.no_grad(), adapters.base_view(model) as teacher:
        t = teacher(input_ids=ids).logits
    with torch.no_grad():
        torch.testing.assert_close(t, base(input_ids=ids).logits, rtol=0, atol=0)
        assert not torch.allclose(model(input_ids=ids).logits, t)


def _batch(tokenizer, rehearsal_flags):
    from forgetless.data.batching import collate
    from forgetless.data.formats import Example
    from forgetless.data.render import encode

    rows = []
    for i, flag in enumerate(rehearsal_flags):
        ex = Example(
            "x", messages=({"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": "ok"})
        )
        rows.append({**encode(tokenizer, ex), "rehearsal": flag})
    return collate(rows, tokenizer.pad_token_id)


def test_lwf_adds_no_parameter_memory_and_logs_every_term(tiny_dir, tokenizer):
    model = _lora_model(tiny_dir)
    before = {p.data_ptr() for p in model.parameters()}
    n_before = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    cfg = ForgettingConfig(preset="full", l2=0.1, rehearsal={"weight": 0.5})
    batch = _batch(tokenizer, [False, False, True])
    norms = {k: float(v) for k, v in counts(batch, cfg).items()}
    terms = make_loss(cfg, make_anchor(model))(model, batch, norms)
    sum(terms.values()).backward()
    assert set(terms) == {"ce", "ce_rehearsal", "lwf", "l2"}
    assert terms["lwf"].item() > 0 and terms["l2"].item() == pytest.approx(0.0)
    assert {p.data_ptr() for p in model.parameters()} == before
    assert sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers()) == n_before


def test_task_ce_ignores_rehearsal_rows_and_kl_tokens_follow_config(tiny_dir, tokenizer):
    model = _lora_model(tiny_dir).eval()  # no dropout: two forwards must agree
    batch = _batch(tokenizer, [False, True])
    c_default = counts(batch, ForgettingConfig(preset="full"))
    c_answers = counts(batch, ForgettingConfig(preset="full", lwf={"tokens": ["answers"]}))
    assert c_answers["kl"] == c_default["targets"]  # KL on the task answers only
    assert c_default["kl"] == int(batch["attention_mask"][:, 1:].sum()) - c_default["targets"]
    cfg = ForgettingConfig(preset="none")
    norms = {k: float(v) for k, v in counts(batch, cfg).items()}
    ce = make_loss(cfg)(model, batch, norms)["ce"]
    only_task = {k: v[:1] for k, v in batch.items()}
    logits = model(input_ids=only_task["input_ids"], attention_mask=only_task["attention_mask"]).logits
    expected = torch.nn.functional.cross_entropy(logits[0, :-1], only_task["labels"][0, 1:], ignore_index=IGNORE)
    torch.testing.assert_close(ce, expected)


def test_retention_kl_is_zero_for_the_base_against_itself(tiny_dir, tokenizer):
    from forgetless.data.formats import Example

    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    refs = [Example("x", messages=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}))]
    assert kl_to_base(base, tokenizer, refs, base=base) == 0.0
    assert kl_to_base(_lora_model(tiny_dir).eval(), tokenizer, refs) > 0


def test_self_rehearsal_cache_is_reused(tiny_dir, tokenizer, tmp_path, monkeypatch):
    from forgetless.config import ModelConfig

    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "Say hi."}, {"prompt": "Count to three."}])
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    calls = []
    real = generated.generate
    monkeypatch.setattr(generated, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    mcfg = ModelConfig(name=tiny_dir)
    first, fresh = generated.ensure("rehearsal", model, tokenizer, mcfg, tiny_dir, "fp32", str(prompts), 4)
    again, fresh_again = generated.ensure("rehearsal", model, tokenizer, mcfg, tiny_dir, "fp32", str(prompts), 4)
    assert (fresh, fresh_again, again) == (True, False, first) and len(calls) == 1
    other, _ = generated.ensure("rehearsal", model, tokenizer, mcfg, tiny_dir, "fp32", str(prompts), 5)
    assert other != first  # a different answer length is a different file
    meta = json.loads(first.with_suffix(".meta.json").read_text())
    assert meta["rows"] == 2 and meta["max_new_tokens"] == 4


def test_full_preset_trains_with_every_term_and_reports_retention(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    general = [{"instruction": f"Tell me fact {i}.", "output": f"Fact {i} is true."} for i in range(6)]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"instruction": f"Say {w}."} for w in ("yes", "no", "hi")])
    summary = forgetless.train(
        {},
        [
            *tiny_overrides,
            "forgetting.preset=full",
            f"forgetting.rehearsal.source={write_jsonl(tmp_path / 'general.jsonl', general)}",
            "forgetting.l2=0.1",
            "forgetting.rehearsal.weight=0.5",
            "forgetting.ewc.weight=1.0",
            "forgetting.ewc.samples=4",
            "eval.retention=true",
            f"eval.retention_prompts={prompts}",
            "eval.retention_max_new_tokens=6",
        ],
    )
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert {"ce", "ce_rehearsal", "lwf", "l2", "ewc"} <= set(lines[-1])
    assert (run / "ewc_fisher.safetensors").is_file()
    assert summary["general_rows"] == 6 and summary["forgetting_preset"] == "full"
    r = summary["retention"]
    assert r["n"] == 3 and r["kl_per_token"] > 0 and 0 <= r["agreement"] <= 1


def test_self_source_generates_on_first_use(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"instruction": f"Say {w}."} for w in ("yes", "no", "hi")])
    overrides = [
        *tiny_overrides,
        "forgetting.preset=rehearsal",
        f"forgetting.rehearsal.prompts={prompts}",
        "forgetting.rehearsal.max_new_tokens=5",
        "train.max_steps=2",
    ]
    summary = forgetless.train({}, overrides)
    assert summary["general_rows"] + sum("empty base-model answer" in n for n in summary["data_notes"]) >= 1
    assert any("generated now" in n for n in summary["data_notes"])
    assert list((tmp_path / "cache" / "generated").glob("rehearsal-model-*.jsonl"))
    again = forgetless.train({}, [*overrides, f"output_dir={tmp_path / 'run2'}"])
    assert any("cached" in n for n in again["data_notes"])


def test_rehearsal_ce_weight_is_automatic_unless_set():
    """Unset: CE on rehearsal rows only when no LwF KL covers them (measured in docs/forgetting.md)."""
    assert ForgettingConfig(preset="full").rehearsal_ce_weight == 0.0
    assert ForgettingConfig(preset="rehearsal").rehearsal_ce_weight == 1.0
    assert ForgettingConfig(preset="full", lwf={"tokens": ["context"]}).rehearsal_ce_weight == 1.0
    assert ForgettingConfig(preset="full", lwf={"weight": 0}).rehearsal_ce_weight == 1.0
    assert ForgettingConfig(preset="full", rehearsal={"weight": 0.3}).rehearsal_ce_weight == 0.3
