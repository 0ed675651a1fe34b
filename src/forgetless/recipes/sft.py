"""Supervised instruction tuning with forgetting controls.

load -> data (+ general data) -> score the base -> attach adapters -> fit -> save -> score again
-> eval.json + report.

Read top to bottom; each step is one call into the module that owns it.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import torch
from transformers import set_seed

from forgetless import adapters, config, distributed, hardware, loop, planner, rehearsal
from forgetless import model as models
from forgetless.config import Config, ForgettingConfig
from forgetless.data.batching import Batches, fixed_batches
from forgetless.data.build import build
from forgetless.data.mixture import MixedBatches
from forgetless.errors import UserError
from forgetless.eval import report, suite
from forgetless.eval.retention import kl_to_base
from forgetless.forgetting import Anchor, counts, fisher_cached, make_anchor, make_loss
from forgetless.monitor import Monitor

PIPELINE_STATE = "pipeline.json"


def prepare_output_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        return
    # Files a pipeline keeps beside its run (its stage record) do not make the directory a run.
    if out.exists() and any(p.name != PIPELINE_STATE for p in out.iterdir()):
        if not overwrite:
            raise UserError(
                f"output_dir {out} already holds a run; pass --resume to continue it, "
                "--overwrite to replace it, or choose another output_dir=..."
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _cached(path: Path, compute):
    """Reuse a before-training score on resume: the base model has not changed."""
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    value = compute()
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2), encoding="utf-8")
    return value


def run(cfg: Config, resume: bool = False, overwrite: bool = False) -> dict:
    started = time.time()
    out = Path(cfg.output_dir)
    main = distributed.is_main()  # under a launcher, only the main process writes files and logs
    say = distributed.state().print
    if main:
        prepare_output_dir(out, resume, overwrite)
        config.dump(cfg, out / "config.yaml")
    distributed.barrier()
    set_seed(cfg.train.seed)
    dev = hardware.device()
    dtype = hardware.resolve_dtype(cfg.model.precision, dev)

    model, tokenizer, model_path = models.load(cfg.model, dev)
    adapters.check(model, cfg.peft)
    data = build(cfg.data, tokenizer, cfg.train.seed)
    say(f"[forgetless] data: {len(data.train)} train rows, {len(data.validation)} validation rows")
    notes = data.notes()
    fcfg = cfg.forgetting
    general: list[dict] = []
    if fcfg.uses_rehearsal or fcfg.ewc.weight > 0:
        with distributed.state().main_process_first():  # generates the self-rehearsal cache once
            general, more = rehearsal.general_rows(cfg, model, tokenizer, model_path, str(dtype))
        notes += more
    for note in notes:
        say(f"[forgetless] {note}")

    # Everything measured on the base model happens before the adapters exist.
    with distributed.state().main_process_first():
        refs = suite.references(cfg, model, tokenizer, model_path, dtype)
    scored = data.validation_examples if cfg.eval.before_after else []
    scored_rows = data.validation if cfg.eval.before_after else []
    t_base = time.time()
    if main:
        print("[forgetless] evaluating the base model ...")
        with distributed.all_cores():
            before = _cached(
                out / "eval_before.json", lambda: suite.measure(model, tokenizer, cfg, scored, scored_rows)
            )
    t_base = time.time() - t_base

    # Seed right before the adapters are initialised: converting a GGUF on first use draws random
    # numbers, and the LoRA initialisation must not depend on whether the cache was warm.
    set_seed(cfg.train.seed)
    quantized = cfg.model.quantization != "none"
    ckpt = adapters.use_grad_checkpointing(cfg.train.grad_checkpointing, dev)
    model = adapters.attach(model, cfg.peft, quantized=quantized, grad_checkpointing=ckpt, model_path=model_path)
    trainable, total = adapters.count_parameters(model)
    say(
        f"[forgetless] {cfg.peft.method}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.2f}%); forgetting preset: {fcfg.preset}"
    )
    if cfg.peft.method == "full":
        gib = 4 * total * 4 / 2**30  # weights + gradients + AdamW's two moments (fp32), before activations
        say(
            f"[forgetless] full fine-tuning: about {gib:.1f} GiB for weights, gradients and optimizer state, plus "
            "a copy of the initial weights for the base view (LwF, retention); LoRA needs a fraction of this"
        )

    pad = tokenizer.pad_token_id
    anchor = _anchor(model, fcfg, general, pad, out)
    if fcfg.uses_rehearsal:
        batches = MixedBatches(data.train, general, cfg.train.batch_size, fcfg.rehearsal.ratio, cfg.train.seed, pad)
        say(f"[forgetless] {batches.describe()}")
    else:
        batches = Batches(data.train, cfg.train.batch_size, cfg.train.seed, pad)
    mixed = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    val = fixed_batches(data.validation, cfg.train.batch_size, pad)
    summary = loop.fit(
        model,
        batches,
        make_loss(fcfg, anchor),
        cfg.train,
        out,
        evaluate=_in_training_eval(cfg, tokenizer, val, refs),
        resume=resume,
        mixed_precision=mixed,
        count_fn=lambda b: counts(b, fcfg),
        monitor=_monitor(cfg),
        on_best=(lambda m: adapters.save(m, out / "best", cfg.peft, cfg.model.name)) if val else None,
        oom_advice=lambda: planner.advice(cfg),
    )
    if not main:
        return summary  # the main process saves, evaluates and reports
    if summary["stopped_early"] == "overfitting" and (out / "best").is_dir():
        print(f"[forgetless] restoring the best adapter (step {summary['best_step']})")
        adapters.restore(model, out / "best")

    adapters.save(model, out / "adapter", cfg.peft, cfg.model.name)
    tokenizer.save_pretrained(out / "adapter")
    print("[forgetless] evaluating the fine-tuned model ...")
    t_after = time.time()
    with distributed.all_cores():
        after = suite.measure(model, tokenizer, cfg, scored, scored_rows, refs)
    t_after = time.time() - t_after
    evaluation = suite.combine(before, after)
    (out / "eval.json").write_text(json.dumps(evaluation, ensure_ascii=False, indent=2), encoding="utf-8")
    summary |= {
        "output_dir": str(out),
        "model": cfg.model.name,
        "model_path": model_path,
        "forgetting_preset": fcfg.preset,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_rows": len(data.train),
        "validation_rows": len(data.validation),
        "general_rows": len(general),
        "data_notes": notes,
        "task_before": before.get("task"),
        "task_after": after.get("task"),
        "retention": after.get("prompts"),
        "eval_seconds": {"base": round(t_base, 1), "finetuned": round(t_after, 1)},
        "wall_seconds": round(time.time() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    if cfg.eval.report:
        report.write([out], out)
    if cfg.train.mlflow:
        from forgetless import registry

        print(f"[forgetless] logged to MLflow as run {registry.log_run(out, cfg.train.mlflow_tracking_uri)}")
    return summary


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


def _monitor(cfg: Config) -> Monitor:
    es = cfg.train.early_stopping
    return Monitor(es.patience, es.enabled, cfg.eval.max_kl, cfg.eval.on_max_kl == "stop")


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
