"""`forgetless data check | dedup | decontaminate`: what is in a training set before it is trained on.

check: rows and errors per file (the same file:line validation training does, every bad row counted),
token lengths against data.max_length (what truncation would cut), answer lengths, language mix,
label balance for classification-style answers, exact and near duplicates (clusters with examples),
leakage of held-out rows (the --against files and the bundled retention prompts and benchmark
questions) into training, and a diversity score (distinct word bigrams). Thresholds turn numbers into
warnings; --strict makes a warning an error (for CI and pipelines).
dedup / decontaminate: write the kept rows unchanged and a log of every removed row and why.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from forgetless.data import similarity
from forgetless.data.formats import Example, ReadReport, detect_format, iter_rows, read_file, read_prompts, resolve_path
from forgetless.errors import UserError
from forgetless.files import jsonl_lines, read_text, write_text

# The held-out sets of the retention suite: a training row equal to one of them hides forgetting.
RETENTION_SETS = ["builtin:general/heldout.jsonl", "builtin:general/mc.jsonl"]
WARN = {"duplicates": 0.05, "near_duplicates": 0.10, "truncated": 0.05, "label_ratio": 10.0}


def prompt_of(ex: Example) -> str:
    """What a row asks: every turn but the assistant's (its text for plain-text rows)."""
    if ex.text is not None:
        return ex.text
    return "\n".join(m["content"] for m in ex.messages if m["role"] != "assistant")


def answer_of(ex: Example) -> str:
    return "" if ex.text is not None else next(m["content"] for m in reversed(ex.messages) if m["role"] == "assistant")


def whole(ex: Example) -> str:
    return ex.text if ex.text is not None else "\n".join(m["content"] for m in ex.messages)


@dataclass
class Rows:
    """The valid rows of some files, with the errors of the invalid ones."""

    examples: list[Example] = field(default_factory=list)
    read: ReadReport = field(default_factory=ReadReport)
    formats: Counter = field(default_factory=Counter)
    origin: dict[str, str] = field(default_factory=dict)  # where -> where of the row it was augmented from
    methods: Counter = field(default_factory=Counter)  # augmentation methods of the augmented rows


def read(files: list[str]) -> Rows:
    rows = Rows()
    for ref in files:
        rows.examples += read_file(ref, on_error="skip", report=rows.read)
        path = resolve_path(ref)
        for line, raw in iter_rows(path):
            try:
                rows.formats[detect_format(raw)] += 1
            except ValueError:  # RowError: already counted by read_file
                continue
            if isinstance(raw.get("augmented_from"), int):  # written by `forgetless data augment`
                rows.origin[f"{path}:{line}"] = f"{path}:{raw['augmented_from']}"
                rows.methods[str(raw.get("method"))] += 1
    return rows


def held_out_prompts(against: list[str]) -> dict[str, list[str]]:
    """Prompts of the --against files and of the retention sets, per source."""
    out = {ref: [prompt_of(ex) for ex in read_file(ref, on_error="skip")] for ref in against}
    for ref in RETENTION_SETS:
        if ref.endswith("mc.jsonl"):
            out[ref] = [row["question"] for _, row in iter_rows(resolve_path(ref)) if isinstance(row, dict)]
        else:
            out[ref] = ["\n".join(m["content"] for m in conv) for _, conv in read_prompts(ref)]
    return out


def _percentiles(values: list[int]) -> dict:
    if not values:
        return {}
    q = statistics.quantiles(values, n=10) if len(values) > 1 else [values[0]] * 9
    return {"p50": statistics.median(values), "p90": q[8], "max": max(values)}


