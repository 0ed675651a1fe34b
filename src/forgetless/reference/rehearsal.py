"""General (rehearsal) data for the forgetting controls: the user's files or the base model's own answers.

`source: self` is pseudo-rehearsal: the base model answers the bundled general prompts once
(cached, see answers.py) and those answers are mixed into every training batch, so the
model keeps producing what it produced before on general requests. The same rows feed the
EWC Fisher estimate.
"""

from __future__ import annotations

from pathlib import Path

from forgetless.config.fields import OWN_ANSWERS
from forgetless.config.schema import Config
from forgetless.data.build import of_run, read_all
from forgetless.data.formats import Example, ReadReport
from forgetless.data.render import RenderReport, encode_all
from forgetless.model.chat_format import with_system
from forgetless.reference import answers


def self_rehearsal_file(cfg: Config, model, tokenizer, model_path: str, dtype: str, **kw) -> tuple[Path, bool]:
    r = cfg.forgetting.rehearsal
    return answers.ensure(
        "rehearsal",
        model,
        tokenizer,
        cfg.model,
        model_path,
        dtype,
        r.prompts,
        r.max_new_tokens,
        template=cfg.data.chat_template,
        **kw,
    )


def general_rows(cfg: Config, model, tokenizer, model_path: str, dtype: str) -> tuple[list[dict], list[str]]:
    """Encoded general rows and notes for the log: the base model's own answers (`self`), general
    files (same rendering and length limit as the task data), and earlier runs' training rows."""
    notes: list[str] = []
    examples, rows = [], []
    for ref in cfg.forgetting.rehearsal.sources:
        if ref in OWN_ANSWERS:  # on_policy starts from the base model's own answers (its answers at step 0)
            examples += _self_examples(cfg, model, tokenizer, model_path, dtype, notes)
        elif (Path(ref) / "config.yaml").is_file():  # an earlier task's real answers: replayed with CE
            rows += [{**r, "replay": True} for r in _run_rows(ref, tokenizer, notes)]
        else:
            report = ReadReport()
            found = read_all([ref], cfg.data, report)
            examples += found
            notes.append(f"rehearsal: {len(found)} rows from {ref}")
            if report.skipped:
                first = report.skipped[0]
                notes.append(f"rehearsal: skipped {len(report.skipped)} bad row(s) of {ref}; first: {first}")
    render = RenderReport()
    d = cfg.data
    # No data.system_prompt here: general rows keep the context the base model answered in.
    rows += encode_all(tokenizer, examples, d.max_length, d.overlong, d.loss_on, None, render)
    if render.truncated:
        notes.append(f"rehearsal: truncated {render.truncated} row(s) to data.max_length")
    if render.dropped:
        notes.append(f"rehearsal: dropped {len(render.dropped)} row(s); first: {render.dropped[0]}")
    return rows, notes


def own_answers(cfg: Config, model, tokenizer, model_path: str, dtype: str) -> list:
    """On-policy replay's prompts, as examples: the general prompts with the base model's own answers, then
    every earlier run's training conversations (rehearsal sources that are run directories) with the system
    prompt they trained under, so the current model answers them as the earlier stage was asked them."""
    examples = _self_examples(cfg, model, tokenizer, model_path, dtype, [])
    for ref in cfg.forgetting.rehearsal.sources:
        if ref not in OWN_ANSWERS and (Path(ref) / "config.yaml").is_file():
            examples += _run_prompts(ref, tokenizer)
    return examples


def _self_examples(cfg: Config, model, tokenizer, model_path: str, dtype: str, notes: list[str]) -> list:
    path, fresh = self_rehearsal_file(cfg, model, tokenizer, model_path, dtype)
    examples, empty = answers.read_answers(path)
    notes.append(f"rehearsal: {len(examples)} base-model answers ({'generated now' if fresh else 'cached'}: {path})")
    if empty:
        notes.append(f"rehearsal: {empty} prompt(s) got an empty base-model answer and are left out")
    return examples


def _run_prompts(ref: str, tokenizer) -> list[Example]:
    """An earlier run's training conversations with its system prompt written in (their rows, rendered so,
    are the ones in the rehearsal pool); none where it trained on whole texts (loss_on all, plain text), whose
    rows have no answer to replace."""
    cfg, data = of_run(Path(ref), tokenizer)
    if cfg.data.loss_on != "assistant":
        return []
    return [
        Example(f"{ref}: {ex.where}", messages=tuple(with_system(ex.messages, cfg.data.system_prompt)))
        for ex in data.train_examples
        if ex.messages
    ]


def _run_rows(ref: str, tokenizer, notes: list[str]) -> list[dict]:
    """An earlier run's training rows exactly as it trained on them (its files, split, system prompt and
    rendering; its validation rows stay out, so its task can still be scored on them)."""
    rows = of_run(Path(ref), tokenizer)[1].train
    notes.append(f"rehearsal: {len(rows)} training rows of the earlier run {ref}")
    return rows
