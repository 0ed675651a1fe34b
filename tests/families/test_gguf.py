"""GGUF export per family, run in llama.cpp (llama-cpp-python): the merged model's logits equal
transformers' (f16), the GGUF LoRA on the exported base equals the merged file, and llama.cpp
tokenizes the family's real vocabulary (English and Japanese, plain and in its chat template) to
transformers' ids."""

from __future__ import annotations

import json
from contextlib import closing

import numpy as np
import pytest
import torch
from llama_cpp import Llama
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM

from forgetless.adapters import layer_scales, merge
from forgetless.deploy import export
from forgetless.errors import UserError
from forgetless.eval import budget
from forgetless.model.chat_format import prompt_text
from tests.conftest import lora_model
from tests.families.conftest import FAMILIES, family_model_dir, family_tokenizer

pytestmark = pytest.mark.seconds(130)  # the longest files start first (tests/conftest.py)

TEXT = "My order 48213 is late! 注文番号 5522 の商品が届きません。"
CHAT = [
    {"role": "system", "content": "Answer in one line."},
    {"role": "user", "content": TEXT},
    {"role": "assistant", "content": "Sorry: we will  check it."},
    {"role": "user", "content": "  And 5523?"},
]
# transformers' legacy=False sentencepiece tokenizers put '▁' before a text's first piece only;
# llama.cpp before every piece that follows a special token, or none: chat prompts (which start with
# one) agree, a bare text's first token differs (gguf_vocab._space_prefix).
FIRST_PIECE_ONLY = {"mistral", "mixtral"}
# llama.cpp applies no LoRA to Gemma-4's per-layer model projection (families.lora_unapplied): its GGUF
# LoRA is compared on the other linear layers, and refused with that one (test below)
GEMMA4_LORA = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GEMMA4_LORA += ["per_layer_input_gate", "per_layer_projection"]


def llama_cpp_logits(path, ids, lora=None) -> np.ndarray:
    lora_path = str(lora) if lora else None
    with closing(Llama(model_path=str(path), lora_path=lora_path, n_ctx=256, logits_all=True, verbose=False)) as llm:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_and_lora_gguf_files_compute_what_transformers_does(
    family, family_model_dirs, family_tokenizers, tmp_path_factory, tmp_path
):
    base_dir = family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, family)
    _export_and_compare(base_dir, family_tokenizer(family_tokenizers, family), family, tmp_path)


def test_llama_3_1_rope_scaling_is_written_as_llama_cpp_reads_it(
    family_model_dirs, family_tokenizers, tmp_path_factory, tmp_path
):
    """Llama-3.1's 'llama3' rope scaling changes every position's low frequencies: the rope_freqs
    tensor must reproduce it (a file without it differs from transformers already at short prompts)."""
    base_dir = family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, "llama3")
    config = AutoConfig.from_pretrained(base_dir)
    config.rope_parameters = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,  # small, so that the tiny head's frequencies are scaled
    }
    scaled = AutoModelForCausalLM.from_pretrained(base_dir, config=config)
    scaled.save_pretrained(tmp_path / "scaled")
    tokenizer = family_tokenizer(family_tokenizers, "llama3")
    tokenizer.save_pretrained(tmp_path / "scaled")
    _export_and_compare(str(tmp_path / "scaled"), tokenizer, "llama3", tmp_path / "run")


def test_linear_rope_scaling_is_written_as_llama_cpp_reads_it(
    family_model_dirs, family_tokenizers, tmp_path_factory, tmp_path
):
    """Linear rope scaling (Gemma-3 4B-27B's full layers; some Llama fine-tunes) divides every position:
    a file without rope.scaling.type/factor differs from transformers from the second token on."""
    base_dir = family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, "llama3")
    config = AutoConfig.from_pretrained(base_dir)
    config.rope_parameters = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}
    AutoModelForCausalLM.from_pretrained(base_dir, config=config).save_pretrained(tmp_path / "linear")
    tokenizer = family_tokenizer(family_tokenizers, "llama3")
    tokenizer.save_pretrained(tmp_path / "linear")
    _export_and_compare(str(tmp_path / "linear"), tokenizer, "llama3", tmp_path / "run")


def test_a_gguf_lora_on_a_tensor_llama_cpp_does_not_adapt_is_refused(
    family_model_dirs, family_tokenizers, tmp_path_factory, tmp_path
):
    base_dir = family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, "gemma4")
    lora_model(base_dir).save_pretrained(tmp_path / "adapter")
    with pytest.raises(UserError, match=r"applies no LoRA to per_layer_model_proj.weight \(model.per_layer_model_"):
        export.run(str(tmp_path / "adapter"), "gguf-lora", tmp_path / "lora")
    assert not (tmp_path / "lora").exists() or not any((tmp_path / "lora").iterdir())


