"""`forgetless data augment`: more rows from the ones a user has, by paraphrase, back-translation or synonyms.

This module holds what needs no model (rows, synonyms, filters, output); the model methods and the
drift filter run in reference/paraphrase.py, which also ties the steps together.

What is rewritten: the prompt side of a row (instruction and input, a pair's input, a chat's user
turns, a text row's text); the expected answer only with `answers=True`, because the answer is
what the model learns and a rewritten label is a wrong label.

paraphrase     an instruct model (the base by default) rewrites each field, sampled, n times;
backtranslate  the model translates each field EN->JA->EN (or JA->EN->JA), sampled, n times;
synonyms       WordNet (English) / Sudachi synonym groups (Japanese) replace a share of the
               content words (data/synonyms.py), no model needed.

A candidate row is kept only if every rewritten field passes the filters, and each rejection is
counted by reason: empty, unchanged (same text after normalisation), length (under half or over
twice the original's characters), language (not the original's), overlap (its words or, in
Japanese, character bigrams share under 15% with the original's: it says something else), numbers (a number of the
original is missing: order numbers and codes must survive), repeat (equal to another variant of
the row) and drift (with a model: the answer's mean negative log-likelihood given the new prompt
exceeds the one given the original prompt by more than `max_drift` nats per token, i.e. the
prompt no longer asks for that answer).

The output holds the original rows first, unchanged and on the same lines (a JSONL source is
copied line for line), then the kept variants, each with {"augmented_from": LINE, "method": M}
where LINE is the original's line in the output. OUT.augment.json records the settings and counts.
"""

from __future__ import annotations

import copy
import json
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from forgetless.data import similarity, synonyms
from forgetless.data.formats import RowError, detect_format, iter_rows, resolve_path, to_example
from forgetless.errors import UserError
from forgetless.files import jsonl_lines, read_text, write_json, write_text

METHODS = ("paraphrase", "backtranslate", "synonyms")
LANGUAGES = ("auto", "en", "ja")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_LABEL = re.compile(r"^\s*(rewritten text|paraphrase|translation|text|文章|翻訳)\s*[:：]\s*", re.I)
ASK = {
    "paraphrase": {
        "en": "Rewrite this text in different words. Keep its meaning and keep every number, name and code "
        "exactly. Reply with the rewritten text only.\n\nText: {text}",
        "ja": "次の文章を、意味を変えずに別の言葉で書き換えてください。数字・名前・番号はそのまま残し、"
        "書き換えた文章だけを答えてください。\n\n文章: {text}",
    },
    "translate": "Translate this text into {target}. Keep every number, name and code exactly. "
    "Reply with the translation only.\n\nText: {text}",
}
NAMES = {"en": "English", "ja": "Japanese"}
PIVOT_FAILED = "\x00"  # back-translation: the first leg did not come out in the pivot language
MIN_OVERLAP = 0.15  # word-set Jaccard with the original under which a rewrite is about something else


