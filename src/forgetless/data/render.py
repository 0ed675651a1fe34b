"""Render examples with the tokenizer's chat template and mask the loss to assistant tokens.

Masking works on characters, not on token guesses: for assistant turn i we render the
conversation up to the generation prompt before it and up to the end of that turn; the
characters between are the answer (content plus the template's end-of-turn marker, so the
model learns to stop). Tokens whose first character falls inside such a span get labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jinja2

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


_TAKES_SYSTEM: dict[str, bool] = {}  # template text -> whether it renders a system message


def _takes_system(tokenizer) -> bool:
    """Whether the chat template renders a system message in a conversation that ends with an answer.
    Gemma's raises; Mistral-Nemo's writes it into the last user turn only when that turn is the last
    message, so every training row would lose it silently."""
    template = tokenizer.chat_template or ""
    if template not in _TAKES_SYSTEM:
        probe = [
            {"role": "system", "content": "SYSTEM-PROBE"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ]
        try:
            text = tokenizer.apply_chat_template(probe, tokenize=False)
        except jinja2.exceptions.TemplateError:  # raise_exception('System role not supported')
            text = ""
        _TAKES_SYSTEM[template] = "SYSTEM-PROBE" in text
    return _TAKES_SYSTEM[template]


def fold_system(tokenizer, messages: list[dict]) -> list[dict]:
    """For a template without a system role (or one that drops it from finished conversations), the
    system text goes in front of the first user turn, in training and generation alike (what Gemma's
    model card recommends); other templates get the messages unchanged."""
    if not messages or messages[0]["role"] != "system":
        return messages
    if _takes_system(tokenizer):
        return messages
    system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": system}, *rest]


def _chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    try:
        return tokenizer.apply_chat_template(
            fold_system(tokenizer, messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except jinja2.exceptions.TemplateError as e:
        roles = "/".join(m["role"] for m in messages)
        raise UserError(f"the chat template refuses a conversation ({roles}): {e}") from None


def prompt_text(tokenizer, messages: list[dict]) -> str:
    """The text a model sees before it answers the last user turn (for generation)."""
    return _chat(tokenizer, messages, add_generation_prompt=True)


def answer_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Full rendered text and the character spans of every assistant answer in it.

    First by prefixes: the answer is what the conversation up to the end of that turn adds to the
    conversation up to its generation prompt. Templates that render a prefix differently from the
    whole (Mistral puts the system text in the last user turn; Phi-3 ends with EOS; Qwen3 adds an
    empty reasoning block to the last answer only) fall back to finding each answer in the text."""
    full = _chat(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start_text = _chat(tokenizer, messages[:i], add_generation_prompt=True)
        end_text = _chat(tokenizer, messages[: i + 1])
        if not (full.startswith(start_text) and full.startswith(end_text)):
            return full, _located_spans(tokenizer, messages, full)
        spans.append((len(start_text), len(end_text)))
    return full, spans


def _turn_end(tokenizer) -> str:
    """What the template writes after an answer's text (e.g. '<|eot_id|>', '<end_of_turn>\n', '</s>')."""
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ANSWER-PROBE"}]
    text = _chat(tokenizer, probe)
    return text[text.rindex("ANSWER-PROBE") + len("ANSWER-PROBE") :]


def _located_spans(tokenizer, messages: list[dict], full: str) -> list[tuple[int, int]]:
    """Each answer found in order in the full text, plus as much of the end-of-turn marker as follows it."""
    end, spans, cursor = _turn_end(tokenizer), [], 0
    for m in messages:
        if m["role"] != "assistant":
            continue
        content = m["content"].strip()
        start = full.find(content, cursor)
        if not content or start < 0:
            raise UserError(
                "the tokenizer's chat template changes the answer text, so answer tokens cannot be located; "
                "set data.loss_on=all or data.chat_template to another template"
            )
        stop = start + len(content)
        while stop < len(full) and full[stop].isspace() and not end.startswith(full[stop]):
            stop += 1  # spaces the template keeps after the answer but not in its marker
        # the whole marker, or its first lines or tokens ('<|end|>\n' of '<|end|>\n<|endoftext|>' mid-chat)
        cuts = sorted({len(end), *(i + 1 for i, c in enumerate(end) if c in "\n>")}, reverse=True)
        stop += next((k for k in cuts if full.startswith(end[:k], stop)), 0)
        spans.append((start, stop))
        cursor = stop
    return spans


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
