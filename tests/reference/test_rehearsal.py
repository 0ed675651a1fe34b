"""The base model's own answers (self-rehearsal): generated once, cached, reused."""

from __future__ import annotations

import json

from transformers import AutoModelForCausalLM

import forgetless
from forgetless.reference import answers
from tests.conftest import write_jsonl


def test_self_rehearsal_cache_is_reused(tiny_dir, tokenizer, tmp_path, monkeypatch):
    from forgetless.config.schema import ModelConfig

    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"instruction": "Say hi."}, {"prompt": "Count to three."}])
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    calls = []
    real = answers.generate
    monkeypatch.setattr(answers, "generate", lambda *a, **k: calls.append(1) or real(*a, **k))
    mcfg = ModelConfig(name=tiny_dir)
    first, fresh = answers.ensure("rehearsal", model, tokenizer, mcfg, tiny_dir, "fp32", str(prompts), 4)
    again, fresh_again = answers.ensure("rehearsal", model, tokenizer, mcfg, tiny_dir, "fp32", str(prompts), 4)
    assert (fresh, fresh_again, again) == (True, False, first) and len(calls) == 1
    other, _ = answers.ensure("rehearsal", model, tokenizer, mcfg, tiny_dir, "fp32", str(prompts), 5)
    assert other != first  # a different answer length is a different file
    meta = json.loads(first.with_suffix(".meta.json").read_text())
    assert meta["rows"] == 2 and meta["max_new_tokens"] == 4


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


def test_answers_made_under_one_chat_template_are_not_reused_under_another(tiny_overrides, tmp_path, monkeypatch):
    """Self-rehearsal answers and retention references are generated from prompts rendered with the
    chat template; a run with data.chat_template=llama3 after one with the model's own (ChatML) template
    must generate its own (they were reused: the key had no template)."""
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"instruction": f"Say {w}."} for w in ("yes", "no")])
    overrides = [
        *tiny_overrides,
        "forgetting.preset=rehearsal",
        f"forgetting.rehearsal.prompts={prompts}",
        "forgetting.rehearsal.max_new_tokens=3",
        "train.max_steps=1",
    ]
    made = lambda run, *more: forgetless.train({}, [*overrides, f"output_dir={tmp_path / run}", *more])  # noqa: E731
    own = made("own")
    assert any("generated now" in n for n in own["data_notes"])
    assert not any("generated now" in n for n in made("own-again")["data_notes"])
    llama3 = made("llama3", "data.chat_template=llama3")
    assert any("generated now" in n for n in llama3["data_notes"])
    files = sorted(p.name for p in (tmp_path / "cache" / "generated").glob("rehearsal-*.jsonl"))
    assert len(files) == 2
    metas = [json.loads((tmp_path / "cache" / "generated" / f).with_suffix(".meta.json").read_text()) for f in files]
    assert sorted(str(m["chat_template"]) for m in metas) == ["None", "llama3"]
