"""Which architectures the GGUF export writes, and what llama.cpp expects of each: its architecture
name, its layout of the weights and the hyperparameters it reads. One table row per Hugging Face
model_type; the tensor names themselves come from the gguf package's map."""

from __future__ import annotations

import math
from dataclasses import dataclass

import gguf
import numpy as np
import torch

from forgetless.errors import UserError


@dataclass(frozen=True)
class Arch:
    gguf: gguf.MODEL_ARCH
    # llama.cpp's 'norm' rope pairs dimension i with i+1 where transformers pairs i with i+d/2: the
    # q/k rows are reordered (Llama, Mistral, Mixtral); NEOX-rope architectures keep transformers' order.
    reorder: bool = False
    # Gemma's RMSNorm multiplies by (1 + w) and stores w; llama.cpp's multiplies by what it reads.
    norm_plus_one: bool = False


ARCHITECTURES = {
    "llama": Arch(gguf.MODEL_ARCH.LLAMA, reorder=True),
    "mistral": Arch(gguf.MODEL_ARCH.LLAMA, reorder=True),  # llama.cpp runs Mistral as Llama
    "mixtral": Arch(gguf.MODEL_ARCH.LLAMA, reorder=True),  # Llama with expert tensors
    "qwen2": Arch(gguf.MODEL_ARCH.QWEN2),
    "qwen3": Arch(gguf.MODEL_ARCH.QWEN3),
    "phi3": Arch(gguf.MODEL_ARCH.PHI3),  # fused qkv and gate|up, which llama.cpp reads fused
    "gemma2": Arch(gguf.MODEL_ARCH.GEMMA2, norm_plus_one=True),
}
# rope scalings llama.cpp gets from the file: 'llama3' (Llama-3.1/3.2) as a rope_freqs tensor
ROPE_TYPES = ("default", "llama3")


def architecture(config) -> Arch:
    kind = config.model_type
    if kind not in ARCHITECTURES:
        raise UserError(
            f"exporting {kind} models to GGUF is not supported yet (supported: {', '.join(ARCHITECTURES)}); "
            "use forgetless merge and llama.cpp's convert_hf_to_gguf.py"
        )
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") not in ROPE_TYPES:
        raise UserError(
            f"{kind} with rope scaling '{rope['rope_type']}' is not supported by the GGUF export yet "
            f"(supported: {', '.join(ROPE_TYPES)})"
        )
    if kind == "gemma2" and config.query_pre_attn_scalar != _gemma2_scalar(config):
        raise UserError(
            f"gemma2 with query_pre_attn_scalar={config.query_pre_attn_scalar}: llama.cpp scales attention by "
            f"{_gemma2_scalar(config)} for a model of this size, so the exported file would answer differently"
        )
    return ARCHITECTURES[kind]


def rope_parameters(config) -> dict:
    return getattr(config, "rope_parameters", None) or {}


def _gemma2_scalar(config) -> float:
    # llama.cpp: hidden/heads for Gemma-2 27B (46 layers), head_dim for the others
    if config.num_hidden_layers == 46:
        return config.hidden_size // config.num_attention_heads
    return config.head_dim


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def hyperparameters(w: gguf.GGUFWriter, cfg) -> None:
    heads = cfg.num_attention_heads
    dim = head_dim(cfg)
    rope = rope_parameters(cfg)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(cfg.num_key_value_heads or heads)
    w.add_key_length(dim)
    w.add_value_length(dim)
    w.add_rope_dimension_count(int(dim * rope.get("partial_rotary_factor", 1.0)))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    w.add_vocab_size(cfg.vocab_size)
    if getattr(cfg, "num_local_experts", None):
        w.add_expert_count(cfg.num_local_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
    if cfg.model_type == "gemma2":
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    if cfg.model_type in ("gemma2", "phi3") and getattr(cfg, "sliding_window", None):
        w.add_sliding_window(cfg.sliding_window)


def reorder_for_rope(w: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers' rotary halves (i, i+d/2) -> llama.cpp's interleaved pairs (2i, 2i+1), per head."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def weights(model):
    """(llama.cpp tensor name, float32 tensor) for every weight of a model, in llama.cpp's layout."""
    cfg = model.config
    arch = architecture(cfg)
    names = gguf.get_tensor_name_map(arch.gguf, cfg.num_hidden_layers)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, value in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        w = value.detach().to(torch.float32)
        if hf_name.endswith("experts.gate_up_proj"):  # fused [experts, gate|up, in]: llama.cpp wants two
            stem = names.get_name(hf_name.replace("gate_up_proj", "down_proj")).replace("down", "{}")
            gate, up = w.chunk(2, dim=1)
            yield stem.format("gate") + ".weight", gate
            yield stem.format("up") + ".weight", up
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))  # keeps the suffix
        if name is None:
            raise UserError(f"GGUF export: no llama.cpp name for tensor {hf_name} of {cfg.model_type}")
        if not name.endswith((".weight", ".bias")):  # fused expert parameters have no suffix
            name += ".weight"
        if arch.reorder and (".attn_q." in name or ".attn_k." in name):
            w = reorder_for_rope(w, cfg.num_attention_heads if ".attn_q." in name else cfg.num_key_value_heads)
        if arch.norm_plus_one and name.endswith("norm.weight"):
            w = w + 1
        yield name, w
    if rope_parameters(cfg).get("rope_type") == "llama3":
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", llama3_rope_factors(cfg)


def llama3_rope_factors(cfg) -> torch.Tensor:
    """Llama-3.1's rope scaling as llama.cpp reads it: one divisor per rotary frequency (high
    frequencies kept, low ones divided by `factor`, a smooth ramp between)."""
    rope = rope_parameters(cfg)
    dim = head_dim(cfg)
    factor, low, high = rope["factor"], rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    context = rope.get("original_max_position_embeddings", 8192)
    out = []
    for i in range(0, dim, 2):
        wavelength = 2 * math.pi * rope["rope_theta"] ** (i / dim)
        if wavelength < context / high:
            out.append(1.0)
        elif wavelength > context / low:
            out.append(factor)
        else:
            smooth = (context / wavelength - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(np.array(out, dtype=np.float32))
