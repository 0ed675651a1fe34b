"""data.chat_template: the bundled templates mask like the real ones, agree with the families' own
templates where the formats coincide, and travel with the adapter to merge and serve."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

import forgetless
from forgetless.adapters import saved
from forgetless.cli import main
from forgetless.config.fields import TEMPLATE_NAMES
from forgetless.data.formats import Example
from forgetless.data.render import encode
from forgetless.deploy import serve
from forgetless.errors import UserError
from forgetless.model import chat_format
from forgetless.model.chat_format import prompt_text
from tests.data.test_render import labelled_text
from tests.families.conftest import family_tokenizer
from tests.families.test_masks import SYSTEM, TURNS

END = {"chatml": "<|im_end|>\n", "qwen": "<|im_end|>\n", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>\n"}


def test_the_names_the_config_keeps_are_the_bundled_templates():
    assert tuple(chat_format.BUNDLED) == TEMPLATE_NAMES


# a tokenizer that has the format's special tokens (else a token can straddle the answer's end)
VOCAB = {"chatml": "qwen2", "qwen": "qwen2", "llama3": "llama3", "gemma": "gemma", "mistral": "mistral"}


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_each_bundled_template_masks_every_answer_and_its_end(family_tokenizers, name):
    tok = AutoTokenizer.from_pretrained(family_tokenizer(family_tokenizers, VOCAB[name]).name_or_path)
    tok.chat_template = chat_format.template_text(name)
    row = encode(tok, Example("t:1", messages=(SYSTEM, *TURNS)))
    answers = [m["content"] for m in TURNS if m["role"] == "assistant"]
    end = END.get(name, tok.eos_token)
    assert [t.replace(" ", "") for t in labelled_text(tok, row)] == [(a + end).replace(" ", "") for a in answers]
    assert "You triage support tickets." in tok.decode(row["input_ids"])  # folded in for gemma, kept elsewhere


@pytest.mark.parametrize(("bundled", "family", "system"), [("gemma", "gemma", False), ("qwen", "qwen2", True)])
def test_bundled_templates_render_as_the_real_ones(family_tokenizers, bundled, family, system):
    real = family_tokenizer(family_tokenizers, family)
    messages = ([SYSTEM] if system else []) + TURNS
    ours = AutoTokenizer.from_pretrained(real.name_or_path)
    ours.chat_template = chat_format.template_text(bundled)
    assert ours.apply_chat_template(messages, tokenize=False) == real.apply_chat_template(messages, tokenize=False)
    assert prompt_text(ours, messages[:-1]) == prompt_text(real, messages[:-1])


def test_a_broken_template_file_is_named_with_its_line(tmp_path):
    bad = tmp_path / "t.jinja"
    bad.write_text("{% for m in messages %}\n{{ m['content'] }\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"t\.jinja:2: not a valid jinja template"):
        chat_format.template_text(str(bad))
    with pytest.raises(UserError, match="neither a bundled template"):
        chat_format.template_text("vicuna")


def test_the_chosen_template_is_saved_with_the_adapter_and_used_by_merge_and_serve(tiny_overrides, tmp_path):
    forgetless.train({}, [*tiny_overrides, "data.chat_template=llama3"])
    run = tmp_path / "run"
    assert saved.adapter_template(run / "adapter") == chat_format.LLAMA3
    assert main(["merge", str(run), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "tokenizer_config.json").read_text())
    on_disk = merged.get("chat_template") or (tmp_path / "merged" / "chat_template.jinja").read_text()
    assert on_disk == chat_format.LLAMA3
    base = next(o for o in tiny_overrides if o.startswith("model.name=")).split("=", 1)[1]
    engine = serve.Engine(base, {"t": str(run)}, max_tokens=4, max_prompt_tokens=128)
    assert "<|start_header_id|>assistant" in prompt_text(engine.tokenizer, TURNS[:1])
    other = tmp_path / "other"
    other.mkdir()
    (other / "chat_template.jinja").write_text(chat_format.GEMMA, encoding="utf-8")
    with pytest.raises(UserError, match="different chat templates"):
        saved.use_adapter_templates(engine.tokenizer, [run / "adapter", other])
