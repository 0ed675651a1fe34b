"""Retention: how far the fine-tuned model drifted from the base model on general prompts.

The prompts are ones training never saw (bundled: assets/general/heldout.jsonl, 60 prompts in
English and Japanese). The reference is the base model's own greedy answer to each prompt;
the suite reports
  kl_per_token   mean KL(p_finetuned ‖ p_base) over the reference answers' tokens, teacher-forced
                 (0 means the fine-tuned model predicts exactly what the base model predicts);
  agreement      share of prompts whose greedy answer is unchanged (exact string).
The base model's predictions come from the same weights with adapters switched off.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from forgetless.adapters.views import base_view
from forgetless.data.batching import fixed_batches, length_order
from forgetless.data.formats import Example
from forgetless.data.render import encode
from forgetless.eval.metrics import normalize
from forgetless.eval.stats import bootstrap_ci, mean, spread
from forgetless.model.generate import generate
from forgetless.model.prefix import logits_at, prefix_of
from forgetless.objectives.losses import kl_rows, position_masks

NO_REFERENCES = (
    "no held-out general prompt has a base-model answer to compare with (every answer came back empty, "
    "or eval.retention_prompts holds none)"
)


@torch.no_grad()
def kl_to_base(
    model,
    tokenizer,
    references: list[Example],
    base=None,
    batch_size: int = 8,
    parting: list | None = None,
    per_row: list | None = None,
    base_logits: list | None = None,
) -> float:
    """Mean KL(p_model ‖ p_base) per reference-answer token; `base` defaults to adapters-off.
    With a `parting` list: filled per reference with where the model, teacher-forced, first misses
    the reference's answer greedily (`answer_stats`; None: never); `per_row`: with each reference's
    (KL sum, answer tokens); `base_logits`: the base's side kept between calls (`answer_stats`)."""
    rows = [encode(tokenizer, ex) for ex in references]
    pad = tokenizer.pad_token_id
    desc = "eval: retention KL"
    return answer_stats(
        model, rows, pad, base, batch_size, desc=desc, parting=parting, per_row=per_row, base_logits=base_logits
    )[0]


@torch.no_grad()
def kl_on_rows(
    model, rows: list[dict], pad: int, base=None, batch_size: int = 8, direction="finetuned_base", desc=None
) -> float:
    """Mean KL per answer token of token rows (labels mark the answers), teacher-forced.
    direction finetuned_base: KL(p_model ‖ p_base); base_finetuned: KL(p_base ‖ p_model)."""
    return answer_stats(model, rows, pad, base, batch_size, direction, desc)[0]


@torch.no_grad()
def answer_stats(
    model,
    rows: list[dict],
    pad: int,
    base=None,
    batch_size: int = 8,
    direction="finetuned_base",
    desc=None,
    nll=False,
    parting: list | None = None,
    per_row: list | None = None,
    base_logits: list | None = None,
) -> tuple[float, float | None]:
    """(mean KL per answer token, and with nll=True the model's mean NLL per answer token) from one
    forward of the model per batch: the task perplexity and the KL on the task's prompts share it.
    `parting` (a list, filled in the rows' order): per row the index of the first answer token that is
    not the model's greedy choice given the tokens before it (None when every one is). `per_row` (a
    list, filled likewise): per row (KL sum, answer tokens), for a mean over a subset of the rows.
    `base_logits` (a list): filled on the first call with the base's logits at each batch's answer positions
    and read on later calls instead of a second forward per batch, which halves the cost when one model is
    measured at many adapter scales on the same rows (the dials); it holds answer tokens × vocabulary floats
    in host memory."""
    total, n, nll_total = 0.0, 0, 0.0
    batches = fixed_batches(rows, batch_size, pad)
    found: list[int | None] = []  # per row, in fixed_batches' order: the first parting, (KL sum, answer tokens)
    sums: list[tuple[float, int]] = []
    heads = {"model": prefix_of(model, [r["input_ids"] for r in rows])}  # the rows' common head, run once a side
    for i, batch in enumerate(tqdm(batches, desc=desc, unit="batch", disable=desc is None or len(batches) < 2)):
        batch = {k: v.to(model.device) for k, v in batch.items()}
        where = position_masks(batch["labels"], batch["attention_mask"], batch["rehearsal"])["task_answers"]
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        logits = logits_at(model, inputs, where, heads["model"])  # positions of row 0, then row 1, ...
        answers = batch["labels"][:, 1:][where]
        if nll:
            nll_total += float(F.cross_entropy(logits.float(), answers, reduction="sum"))
        teacher = _base_side(model, base, inputs, where, base_logits, i, heads, rows)
        kl = kl_rows(logits, teacher, direction=direction)
        total += float(kl.sum())
        n += int(where.sum())
        if parting is not None:
            found += first_parting(logits.argmax(-1), answers, where)
        if per_row is not None:
            counts = where.sum(-1).tolist()
            sums += [(float(part.sum()), c) for part, c in zip(kl.split(counts), counts, strict=True)]
    for wanted, got in ((parting, found), (per_row, sums)):
        if wanted is not None:  # back from fixed_batches' order to the rows'
            wanted[:] = [None] * len(rows)
            for i, value in zip(length_order(rows), got, strict=True):
                wanted[i] = value
    return total / max(n, 1), (nll_total / max(n, 1) if nll else None)  # both per answer token