def _export_and_compare(base_dir: str, tokenizer, family: str, tmp_path) -> None:
    tuned = lora_model(base_dir, targets=GEMMA4_LORA if family == "gemma4" else None)
    for name, p in tuned.named_parameters():  # smaller updates: the model stays near its base
        if "lora_B" in name:
            p.data.mul_(0.1)
    tuned.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    merged_file = tmp_path / "merged" / export.run(str(tmp_path / "adapter"), "gguf", tmp_path / "merged")["file"]
    merged, tokenizer, _ = merge.load_merged(str(tmp_path / "adapter"), base_dir, "fp32")
    prompt = prompt_text(tokenizer, CHAT)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    plain = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    with closing(Llama(model_path=str(merged_file), n_ctx=256, vocab_only=True, verbose=False)) as llm:
        chat_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        theirs = llm.tokenize(TEXT.encode(), add_bos=False, special=True)
    assert chat_ids == ids
    assert theirs[1:] == plain[1:] if family in FIRST_PIECE_ONLY else theirs == plain
    with torch.no_grad():
        expected = merged(input_ids=torch.tensor([ids])).logits[0].numpy()
    got = llama_cpp_logits(merged_file, ids)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() < 0.02 * scale
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        base_logits = base(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(base_logits - expected).max() > 0.05 * scale  # the adapter changed what is compared
    if family == "mixtral":  # its LoRA is on the fused expert weights (target_parameters)
        with pytest.raises(UserError, match="--format gguf for a merged model"):
            export.run(str(tmp_path / "adapter"), "gguf-lora", tmp_path / "lora")
        return
    base_file = tmp_path / "base" / export.run(base_dir, "gguf", tmp_path / "base")["file"]
    lora_file = tmp_path / "lora" / export.run(str(tmp_path / "adapter"), "gguf-lora", tmp_path / "lora")["file"]
    with_lora = llama_cpp_logits(base_file, ids, lora=lora_file)
    assert np.abs(with_lora - got).max() < 0.02 * scale
    assert np.abs(llama_cpp_logits(base_file, ids) - base_logits).max() < 0.02 * scale


def test_unsupported_rope_scaling_is_refused(family_model_dirs, family_tokenizers, tmp_path_factory, tmp_path):
    base_dir = family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, "qwen2")
    config = AutoConfig.from_pretrained(base_dir)
    config.rope_parameters = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    AutoModelForCausalLM.from_pretrained(base_dir, config=config).save_pretrained(tmp_path / "yarn")
    family_tokenizer(family_tokenizers, "qwen2").save_pretrained(tmp_path / "yarn")
    with pytest.raises(UserError, match="rope scaling 'yarn' is not supported"):
        export.run(str(tmp_path / "yarn"), "gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gguf_lora_honours_rank_and_alpha_patterns_and_refuses_what_it_cannot_hold(
    family_model_dirs, family_tokenizers, tmp_path_factory, tmp_path
):
    """PEFT's rank_pattern and alpha_pattern give modules their own rank and alpha; llama.cpp reads the rank
    from each tensor and one alpha per file, so a module with its own alpha has its B scaled. Biases and
    modules_to_save were dropped silently; they are refused now."""
    from peft import LoraConfig, get_peft_model

    base_dir = family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, "llama3")
    tokenizer = family_tokenizer(family_tokenizers, "llama3")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    ranks, alphas = {"q_proj": 2, "down_proj": 6}, {"v_proj": 32, "layers.1.mlp.up_proj": 2}
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, rank_pattern=ranks, alpha_pattern=alphas)
    torch.manual_seed(0)
    tuned = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    tuned.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    ids = tokenizer(prompt_text(tokenizer, CHAT), add_special_tokens=False)["input_ids"]
    merged, _, _ = merge.load_merged(str(tmp_path / "adapter"), base_dir, "fp32")
    with torch.no_grad():
        expected = merged(input_ids=torch.tensor([ids])).logits[0].numpy()
    base_file = tmp_path / "base" / export.run(base_dir, "gguf", tmp_path / "base", "f32")["file"]
    lora_file = tmp_path / "lora" / export.run(str(tmp_path / "adapter"), "gguf-lora", tmp_path / "lora")["file"]
    got = llama_cpp_logits(base_file, ids, lora=lora_file)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() < 0.01 * scale
    plain = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        assert np.abs(plain(input_ids=torch.tensor([ids])).logits[0].numpy() - expected).max() > 0.05 * scale

    refused = (({"bias": "lora_only"}, "trained bias="), ({"modules_to_save": ["lm_head"]}, "modules_to_save"))
    for extra, match in refused:
        torch.manual_seed(0)
        other = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, target_modules=["q_proj"], **extra)
        )
        name = next(iter(extra))
        other.save_pretrained(tmp_path / name)
        with pytest.raises(UserError, match=match):
            export.run(str(tmp_path / name), "gguf-lora", tmp_path / f"out-{name}")


