"""Supervised instruction tuning with forgetting controls.

load -> data (+ general data) -> score the base -> attach adapters -> fit -> save -> score again
-> eval.json + report.

Read top to bottom; each step is one call into the module that owns it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from forgetless.adapters import saved
from forgetless.config.schema import Config
from forgetless.data.batching import Batches, fixed_batches
from forgetless.data.build import build
from forgetless.data.mixture import MixedBatches
from forgetless.data.packing import attention_cost
from forgetless.eval import base_cache, budget, earlier_tasks, suite
from forgetless.eval.on_policy import OnPolicy
from forgetless.eval.retention import kl_to_base, probe_of
from forgetless.objectives import sft
from forgetless.objectives.forgetting import Weights
from forgetless.recipes import runtime
from forgetless.training import distributed
from forgetless.training.monitor import final_validation
from forgetless.training.optim import total_steps


def run(cfg: Config, resume: bool = False) -> dict:
    r = runtime.start(cfg)
    model, tokenizer, out, main = r.model, r.tokenizer, r.out, r.main
    data = build(cfg.data, tokenizer, cfg.train.seed)
    r.say(f"data: {len(data.train)} train rows, {len(data.validation)} validation rows")
    runtime.check_data(r)
    general, more = runtime.general_rows(r)
    notes = data.notes() + more
    for note in notes:
        r.say(note)

    # Everything measured on the base model happens before the adapters exist.
    refs = runtime.references(r)
    scored = data.validation_examples if cfg.eval.before_after else []
    scored_rows = data.validation if cfg.eval.before_after else []
    before = _score_base(r, scored, scored_rows)

    fcfg = cfg.forgetting
    own = runtime.own_answers(r) if fcfg.rehearsal.on_policy_replay else []  # on-policy replay's prompts
    teacher = runtime.teacher(r, data.train + general)
    model = runtime.attach(r)
    anchor = runtime.anchor(r, model, general)
    batches, padding = _batches(r, data.train, general)
    # The final evaluation scores the validation rows and the probe's prompts: the loop's last
    # validation would compute the same numbers twice, so they are taken from there instead. Not
    # with early stopping, which may still stop at the last step and restore the best adapter.
    last_from_eval = bool(scored_rows) and not cfg.train.early_stopping.enabled
    objective, adjust = _objective(r, anchor, teacher, refs, batches, own, resume)
    fitted = _fit(r, model, batches, objective, data.validation, refs, last_from_eval, resume, adjust)
    summary, monitor, on_best = fitted
    if not main:
        return summary  # the main process saves, evaluates and reports
    if summary["stopped_early"] == "overfitting" and (out / "best").is_dir():
        print(f"[forgetless] restoring the best adapter (step {summary['best_step']})")
        saved.restore(model, out / "best")

    runtime.save_result(r, model)
    measure = lambda: suite.measure(model, tokenizer, cfg, scored, scored_rows, refs)  # noqa: E731
    after = runtime.score_finetuned(r, measure)
    if last_from_eval and not summary["stopped_early"]:
        final_validation(model, out, summary, _validation_of(after), monitor, on_best)
    if fcfg.budget.set:
        after, summary["budget"] = _keep_budget(r, model, refs, before, after, measure)
    counts = {"train_rows": len(data.train), "validation_rows": len(data.validation), "general_rows": len(general)}
    summary = runtime.summary(r, summary, before, after, forgetting_preset=fcfg.preset, **counts, data_notes=notes)
    summary |= padding
    return runtime.finish(r, suite.combine(before, after) | _earlier_tasks(r, model, summary), summary)


def _fit(r: runtime.Run, model, batches, objective, validation, refs, last_from_eval: bool, resume: bool, adjust):
    """The training loop with validation, early stopping, the forgetting budget and the best adapter;
    returns (the loop's facts, the monitor and the best-adapter hook, for the last validation)."""
    cfg, out = r.cfg, r.out
    val = fixed_batches(validation, cfg.train.batch_size, r.tokenizer.pad_token_id)
    monitor = runtime.monitor(cfg)
    on_best = (lambda m: saved.save(m, out / "best", cfg.peft, cfg.model.name)) if val else None
    evaluate = _in_training_eval(cfg, r.tokenizer, val, refs)
    hooks = {"evaluate": evaluate, "monitor": monitor, "on_best": on_best, "last_validation": not last_from_eval}
    hooks["adjust"] = adjust
    summary = runtime.fit(r, model, batches, objective, resume, **hooks)
    return summary, monitor, on_best


def _objective(r: runtime.Run, anchor, teacher, refs, batches, own: list, resume: bool):
    """The SFT objective, and what moves between its steps: a forgetting budget's controller (the weights it
    moves are the objective's) and on-policy replay's answers (the rehearsal pool it refreshes)."""
    cfg, fcfg = r.cfg, r.cfg.forgetting
    weights = Weights.of(fcfg)  # what a forgetting budget's controller moves during training
    objective = sft.objective(fcfg, anchor, teacher, cfg.train.loss_chunk, weights)
    last = total_steps(cfg.train, batches, distributed.state().num_processes)
    adjust = _between_steps(
        budget.probe(cfg, r.tokenizer, refs, weights, r.out / "metrics.jsonl" if resume else None),
        OnPolicy(fcfg.rehearsal.on_policy, r.tokenizer, batches, own, r.out, resume, last) if own else None,
    )
    return objective, adjust


def _between_steps(*hooks):
    """The loop's `adjust` hook: each of `hooks` (None: off) after every optimizer step, what they log merged."""
    hooks = [h for h in hooks if h is not None]

    def adjust(model, step: int) -> dict | None:
        out = {}
        for h in hooks:
            out |= h(model, step) or {}
        return out or None

    return adjust if hooks else None


def _keep_budget(r: runtime.Run, model, refs, before: dict, trained: dict, measure) -> tuple[dict, dict]:
    """forgetting.budget after training: a trained LoRA adapter still over it is scaled down to the largest
    scale that meets it (budget.dial), saved with the adapter and scored again; returns (the saved model's
    scores, the verdict for summary.json and the report)."""
    cfg = r.cfg
    b, after, scale = cfg.forgetting.budget, trained, None
    over = not budget.within(cfg, budget.numbers(before, trained))
    if over and not (b.dial and refs and budget.scalable(model)):
        why = "budget.dial is false" if not b.dial else "only a LoRA adapter can be scaled"
        r.say(f"forgetting budget not met and not dialled ({why})")
    elif over:
        found = budget.dial(cfg, model, r.tokenizer, refs, before)
        scale = found["scale"]
        path = r.out / "adapter" / "adapter_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        record = {"metric": cfg.eval.metric, "points": found["points"], "chosen": scale, "max_kl": b.kl}
        record |= {"min_task": None, "mc_drop": b.mc_drop, "by": "forgetting.budget"}
        record["trained"] = {k: config.get(k) for k in ("lora_alpha", "alpha_pattern")}
        budget.save_scale(r.out, r.out / "adapter", config, record)
        after = runtime.score_finetuned(r, measure)
    verdict = budget.verdict(cfg, before, trained, after, scale)
    r.say(budget.headline(verdict, cfg.eval.metric))
    return after, verdict


def _earlier_tasks(r: runtime.Run, model, summary: dict) -> dict:
    """A continuation (model.continue_from): every earlier run's task scored on this model, for the
    report's retention matrix; the chain is followed through each run's summary.json."""
    ref = r.cfg.model.continue_from
    if not ref:
        return {}
    summary["continued_from"] = str(Path(ref).resolve())
    with distributed.all_cores():
        return {"earlier_tasks": earlier_tasks.score_earlier(model, r.tokenizer, earlier_tasks.earlier_runs(ref))}


def _batches(r: runtime.Run, train: list[dict], general: list[dict]) -> tuple[Batches, dict]:
    """The training stream: task rows (with the rehearsal share of general rows), packed or padded;
    and the padding it saves, for the summary."""
    cfg, pad = r.cfg, r.tokenizer.pad_token_id
    layout = {"pack": None, "group_by_length": cfg.data.group_by_length}
    if packing(cfg):
        attention = getattr(r.model.config, "_attn_implementation", "sdpa")
        layout |= {"pack": 4 * cfg.data.max_length, "pack_cost": attention_cost(r.model.config, attention)}
    args = (cfg.train.batch_size, cfg.train.seed, pad)
    if cfg.forgetting.uses_rehearsal:
        batches = MixedBatches(train, general, args[0], cfg.forgetting.rehearsal.ratio, *args[1:], **layout)
        r.say(batches.describe())
    else:
        batches = Batches(train, *args, **layout)
    padding_note, padding = batches.padding_note()
    r.say(padding_note)
    return batches, padding


def _score_base(r: runtime.Run, scored: list, scored_rows: list[dict]) -> dict:
    """The base side: task scores (eval.before_after) and the retention baseline (eval.retention),
    reused from eval/base_cache when an earlier run scored the same; with neither there is nothing to
    score, and nothing is said."""
    cfg, e = r.cfg, r.cfg.eval
    shared = base_cache.file_name(cfg, base_cache.key(cfg, r.model_path, str(r.dtype), r.dev.type, scored, scored_rows))
    compute = lambda: suite.measure(r.model, r.tokenizer, cfg, scored, scored_rows)  # noqa: E731
    if not (e.before_after or e.retention):
        return {}
    what = "task and retention baseline" if e.before_after else "retention baseline only: eval.before_after=false"
    return runtime.score_base(r, compute, what if e.retention else "task", shared)


def packing(cfg: Config) -> bool:
    """data.packing: auto packs unless prompt/prefix tuning's virtual tokens need one row per sequence."""
    if cfg.data.packing == "auto":
        return cfg.peft.method not in ("prompt", "prefix")
    return bool(cfg.data.packing)


def _in_training_eval(cfg: Config, tokenizer, val: list[dict], refs):
    """Validation loss and the cheap retention probe (KL to base on a few held-out prompts)."""
    probe = probe_of(refs or [], cfg.eval.probe_prompts)
    if not val and not probe:
        return None

    def evaluate(m) -> dict[str, float]:
        result = {}
        if val:
            result["val_loss"] = suite.mean_nll(m, val)
        if probe:
            result["retention_kl"] = kl_to_base(m, tokenizer, probe)
        return result

    return evaluate


def _validation_of(after: dict) -> dict[str, float]:
    """The in-training validation's numbers, read from the final evaluation: the validation loss is
    the log of the task perplexity (same rows), the probe's KL that of the probe's prompts."""
    result = {"val_loss": math.log(after["task"]["perplexity"])}
    if "probe_kl" in (after.get("prompts") or {}):
        result["retention_kl"] = after["prompts"]["probe_kl"]
    return result
