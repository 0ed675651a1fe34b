"""The evaluation every run ends with, and that `forgetless eval` repeats: task metrics plus retention.

`measure(...)` scores one model ("side"): the base model (before training, or a plain model)
or the fine-tuned one. `combine(base, finetuned)` turns two sides into eval.json: every number
as base → fine-tuned with the difference, and 95% bootstrap intervals for accuracies (paired
for the difference). Only the fine-tuned side has the KL / agreement numbers, because they
compare the fine-tuned model with the base model directly (adapters off, same weights).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from forgetless.adapters.views import switchable
from forgetless.config.schema import Config
from forgetless.data.batching import fixed_batches
from forgetless.data.formats import read_file
from forgetless.data.render import encode_all
from forgetless.errors import UserError
from forgetless.eval import choice, stats
from forgetless.eval.retention import retention, task_kl
from forgetless.eval.task import task_eval
from forgetless.model.forward import logits_at
from forgetless.model.likelihood import IGNORE
from forgetless.reference import answers


@torch.no_grad()
def mean_nll(model, batches: list[dict], desc: str | None = None) -> float:
    """Mean next-token negative log-likelihood over the label tokens of the batches."""
    total, n = 0.0, 0
    was_training = model.training
    model.eval()
    for b in tqdm(batches, desc=desc, unit="batch", disable=desc is None or len(batches) < 2):
        b = {k: v.to(model.device) for k, v in b.items()}
        where = b["labels"][:, 1:] != IGNORE  # the head runs at the label tokens only (forward.logits_at)
        inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
        logits = logits_at(model, inputs, where).float()
        total += float(F.cross_entropy(logits, b["labels"][:, 1:][where], reduction="sum"))
        n += int(where.sum())
    model.train(was_training)
    return total / max(n, 1)


def text_perplexity(model, tokenizer, ref: str, max_length: int, pad: int) -> float:
    """Perplexity of every token of a general-text file (any data format; all tokens count)."""
    rows = encode_all(tokenizer, read_file(ref), max_length, "truncate", loss_on="all")
    return math.exp(mean_nll(model, fixed_batches(rows, 4, pad), desc=f"eval: perplexity of {Path(ref).name}"))


def lm_eval_scores(model, tokenizer, tasks: list[str]) -> dict[str, float]:
    """Optional: lm-evaluation-harness tasks through the same report (accuracy per task)."""
    try:
        from lm_eval import simple_evaluate  # optional: pip install lm-eval
        from lm_eval.models.huggingface import HFLM  # optional, as above
    except ImportError:
        raise UserError("eval.lm_eval_tasks needs lm-evaluation-harness: pip install 'lm-eval[hf]'") from None
    try:
        results = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8), tasks=tasks)
    except Exception as e:  # its datasets come from the hub; offline this is where it fails
        raise UserError(f"lm-eval could not run {tasks}: {e}".replace("\n", " ")) from None
    out = {}
    for task, metrics in results["results"].items():
        for key in ("acc,none", "acc_norm,none", "exact_match,none"):
            if key in metrics:
                out[f"{task}.{key.split(',')[0]}"] = float(metrics[key])
    return out


def measure(model, tokenizer, cfg: Config, examples, val_rows: list[dict], references=None, base=None) -> dict:
    """One side of the evaluation. `references` (base-model answers) turns on KL / agreement,
    measured against `base` (a separate base model) or, by default, this model with adapters off."""
    e = cfg.eval
    val_rows = stats.spread(val_rows, e.max_perplexity_rows)
    pad = tokenizer.pad_token_id
    side: dict = {}
    clock = Parts()
    if examples:
        with clock("task answers"):
            side["task"] = task_eval(model, tokenizer, examples, cfg)
    if val_rows and (base is not None or switchable(model)):  # tuned: the base is a second model or adapters-off
        with clock("task perplexity and KL on task prompts"):
            side["task_kl"], nll = task_kl(model, val_rows, pad, base)
            side.setdefault("task", {})["perplexity"] = math.exp(nll)
    elif val_rows:
        with clock("task perplexity"):
            nll = mean_nll(model, fixed_batches(val_rows, 4, pad), desc="eval: task perplexity")
            side.setdefault("task", {})["perplexity"] = math.exp(nll)
    if e.retention:
        side["benchmarks"] = {}
        with clock("multiple choice"):
            for ref in e.benchmarks:
                scored = choice.score_items(model, tokenizer, *choice.read_items(ref, e.max_questions))
                side["benchmarks"][Path(ref.removeprefix("builtin:")).name] = scored
        with clock("general-text perplexity"):
            side["general_text"] = {
                Path(ref).name: text_perplexity(model, tokenizer, ref, cfg.data.max_length, pad)
                for ref in e.general_text
            }
        if e.lm_eval_tasks:
            with clock("lm-eval"):
                side["lm_eval"] = lm_eval_scores(model, tokenizer, e.lm_eval_tasks)
        if references is not None:
            with clock("retention KL and answers"):
                side["prompts"] = retention(
                    model, tokenizer, references, e.retention_max_new_tokens, base=base, probe=e.probe_prompts
                )
    clock.report()
    return side


class Parts:
    """Seconds per part of an evaluation, said in one line at the end (where the time went)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        started = time.time()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.time() - started

    def report(self) -> None:
        if self.seconds:
            print("[forgetless] evaluation took " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))


