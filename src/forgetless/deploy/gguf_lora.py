"""`forgetless export --format gguf-lora`: the adapter alone as a GGUF LoRA for llama.cpp (`--lora`)
and Ollama (`ADAPTER`): one base GGUF, many small adapters at the edge.

llama.cpp's LoRA layout: for each adapted weight `blk.N.attn_q.weight`, tensors `...weight.lora_a`
(rank × in) and `...weight.lora_b` (out × rank), with `adapter.lora.alpha`; llama.cpp scales the
product by alpha / rank, as PEFT does. On the Llama architecture the B rows of q and k are reordered
like the base weights they add to (see export.reorder_for_rope).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
from safetensors.torch import load_file
from transformers import AutoConfig

from forgetless.adapters import saved
from forgetless.deploy.gguf_arch import architecture, reorder_for_rope
from forgetless.errors import UserError
from forgetless.model import loader as models


def write(adapter: Path, config, out: Path, name: str) -> Path:
    """The PEFT LoRA in `adapter` (trained on a base with `config`) as one GGUF adapter file."""
    method = saved.method_of(adapter)
    settings = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")) if method == "lora" else {}
    if method != "lora" or settings.get("use_dora") or settings.get("use_rslora") or settings.get("target_parameters"):
        raise UserError(
            f"{adapter}: --format gguf-lora writes plain LoRA adapters (this one is {method}"
            f"{', DoRA' if settings.get('use_dora') else ''}); use --format gguf for a merged model"
        )
    arch = architecture(config)
    names = gguf.get_tensor_name_map(arch.gguf, config.num_hidden_layers)
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    tmp = out.with_name(out.name + ".part")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch.gguf])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(settings["lora_alpha"]))
    writer.add_name(name)
    for key in sorted(k for k in weights if ".lora_A." in k):
        base = key.split("base_model.model.", 1)[-1].replace(".lora_A.weight", ".weight")
        target = names.get_name(base, try_suffixes=(".weight",))
        if target is None:
            raise UserError(f"GGUF LoRA: no llama.cpp name for {base}")
        a, b = weights[key].float(), weights[key.replace(".lora_A.", ".lora_B.")].float()
        if arch.reorder and (".attn_q." in target or ".attn_k." in target):
            heads = config.num_attention_heads if ".attn_q." in target else config.num_key_value_heads
            b = reorder_for_rope(b, heads)
        writer.add_tensor(f"{target}.lora_a", a.numpy())
        writer.add_tensor(f"{target}.lora_b", b.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out


def base_config(adapter: Path, base: str | None):
    """The base model's config (shapes, architecture) without loading its weights."""
    ref = base or saved.base_of(adapter)
    if not ref:
        raise UserError(f"{adapter}: no base model recorded; pass --base MODEL")
    return AutoConfig.from_pretrained(models.resolve(ref)), ref
