"""`forgetless export --format gguf-lora`: the adapter alone as a GGUF LoRA for llama.cpp (`--lora`)
and Ollama (`ADAPTER`): one base GGUF, many small adapters at the edge.

llama.cpp's LoRA layout: for each adapted weight `blk.N.attn_q.weight`, tensors `...weight.lora_a`
(rank × in) and `...weight.lora_b` (out × rank), with one `adapter.lora.alpha`; llama.cpp scales each
product by alpha / rank with the rank read from that tensor's shape, so PEFT's `rank_pattern` holds as
it is, and a module whose `alpha_pattern` gives it another alpha has its B scaled by its alpha / the file's
(PEFT's own pattern matching picks the module's entry). On the Llama architecture the B rows of q and k
are reordered like the base weights they add to (gguf_arch.reorder_for_rope).

What the format cannot hold is refused in one line, never dropped: trained biases (`bias`, `lora_bias`),
`modules_to_save` (whole trained copies of layers), trainable tokens, LoRA on the embedding, LoRA on a
tensor llama.cpp's graph multiplies without its adapters (the family table names them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import torch
from peft.utils.other import get_pattern_key
from safetensors.torch import load_file
from transformers import AutoConfig

from forgetless.adapters import saved
from forgetless.deploy.formats.gguf_arch import architecture, reorder_for_rope
from forgetless.errors import UserError
from forgetless.model import loader as models
from forgetless.model.families import Family


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
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    _refuse_what_llama_cpp_cannot_hold(adapter, settings, weights)
    alpha = float(settings["lora_alpha"])
    tensors = _tensors(adapter, config, arch, settings, weights)
    tmp = out.with_name(out.name + ".part")
    writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch.gguf])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(name)
    for tensor_name, value in tensors:
        writer.add_tensor(tensor_name, value.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out


def _tensors(adapter: Path, config, arch: Family, settings: dict, weights: dict) -> list[tuple[str, torch.Tensor]]:
    """(llama.cpp tensor name, A or B) for every adapted weight, B scaled and reordered as llama.cpp applies it."""
    names = gguf.get_tensor_name_map(arch.gguf, config.num_hidden_layers)
    alpha, alphas = float(settings["lora_alpha"]), settings.get("alpha_pattern") or {}
    tensors = []
    for key in sorted(k for k in weights if ".lora_A." in k):
        base = key.split("base_model.model.", 1)[-1].replace(".lora_A.weight", ".weight")
        target = names.get_name(base, try_suffixes=(".weight",))
        if target is None:
            raise UserError(f"GGUF LoRA: no llama.cpp name for {base}")
        if target.removesuffix(".weight") in arch.lora_unapplied:
            raise UserError(
                f"{adapter}: llama.cpp applies no LoRA to {target} ({base}) of {config.model_type}, so --format "
                "gguf-lora would lose it; use --format gguf for a merged model, or train without that module "
                "(peft.target_modules)"
            )
        a, b = weights[key].float(), weights[key.replace(".lora_A.", ".lora_B.")].float()
        module = base.removesuffix(".weight")
        own = float(alphas.get(get_pattern_key(alphas.keys(), module), alpha))
        if own != alpha:  # llama.cpp applies the file's alpha / this tensor's rank
            b = b * (own / alpha)
        if arch.rope_reorder and (".attn_q." in target or ".attn_k." in target):
            heads = config.num_attention_heads if ".attn_q." in target else config.num_key_value_heads
            b = reorder_for_rope(b, heads)
        tensors += [(f"{target}.lora_a", a), (f"{target}.lora_b", b)]
    return tensors


def _refuse_what_llama_cpp_cannot_hold(adapter: Path, settings: dict, weights: dict) -> None:
    extra = sorted(k for k in weights if not k.endswith((".lora_A.weight", ".lora_B.weight")))
    trained_bias = settings.get("bias", "none") != "none" or settings.get("lora_bias")
    if extra or trained_bias:
        what = extra[0] if extra else f"bias={settings.get('bias')!r}"
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        raise UserError(
            f"{adapter}: --format gguf-lora holds only LoRA A/B matrices, and this adapter also trained {what}{more} "
            "(biases, modules_to_save or trainable tokens); use --format gguf for a merged model"
        )


def base_config(adapter: Path, base: str | None):
    """The base model's config (shapes, architecture) without loading its weights."""
    ref = base or saved.base_of(adapter)
    if not ref:
        raise UserError(f"{adapter}: no base model recorded; pass --base MODEL")
    return AutoConfig.from_pretrained(models.resolve(ref)), ref
