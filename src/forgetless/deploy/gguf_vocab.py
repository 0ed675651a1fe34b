"""The tokenizer half of a GGUF file: what llama.cpp needs to tokenize exactly as transformers does.

A base that came as a GGUF file (the embedded model) already carries llama.cpp's own description of
its tokenizer: it is copied field by field. Otherwise a byte-level BPE tokenizer (Llama-3, Qwen,
SmolLM, GPT-2 style) is described from tokenizer.json: the tokens in id order with their types, the
merges, and the name under which llama.cpp knows its pre-tokenizer (the regex that splits text
before BPE). The chat template is always the run's (it may be data.chat_template).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf

from forgetless.errors import UserError

# Pre-tokenizer names llama.cpp knows, preferred in this order when transformers' table gives one
# regex several names (llama.cpp treats them alike).
PREFERRED = ("llama-bpe", "qwen2", "qwen35", "tekken", "gpt-4o")
CHAT_TEMPLATE = "tokenizer.chat_template"
HINT = "; export from a base that came as a GGUF file, or convert with llama.cpp's convert_hf_to_gguf.py"


def add(writer: gguf.GGUFWriter, tokenizer, source_gguf: Path | None, vocab_size: int) -> None:
    if source_gguf is not None:
        copy_from(writer, source_gguf)
    else:
        from_tokenizer_json(writer, tokenizer, vocab_size)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def copy_from(writer: gguf.GGUFWriter, source: Path) -> None:
    reader = gguf.GGUFReader(str(source))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer.") or key == CHAT_TEMPLATE:
            continue
        main = field.types[0]
        sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), main, sub)


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for the tokenizer.json's pre-tokenizer (its split regex)."""
    # transformers' table of llama.cpp pre-tokenizer names and their regexes (its GGUF reader's)
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre])
    patterns = [p["pattern"].get("Regex") for p in parts if p.get("type") == "Split" and "pattern" in p]
    if not patterns:
        byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
        if len(parts) == 1 and byte_level and byte_level[0].get("use_regex", True):
            return "gpt2"
        raise UserError(
            f"GGUF export: llama.cpp has no name for this tokenizer's pre-tokenizer ({json.dumps(pre)[:100]}){HINT}"
        )
    names = [name for name, regex in GGUF_PRE_TOKENIZER_SPLITS.items() if regex == patterns[0]]
    if not names:
        raise UserError(f"GGUF export: llama.cpp has no pre-tokenizer with the split {patterns[0][:80]!r}{HINT}")
    return next((n for n in PREFERRED if n in names), names[0])


def from_tokenizer_json(writer: gguf.GGUFWriter, tokenizer, vocab_size: int) -> None:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UserError(
            "GGUF export: only byte-level BPE tokenizers (Llama-3, Qwen, SmolLM) are written so far; "
            f"this one is sentencepiece-style{HINT}"
        )
    vocab = tokenizer.get_vocab()
    size = max(vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for token, i in vocab.items():
        tokens[i], types[i] = token, gguf.TokenType.NORMAL
    for added in spec.get("added_tokens", []):
        types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(spec))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for token_id, add_id in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
    ):
        if token_id is not None:
            add_id(token_id)
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
