"""What forgetless knows about each model family, one record per Hugging Face `model_type`.

Every place that treats families differently reads it from here: the training forward (whether the
logits are a plain linear head), the GGUF export (llama.cpp's architecture, the
q/k row order of its rope, Gemma's stored norm offset, soft-capping, sliding windows), the GGUF
vocabulary (llama.cpp's pre-tokenizer name) and the planner (where the shape sits in config.json).
Adding a family is one record here plus its test fixture (tests/families/conftest.py); the layout
test checks that no family name is spelled in code outside this file.

Chat templates are not a family fact: one model_type carries several (a "llama" model may be
Llama-2's [INST], Llama-3's headers or SmolLM2's ChatML), so templates, and the Ollama template that
goes with each, are recognised by rendering the tokenizer's own template (model/chat_format.py,
deploy/formats/ollama.py).

The facts about llama.cpp come from its converter (convert_hf_to_gguf.py, which
tests/families/test_converter.py compares the export with) and its model loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import gguf


@dataclass(frozen=True)
class Family:
    model_type: str
    # Logits are exactly lm_head(final hidden state), soft-capped where the config says so
    # (final_logit_softcapping): the training forward then applies the head to selected positions only
    # (model/forward.py). False for heads that do more (Granite's logit scaling).
    plain_head: bool = True
    # llama.cpp's architecture; None: no GGUF export (merge and use llama.cpp's converter).
    gguf: gguf.MODEL_ARCH | None = None
    # llama.cpp's 'norm' rope pairs dimension i with i+1 where transformers pairs i with i+d/2: the q/k
    # rows are reordered (Llama-style); NEOX-rope architectures keep transformers' order.
    rope_reorder: bool = False
    # The RMSNorm multiplies by (1 + w) and stores w; llama.cpp multiplies by what it reads.
    norm_plus_one: bool = False
    # llama.cpp reads the attention / final logit soft-capping the config sets (Gemma).
    soft_capping: bool = False
    # llama.cpp's final-logit soft-cap when the file names none (Gemma-4: 30): for a config without one
    # the export writes 0, which turns it off.
    final_cap_default: float | None = None
    # How the GGUF records the sliding window: "if_set" only when the config has one, "always" with 0
    # meaning none (Phi-3, where llama.cpp tells Phi-4 apart by it), "" not at all (Mistral: llama.cpp
    # runs it with full attention, which equals the window below its length).
    sliding_window: Literal["", "if_set", "always"] = ""
    # The rope's original context length (Phi-3's long-rope models), as llama.cpp's converter writes it.
    original_context: bool = False
    # The layer count of the size whose attention scale llama.cpp takes as hidden / heads, not the head
    # size (Gemma-2 27B: 46, Gemma-3 27B: 62); the export refuses a query_pre_attn_scalar that differs.
    hidden_scale_layers: int | None = None
    # llama.cpp's fixed layout of sliding-window layers: every Nth layer attends fully (Gemma-3: 6); a
    # config with another layout is refused by the export.
    swa_pattern: int | None = None
    # llama.cpp's pre-tokenizer name for the family's own byte-level BPE tokenizer, preferred when its
    # split regex has several names; None for sentencepiece-style vocabularies.
    pre_tokenizer: str | None = None
    # llama.cpp's own tokenizer model for the family's vocabulary, where it has one: "gemma4" (BPE merges
    # over raw UTF-8 with '▁' for spaces, BOS always added); None: from the kind of tokenizer.json.
    tokenizer_model: str | None = None
    # llama.cpp reads the layer layout from the file (Gemma-4): which layers slide, the full and sliding
    # layers' head and rope sizes, the layers that reuse earlier keys and values, the per-layer input width.
    per_layer: bool = False
    # llama.cpp tensors the family's graph multiplies without applying a LoRA (Gemma-4's per-layer model
    # projection): a GGUF LoRA holding one is refused, as llama.cpp would drop it silently.
    lora_unapplied: tuple[str, ...] = ()
    # Where config.json keeps the decoder's shape: "text_config" in vision-language checkpoints.
    shape_in: Literal["config", "text_config"] = "config"


# what Gemma-2 and Gemma-3 share: norms stored as w for (1 + w), soft-capping read, the window when set
GEMMA = {"norm_plus_one": True, "soft_capping": True, "sliding_window": "if_set"}

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("llama", gguf=gguf.MODEL_ARCH.LLAMA, rope_reorder=True, pre_tokenizer="llama-bpe"),
        # llama.cpp runs Mistral and Mixtral (expert tensors) as Llama
        Family("mistral", gguf=gguf.MODEL_ARCH.LLAMA, rope_reorder=True),
        Family("mixtral", gguf=gguf.MODEL_ARCH.LLAMA, rope_reorder=True),
        Family("qwen2", gguf=gguf.MODEL_ARCH.QWEN2, pre_tokenizer="qwen2"),
        Family("qwen3", gguf=gguf.MODEL_ARCH.QWEN3, pre_tokenizer="qwen2"),
        Family("qwen2_moe"),
        Family("qwen3_moe"),
        # fused qkv and gate|up projections, which llama.cpp reads fused
        Family("phi3", gguf=gguf.MODEL_ARCH.PHI3, sliding_window="always", original_context=True),
        Family("gemma2", gguf=gguf.MODEL_ARCH.GEMMA2, hidden_scale_layers=46, **GEMMA),
        Family("gemma3_text", gguf=gguf.MODEL_ARCH.GEMMA3, hidden_scale_layers=62, swa_pattern=6, **GEMMA),
        Family("gemma3", plain_head=False, shape_in="text_config"),  # the vision-language checkpoints: planned only
        # norms stored as they multiply (no 1 + w); every layer's layout in the file
        Family(
            "gemma4_text",
            gguf=gguf.MODEL_ARCH.GEMMA4,
            soft_capping=True,
            final_cap_default=30.0,
            sliding_window="if_set",
            tokenizer_model="gemma4",
            per_layer=True,
            lora_unapplied=("per_layer_model_proj",),
        ),
        Family("gemma4", plain_head=False, shape_in="text_config"),
        Family("olmo2"),
        Family("smollm3"),
    )
}


def family(model_type: str | None) -> Family | None:
    return FAMILIES.get(model_type or "")


def exported() -> list[str]:
    """The model types the GGUF export writes."""
    return [name for name, f in FAMILIES.items() if f.gguf is not None]