@dataclass(frozen=True)
class Settings:
    method: str
    n: int = 2
    model: str = "smollm2-135m-instruct"
    seed: int = 0
    answers: bool = False  # also rewrite the expected answers
    rate: float = 0.15  # synonyms: share of the replaceable words replaced
    max_drift: float = 0.5  # nats per answer token
    language: str = "auto"
    temperature: float = 0.8

    def check(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown augmentation method '{self.method}'; choose one of {', '.join(METHODS)}")
        if self.language not in LANGUAGES:
            raise UserError(
                f"no synonym source or translation pivot for language '{self.language}'; "
                "forgetless augments English (WordNet) and Japanese (Sudachi): use --language en, ja or auto"
            )
        if self.n < 1 or not 0 < self.rate <= 1:
            raise UserError("--n must be at least 1 and --rate in (0, 1]")


@dataclass
class Row:
    line: int  # the original's line in the output
    raw: dict
    fields: list[tuple]  # paths into raw of the texts to rewrite, e.g. ("input",) or ("messages", 2, "content")
    answer: str
    language: str


def get(raw: dict, path: tuple):
    for k in path:
        raw = raw[k]
    return raw


def _set(raw: dict, path: tuple, value: str) -> None:
    for k in path[:-1]:
        raw = raw[k]
    raw[path[-1]] = value


def _fields(raw: dict, fmt: str, answers: bool) -> tuple[list[tuple], str]:
    if fmt == "chat":
        msgs = raw["messages"]
        last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        roles = ("user", "assistant") if answers else ("user",)
        paths = [("messages", i, "content") for i, m in enumerate(msgs) if m["role"] in roles]
        return paths, msgs[last]["content"]
    if fmt == "text":
        return [("text",)], ""
    keys = ["instruction", "input"] if fmt == "instruction" else ["input"]
    keys += ["output"] if answers else []
    return [(k,) for k in keys if isinstance(raw.get(k), str) and raw[k].strip()], raw["output"]


def read_rows(src: str, s: Settings) -> tuple[list[Row], list[str]]:
    """The rows to augment and the output's first lines (the originals). A bad row is an error:
    augmenting a file that cannot be trained on would only multiply the problem."""
    path = resolve_path(src)
    rows, lines, fmt = [], [], None
    # The originals are copied as they are, numbered as the reader numbers them (on "\n" alone).
    verbatim = [x.rstrip("\r") for x in jsonl_lines(read_text(path))] if path.suffix.lower() == ".jsonl" else None
    for line, raw in iter_rows(path):
        where = f"{path}:{line}"
        try:
            if isinstance(raw, RowError):
                raise raw
            fmt = fmt or detect_format(raw)
            to_example(raw, fmt, where)  # the training reader's validation
        except RowError as e:
            raise UserError(f"{where}: {e}; fix the row before augmenting") from None
        if verbatim is None:
            lines.append(json.dumps(raw, ensure_ascii=False))
            line = len(lines)
        paths, answer = _fields(raw, fmt, s.answers)
        text = "\n".join(get(raw, p) for p in paths)
        lang = similarity.language(text) if s.language == "auto" else s.language
        if lang not in NAMES:
            raise UserError(
                f"{where}: the row is in neither English nor Japanese ({lang}); forgetless augments those two "
                "languages only: remove the row or pass --language en|ja"
            )
        rows.append(Row(line, raw, paths, answer, lang))
    if not rows:
        raise UserError(f"{path}: the file has no rows to augment")
    return rows, verbatim if verbatim is not None else lines


def clean(text: str, original: str) -> str:
    lines = text.strip().split("\n")
    if len(lines) > 1 and lines[0].rstrip().endswith((":", "：")):  # "Here is the rewritten text:"
        text = "\n".join(lines[1:])
    text = _LABEL.sub("", text.strip()).strip().strip('"“”「」').strip()
    if "\n" not in original:  # a one-paragraph field: the model's first paragraph is the answer
        text = text.split("\n\n")[0].strip()
    return text


def _words(text: str) -> set[str]:
    """Content-bearing units for the overlap check: words of 3+ letters, or Japanese character bigrams."""
    t = similarity.normalize(text)
    if similarity.language(t) == "ja":
        return {t[i : i + 2] for i in range(len(t) - 1)}
    return set(re.findall(r"[a-z]{3,}", t))


def reject_reason(new: str, old: str, lang: str) -> str | None:
    """Why a rewritten field is not kept (None: kept)."""
    if new == PIVOT_FAILED:
        return "pivot"
    if not new.strip():
        return "empty"
    if similarity.normalize(new) == similarity.normalize(old):
        return "unchanged"
    if not 0.5 <= len(new) / max(len(old), 1) <= 2.0:
        return "length"
    if similarity.language(new) != lang:
        return "language"
    if _words(new) and similarity.jaccard(_words(new), _words(old)) < MIN_OVERLAP:
        return "overlap"
    if Counter(_NUMBER.findall(old)) - Counter(_NUMBER.findall(new)):
        return "numbers"
    return None


def rewrite_with_synonyms(rows: list[Row], s: Settings) -> list[list[list[str]]]:
    rng = random.Random(s.seed)
    replace = {"en": synonyms.replace_english, "ja": synonyms.replace_japanese}
    out = []
    for r in tqdm(rows, desc="augment: synonyms", unit="row", disable=len(rows) < 200):
        out.append(
            [[replace[r.language](get(r.raw, p), r.answer, s.rate, rng)[0] for p in r.fields] for _ in range(s.n)]
        )
    return out


def select(rows: list[Row], variants: list[list[list[str]]], s: Settings, nll=None) -> tuple[list[dict], Counter]:
    """The variants that pass the filters, as rows with their origin; and the rejections by reason.
    `nll(raw, fmt)`: the answer's mean NLL given the row's prompt, for the drift filter (None: off)."""
    rejected: Counter = Counter()
    kept: list[dict] = []
    for r, per_row in zip(rows, variants, strict=True):
        fmt = detect_format(r.raw)
        base_nll = nll(r.raw, fmt) if nll is not None and not s.answers and fmt != "text" else None
        seen: set[str] = set()
        for fields in per_row:
            reasons = [reject_reason(new, get(r.raw, p), r.language) for p, new in zip(r.fields, fields, strict=True)]
            # A field may stay as it was (a short instruction with nothing to replace); the row may not.
            reason = next((x for x in reasons if x not in (None, "unchanged")), None)
            reason = reason or ("unchanged" if all(x == "unchanged" for x in reasons) else None)
            key = similarity.normalize("\n".join(fields))
            reason = reason or ("repeat" if key in seen else None)
            new_row = copy.deepcopy(r.raw)
            for p, new in zip(r.fields, fields, strict=True):
                _set(new_row, p, new)
            if reason is None and base_nll is not None and nll(new_row, fmt) - base_nll > s.max_drift:
                reason = "drift"
            if reason:
                rejected[reason] += 1
                continue
            seen.add(key)
            kept.append(new_row | {"augmented_from": r.line, "method": s.method})
    return kept, rejected


def write(src: str, out: Path, s: Settings, rows: list[Row], lines: list[str], kept: list[dict], rejected) -> dict:
    """OUT: the originals' lines, then the kept variants; OUT.augment.json: settings and counts."""
    text = "".join(line + "\n" for line in lines) + "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in kept)
    write_text(out, text)
    stats = {
        "source": src,
        "out": str(out),
        "settings": asdict(s),
        "rows": len(rows),
        "candidates": len(rows) * s.n,
        "written": len(kept),
        "rejected": dict(rejected.most_common()),
        "languages": dict(Counter(r.language for r in rows)),
    }
    write_json(out.with_suffix(".augment.json"), stats)
    return stats
