"""Which architectures the GGUF export writes, and llama.cpp's layout of their weights."""

from __future__ import annotations

import gguf
import torch

from forgetless.errors import UserError

# Hugging Face model_type -> (gguf architecture, reorder q/k rows for llama.cpp's rope)
ARCHITECTURES = {
    "llama": (gguf.MODEL_ARCH.LLAMA, True),
    "qwen2": (gguf.MODEL_ARCH.QWEN2, False),
    "qwen3": (gguf.MODEL_ARCH.QWEN3, False),
}


def architecture(config) -> tuple[gguf.MODEL_ARCH, bool]:
    kind = config.model_type
    if kind not in ARCHITECTURES:
        raise UserError(
            f"exporting {kind} models to GGUF is not supported yet (supported: {', '.join(ARCHITECTURES)}); "
            "use forgetless merge and llama.cpp's convert_hf_to_gguf.py"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":  # Llama-3.1's 'llama3' needs a rope_freqs tensor
        raise UserError(f"{kind} with rope scaling '{rope['rope_type']}' is not supported by the GGUF export yet")
    return ARCHITECTURES[kind]


def reorder_for_rope(w: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers' rotary halves (i, i+d/2) -> llama.cpp's interleaved pairs (2i, 2i+1), per head."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
