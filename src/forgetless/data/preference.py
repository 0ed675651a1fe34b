"""Preference data for DPO, the reward model and RLHF: {prompt, chosen, rejected} rows.

    prompt    a string (one user turn) or chat messages ending with a user turn
    chosen    the preferred answer: a string, an assistant message {"role", "content"}, or
    rejected  messages ending with one (only that last assistant turn is used)

A bad row raises UserError naming file:line and the field, or is skipped and counted under
data.on_error=skip, as for SFT data. A pair is encoded as two rows that share the prompt's
tokens; the loss counts the answer tokens only. The two answers of a pair are collated into
one batch (chosen at even rows, rejected at odd rows) so that one forward pass scores both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forgetless.data.batching import collate
from forgetless.data.build import split
from forgetless.data.formats import Example, ReadReport, RowError, _check_chat, iter_rows, resolve_path
from forgetless.data.render import RenderReport, encode
from forgetless.errors import UserError
from forgetless.model.likelihood import IGNORE


@dataclass(frozen=True)
class Preference:
    where: str
    prompt: tuple[dict, ...]  # ends with a user turn
    chosen: str
    rejected: str


def prompt_of(value) -> tuple[dict, ...]:
    if isinstance(value, str):
        if not value.strip():
            raise RowError("field 'prompt' is empty")
        return ({"role": "user", "content": value},)
    if isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("role") == "user":
        return _check_chat([*value, {"role": "assistant", "content": "-"}])[:-1]
    raise RowError("field 'prompt' must be a string or chat messages that end with a user turn")


def answer_of(row: dict, key: str) -> str:
    if key not in row or row[key] is None:
        raise RowError(f"field '{key}' is missing")
    value = row[key]
    if isinstance(value, list) and value:
        value = value[-1]
    if isinstance(value, dict):
        if value.get("role") != "assistant" or not isinstance(value.get("content"), str):
            raise RowError(f"field '{key}' must be a string or an assistant message {{role, content}}")
        value = value["content"]
    if not isinstance(value, str):
        raise RowError(f"field '{key}' must be a string or an assistant message, got {type(value).__name__}")
    if not value.strip():
        raise RowError(f"field '{key}' is empty")
    return value


def to_preference(row, where: str) -> Preference:
    if not isinstance(row, dict):
        raise RowError(f"a row must be a JSON object, got {type(row).__name__}")
    if "prompt" not in row:
        raise RowError(
            f"field 'prompt' is missing (preference rows are {{prompt, chosen, rejected}}; got {sorted(row)})"
        )
    pair = Preference(where, prompt_of(row["prompt"]), answer_of(row, "chosen"), answer_of(row, "rejected"))
    if pair.chosen == pair.rejected:
        raise RowError("fields 'chosen' and 'rejected' are identical: the pair says nothing")
    return pair


def read_preferences(ref: str, on_error: str = "raise", report: ReadReport | None = None) -> list[Preference]:
    path = resolve_path(ref)
    report = report if report is not None else ReadReport()
    out: list[Preference] = []
    for line, row in iter_rows(path):
        where = f"{path}:{line}"
        report.rows += 1
        try:
            if isinstance(row, RowError):
                raise row
            out.append(to_preference(row, where))
        except RowError as e:
            if on_error == "raise":
                raise UserError(f"{where}: {e} (fix the row, or set data.on_error=skip to skip bad rows)") from None
            report.skipped.append(f"{where}: {e}")
    if not out:
        raise UserError(
            f"{path}: no valid preference rows" + (f"; first problem: {report.skipped[0]}" if report.skipped else "")
        )
    return out


def encode_pair(
    tokenizer, pair: Preference, max_length: int, report: RenderReport, system: str | None = None
) -> dict | None:
    """{"chosen": row, "rejected": row}; answers are cut at max_length (counted); a prompt that
    leaves no room for an answer drops the pair (counted)."""
    rows = {}
    for side in ("chosen", "rejected"):
        messages = (*pair.prompt, {"role": "assistant", "content": getattr(pair, side)})
        row = encode(tokenizer, Example(pair.where, messages=messages), system_prompt=system)
        if len(row["input_ids"]) > max_length:
            report.truncated += 1
            row = {k: v[:max_length] for k, v in row.items()}
        if all(label == IGNORE for label in row["labels"][1:]):
            report.dropped.append(f"{pair.where}: the prompt alone fills data.max_length={max_length}")
            return None
        rows[side] = row
    return rows


def collate_pairs(pairs: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of 2B rows, interleaved: chosen answers at even rows, rejected at odd rows."""
    return collate([row for p in pairs for row in (p["chosen"], p["rejected"])], pad_id)


@dataclass
class PairData:
    train: list[dict]  # {"chosen": row, "rejected": row}
    validation: list[dict]
    validation_pairs: list[Preference]  # the held-out pairs (their prompts feed generation-based scores)
    notes: list[str]


def build_pairs(cfg, tokenizer, seed: int) -> PairData:
    """data.train (and data.validation, or a seeded data.validation_split) as encoded pairs."""

    if not cfg.train:
        raise UserError("data.train is empty: give one or more preference files ({prompt, chosen, rejected} rows)")
    read = ReadReport()

    def load(refs):
        return [p for ref in refs for p in read_preferences(ref, cfg.on_error, read)]

    train, val = load(cfg.train), load(cfg.validation) if cfg.validation else []
    if not cfg.validation:
        train, val = split(train, cfg.validation_split, seed)
    render = RenderReport()

    def encode_all(pairs):
        kept = [(p, encode_pair(tokenizer, p, cfg.max_length, render, cfg.system_prompt)) for p in pairs]
        return [row for _, row in kept if row is not None], [p for p, row in kept if row is not None]

    train_rows, _ = encode_all(train)
    val_rows, val_pairs = encode_all(val)
    notes = [f"skipped {len(read.skipped)} bad row(s); first: {read.skipped[0]}"] if read.skipped else []
    if render.truncated:
        notes.append(f"truncated {render.truncated} answer(s) to data.max_length")
    if render.dropped:
        notes.append(f"dropped {len(render.dropped)} pair(s); first: {render.dropped[0]}")
    if not train_rows:
        raise UserError("no training pairs are left after validation and truncation; see the messages above")
    return PairData(train_rows, val_rows, val_pairs, notes)


def fixed_pairs(rows: list[dict], batch_size: int, pad: int) -> list[dict]:
    """Held-out pairs as fixed micro-batches (no shuffling), for scoring."""
    return [collate_pairs(rows[i : i + batch_size], pad) for i in range(0, len(rows), batch_size)]
