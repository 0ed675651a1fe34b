"""What llama.cpp expects of each exported family (model/families.py holds the facts: its
architecture name, rope row order, norm offset, soft-capping, sliding window): the hyperparameters it
reads and the weights in its layout. The tensor names themselves come from the gguf package's map."""

from __future__ import annotations

import math

import gguf
import numpy as np
import torch

from forgetless.errors import UserError
from forgetless.model.families import Family, exported, family

# rope scalings llama.cpp gets from the file: 'llama3' (Llama-3.1/3.2) as a rope_freqs tensor,
# 'linear' (Gemma-3 4B+) as a scaling factor, 'proportional' (Gemma-4's full layers: a rope on the first
# part of the head's frequencies only) as a rope_freqs tensor that stops the rest
ROPE_TYPES = ("default", "llama3", "linear", "proportional")
KINDS = ("sliding_attention", "full_attention")


def architecture(config) -> Family:
    kind = config.model_type
    known = family(kind)
    if known is None or known.gguf is None:
        raise UserError(
            f"exporting {kind} models to GGUF is not supported yet (supported: {', '.join(exported())}); "
            "use forgetless merge and llama.cpp's convert_hf_to_gguf.py"
        )
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") not in ROPE_TYPES:
        raise UserError(
            f"{kind} with rope scaling '{rope['rope_type']}' is not supported by the GGUF export yet "
            f"(supported: {', '.join(ROPE_TYPES)})"
        )
    _check_sliding_layers(config, known)
    if getattr(config, "enable_moe_block", False):
        raise UserError(
            f"exporting {kind} with mixture-of-experts blocks to GGUF is not supported yet; use forgetless merge "
            "and llama.cpp's convert_hf_to_gguf.py"
        )
    scalar = getattr(config, "query_pre_attn_scalar", None)
    if scalar is not None and scalar != _attention_scalar(config, known):
        raise UserError(
            f"{kind} with query_pre_attn_scalar={scalar}: llama.cpp scales attention by "
            f"{_attention_scalar(config, known)} for a model of this size, so the exported file would answer "
            "differently"
        )
    return known


def _check_sliding_layers(config, known: Family) -> None:
    """llama.cpp fixes which layers slide for the architecture; it does not read layer_types."""
    if known.swa_pattern is None:
        return
    n = known.swa_pattern
    layers = ["sliding_attention" if (i + 1) % n else "full_attention" for i in range(config.num_hidden_layers)]
    if list(getattr(config, "layer_types", layers)) != layers:
        raise UserError(
            f"{config.model_type} with layer_types {config.layer_types}: llama.cpp runs every {n}th layer with full "
            "attention and the others with the sliding window, so the exported file would answer differently"
        )


def _attention_scalar(config, known: Family) -> float:
    # llama.cpp: hidden/heads for the 27B Gemmas (told apart by their layer count), head_dim for the others
    if config.num_hidden_layers == known.hidden_scale_layers:
        return config.hidden_size // config.num_attention_heads
    return head_dim(config)


def rope_parameters(config) -> dict:
    """The rope settings of the full-attention layers (Gemma-3 keeps one set per attention type; the
    sliding layers' base goes to the file as rope.freq_base_swa)."""
    rope = getattr(config, "rope_parameters", None) or {}
    return rope.get("full_attention", rope)


def head_dim(config) -> int:
    """The head size of the full-attention layers (Gemma-4's are larger than its sliding layers')."""
    return _head_dim(layer(config, "full_attention"))


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def layer(config, kind: str):
    """The settings of the first layer of a kind ("full_attention", "sliding_attention") where the config
    varies them by layer (Gemma-4's per_layer_config: head size, KV heads; transformers refuses to read
    those from the config itself), else the config."""
    layers = getattr(config, "per_layer_config", None)
    types = list(getattr(config, "layer_types", None) or [])
    if layers is None or kind not in types:
        return config
    return layers[types.index(kind)]


def rope_dimensions(config) -> int:
    rope = rope_parameters(config)
    if rope.get("rope_type") == "proportional":  # all of the head, the frequencies past the rope stopped
        return head_dim(config)
    return int(head_dim(config) * rope.get("partial_rotary_factor", 1.0))


