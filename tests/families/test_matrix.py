"""Each family through the product: LoRA training with the full forgetting preset (LwF + rehearsal),
the retention probe, resume, the base view, merge, serving through the openai client, and 4-bit
QLoRA. Tiny random models of the family's own architecture class with its real tokenizer."""

from __future__ import annotations

import json

import openai
import pytest
import torch

import forgetless
from forgetless.adapters import saved, views
from forgetless.cli import main
from forgetless.config.schema import ModelConfig
from forgetless.deploy import serve
from forgetless.model import loader as models
from tests.conftest import ROWS, write_jsonl
from tests.deploy.test_serve import serving
from tests.families.conftest import FAMILIES, family_model_dir

pytestmark = pytest.mark.seconds(320)  # the longest files start first (tests/conftest.py)

GENERAL = [{"instruction": f"Name a colour, number {i}.", "output": f"Colour {i}: blue."} for i in range(6)]


@pytest.fixture
def family_dir(request, family_model_dirs, family_tokenizers, tmp_path_factory):
    return family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, request.param)


def overrides(model_dir, tmp_path, *more):
    write_jsonl(tmp_path / "prompts.jsonl", [{"instruction": f"Say {w}."} for w in ("'yes'", "'no'", "hi")])
    return [
        f"model.name={model_dir}",
        f"data.train={write_jsonl(tmp_path / 'train.jsonl', ROWS)}",
        "data.validation_split=0.25",
        "data.system_prompt=You triage support tickets.",
        f"output_dir={tmp_path / 'run'}",
        "eval.before_after=false",
        "eval.benchmarks=[]",  # the retention probe (KL and agreement on general prompts) stays; MC is family-blind
        "forgetting.preset=full",
        f"forgetting.rehearsal.source={write_jsonl(tmp_path / 'general.jsonl', GENERAL)}",
        "train.batch_size=2",
        "train.grad_accum=2",
        "train.lr=1e-2",
        "train.save_every=2",
        "train.eval_every=1000",
        "peft.r=4",
        *more,
    ]


def losses(run) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("family_dir", FAMILIES, indirect=True)
def test_lora_with_forgetting_controls_resumes_merges_and_serves(family_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    prompts_eval = [
        "eval.retention=true",
        f"eval.retention_prompts={tmp_path / 'prompts.jsonl'}",
        "eval.retention_max_new_tokens=4",
    ]
    first = forgetless.train({}, overrides(family_dir, tmp_path, "train.max_steps=4", *prompts_eval))
    assert first["retention"]["n"] == 3 and first["general_rows"] == 6
    run = tmp_path / "run"
    summary = forgetless.train({}, overrides(family_dir, tmp_path, "train.max_steps=8", *prompts_eval), resume=True)
    assert "resumed from" in capsys.readouterr().out
    curve = losses(run)
    assert len(curve) == 8 and sum(curve[-2:]) < sum(curve[:2]), curve  # it learns
    assert summary["retention"]["n"] == 3 and summary["retention"]["kl_per_token"] >= 0
    line = json.loads([x for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x][-1])
    assert {"ce", "lwf"} <= set(line)

    tokenizer = models.load_tokenizer(family_dir)
    ids = tokenizer("My order 4411 is late.", return_tensors="pt")["input_ids"]
    base, _, _ = models.load(ModelConfig(name=family_dir))
    plain = logits(base, ids)
    tuned = saved.load(base, run / "adapter")
    adapted = logits(tuned, ids)
    assert not torch.allclose(adapted, plain, atol=1e-3)
    with views.base_view(tuned) as view:
        torch.testing.assert_close(logits(view, ids), plain)  # the LwF teacher is the base

    out = tmp_path / "merged"
    assert main(["merge", str(run), "--out", str(out)]) == 0
    merged, _, _ = models.load(ModelConfig(name=str(out)))
    torch.testing.assert_close(logits(merged, ids), adapted, rtol=1e-4, atol=1e-4)

    engine = serve.Engine(family_dir, {"tickets": str(run)}, max_tokens=8, max_prompt_tokens=256)
    with serving(engine, None) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        messages = [{"role": "system", "content": "You triage."}, {"role": "user", "content": "My order 1 is late."}]
        r = client.chat.completions.create(model="tickets", messages=messages, max_tokens=6, temperature=0)
        assert isinstance(r.choices[0].message.content, str) and 0 < r.usage.completion_tokens <= 6


@pytest.mark.parametrize("family_dir", FAMILIES, indirect=True)
def test_qlora_4bit_learns(family_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    forgetless.train(
        {}, overrides(family_dir, tmp_path, "model.quantization=4bit", "train.max_steps=8", "eval.retention=false")
    )
    curve = losses(tmp_path / "run")
    assert sum(curve[-2:]) < sum(curve[:2]), curve
