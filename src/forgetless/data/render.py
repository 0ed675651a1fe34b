"""Render examples with the tokenizer's chat template and mask the loss to assistant tokens.

Masking works on characters, not on token guesses: for assistant turn i we render the
conversation up to the generation prompt before it and up to the end of that turn; the
characters between are the answer (content plus the template's end-of-turn marker, so the
model learns to stop). Tokens whose first character falls inside such a span get labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from forgetless.data.formats import Example
from forgetless.errors import UserError

IGNORE = -100


@dataclass
class RenderReport:
    truncated: int = 0
    dropped: list[str] = field(default_factory=list)  # "file:line: reason"


def with_system(messages: tuple[dict, ...], system_prompt: str | None) -> list[dict]:
    msgs = list(messages)
    if system_prompt and msgs and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def _chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def prompt_text(tokenizer, messages: list[dict]) -> str:
    """The text a model sees before it answers the last user turn (for generation)."""
    return _chat(tokenizer, messages, add_generation_prompt=True)


def answer_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Full rendered text and the character spans of every assistant answer in it."""
    full = _chat(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start_text = _chat(tokenizer, messages[:i], add_generation_prompt=True)
        end_text = _chat(tokenizer, messages[: i + 1])
        if not (full.startswith(start_text) and full.startswith(end_text)):
            raise UserError(
                "the tokenizer's chat template renders conversation prefixes differently from the whole "
                "conversation, so answer tokens cannot be located; set data.loss_on=all or use another template"
            )
        spans.append((len(start_text), len(end_text)))
    return full, spans


def encode(tokenizer, example: Example, loss_on: str = "assistant", system_prompt: str | None = None) -> dict:
    """Token ids and labels (IGNORE where no loss) for one example, not yet truncated."""
    if example.text is not None:
        ids = tokenizer(example.text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        return {"input_ids": ids, "labels": list(ids)}
    messages = with_system(example.messages, system_prompt)
    full, spans = answer_spans(tokenizer, messages)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    if loss_on == "all":
        return {"input_ids": ids, "labels": list(ids)}
    labels = [
        tok if any(s <= start < e for s, e in spans) else IGNORE
        for tok, (start, _end) in zip(ids, enc["offset_mapping"], strict=True)
    ]
    return {"input_ids": ids, "labels": labels}


def encode_all(
    tokenizer,
    examples: list[Example],
    max_length: int,
    overlong: str,
    loss_on: str = "assistant",
    system_prompt: str | None = None,
    report: RenderReport | None = None,
) -> list[dict]:
    """Encode, then truncate or drop over-long rows; every drop is recorded in `report`."""
    report = report if report is not None else RenderReport()
    rows = []
    for ex in examples:
        row = encode(tokenizer, ex, loss_on, system_prompt)
        if len(row["input_ids"]) > max_length:
            if overlong == "drop":
                report.dropped.append(f"{ex.where}: {len(row['input_ids'])} tokens > data.max_length={max_length}")
                continue
            report.truncated += 1
            row = {k: v[:max_length] for k, v in row.items()}
        if all(label == IGNORE for label in row["labels"][1:]):
            report.dropped.append(f"{ex.where}: no answer tokens left within data.max_length={max_length}")
            continue
        rows.append(row)
    return rows
