"""Token ids and labels for training rows: the loss only on the answers' tokens.

model/chat_format.py renders a conversation and finds the character spans of its answers; a token whose
first character falls inside such a span gets its id as label, every other token IGNORE.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from forgetless.data.formats import Example
from forgetless.model.chat_format import answer_spans, with_system
from forgetless.model.likelihood import IGNORE


@dataclass
class RenderReport:
    truncated: int = 0
    dropped: list[str] = field(default_factory=list)  # "file:line: reason"


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