def _base_side(model, base, inputs: dict, where, kept: list | None, i: int, heads: dict, rows) -> torch.Tensor:
    """Batch i's base logits at the answer positions: kept[i] when an earlier call measured it, else one
    forward of the base (adapters off without `base`), appended to `kept` when given. `heads` keeps the
    base's run of the rows' common head (model/prefix.py), made on its first batch."""
    if kept is not None and i < len(kept):
        return kept[i].to(model.device)
    with base_view(model) if base is None else nullcontext(base) as b:
        if "base" not in heads:
            heads["base"] = prefix_of(b, [r["input_ids"] for r in rows])
        teacher = logits_at(b, inputs, where, heads["base"])
    if kept is not None:
        kept.append(teacher.to("cpu"))  # host memory: a GPU keeps its room for the model
    return teacher


def first_parting(greedy: torch.Tensor, answers: torch.Tensor, where: torch.Tensor) -> list[int | None]:
    """Per row, how many answer tokens (`where`, (B, T)) come before the first one the greedy choice misses
    (None: it misses none); `greedy` and `answers` are the greedy and the reference tokens at `where`."""
    missed = torch.zeros_like(where)
    missed[where] = greedy != answers
    before = where.cumsum(-1) - where.long()  # answer tokens before each position
    first = torch.where(missed, before, where.shape[-1]).min(-1).values
    return [int(f) if m else None for f, m in zip(first.tolist(), missed.any(-1).tolist(), strict=True)]


def task_kl(model, rows: list[dict], pad: int, base=None) -> tuple[dict, float]:
    """KL(base ‖ tuned) per answer token on the task's own validation rows: the measure "RL's Razor"
    (Shenfeld et al. 2025, arXiv 2509.04259) found to predict forgetting, beside the held-out one; and
    the tuned model's mean NLL on those rows (its task perplexity), from the same forward passes.
    Batches of 4, as the base side's perplexity (suite.mean_nll), so both sides see the same padding."""
    was_training = model.training
    model.eval()
    try:
        desc = "eval: task perplexity and KL on task prompts"
        kl, nll = answer_stats(model, rows, pad, base, 4, "base_finetuned", desc, nll=True)
    finally:
        model.train(was_training)
    return {"n": len(rows), "kl_base_to_tuned": kl}, nll


def probe_of(references: list, k: int) -> list:
    """The retention probe's prompts: `k` of the held-out prompts picked evenly through them, not the first
    `k`. The prompt files are grouped by category and language, so the first few are one kind of question;
    the bundled file's first 8 are all knowledge questions, on which a keigo adapter's KL was half its KL
    over all 60 prompts, and a budget controller steering by them held the wrong number."""
    return spread(references, k)


def agreement(
    model,
    tokenizer,
    references: list[Example],
    max_new_tokens: int,
    whole: int = 0,
    parting: list[int | None] | None = None,
) -> tuple[list[float], list[str]]:
    """Per prompt 1.0 where the model's greedy answer equals the base model's (else 0.0), and the answers:
    whole for the first `whole` prompts (shown in the report), the rest cut where they part from the
    base model's answer (`generate`'s targets: the same 1.0 / 0.0, without decoding the rest).
    `parting` (from `kl_to_base`) only groups the prompts into batches: those expected to run to their
    end apart from those expected to part, whose batches then end early; it decides nothing."""
    prompts = [list(ex.messages[:-1]) for ex in references]
    targets = [None if i < whole else ex.messages[-1]["content"] for i, ex in enumerate(references)]
    if parting is not None:  # the shown answers run to their end like the unchanged ones
        parting = [None if i < whole else p for i, p in enumerate(parting)]
    desc = "eval: retention answers"
    answers = generate(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, desc=desc, targets=targets, parts_at=parting
    )
    same = [
        float(normalize(a) == normalize(ex.messages[-1]["content"])) for a, ex in zip(answers, references, strict=True)
    ]
    return same, answers


def retention(
    model, tokenizer, references: list[Example], max_new_tokens: int, samples: int = 2, base=None, probe: int = 0
) -> dict:
    """KL to base and agreement; `base` is a separate base model (else: this model, adapters off).
    `probe` > 0 adds probe_kl: the KL over the probe's references alone (`probe_of`), which is what the
    training loop's retention probe measures (so the last validation need not run it again)."""
    if not references:  # a measure over nothing is no measure: never a KL of 0 and 100% unchanged
        return {"n": 0, "kl_per_token": None, "agreement": None, "agreement_ci": None, "samples": [],
                "not_measured": NO_REFERENCES}  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        parting: list[int | None] = []
        per_row: list[tuple[float, int]] = []
        kl = kl_to_base(model, tokenizer, references, base=base, parting=parting, per_row=per_row)
        same, answers = agreement(model, tokenizer, references, max_new_tokens, whole=samples, parting=parting)
    finally:
        model.train(was_training)
    shown = [
        {"prompt": ex.messages[-2]["content"], "base": ex.messages[-1]["content"], "finetuned": a}
        for ex, a in zip(references[:samples], answers, strict=False)
    ]
    result = {
        "n": len(references),
        "kl_per_token": kl,
        "agreement": mean(same),
        "agreement_ci": bootstrap_ci(same),
        "samples": shown,
    }
    if probe > 0:
        shown = probe_of(per_row, probe)  # per_row is in the references' order
        result["probe_kl"] = sum(k for k, _ in shown) / max(sum(c for _, c in shown), 1)
    return result
