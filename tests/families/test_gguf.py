"""GGUF export per family, run in llama.cpp (llama-cpp-python): the merged model's logits equal
transformers' (f16), the GGUF LoRA on the exported base equals the merged file, and llama.cpp
tokenizes the family's real vocabulary (English and Japanese) to transformers' ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from llama_cpp import Llama
from transformers import AutoModelForCausalLM

from forgetless.adapters import merge
from forgetless.deploy import export
from forgetless.errors import UserError
from tests.conftest import lora_model
from tests.families.conftest import family_model_dir, family_tokenizer

SUPPORTED = ["llama3", "qwen2", "qwen3"]
TEXT = "My order 48213 is late! 注文番号 5522 の商品が届きません。"


def llama_cpp_logits(path, ids, lora=None) -> np.ndarray:
    llm = Llama(model_path=str(path), lora_path=str(lora) if lora else None, n_ctx=256, logits_all=True, verbose=False)
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


@pytest.mark.parametrize("family", SUPPORTED)
def test_merged_and_lora_gguf_files_compute_what_transformers_does(
    family, family_model_dirs, family_tokenizers, tmp_path_factory, tmp_path
):
    base_dir = family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, family)
    tuned = lora_model(base_dir)
    for name, p in tuned.named_parameters():  # smaller updates: the model stays near its base
        if "lora_B" in name:
            p.data.mul_(0.1)
    tuned.save_pretrained(tmp_path / "adapter")
    family_tokenizer(family_tokenizers, family).save_pretrained(tmp_path / "adapter")
    merged_file = tmp_path / "merged" / export.run(str(tmp_path / "adapter"), "gguf", tmp_path / "merged")["file"]
    base_file = tmp_path / "base" / export.run(base_dir, "gguf", tmp_path / "base")["file"]
    lora_file = tmp_path / "lora" / export.run(str(tmp_path / "adapter"), "gguf-lora", tmp_path / "lora")["file"]

    merged, tokenizer, _ = merge.load_merged(str(tmp_path / "adapter"), base_dir, "fp32")
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    llm = Llama(model_path=str(merged_file), n_ctx=256, vocab_only=True, verbose=False)
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=True) == ids
    with torch.no_grad():
        expected = merged(input_ids=torch.tensor([ids])).logits[0].numpy()
    got = llama_cpp_logits(merged_file, ids)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() < 0.02 * scale
    with_lora = llama_cpp_logits(base_file, ids, lora=lora_file)
    assert np.abs(with_lora - got).max() < 0.02 * scale
    plain = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        base_logits = plain(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(base_logits - expected).max() > 0.05 * scale  # the adapter changed what is compared


@pytest.mark.parametrize("family", ["mistral", "phi3", "gemma", "mixtral"])
def test_families_not_exported_yet_say_so(family, family_model_dirs, family_tokenizers, tmp_path_factory, tmp_path):
    base_dir = family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, family)
    with pytest.raises(UserError, match="not supported yet|only byte-level BPE"):
        export.run(base_dir, "gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