def check(files: list[str], against: list[str], near: float = 0.85, tokenizer=None, max_length: int = 1024) -> dict:
    rows = read(files)
    ex = rows.examples
    report: dict = {"files": files, "rows": rows.read.rows, "valid": len(ex), "formats": dict(rows.formats)}
    report["errors"] = {"count": len(rows.read.skipped), "first": rows.read.skipped[:5]}
    report["augmented"] = {"rows": sum(rows.methods.values()), "methods": dict(rows.methods)}
    if tokenizer is not None:
        counted = tqdm(
            ex, desc="data check: tokens", unit="row", disable=len(ex) < 5000
        )  # a bar where it takes seconds
        lengths = [len(tokenizer(whole(e), add_special_tokens=False)["input_ids"]) for e in counted]
        over = sum(n > max_length for n in lengths)
        report["tokens"] = _percentiles(lengths) | {"max_length": max_length, "over_max_length": over}
    report["answer_chars"] = _percentiles([len(answer_of(e)) for e in ex])
    report["languages"] = dict(Counter(similarity.language(whole(e)) for e in ex))
    answers = Counter(answer_of(e).strip() for e in ex)
    if ex and len(answers) <= max(2, min(20, len(ex) // 5)):  # few distinct answers: classification-style
        report["labels"] = dict(answers.most_common())
    report |= _duplicates(ex, near, rows.origin)
    report["leakage"] = _leakage(ex, against, near)
    report["diversity_distinct_2"] = round(similarity.distinct_n([whole(e) for e in ex], 2), 4)
    report["warnings"] = warnings(report)
    return report


def _duplicates(ex: list[Example], near: float, origin: dict[str, str]) -> dict:
    """Exact and near duplicates; an augmented row and its original (or two variants of one original)
    are alike by design and are not counted."""
    texts = [whole(e) for e in ex]
    exact = similarity.exact_groups(texts)
    exact_keys = {similarity.normalize(texts[g[0]]) for g in exact}
    family = [origin.get(e.where, e.where) for e in ex]
    pairs = [(i, j, sim) for i, j, sim in similarity.near_pairs(texts, None, near) if family[i] != family[j]]
    groups = [g for g in similarity.clusters(len(ex), pairs) if similarity.normalize(texts[g[0]]) not in exact_keys]
    return {
        "exact_duplicates": {
            "rows": sum(len(g) - 1 for g in exact),
            "groups": [[ex[i].where for i in g] for g in exact[:10]],
        },
        "near_duplicates": {
            "threshold": near,
            "rows": sum(len(g) - 1 for g in groups),
            "cluster_count": len(groups),
            "clusters": [
                {"size": len(g), "examples": [f"{ex[i].where}: {texts[i][:80]!r}" for i in g[:3]]} for g in groups[:10]
            ],
        },
    }


def _leakage(ex: list[Example], against: list[str], near: float) -> dict:
    prompts = [prompt_of(e) for e in ex]
    out = {}
    for source, held in held_out_prompts(against).items():
        found = similarity.near_pairs(prompts, held, near)
        rows = sorted({i for i, _, _ in found})
        shown = [f"{source} row {i + 1} ~ {ex[j].where} ({s:.2f}): {held[i][:60]!r}" for i, j, s in found[:5]]
        out[source] = {"rows": len(rows), "of": len(held), "examples": shown}
    return out


def warnings(report: dict) -> list[str]:
    n = max(report["valid"], 1)
    out = []
    if report["errors"]["count"]:
        out.append(f"{report['errors']['count']} invalid row(s); first: {report['errors']['first'][0]}")
    for key in ("exact_duplicates", "near_duplicates"):
        share = report[key]["rows"] / n
        if share > WARN["duplicates" if key == "exact_duplicates" else key]:
            out.append(
                f"{report[key]['rows']} {key.replace('_', ' ')} ({share:.0%} of the rows): run forgetless data dedup"
            )
    if "tokens" in report and report["tokens"]["over_max_length"] / n > WARN["truncated"]:
        t = report["tokens"]
        out.append(f"{t['over_max_length']} row(s) longer than data.max_length={t['max_length']} would be cut")
    for source, leak in report["leakage"].items():
        if leak["rows"]:
            out.append(f"{leak['rows']} of {leak['of']} held-out rows of {source} appear in training: decontaminate")
    labels = report.get("labels")
    if labels and max(labels.values()) / min(labels.values()) > WARN["label_ratio"]:
        out.append(f"labels are imbalanced: {labels}")
    return out


def render(report: dict) -> str:
    lines = [f"rows: {report['rows']} read, {report['valid']} valid; formats {report['formats']}"]
    if report["augmented"]["rows"]:
        aug = report["augmented"]
        lines.append(f"augmented rows: {aug['rows']} {aug['methods']} (not counted as duplicates of their originals)")
    if "tokens" in report:
        t = report["tokens"]
        lines.append(
            f"tokens per row: p50 {t['p50']}, p90 {t['p90']:.0f}, max {t['max']}; "
            f"{t['over_max_length']} over data.max_length={t['max_length']}"
        )
    a = report["answer_chars"]
    lines.append(f"answer characters: p50 {a.get('p50')}, p90 {a.get('p90', 0):.0f}, max {a.get('max')}")
    lines.append(f"languages: {report['languages']}; diversity (distinct bigrams): {report['diversity_distinct_2']}")
    if "labels" in report:
        lines.append(f"labels: {report['labels']}")
    lines.append(f"exact duplicates: {report['exact_duplicates']['rows']} row(s)")
    nd = report["near_duplicates"]
    lines.append(f"near duplicates (≥{nd['threshold']}): {nd['rows']} row(s) in {nd['cluster_count']} cluster(s)")
    lines += [f"  {e}" for c in nd["clusters"][:3] for e in c["examples"][:2]]
    for source, leak in report["leakage"].items():
        lines.append(f"leakage from {source}: {leak['rows']} of {leak['of']} rows")
        lines += [f"  {e}" for e in leak["examples"][:3]]
    lines += [f"warning: {w}" for w in report["warnings"]] or ["no warnings"]
    return "\n".join(lines)


def _write(src: str, drop: dict[int, dict], out: Path) -> tuple[int, int]:
    """Copy the rows of `src` whose line is not in `drop` unchanged; log the dropped ones beside it."""
    path = resolve_path(src)
    if path.suffix.lower() != ".jsonl":
        raise UserError(f"{path}: dedup and decontaminate write JSONL; convert the file to .jsonl first")
    lines = jsonl_lines(read_text(path))  # numbered as the reader numbers them (on "\n" alone)
    kept = [line + "\n" for n, line in enumerate(lines, start=1) if n not in drop and line.strip()]
    write_text(out, "".join(kept))
    removed = "".join(json.dumps({"line": n, **why}, ensure_ascii=False) + "\n" for n, why in sorted(drop.items()))
    write_text(out.with_suffix(".removed.jsonl"), removed)
    return len(kept), len(drop)


def _line(ex: Example) -> int:
    return int(ex.where.rsplit(":", 1)[1])


def dedup(src: str, out: Path, near: float = 0.85) -> tuple[int, int]:
    """Keep the first row of every exact or near-duplicate cluster; returns (kept, removed)."""
    ex = read_file(src, on_error="raise")
    texts = [whole(e) for e in ex]
    drop = {}
    for g in similarity.clusters(len(ex), similarity.near_pairs(texts, None, near)):
        first = min(g)
        for i in g:
            if i != first:
                sim = similarity.jaccard(similarity.shingles(texts[i]), similarity.shingles(texts[first]))
                drop[_line(ex[i])] = {
                    "reason": "exact duplicate" if sim == 1.0 else "near duplicate",
                    "of_line": _line(ex[first]),
                    "similarity": round(sim, 3),
                }
    return _write(src, drop, out)


def decontaminate(src: str, against: list[str], out: Path, near: float = 0.85) -> tuple[int, int]:
    """Drop training rows whose prompt equals or nearly equals a prompt of an --against file."""
    ex = read_file(src, on_error="raise")
    prompts = [prompt_of(e) for e in ex]
    drop = {}
    for ref in against:
        held = [prompt_of(e) for e in read_file(ref, on_error="raise")]
        for i, j, sim in similarity.near_pairs(prompts, held, near):
            drop.setdefault(
                _line(ex[j]), {"reason": "in held-out set", "file": ref, "row": i + 1, "similarity": round(sim, 3)}
            )
    return _write(src, drop, out)
