"""Files -> validated examples -> encoded rows, with a held-out split and a report of what was skipped."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from forgetless.config import loader
from forgetless.config.schema import Config, DataConfig
from forgetless.data.formats import Example, ReadReport, read_file
from forgetless.data.render import RenderReport, encode_all
from forgetless.errors import UserError


@dataclass
class Dataset:
    train: list[dict]
    validation: list[dict]
    validation_examples: list[Example]  # the held-out conversations, for generation-based scores
    train_examples: list[Example] = field(default_factory=list)  # the training conversations (GRPO's prompts)
    read: ReadReport = field(default_factory=ReadReport)
    render: RenderReport = field(default_factory=RenderReport)

    def notes(self) -> list[str]:
        """Human-readable lines about everything that was skipped, truncated or dropped."""
        out = []
        if self.read.skipped:
            out.append(
                f"skipped {len(self.read.skipped)} bad row(s) (data.on_error=skip); first: {self.read.skipped[0]}"
            )
        if self.render.truncated:
            out.append(f"truncated {self.render.truncated} row(s) to data.max_length")
        if self.render.dropped:
            out.append(f"dropped {len(self.render.dropped)} row(s); first: {self.render.dropped[0]}")
        return out


def read_all(refs: list[str], cfg: DataConfig, report: ReadReport) -> list[Example]:
    out: list[Example] = []
    for ref in refs:
        out.extend(read_file(ref, cfg.format, cfg.on_error, report))
    return out


def split(examples: list[Example], share: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Seeded hold-out of `share` of the rows (at least one, and at least one left to train on)."""
    if share <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(len(examples) * share)), len(examples) - 1)
    held = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def build(cfg: DataConfig, tokenizer, seed: int) -> Dataset:
    if not cfg.train:
        raise UserError("data.train is empty: give one or more training files (data.train=path/to/file.jsonl)")
    read = ReadReport()
    train_ex = read_all(cfg.train, cfg, read)
    if cfg.validation:
        val_ex = read_all(cfg.validation, cfg, read)
    else:
        train_ex, val_ex = split(train_ex, cfg.validation_split, seed)
    render = RenderReport()
    args = (tokenizer,)
    kw = {
        "max_length": cfg.max_length,
        "overlong": cfg.overlong,
        "loss_on": cfg.loss_on,
        "system_prompt": cfg.system_prompt,
        "report": render,
    }
    train = encode_all(*args, train_ex, **kw)
    val = encode_all(*args, val_ex, **kw)
    if not train:
        raise UserError("no training rows are left after validation and truncation; see the messages above")
    return Dataset(train, val, val_ex, train_ex, read, render)


def held_out(cfg: DataConfig, tokenizer, seed: int) -> Dataset:
    """The held-out rows a run is scored on: the validation files, or the same seeded split of
    the training files that training used (so `forgetless eval` scores exactly those rows)."""
    if not cfg.validation:
        return build(cfg, tokenizer, seed)
    read = ReadReport()
    examples = read_all(cfg.validation, cfg, read)
    render = RenderReport()
    rows = encode_all(tokenizer, examples, cfg.max_length, cfg.overlong, cfg.loss_on, cfg.system_prompt, render)
    return Dataset([], rows, examples, [], read, render)


def of_run(run: Path, tokenizer) -> tuple[Config, Dataset]:
    """An earlier run's config and data exactly as it trained on them (its files, split, system prompt,
    rendering): task after task rehearses its rows and scores its validation rows."""
    try:
        cfg = loader.load(Path(run) / "config.yaml")
        return cfg, build(cfg.data, tokenizer, cfg.train.seed)
    except UserError as e:
        raise UserError(f"earlier run {run}: {e}; its config.yaml names files that must still exist") from None
