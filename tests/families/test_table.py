"""model/families.py is the one place a family's facts live: every family the GGUF export writes has a
test fixture of its own architecture class, and no family's model_type is spelled in the package's code
outside the table (a new family is one record plus its fixture). Gemma-4's own traits are checked where
they meet the training forward and the planner."""

from __future__ import annotations

import ast
from pathlib import Path

import gguf
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from forgetless.model import forward
from forgetless.model.families import FAMILIES, exported
from forgetless.plan import shapes
from tests.families.conftest import ARCHITECTURES, family_model_dir

SRC = Path(__file__).resolve().parents[2] / "src" / "forgetless"
# (file, string) -> why the same word there is not a family fact
NOT_FAMILIES = {
    ("deploy/formats/gguf_vocab.py", "llama"): "llama.cpp's name for the sentencepiece-style tokenizer model",
    ("deploy/formats/gguf_vocab.py", "qwen2"): "llama.cpp's name for a pre-tokenizer regex",
    ("deploy/formats/gguf_vocab.py", "gemma4"): "llama.cpp's name for Gemma-4's tokenizer model",
    ("config/fields.py", "mistral"): "the [INST] chat template's name (several families use it)",
    ("deploy/formats/ollama.py", "mistral"): "the [INST] chat template's Go template",
}


def test_every_exported_family_has_a_fixture_of_its_own_class():
    fixtures = {config_class.model_type for _tok, config_class, _traits in ARCHITECTURES.values()}
    assert set(exported()) <= fixtures, f"add a fixture to tests/families/conftest.py for {set(exported()) - fixtures}"
    for name in exported():
        arch = FAMILIES[name].gguf
        assert arch in gguf.MODEL_ARCH_NAMES and gguf.get_tensor_name_map(arch, 2) is not None


def test_no_family_is_spelled_outside_the_table():
    spelled = []
    for path in SRC.rglob("*.py"):
        rel = str(path.relative_to(SRC))
        if rel == "model/families.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in FAMILIES and (rel, node.value) not in NOT_FAMILIES:
                spelled.append(f"{rel}:{node.lineno} {node.value!r}")
    assert not spelled, "read these from model/families.py:\n" + "\n".join(spelled)


SMALL = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


@pytest.mark.parametrize("model_type", [name for name, f in FAMILIES.items() if f.plain_head])
def test_a_plain_head_family_has_logits_that_are_the_head_of_its_last_state(model_type):
    """The record's plain_head is what lets the training forward skip full logits: for each such family, a
    tiny model's logits equal its output head (soft-capped where the config says so) applied to the last hidden
    states `forward.hidden` returns."""
    config = AutoConfig.for_model(model_type, **SMALL)
    for key in ("moe_intermediate_size", "shared_expert_intermediate_size"):
        if hasattr(config, key):
            setattr(config, key, 32)
    if hasattr(config, "num_experts"):
        config.num_experts, config.num_experts_per_tok = 4, 2
    capped = bool(getattr(config, "final_logit_softcapping", None))  # Gemma-2's default: the head is wrapped
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.tensor([[5, 9, 2, 31, 7, 11]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        out = forward.hidden(model, batch)
        logits = model(**batch).logits
    assert forward.lean(model) and out.head is not None and isinstance(out.head, forward.SoftCapped) == capped
    assert torch.allclose(out.head(out.states), logits, atol=1e-5)


def test_gemma_4s_training_forward_keeps_every_position(family_model_dirs, family_tokenizers, tmp_path_factory):
    """Gemma-4's decoder takes an integer logits_to_keep as leave to drop the other positions before its
    KV-sharing layers: the training forward's hidden states still cover the whole sequence."""
    model = AutoModelForCausalLM.from_pretrained(
        family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, "gemma4")
    ).eval()
    assert model.config.num_kv_shared_layers > 0
    ids = torch.tensor([[2, 5, 9, 31, 7, 11, 400, 17]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        out = forward.hidden(model, batch)
        logits = model(**batch).logits
    assert forward.lean(model) and out.states.shape[:2] == ids.shape
    assert torch.allclose(out.head(out.states), logits, atol=1e-4)


def test_the_planner_counts_gemma_4s_per_layer_input_embeddings(family_model_dirs, family_tokenizers, tmp_path_factory):
    model_dir = family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, "gemma4")
    shape, _ = shapes.resolve_shape(model_dir)
    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    assert shape.extra > real / 2  # the per-layer table is most of this tiny model
    assert shape.params() == pytest.approx(real, rel=0.001)  # the rest: KV-sharing layers' missing k/v
