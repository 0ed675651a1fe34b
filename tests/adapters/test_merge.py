"""`forgetless merge`: the merged model computes what base + adapter computed, for LoRA and QLoRA."""

import json
from pathlib import Path

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


def test_a_merge_that_fails_half_way_leaves_nothing_at_out(tiny_overrides, tmp_path, monkeypatch):
    """The weights are written before the tokenizer: a failure between them must not leave a model folder
    at --out that loads but has no tokenizer (nor block the next try with a non-empty --out)."""
    forgetless.train({}, tiny_overrides)
    run, out = tmp_path / "run", tmp_path / "merged"

    def no_space(tokenizer, directory):
        assert any(Path(directory).glob("*.safetensors"))  # the weights were already written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(models, "save_tokenizer", no_space)
    assert main(["merge", str(run), "--out", str(out)]) != 0
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "merged" in p.name]  # nor a temporary one
    monkeypatch.undo()
    assert main(["merge", str(run), "--out", str(out)]) == 0 and (out / "tokenizer_config.json").is_file()