def hyperparameters(w: gguf.GGUFWriter, cfg) -> None:
    heads = cfg.num_attention_heads
    dim = head_dim(cfg)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(_ffn_widths(cfg))
    w.add_head_count(heads)
    w.add_head_count_kv(_kv_heads(cfg))
    w.add_key_length(dim)
    w.add_value_length(dim)
    w.add_rope_dimension_count(rope_dimensions(cfg))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(float(rope_parameters(cfg).get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    w.add_vocab_size(cfg.vocab_size)
    if getattr(cfg, "num_local_experts", None):
        w.add_expert_count(cfg.num_local_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
    known = family(cfg.model_type)
    _family_hyperparameters(w, cfg, known)
    if known.per_layer:
        _layer_layout(w, cfg)


def _kv_heads(cfg) -> int | list[int]:
    """KV heads per layer where Gemma-4's full layers have their own count, else one number."""
    sliding, full = (layer(cfg, kind).num_key_value_heads or cfg.num_attention_heads for kind in KINDS)
    if full == sliding:
        return full
    return [sliding if t == "sliding_attention" else full for t in cfg.layer_types]


def _ffn_widths(cfg) -> int | list[int]:
    """Gemma-4 with use_double_wide_mlp: the layers that reuse keys and values have an MLP twice as wide."""
    if not getattr(cfg, "use_double_wide_mlp", False):
        return cfg.intermediate_size
    first_shared = cfg.num_hidden_layers - (cfg.num_kv_shared_layers or 0)
    return [cfg.intermediate_size * (2 if i >= first_shared else 1) for i in range(cfg.num_hidden_layers)]


def _layer_layout(w: gguf.GGUFWriter, cfg) -> None:
    """Gemma-4's layers as llama.cpp reads them: which slide, the sliding layers' head and rope sizes (the
    full layers' went in above), how many last layers reuse earlier keys and values, the per-layer input
    width (per-layer KV heads and MLP widths: _kv_heads, _ffn_widths)."""
    sliding = [t == "sliding_attention" for t in cfg.layer_types]
    shared = cfg.num_kv_shared_layers or 0
    w.add_shared_kv_layers(shared)
    w.add_embedding_length_per_layer_input(cfg.hidden_size_per_layer_input or 0)
    w.add_sliding_window_pattern(sliding)
    dim = _head_dim(layer(cfg, "sliding_attention"))
    w.add_key_length_swa(dim)
    w.add_value_length_swa(dim)
    local = (cfg.rope_parameters or {}).get("sliding_attention", {})
    w.add_rope_dimension_count_swa(int(dim * local.get("partial_rotary_factor", 1.0)))


def _family_hyperparameters(w: gguf.GGUFWriter, cfg, known: Family) -> None:
    rope = rope_parameters(cfg)
    local = (getattr(cfg, "rope_parameters", None) or {}).get("sliding_attention", {}).get("rope_theta")
    if local is not None:  # the sliding layers' rope base (Gemma-3: 10000, the full layers' 1M)
        w.add_rope_freq_base_swa(local)
    if rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    if known.soft_capping and getattr(cfg, "attn_logit_softcapping", None):
        w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
    if known.soft_capping and getattr(cfg, "final_logit_softcapping", None):
        w.add_final_logit_softcapping(cfg.final_logit_softcapping)
    elif known.final_cap_default:  # absent, llama.cpp would cap at its default
        w.add_final_logit_softcapping(0.0)
    window = getattr(cfg, "sliding_window", None)
    if known.sliding_window == "always" or (known.sliding_window == "if_set" and window):
        w.add_sliding_window(window or 0)  # 0: no window (how llama.cpp tells Phi-3 from Phi-4)
    original = rope.get("original_max_position_embeddings") or getattr(cfg, "original_max_position_embeddings", 0)
    if known.original_context and original:
        w.add_rope_scaling_orig_ctx_len(original)


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
        if arch.rope_reorder and (".attn_q." in name or ".attn_k." in name):
            w = reorder_for_rope(w, cfg.num_attention_heads if ".attn_q." in name else cfg.num_key_value_heads)
        if arch.norm_plus_one and name.endswith("norm.weight"):
            w = w + 1
        yield name, w
    rope_type = rope_parameters(cfg).get("rope_type")
    if rope_type in ("llama3", "proportional"):
        factors = llama3_rope_factors(cfg) if rope_type == "llama3" else proportional_rope_factors(cfg)
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors


def proportional_rope_factors(cfg) -> torch.Tensor:
    """Gemma-4's full layers turn only the first `partial_rotary_factor` of the head's frequencies;
    llama.cpp runs a rope over the whole head and divides the other frequencies by 1e30 (no turn).
    (Only the full layers read this tensor.)"""
    dim = head_dim(cfg)
    turned = int(dim * rope_parameters(cfg)["partial_rotary_factor"] / 2)
    return torch.tensor([1.0] * turned + [1e30] * (dim // 2 - turned), dtype=torch.float32)


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
