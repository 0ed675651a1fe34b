"""General (rehearsal) data for the forgetting controls: the user's files or the base model's own answers.

`source: self` is pseudo-rehearsal: the base model answers the bundled general prompts once
(cached, see answers.py) and those answers are mixed into every training batch, so the
model keeps producing what it produced before on general requests. The same rows feed the
EWC Fisher estimate.
"""

from __future__ import annotations

from pathlib import Path

from forgetless.config.schema import Config
from forgetless.data.build import read_all
from forgetless.data.formats import ReadReport
from forgetless.data.render import RenderReport, encode_all
from forgetless.reference import answers


def self_rehearsal_file(cfg: Config, model, tokenizer, model_path: str, dtype: str, **kw) -> tuple[Path, bool]:
    r = cfg.forgetting.rehearsal
    return answers.ensure(
        "rehearsal", model, tokenizer, cfg.model, model_path, dtype, r.prompts, r.max_new_tokens, **kw
    )


def general_rows(cfg: Config, model, tokenizer, model_path: str, dtype: str) -> tuple[list[dict], list[str]]:
    """Encoded general rows (same rendering and length limit as the task data) and notes for the log."""
    r = cfg.forgetting.rehearsal
    notes = []
    if r.source == "self":
        path, fresh = self_rehearsal_file(cfg, model, tokenizer, model_path, dtype)
        examples, empty = answers.read_answers(path)
        notes.append(
            f"rehearsal: {len(examples)} base-model answers ({'generated now' if fresh else 'cached'}: {path})"
        )
        if empty:
            notes.append(f"rehearsal: {empty} prompt(s) got an empty base-model answer and are left out")
    else:
        report = ReadReport()
        examples = read_all(r.source, cfg.data, report)
        notes.append(f"rehearsal: {len(examples)} rows from {', '.join(r.source)}")
        if report.skipped:
            notes.append(f"rehearsal: skipped {len(report.skipped)} bad row(s); first: {report.skipped[0]}")
    render = RenderReport()
    d = cfg.data
    # No data.system_prompt here: general rows keep the context the base model answered in.
    rows = encode_all(tokenizer, examples, d.max_length, d.overlong, d.loss_on, None, render)
    if render.truncated:
        notes.append(f"rehearsal: truncated {render.truncated} row(s) to data.max_length")
    if render.dropped:
        notes.append(f"rehearsal: dropped {len(render.dropped)} row(s); first: {render.dropped[0]}")
    return rows, notes
