"""Tiny random models of each family's own architecture class, with the family's real tokenizer and
chat template (tests/families/fixtures.py makes those from llama.cpp's files, once per machine)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma3TextConfig,
    Gemma4TextConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

from forgetless.model import loader as models
from tests.families import fixtures

SMALL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "initializer_range": 0.3,
}

# family -> (tokenizer, config class, what differs from SMALL: each family's own traits)
ARCHITECTURES = {
    "llama3": ("llama3", LlamaConfig, {"tie_word_embeddings": False}),
    "mistral": ("mistral", MistralConfig, {"sliding_window": 256, "tie_word_embeddings": False}),
    "qwen2": ("qwen2", Qwen2Config, {"tie_word_embeddings": True}),  # q/k/v biases
    "qwen3": (
        "qwen3",
        Qwen3Config,
        {"head_dim": 16, "tie_word_embeddings": True},
    ),  # q/k norms, head_dim ≠ hidden/heads
    "mixtral": (
        "mistral",
        MixtralConfig,
        {"num_local_experts": 4, "num_experts_per_tok": 2, "tie_word_embeddings": False},
    ),
    "phi3": ("phi3", Phi3Config, {"tie_word_embeddings": False}),  # fused qkv_proj, gate_up_proj
    "gemma": (
        "gemma",
        Gemma2Config,
        {  # soft-capped attention and head, tied, sliding window, head_dim 8
            "head_dim": 8,
            "query_pre_attn_scalar": 8,
            "final_logit_softcapping": 30.0,
            "attn_logit_softcapping": 50.0,
            "sliding_window": 256,
            "tie_word_embeddings": True,
        },
    ),
    "gemma3": (
        "gemma",
        Gemma3TextConfig,
        {  # q/k norms; sliding layers (rope base 10000) and a full one every 6th (base 1M); a short window
            "num_hidden_layers": 6,
            "head_dim": 8,
            "query_pre_attn_scalar": 8,
            "sliding_window": 16,
            "tie_word_embeddings": True,
        },
    ),
    "gemma4": (
        "gemma4",
        Gemma4TextConfig,
        {  # per-layer input embeddings; the last two layers reuse earlier layers' keys and values; full layers
            # with their own head size and a rope on a quarter of it ('proportional'); alternating layer types
            "num_hidden_layers": 6,
            "head_dim": 8,
            "global_head_dim": 16,
            "hidden_size_per_layer_input": 8,
            "num_kv_shared_layers": 2,
            "layer_types": ["sliding_attention", "full_attention"] * 3,
            "sliding_window": 16,
            "tie_word_embeddings": True,
        },
    ),
}
FAMILIES = list(ARCHITECTURES)


@pytest.fixture(scope="session")
def family_root():
    return fixtures.ensure()


@pytest.fixture(scope="session")
def family_tokenizers(family_root):
    return {}


def family_tokenizer(family_tokenizers, family: str):
    name = ARCHITECTURES[family][0]
    if name not in family_tokenizers:
        family_tokenizers[name] = models.load_tokenizer(str(fixtures.tokenizer_dir(name)))
    return family_tokenizers[name]


@pytest.fixture(scope="session")
def family_model_dirs(family_root, tmp_path_factory):
    return {}


def family_model_dir(cache: dict, tokenizers: dict, tmp_path_factory, family: str) -> str:
    """A saved tiny model of the family (built once per session)."""
    if family not in cache:
        _tok, config_class, traits = ARCHITECTURES[family]
        tok = family_tokenizer(tokenizers, family)
        cfg = config_class(
            vocab_size=len(tok),
            **({"vocab_size_per_layer_input": len(tok)} if "hidden_size_per_layer_input" in traits else {}),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **(SMALL | traits),
        )
        torch.manual_seed(0)
        out = tmp_path_factory.mktemp(f"tiny-{family}")
        AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
        models.save_tokenizer(tok, out)  # the added tokens in tokenizer_config.json, as hub repositories carry them
        cache[family] = str(out)
    return cache[family]
