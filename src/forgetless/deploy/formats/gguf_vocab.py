"""The tokenizer half of a GGUF file: what llama.cpp needs to tokenize exactly as transformers does.

A base that came as a GGUF file (the embedded model) already carries llama.cpp's own description of
its tokenizer: it is copied field by field. Otherwise it is described from tokenizer.json:
- byte-level BPE (Llama-3, Qwen, SmolLM, GPT-2 style): the tokens in id order with their types, the
  merges, and the name under which llama.cpp knows its pre-tokenizer (the regex that splits text
  before BPE);
- Gemma-4's vocabulary: llama.cpp's own "gemma4" tokenizer (the family table names it): BPE merges
  over raw UTF-8 text with '▁' for spaces; llama.cpp always puts BOS first for it;
- other sentencepiece-style BPE with byte fallback (Llama-2, Mistral, Phi-3, Gemma-2/3): llama.cpp's "llama"
  tokenizer, which merges the adjacent pair with the highest score; a token's score is minus the
  rank of the first merge that makes it, so the merge order is transformers' (tokenizer.json keeps
  merges, not sentencepiece's scores), bytes `<0xNN>` are byte tokens, and whether a space is put
  before the text comes from the normalizer or pre-tokenizer (see _space_prefix for the one case
  llama.cpp cannot express).
The chat template is always the run's (it may be data.chat_template).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf

from forgetless.errors import UserError
from forgetless.model.families import Family

# Pre-tokenizer names llama.cpp knows, preferred in this order when transformers' table gives one
# regex several names (llama.cpp treats them alike).
PREFERRED = ("llama-bpe", "qwen2", "qwen35", "tekken", "gpt-4o")
CHAT_TEMPLATE = "tokenizer.chat_template"
HINT = "; export from a base that came as a GGUF file, or convert with llama.cpp's convert_hf_to_gguf.py"
# llama.cpp's own tokenizer models (model/families.py names a family's) -> the tokens llama.cpp always
# shows in the text, as its converter types them (its chat parser reads Gemma-4's thinking and tool calls
# from these). llama.cpp puts BOS first for all of them, whatever the file says.
SHOWN = {"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>'}
OWN_TOKENIZERS = {"gemma4": SHOWN}


def add(writer: gguf.GGUFWriter, tokenizer, source_gguf: Path | None, vocab_size: int, known: Family) -> None:
    """`known`: the family (model/families.py): its own pre-tokenizer name, preferred where a regex has
    several, and llama.cpp's own tokenizer model for its vocabulary, if any."""
    if source_gguf is not None:
        copy_from(writer, source_gguf)
    else:
        from_tokenizer_json(writer, tokenizer, vocab_size, known)
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


def pre_tokenizer_name(spec: dict, preferred: str | None = None) -> str:
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
    return next((n for n in (preferred, *PREFERRED) if n in names), names[0])


def from_tokenizer_json(writer: gguf.GGUFWriter, tokenizer, vocab_size: int, known: Family) -> None:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise UserError(f"GGUF export: {model.get('type')} tokenizers are not written (BPE only){HINT}")
    vocab = tokenizer.get_vocab()
    size = max(vocab_size, max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for token, i in vocab.items():
        tokens[i], types[i] = token, gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    own = known.tokenizer_model
    if own:
        writer.add_tokenizer_model(own)  # llama.cpp sets its pre-tokenizer itself
        writer.add_token_merges(merges)
        writer.add_add_space_prefix(False)
    elif model.get("byte_fallback"):
        _sentencepiece_style(writer, spec, tokens, merges)
    else:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre_tokenizer_name(spec, known.pre_tokenizer))
        writer.add_token_merges(merges)
    for added in spec.get("added_tokens", []):
        types[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    if model.get("byte_fallback") and not own and tokenizer.unk_token_id is not None:
        types[tokenizer.unk_token_id] = gguf.TokenType.UNKNOWN  # as sentencepiece types it
    for i, token in enumerate(tokens):
        if BYTE_TOKEN.fullmatch(token):
            types[i] = gguf.TokenType.BYTE
        elif own and token in OWN_TOKENIZERS[own]:
            types[i] = gguf.TokenType.USER_DEFINED
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    for token_id, add_id in (
        (tokenizer.bos_token_id, writer.add_bos_token_id),
        (tokenizer.eos_token_id, writer.add_eos_token_id),
        (tokenizer.pad_token_id, writer.add_pad_token_id),
        (tokenizer.unk_token_id, writer.add_unk_token_id),
    ):
        if token_id is not None:
            add_id(token_id)
    writer.add_add_bos_token(bool(own) or adds_bos(tokenizer))
    writer.add_add_eos_token(False)


def adds_bos(tokenizer) -> bool:
    """Whether llama.cpp should put BOS first: when the tokenizer adds it to plain text, unless the chat
    template writes no BOS (Phi-3.5): its chat prompts never had one in training, evaluation or forgetless
    serve, and llama.cpp adds it to chat prompts too. A template that writes the BOS text itself
    (Mistral's) keeps it, and the Ollama template leaves its copy out (ollama.py)."""
    bos = tokenizer.bos_token_id
    if bos is None or tokenizer("a")["input_ids"][:1] != [bos]:
        return False
    if not tokenizer.chat_template:
        return True
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "a"}], tokenize=False, add_generation_prompt=True)
    return chat.startswith(tokenizer.bos_token)


BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


def _sentencepiece_style(writer, spec: dict, tokens: list, merges: list) -> None:
    """llama.cpp's "llama" (SPM) tokenizer: scores that replay the merges in transformers' order."""
    rank: dict[str, int] = {}
    for r, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", ""), r)
    scores = [-float(rank[t]) if t in rank else 0.0 for t in tokens]
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_scores(scores)
    writer.add_add_space_prefix(_space_prefix(spec))


def _space_prefix(spec: dict) -> bool:
    """Whether the tokenizer puts '▁' before the text (Llama-2, Mistral, Phi-3 do; Gemma does not)."""
    steps = []
    for part in (spec.get("normalizer"), spec.get("pre_tokenizer")):
        part = part or {}
        steps += part.get("normalizers") or part.get("pretokenizers") or [part]
    for step in steps:
        if step.get("type") == "Prepend" and step.get("prepend") == "\u2581":
            return True
        # "first" (transformers' legacy=False) adds it to the text's first piece only, never after a
        # special token; llama.cpp adds it before every piece or none. None matches every chat prompt
        # (they start with a special token); a bare completion prompt then lacks its leading '▁'.
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") == "always"
    return False
