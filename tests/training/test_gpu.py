"""The GPU path: bf16, SDPA/FlashAttention, checkpointing, paged 8-bit AdamW, 4-bit on CUDA.

The CUDA tests run where a GPU is present and are skipped elsewhere; on CPU the GPU-only
choices must fail with one clear line, and the cached teacher must train end to end.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import forgetless
from forgetless import api
from forgetless.adapters import attaching
from forgetless.config.schema import ForgettingConfig, PeftConfig
from forgetless.data.batching import collate
from forgetless.data.packing import collate_packed
from forgetless.errors import UserError
from forgetless.model import loader as models
from forgetless.model import packed_attention, speedups
from forgetless.objectives.sft import counts, objective
from tests.conftest import write_jsonl

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_only_choices_fail_clearly_on_cpu(tiny_dir):
    cpu = torch.device("cpu")
    with pytest.raises(UserError, match="flash_attention_2 needs a CUDA GPU"):
        models.attention("flash_attention_2", cpu)
    assert models.attention("auto", cpu) == packed_attention.NAME  # SDPA, row by row in packed batches
    with pytest.raises(UserError, match="train.liger needs a CUDA GPU"):
        speedups.apply_liger(AutoModelForCausalLM.from_pretrained(tiny_dir), cpu)


def test_packing_refuses_virtual_token_methods():
    with pytest.raises(UserError, match="data.packing=true does not work with peft.method=prefix"):
        api.load_config({"peft": {"method": "prefix"}, "data": {"packing": True}})


def _general(tmp_path):
    rows = [{"instruction": f"Tell me fact {i}.", "output": f"Fact {i} is true."} for i in range(6)]
    return write_jsonl(tmp_path / "general.jsonl", rows)


def test_cached_teacher_trains_end_to_end(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    overrides = [
        *tiny_overrides,
        "forgetting.preset=full",
        f"forgetting.rehearsal.source={_general(tmp_path)}",
        "forgetting.lwf.teacher=cached",
        "forgetting.lwf.top_k=8",
    ]
    summary = forgetless.train({}, overrides)
    run = tmp_path / "run"
    assert (run / "teacher_topk.safetensors").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert lines[-1]["lwf"] > 0 and summary["padding_share"] <= summary["padding_share_padded"]


@cuda
@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_bf16_training_on_gpu_with_checkpointing_and_paged_adamw(tiny_overrides, tmp_path, quantization):
    summary = forgetless.train(
        {},
        [
            *tiny_overrides,
            "model.precision=bf16",
            f"model.quantization={quantization}",
            "train.grad_checkpointing=true",
            "train.optimizer=paged_adamw_8bit",
            "forgetting.preset=lwf",
        ],
    )
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert summary["steps"] == 6 and all(torch.isfinite(torch.tensor(x["loss"])) for x in lines)
    assert lines[-1]["ce"] < lines[0]["ce"]
    assert 0 < summary["peak_memory_gb"] < 2  # CUDA max allocated, not the process's RSS


@cuda
def test_packed_and_padded_loss_agree_in_bf16_on_gpu(tiny_dir):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.bfloat16).cuda()
    lora = attaching.attach(base, PeftConfig(r=4, dropout=0.0), quantized=False, grad_checkpointing=False)
    rows = [{"input_ids": list(range(10 + i, 30 + 3 * i)), "labels": list(range(10 + i, 30 + 3 * i))} for i in range(4)]
    cfg = ForgettingConfig(preset="lwf")
    terms = []
    for batch in (collate(rows, 0), collate_packed(rows, 0, capacity=64)):
        batch = {k: v.cuda() for k, v in batch.items()}
        norms = {k: float(v) for k, v in counts(batch, cfg).items()}
        terms.append({k: v.item() for k, v in objective(cfg).loss(lora, batch, norms).items()})
    assert terms[0]["ce"] == pytest.approx(terms[1]["ce"], rel=2e-2)
