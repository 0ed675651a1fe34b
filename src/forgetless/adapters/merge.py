"""`forgetless merge`: fold an adapter into its base and save a plain transformers model directory.

The result loads with `AutoModelForCausalLM.from_pretrained(DIR)` and needs neither PEFT nor
forgetless. LoRA, DoRA and IA3 can be folded into the weights; BitFit, selective and full
fine-tuning changed the weights themselves, so merging writes them into the base; prompt/prefix
tuning and bottleneck adapters add computation that has no weight to fold into, so they refuse.

A QLoRA adapter was trained against the NF4-quantized base, not the original weights. It is
merged into that same base, dequantized (to the compute dtype: fp32 on CPU, bf16/fp16 on GPU),
so the merged model computes what the adapter model computed during training; the result is a
full-precision model (about 4 bytes per parameter on CPU, 2 in bf16), not a 4-bit one.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from forgetless import files
from forgetless.adapters import attaching, saved
from forgetless.adapters.saved import adapter_dir, base_of
from forgetless.config.schema import ModelConfig
from forgetless.errors import UserError
from forgetless.model import hardware
from forgetless.model import loader as models

# DoRA is LoRA with use_dora: PEFT folds its magnitude vector too.
MERGEABLE = {"lora", "dora", "ia3", "bitfit", "selective", "full"}


def _run_quantization(adapter: Path) -> str:
    cfg = adapter.parent / "config.yaml"
    if cfg.is_file():
        return (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("model", {}).get("quantization", "none")
    return "none"


def load_merged(ref: str, base: str | None = None, precision: str = "auto"):
    """(merged model, tokenizer, facts) for an adapter or run directory."""
    adapter = adapter_dir(ref)
    kind = saved.method_of(adapter)
    if kind not in MERGEABLE:
        raise UserError(
            f"{adapter}: a {kind} result adds computation (virtual tokens or bottleneck layers) that cannot be "
            "folded into the weights; use it as it is (forgetless chat/serve --adapter NAME=DIR)"
        )
    base_ref = base or base_of(adapter)
    if not base_ref:
        raise UserError(f"{adapter}: no base model recorded; pass --base MODEL")
    quant = _run_quantization(adapter)
    quantized = quant in ("4bit", "8bit")
    model, tokenizer, path = models.load(ModelConfig(name=base_ref, precision=precision, quantization=quant))
    saved.use_adapter_templates(tokenizer, [adapter])  # the merged model's tokenizer keeps the trained template
    if quantized:
        dtype = hardware.resolve_dtype(precision, hardware.device())
        model = model.dequantize(dtype=dtype)  # the base the adapter was trained against, in full precision
    merged = saved.load(model, adapter)
    if kind in attaching.PEFT_METHODS:
        merged = merged.merge_and_unload()
    facts = {
        "adapter": str(adapter),
        "adapter_type": kind,
        "base_model": base_ref,
        "base_path": path,
        "dtype": str(next(merged.parameters()).dtype).removeprefix("torch."),
        "merged_into": f"the {quant} base, dequantized" if quantized else "the base weights",
    }
    return merged, tokenizer, facts


def merge(ref: str, out: Path, base: str | None = None, precision: str = "auto") -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} is not empty; choose a new directory")
    merged, tokenizer, facts = load_merged(ref, base, precision)
    if getattr(merged.config, "quantization_config", None) is not None:
        del merged.config.quantization_config  # the saved weights are plain tensors now
    with files.replacing(out) as tmp:  # a merge stopped half-way leaves no half-written model at --out
        merged.save_pretrained(tmp)
        models.save_tokenizer(tokenizer, tmp)
        files.write_json(tmp / "forgetless_merge.json", facts)
    return facts
