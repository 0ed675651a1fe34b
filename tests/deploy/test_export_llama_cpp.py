"""The exported GGUF files run in llama.cpp itself (llama-cpp-python, the `gguf` extra that `make
test` installs): the embedded model with a LoRA adapter, merged and exported, answers quickstart
tickets greedily with the tokens transformers gives, and llama.cpp tokenizes as transformers does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from llama_cpp import Llama

from forgetless.adapters import merge, methods
from forgetless.config.schema import ModelConfig, PeftConfig
from forgetless.data.formats import builtin_path
from forgetless.data.render import prompt_text
from forgetless.deploy import export
from forgetless.model import loader as models

NEW = 32
TEXTS = ["My order 48213 is late, please help!", "注文番号 5522 の商品が届きません。", "  spaces\tand\nlines  "]


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory):
    """The embedded model with a LoRA adapter whose B matrices are moved off zero (a changed model)."""
    root = tmp_path_factory.mktemp("gguf-run")
    model, tokenizer, _ = models.load(ModelConfig(name="smollm2-135m-instruct"))
    torch.manual_seed(0)
    tuned = methods.attach(model, PeftConfig(r=8), quantized=False, grad_checkpointing=False)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.002)
    tuned.save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "adapter")
    facts = json.loads((root / "adapter" / "adapter_config.json").read_text())
    facts["base_model_name_or_path"] = "smollm2-135m-instruct"
    (root / "adapter" / "adapter_config.json").write_text(json.dumps(facts))
    return root / "adapter"


def tickets(n: int = 4) -> list[list[dict]]:
    rows = [json.loads(x) for x in builtin_path("quickstart/test.jsonl").read_text().splitlines()[:n]]
    return [
        [{"role": "system", "content": r["system"]}, {"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"}]
        for r in rows
    ]


def test_llama_cpp_answers_as_transformers_f16(adapter_run, tmp_path):
    """f16: greedy answers identical for at least 30 of 32 new tokens on every ticket."""
    record = export.run(str(adapter_run), "gguf", tmp_path, "f16")
    merged, tokenizer, _ = merge.load_merged(str(adapter_run), None, "fp32")
    llm = Llama(model_path=str(tmp_path / record["file"]), n_ctx=1024, n_threads=2, verbose=False)
    for text in TEXTS:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    for conversation in tickets():
        prompt = tokenizer(prompt_text(tokenizer, conversation), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            ours = merged.generate(torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False, min_new_tokens=NEW)
        ours = ours[0, len(prompt) :].tolist()
        theirs = []
        for token in llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            theirs.append(token)
            if len(theirs) == NEW:
                break
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), NEW)
        assert same >= 30, (tokenizer.decode(ours), tokenizer.decode(theirs))


def test_llama_cpp_q8_0_predicts_the_next_token_as_transformers(adapter_run, tmp_path):
    """q8_0, teacher-forced over the tickets: wherever transformers' choice of the next token is clear
    (top two logits at least 1.0 apart), llama.cpp makes the same choice. Near-ties may flip: with
    this untrained adapter llama.cpp's own q8_0 quantizer flips 3% of all positions and ours 8%, with
    the same per-weight error; on the trained quickstart adapter 3.4% and 3.8% (measured here, same
    tickets). benchmarks/gguf_export.py measures the trained run's answers."""
    record = export.run(str(adapter_run), "gguf", tmp_path, "q8_0")
    merged, tokenizer, _ = merge.load_merged(str(adapter_run), None, "fp32")
    llm = Llama(model_path=str(tmp_path / record["file"]), n_ctx=1024, logits_all=True, verbose=False)
    clear = same = 0
    for conversation in tickets():
        ids = tokenizer(prompt_text(tokenizer, conversation), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = merged(input_ids=torch.tensor([ids])).logits[0]
        top2 = logits.topk(2).values
        confident = ((top2[:, 0] - top2[:, 1]) >= 1.0).numpy()
        llm.reset()
        llm.eval(ids)
        theirs = np.array(llm.scores[: len(ids)])
        agree = theirs.argmax(-1) == logits.argmax(-1).numpy()
        clear, same = clear + int(confident.sum()), same + int((agree & confident).sum())
        assert np.abs(theirs - logits.numpy()).max() < 0.05 * float(logits.abs().max())
    assert clear > 100 and same == clear, (same, clear)