def references(cfg: Config, model, tokenizer, model_path: str, dtype) -> list | None:
    """The base model's answers to the held-out general prompts (cached; generated on first use)."""
    e = cfg.eval
    if not e.retention:
        return None
    path, _ = answers.ensure(
        "retention",
        model,
        tokenizer,
        cfg.model,
        model_path,
        str(dtype),
        e.retention_prompts,
        e.retention_max_new_tokens,
        template=cfg.data.chat_template,
    )
    return answers.read_answers(path, e.retention_max_prompts)[0]


def _pair(base: float | None, finetuned: float | None) -> dict:
    if base is None or finetuned is None:
        return {"base": base, "finetuned": finetuned, "diff": None}
    return {"base": base, "finetuned": finetuned, "diff": finetuned - base}


def combine(base: dict, finetuned: dict) -> dict:
    """eval.json: task metrics and retention, base → fine-tuned with differences and intervals."""
    out: dict = {"task": {}, "retention": {}}
    bt, ft = base.get("task", {}), finetuned.get("task", {})
    for key, value in ft.items():
        if isinstance(value, (int, float)) and key != "n":
            out["task"][key] = _pair(bt.get(key), value)
    out["task"]["n"] = ft.get("n")
    out["task"]["samples"] = [
        {**b, "answer_base": b["answer"], "answer": f["answer"]}
        for b, f in zip(bt.get("samples", []), ft.get("samples", []), strict=False)
    ]
    r = out["retention"]
    if "prompts" in finetuned:
        r["prompts"] = finetuned["prompts"]
    if "task_kl" in finetuned:
        r["task_prompts"] = finetuned["task_kl"]
    r["benchmarks"] = {}
    for name, f in finetuned.get("benchmarks", {}).items():
        b = base.get("benchmarks", {}).get(name)
        r["benchmarks"][name] = {"n": f["n"]} | {
            key: stats.compare(b[src], f[src]) if b else stats.single(f[src])
            for key, src in (("acc", "raw"), ("acc_norm", "norm"))
        }
    r["general_text"] = {
        name: _pair(base.get("general_text", {}).get(name), ppl)
        for name, ppl in finetuned.get("general_text", {}).items()
    }
    if "lm_eval" in finetuned:
        r["lm_eval"] = {k: _pair(base.get("lm_eval", {}).get(k), v) for k, v in finetuned["lm_eval"].items()}
    return out
