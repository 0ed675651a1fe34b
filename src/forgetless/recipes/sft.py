"""Supervised instruction tuning with forgetting controls.

load -> data (+ general data) -> score the base -> attach adapters -> fit -> save -> score again
-> eval.json + report.

Read top to bottom; each step is one call into the module that owns it.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from forgetless.adapters import saved
from forgetless.config.schema import Config, ForgettingConfig
from forgetless.data.batching import Batches, fixed_batches
from forgetless.data.build import build
from forgetless.data.mixture import MixedBatches
from forgetless.data.packing import attention_cost
from forgetless.eval import base_cache, earlier_tasks, suite
from forgetless.eval.retention import kl_to_base
from forgetless.objectives import sft
from forgetless.recipes import runtime
from forgetless.reference import topk
from forgetless.reference.fisher import Anchor, fisher_cached, make_anchor
from forgetless.reference.topk import TeacherCache
from forgetless.training import distributed
from forgetless.training.monitor import final_validation


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
    pad = tokenizer.pad_token_id
    teacher = _teacher(r, data.train + general)
    model = runtime.attach(r)
    anchor = _anchor(model, fcfg, general, pad, out)
    batches, padding = _batches(r, data.train, general)
    # The final evaluation scores the validation rows and the probe's prompts: the loop's last
    # validation would compute the same numbers twice, so they are taken from there instead. Not
    # with early stopping, which may still stop at the last step and restore the best adapter.
    last_from_eval = bool(scored_rows) and not cfg.train.early_stopping.enabled
    objective = sft.objective(fcfg, anchor, teacher, cfg.train.loss_chunk)
    summary, monitor, on_best = _fit(r, model, batches, objective, data.validation, refs, last_from_eval, resume)
    if not main:
        return summary  # the main process saves, evaluates and reports
    if summary["stopped_early"] == "overfitting" and (out / "best").is_dir():
        print(f"[forgetless] restoring the best adapter (step {summary['best_step']})")
        saved.restore(model, out / "best")

    runtime.save_result(r, model)
    after = runtime.score_finetuned(r, lambda: suite.measure(model, tokenizer, cfg, scored, scored_rows, refs))
    if last_from_eval and not summary["stopped_early"]:
        final_validation(model, out, summary, _validation_of(after), monitor, on_best)
    counts = {"train_rows": len(data.train), "validation_rows": len(data.validation), "general_rows": len(general)}
    summary = runtime.summary(r, summary, before, after, forgetting_preset=fcfg.preset, **counts, data_notes=notes)
    summary |= padding
    return runtime.finish(r, suite.combine(before, after) | _earlier_tasks(r, model, summary), summary)


def _fit(r: runtime.Run, model, batches, objective, validation, refs, last_from_eval: bool, resume: bool):
    """The training loop with validation, early stopping, the forgetting budget and the best adapter;
    returns (the loop's facts, the monitor and the best-adapter hook, for the last validation)."""
    cfg, out = r.cfg, r.out
    val = fixed_batches(validation, cfg.train.batch_size, r.tokenizer.pad_token_id)
    monitor = runtime.monitor(cfg)
    on_best = (lambda m: saved.save(m, out / "best", cfg.peft, cfg.model.name)) if val else None
    evaluate = _in_training_eval(cfg, r.tokenizer, val, refs)
    hooks = {"evaluate": evaluate, "monitor": monitor, "on_best": on_best, "last_validation": not last_from_eval}
    summary = runtime.fit(r, model, batches, objective, resume, **hooks)
    return summary, monitor, on_best


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


def cached_teacher(cfg: Config, rows: int) -> bool:
    """lwf.teacher, with auto resolved: cached when the run plans more than one pass over its rows.
    Making the cache costs one teacher forward per row; the online teacher costs one per row per pass."""
    teacher, t = cfg.forgetting.lwf.teacher, cfg.train
    if teacher != "auto":
        return teacher == "cached"
    if t.max_steps is None:
        return t.epochs > 1
    return t.max_steps * t.batch_size * t.grad_accum * distributed.state().num_processes > rows


def _teacher(r: runtime.Run, rows: list[dict]) -> TeacherCache | None:
    """lwf.teacher=cached: the base model's top-k log-probs for every training row, made once (before
    the adapters exist, so the model is the base) and kept in the run for resumes."""
    lwf = r.cfg.forgetting.lwf
    if not (r.cfg.forgetting.uses_lwf and cached_teacher(r.cfg, len(rows))):
        return None
    t0 = time.time()
    with distributed.state().main_process_first():
        cache = topk.cached(
            r.model, rows, r.tokenizer.pad_token_id, lwf.top_k, lwf.temperature, r.out / "teacher_topk.safetensors"
        )
    r.say(
        f"lwf: cached teacher, top-{lwf.top_k} log-probs at {cache.idx.shape[0]:,} positions of {len(cache.keys)} "
        f"rows, {cache.nbytes() / 2**20:.1f} MiB ({time.time() - t0:.0f} s)"
    )
    return cache


def _in_training_eval(cfg: Config, tokenizer, val: list[dict], refs):
    """Validation loss and the cheap retention probe (KL to base on a few held-out prompts)."""
    probe = (refs or [])[: cfg.eval.probe_prompts]
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
    the log of the task perplexity (same rows), the probe's KL that of the first probe prompts."""
    result = {"val_loss": math.log(after["task"]["perplexity"])}
    if "probe_kl" in (after.get("prompts") or {}):
        result["retention_kl"] = after["prompts"]["probe_kl"]
    return result


def _anchor(model, fcfg: ForgettingConfig, general: list[dict], pad: int, out: Path) -> Anchor | None:
    """θ₀ (and the EWC Fisher) when L2 or EWC is on; the Fisher is estimated once and cached in the run."""
    if fcfg.l2 <= 0 and fcfg.ewc.weight <= 0:
        return None
    anchor = make_anchor(model)
    if fcfg.ewc.weight > 0:
        rows = random.Random(0).sample(general, min(fcfg.ewc.samples, len(general)))
        with distributed.state().main_process_first():  # estimated once, then read from the run
            anchor.fisher = fisher_cached(model, anchor, rows, pad, out / "ewc_fisher.safetensors")
    return anchor
