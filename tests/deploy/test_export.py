"""`forgetless export`: GGUF files that transformers' and llama.cpp's readers load back to the merged
model (same logits, same tokens), Ollama Modelfiles, and one-line errors for what cannot export."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config

import forgetless
from forgetless.adapters import merge
from forgetless.cli import main
from forgetless.deploy import export
from forgetless.deploy.formats import gguf_model
from forgetless.errors import UserError

TEXTS = ["My order 48213 is late, please help!", "注文番号 5522 の商品が届きません。", "  spaces\tand\nlines  "]


@pytest.fixture(scope="module")
def run_dir(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export-run")
    rows = [{"instruction": "Triage.", "input": f"Order {n} is late.", "output": f"shipping {n}"} for n in range(8)]
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    forgetless.train(
        {},
        [
            f"model.name={tiny_dir}",
            f"data.train={out / 'train.jsonl'}",
            "data.system_prompt=You triage tickets.",
            f"output_dir={out / 'run'}",
            "eval.before_after=false",
            "eval.retention=false",
            "forgetting.preset=none",
            "train.max_steps=2",
            "train.lr=1e-2",
            "peft.r=4",
        ],
    )
    return out / "run"


def gguf_logits(directory, name, ids):
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(("quant", "tolerance"), [("f16", 2e-2), ("q8_0", 0.25)])
def test_the_gguf_file_loads_back_as_the_merged_model(run_dir, tmp_path, quant, tolerance):
    record = export.run(str(run_dir), "gguf", tmp_path / "out", quant)
    merged, tokenizer, _ = merge.load_merged(str(run_dir), None, "fp32")
    ids = tokenizer(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = merged(input_ids=ids).logits
    got = gguf_logits(tmp_path / "out", record["file"], ids)
    assert (got - expected).abs().max().item() < tolerance * expected.abs().max().item()
    if quant == "f16":  # a random tiny model has near-ties that 8-bit weights may flip; 16 bits must not
        assert (got.argmax(-1) == expected.argmax(-1)).float().mean().item() >= 0.9
    gguf_tok = AutoTokenizer.from_pretrained(tmp_path / "out", gguf_file=record["file"])
    for text in TEXTS:
        assert (
            gguf_tok(text, add_special_tokens=False)["input_ids"]
            == tokenizer(text, add_special_tokens=False)["input_ids"]
        )
    assert record["quant"] == quant and record["bytes"] == (tmp_path / "out" / record["file"]).stat().st_size


def test_ollama_gets_a_modelfile_with_the_template_stops_and_system(run_dir, tmp_path):
    record = export.run(str(run_dir), "ollama", tmp_path / "out", "q8_0")
    text = (tmp_path / "out" / "Modelfile").read_text()
    assert text.startswith(f"FROM ./{record['file']}\n")
    assert record["template"] == "chatml" and 'PARAMETER stop "<|im_end|>"' in text
    assert 'SYSTEM """You triage tickets."""' in text
    assert record["register"].startswith("ollama create run -f ")
    assert json.loads((tmp_path / "out" / "forgetless_export.json").read_text())["format"] == "ollama"


def test_bad_input_gets_one_line(run_dir, tmp_path, tokenizer):
    with pytest.raises(UserError, match="--quant q3_x: unknown"):
        export.run(str(run_dir), "gguf", tmp_path / "a", "q3_x")
    if importlib.util.find_spec("llama_cpp") is None:
        with pytest.raises(UserError, match="q4_k_m needs llama.cpp's quantizer"):
            export.run(str(run_dir), "gguf", tmp_path / "a", "q4_k_m")
    with pytest.raises(UserError, match="--format gif"):
        export.run(str(run_dir), "gif", tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserError, match="exists and is not empty"):
        export.run(str(run_dir), "gguf", tmp_path / "full")
    with pytest.raises(UserError):
        export.run(str(tmp_path / "no-run"), "gguf", tmp_path / "b")
    with pytest.raises(UserError, match="exporting gpt2 models to GGUF is not supported yet"):
        export.architecture(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=4))
    assert main(["export", str(run_dir), "--format", "gguf", "--out", str(tmp_path / "c"), "--quant", "q3_x"]) == 2


def test_a_k_quant_export_that_fails_midway_leaves_no_file_under_the_final_name(run_dir, tmp_path, monkeypatch):
    """llama.cpp's quantizer wrote straight to the output file: a killed or failed export left a half
    GGUF under the final name."""
    pytest.importorskip("llama_cpp", reason="the k-quants need llama-cpp-python")
    import errno

    def half_then_full_disk(src, out, quant):
        out.write_bytes(b"GGUF" + b"\0" * 64)  # what llama.cpp had written when the disk filled
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr(gguf_model, "quantize_with_llama_cpp", half_then_full_disk)
    with pytest.raises(OSError):
        export.run(str(run_dir), "gguf", tmp_path / "out", "q4_k_m")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_the_modelfile_carries_the_templates_default_system_turn(tokenizer):
    """SmolLM2's template writes "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    as the system turn of a conversation without one; the ChatML Go template writes a system turn only
    from SYSTEM, so the Modelfile dropped the turn the model was trained and evaluated with."""
    from forgetless.deploy.formats import ollama
    from forgetless.model.chat_format import CHATML

    text, found = ollama.modelfile("m.gguf", tokenizer, None)
    default = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert found == "chatml" and f'SYSTEM """{default}"""' in text
    # with it as the system message, the bundled format renders what the model's own template renders
    marked = [{"role": "system", "content": default}, ollama.PROBE[0]]
    ours = tokenizer.apply_chat_template(marked, chat_template=CHATML, tokenize=False, add_generation_prompt=True)
    assert ours == tokenizer.apply_chat_template(ollama.PROBE[:1], tokenize=False, add_generation_prompt=True)
    assert 'SYSTEM """Triage tickets."""' in ollama.modelfile("m.gguf", tokenizer, "Triage tickets.")[0]
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = CHATML  # a template without a default system message
    assert "SYSTEM" not in ollama.modelfile("m.gguf", plain, None)[0]


def test_a_type_can_keep_tensor_groups_at_f16(run_dir, tmp_path):
    """`--quant q8_0:f16=embed` keeps the embedding (the output head when tied) at f16 and quantizes the
    rest: docs/deploy.md measures which groups cost q8_0 its agreement with transformers."""
    import gguf

    q8 = gguf.GGMLQuantizationType.Q8_0
    assert gguf_model.stored_type("token_embd.weight", (96, 64), "q8_0:f16=embed") == gguf_model.F16
    assert gguf_model.stored_type("blk.0.attn_q.weight", (64, 64), "q8_0:f16=embed") == q8
    assert gguf_model.stored_type("blk.0.ffn_up.weight", (64, 64), "q8_0:f16=attn,ffn") == gguf_model.F16
    assert gguf_model.stored_type("blk.0.attn_norm.weight", (64,), "q8_0:f16=attn") == gguf_model.F32
    for bad in ("q8_0:f16=head", "q4_k_m:f16=embed"):
        with pytest.raises(UserError, match="keep groups"):
            export.run(str(run_dir), "gguf", tmp_path / bad.replace(":", "-"), bad)
    record = export.run(str(run_dir), "gguf", tmp_path / "out", "q8_0:f16=embed")
    assert record["file"] == "run-q8_0-f16-embed.gguf" and record["quant"] == "q8_0:f16=embed"
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "out" / record["file"]).tensors}
    assert types["token_embd.weight"] == gguf_model.F16 and types["blk.0.attn_q.weight"] == q8
