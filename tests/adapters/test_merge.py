"""`forgetless merge`: the merged model computes what base + adapter computed, for LoRA and QLoRA."""

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

import forgetless
from forgetless.cli import main
from forgetless.config.schema import ModelConfig
from forgetless.model import loader as models

IDS = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_merged_equals_adapter_model(tiny_overrides, tmp_path, quantization, capsys):
    forgetless.train({}, [*tiny_overrides, f"model.quantization={quantization}"])
    run, out = tmp_path / "run", tmp_path / "merged"
    assert main(["merge", str(run), "--out", str(out)]) == 0
    assert "loads with AutoModelForCausalLM.from_pretrained" in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base_name = next(o for o in tiny_overrides if o.startswith("model.name=")).split("=", 1)[1]
    base, _, _ = models.load(ModelConfig(name=base_name, quantization=quantization))
    tuned = PeftModel.from_pretrained(base, str(run / "adapter"))
    with torch.no_grad():
        expected = tuned(input_ids=IDS).logits
        got = merged(input_ids=IDS).logits
        with tuned.disable_adapter():
            plain = tuned(input_ids=IDS).logits
    assert not torch.allclose(expected, plain, atol=1e-3)  # the adapter changed something worth merging
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    facts = json.loads((out / "forgetless_merge.json").read_text())
    assert facts["adapter_type"] == "lora" and (quantization == "none") == (facts["merged_into"] == "the base weights")
    assert main(["merge", str(run), "--out", str(out)]) == 2  # never overwrites
