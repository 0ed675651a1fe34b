"""Batched serving per family: rows for two LoRA adapters and the base, of different prompt lengths,
decoded together, each answer equal to what `generate` gives the request alone (each family's own
attention, positions and cache: Qwen3's q/k norms, Phi-3's fused projections, Gemma-2's soft-capping,
Mixtral's adapters on fused expert weights, which go one at a time)."""

from __future__ import annotations

import asyncio

import pytest

from forgetless.deploy.chat import BASE
from forgetless.deploy.engine import Engine
from forgetless.deploy.job import Job
from tests.conftest import lora_model
from tests.deploy.test_batcher import alone, run_jobs
from tests.families.conftest import FAMILIES, family_model_dir

PROMPTS = ["Hello there!", "My order 48213 is late. 注文番号 5522 の商品が届きません。", "Why?"]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_rows_answer_as_alone(family, family_model_dirs, family_tokenizers, tmp_path_factory, tmp_path):
    base_dir = family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, family)
    dirs = {}
    for name, seed in (("one", 1), ("two", 2)):
        tuned = lora_model(base_dir, seed=seed)
        for n, p in tuned.named_parameters():
            if "lora_B" in n:
                p.data.mul_(0.2)
        tuned.save_pretrained(tmp_path / name)
        dirs[name] = str(tmp_path / name)
    engine = Engine(base_dir, dirs, max_tokens=12, max_prompt_tokens=128, max_batch=6)
    try:
        tok = engine.tokenizer
        ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
        jobs = [Job(m, prompt, 12) for m in (BASE, "one", "two") for prompt in ids]
        asyncio.run(run_jobs(engine, jobs, [0.0, 0.0, 0.01, 0.02, 0.02, 0.03, 0.05, 0.05, 0.06]))
        for job in jobs:
            assert job.generated == alone(engine, job.adapter, job.ids, 12), (job.adapter, tok.decode(job.ids))
        assert len({tuple(j.generated) for j in jobs[::3]}) == 3  # the adapters change the answers
        # Mixtral's expert LoRA cannot be mixed per row (PEFT): its requests are generated one at a time
        assert engine.batcher.peak == 0 if family == "mixtral" else engine.batcher.peak > 1
    finally:
        engine.batcher.stop()