def test_a_gemma_3_layer_layout_llama_cpp_does_not_run_is_refused(
    family_model_dirs, family_tokenizers, tmp_path_factory, tmp_path
):
    """llama.cpp fixes Gemma-3's layout (every 6th layer attends fully) and does not read layer_types."""
    base_dir = family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, "gemma3")
    config = AutoConfig.from_pretrained(base_dir)
    config.layer_types = ["full_attention"] * config.num_hidden_layers
    AutoModelForCausalLM.from_pretrained(base_dir, config=config).save_pretrained(tmp_path / "all-full")
    family_tokenizer(family_tokenizers, "gemma3").save_pretrained(tmp_path / "all-full")
    with pytest.raises(UserError, match="llama.cpp runs every 6th layer with full attention"):
        export.run(str(tmp_path / "all-full"), "gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_per_layer_scales_survive_peft_merge_and_both_gguf_files_in_llama_cpp(
    family_model_dirs, family_tokenizers, tmp_path_factory, tmp_path
):
    """tune-scale --per-layer saves one scale per group of layers (thirds × attention/MLP) as an alpha_pattern
    entry per module: PEFT, merge, the merged GGUF and the GGUF LoRA (f32, in llama.cpp) all compute what the
    dialled PyTorch model does, and greedily pick its tokens wherever its top two are not a near-tie."""
    base_dir = family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, "llama3")
    tokenizer = family_tokenizer(family_tokenizers, "llama3")
    tuned = lora_model(base_dir).eval()
    for name, p in tuned.named_parameters():  # smaller updates: the model stays near its base
        if "lora_B" in name:
            p.data.mul_(0.1)
    adapter = tmp_path / "adapter"
    tuned.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    ids = tokenizer(prompt_text(tokenizer, CHAT), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        trained = tuned(input_ids=torch.tensor([ids])).logits[0].numpy()
    dial = layer_scales.Dial(tuned)
    scales = dict(zip(layer_scales.GROUPS, (0.9, 0.2, 0.6, 0.0, 1.0, 0.5), strict=True))
    dial.set(scales)
    with torch.no_grad():
        expected = tuned(input_ids=torch.tensor([ids])).logits[0].numpy()
    config = json.loads((adapter / "adapter_config.json").read_text())
    record = {"chosen": 1.0, "layer_scales": scales, "layers": dial.layers}
    budget.save_scale(
        tmp_path, adapter, config, record | {"trained": {"lora_alpha": config["lora_alpha"]}}, list(dial.trained)
    )
    scale = np.abs(expected).max()
    assert np.abs(trained - expected).max() > 0.05 * scale  # the scales changed what is compared

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter)).eval()
    merged, _, _ = merge.load_merged(str(adapter), base_dir, "fp32")
    with torch.no_grad():
        assert np.abs(loaded(input_ids=torch.tensor([ids])).logits[0].numpy() - expected).max() < 1e-4 * scale
        assert np.abs(merged(input_ids=torch.tensor([ids])).logits[0].numpy() - expected).max() < 1e-4 * scale
    merged_file = tmp_path / "merged" / export.run(str(adapter), "gguf", tmp_path / "merged", "f32")["file"]
    base_file = tmp_path / "base" / export.run(base_dir, "gguf", tmp_path / "base", "f32")["file"]
    lora_file = tmp_path / "lora" / export.run(str(adapter), "gguf-lora", tmp_path / "lora")["file"]
    for got in (llama_cpp_logits(merged_file, ids), llama_cpp_logits(base_file, ids, lora=lora_file)):
        assert np.abs(got - expected).max() < 0.01 * scale  # llama.cpp keeps its KV cache in f16
        top2 = np.sort(expected, axis=-1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 2 * np.abs(got - expected).max()  # a random model's near-ties aside
        assert clear.sum() > len(ids) // 2 and (got.argmax(-1) == expected.argmax(-1))[clear].all()
