"""Model resolution and loading; the slow tests use the real embedded SmolLM2-135M-Instruct."""

import json
import time

import numpy as np
import pytest
import torch

from forgetless.adapters import attaching
from forgetless.config.schema import ModelConfig, PeftConfig
from forgetless.errors import UserError
from forgetless.model import loader as models
from forgetless.model.generate import generate

pytestmark = pytest.mark.seconds(55)  # the longest files start first (tests/conftest.py)


def test_unreachable_hub_id_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(UserError, match="not in the local Hugging Face cache and huggingface.co is not reachable"):
        models.resolve("some-org/some-model")
    assert time.time() - start < 10


def test_bad_references_get_clear_errors(tmp_path):
    with pytest.raises(UserError, match="has no config.json"):
        models.resolve(str(tmp_path))
    with pytest.raises(UserError, match="model file not found"):
        models.resolve(str(tmp_path / "x.gguf"))
    with pytest.raises(UserError, match="is not an alias"):
        models.resolve("not a model")


def test_precision_auto_is_fp32_on_cpu():
    from forgetless.model import hardware

    assert hardware.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert hardware.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.slow
def test_a_saved_tokenizer_keeps_its_added_tokens_in_the_config_and_loads_the_same(tokenizer, tmp_path):
    """save_tokenizer writes the added tokens into tokenizer_config.json (transformers 5's save leaves them
    out, and its loader then parses tokenizer.json again to find them); the tokenizer loaded back is the same."""
    models.save_tokenizer(tokenizer, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert {int(i) for i in config["added_tokens_decoder"]} == set(tokenizer.added_tokens_decoder)
    again = models.load_tokenizer(str(tmp_path))
    assert type(again) is type(tokenizer) and again.added_tokens_decoder == tokenizer.added_tokens_decoder
    assert again.all_special_tokens == tokenizer.all_special_tokens and again.pad_token == tokenizer.pad_token
    text = "<|im_start|>user\nMy order 4411 is late. ünïcode 日本語<|im_end|>"
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert again.apply_chat_template(chat, tokenize=False) == tokenizer.apply_chat_template(chat, tokenize=False)


def test_embedded_model_loads_fast_from_cache_and_answers(embedded_dir):
    start = time.time()
    model, tok, path = models.load(ModelConfig())
    assert time.time() - start < 15 and path == embedded_dir
    answer = generate(model, tok, [[{"role": "user", "content": "What is the capital of France?"}]], 16)[0]
    assert "Paris" in answer
    assert mapped_from(embedded_dir, list(model.parameters()))  # fp32: the weights are the checkpoint map's pages


@pytest.mark.slow
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_base_forward_and_backward_on_cpu(embedded_dir, quantization):
    model, tok, _ = models.load(ModelConfig(quantization=quantization))
    linear = model.model.layers[0].self_attn.q_proj
    kind = {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}[quantization]
    assert type(linear).__name__ == kind
    # the tensors kept as they were own their memory: the checkpoint's map can close (docs/performance.md)
    assert not mapped_from(embedded_dir, [*model.parameters(), *model.buffers()])
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    if quantization == "4bit":
        qs = linear.weight.quant_state
        assert qs.quant_type == "nf4" and qs.nested  # NF4 with double quantization
    generate(model, tok, [[{"role": "user", "content": "hi"}]], 4)  # eval-mode use first, as before/after scoring does
    torch.manual_seed(0)
    peft_model = attaching.attach(model, PeftConfig(dropout=0.0), quantized=True, grad_checkpointing=False)
    peft_model.train()
    ids = tok(["category: billing | priority: high | order: 12345"] * 2, return_tensors="pt")["input_ids"]
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(6):
        out = peft_model(input_ids=ids, labels=ids)
        out.loss.backward()
        grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
        assert grads and all("lora_" in n for n in grads)
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    # learns: the same few steps take plain LoRA from ~4.0 to ~0.3 (a corrupted base stalls near 2.6)
    assert losses[-1] < 0.35 * losses[0], losses


def mapped_from(directory: str, tensors: list) -> list:
    """The tensors whose memory lies in a mapping of a file under `directory` (Linux's /proc/self/maps)."""
    spans = []
    for line in open("/proc/self/maps", encoding="utf-8"):
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].strip().startswith(str(directory)):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            spans.append((lo, hi))
    return [t for t in tensors if any(lo <= t.data_ptr() < hi for lo, hi in spans)]


@pytest.mark.slow
def test_gguf_conversion_reading_the_file_once_writes_the_same_files(tmp_path, monkeypatch):
    """loader._convert_gguf reads the GGUF file once (gguf_read.read_once: one reader per file, one
    tensor-name map per architecture, slicing a plain view of the mapped file; ~2x faster on the embedded
    model). The converted directory is
    byte for byte what transformers' own repeated reads give, and gguf is restored afterwards."""
    import contextlib

    import gguf

    from forgetless.model import gguf_read

    source = models.alias_gguf("smollm2-135m-instruct")
    models._convert_gguf(source, tmp_path / "once", "hub/id")
    assert gguf.GGUFReader is gguf.gguf_reader.GGUFReader  # the real class again
    with gguf_read.read_once():
        assert gguf.GGUFReader(source) is gguf.GGUFReader(str(source))
        assert type(gguf.GGUFReader(source).data) is np.ndarray  # slices a plain view of the mapped file
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30) is gguf.get_tensor_name_map(
            gguf.MODEL_ARCH.LLAMA, 30
        )
    monkeypatch.setattr(gguf_read, "read_once", contextlib.nullcontext)  # transformers reading as it does
    models._convert_gguf(source, tmp_path / "plain", "hub/id")
    files = sorted(p.name for p in (tmp_path / "plain").iterdir())
    assert "model.safetensors" in files and files == sorted(p.name for p in (tmp_path / "once").iterdir())
    for name in files:
        assert (tmp_path / "once" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
