"""The steps every training recipe shares: the run directory, the base model, the general rows,
the retention references, what the forgetting controls need from the base (the cached teacher, the
L2/EWC anchor), the base model's score, and the files a finished run leaves.

Each recipe (sft.py, dpo.py, reward.py, rlhf.py) still reads top to bottom; these are the calls.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import set_seed

from forgetless import files
from forgetless.adapters import attaching, continued, dropout, lora_output, saved
from forgetless.config import loader
from forgetless.config.schema import Config, TrainConfig
from forgetless.data import check
from forgetless.eval import base_cache, report, suite
from forgetless.model import chat_format, hardware, speedups
from forgetless.model import loader as models
from forgetless.objectives.objective import Objective
from forgetless.reference import rehearsal, topk
from forgetless.reference.fisher import Anchor, fisher_cached, make_anchor
from forgetless.reference.topk import TeacherCache
from forgetless.training import distributed, loop, tracking
from forgetless.training.monitor import Monitor
from forgetless.training.rundir import DATA_CHECK, TUNE_SCALE


def cached(path: Path, compute, settings: str):
    """Reuse a before-training score on resume when it was made under the same `settings` (a fingerprint
    of the eval settings and scored rows): the base model has not changed, but a resumed run may have
    changed eval.*, and "before" and "after" must come from the same settings."""
    if path.exists():
        found = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(found, dict) and found.get("settings") == settings:
            return found["scores"]
        print(f"[forgetless] {path.name} was scored under other eval settings: scoring the base model again")
    value = compute()
    files.write_json(path, {"settings": settings, "scores": value})
    return value


def eval_settings(cfg: Config) -> str:
    """A fingerprint of what decides a recipe's base-side scores besides the model: eval.* and data.*."""
    parts = {"eval": cfg.eval.key_fields(), "data": cfg.data.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Run:
    """What a recipe knows once the base model is loaded."""

    cfg: Config
    out: Path
    main: bool
    dev: object
    dtype: object
    model: object
    tokenizer: object
    model_path: str
    started: float = field(default_factory=time.time)
    parameters: tuple[int, int] = (0, 0)  # trainable, total: set by attach
    eval_seconds: dict[str, float] = field(default_factory=dict)  # base, finetuned: set by the scoring steps

    def say(self, text: str) -> None:
        distributed.state().print(f"[forgetless] {text}")


def start(cfg: Config, head: str = "causal") -> Run:
    """config.yaml (main process only), seed, device, base model; the method is checked against the
    model before any slow work."""
    out = Path(cfg.output_dir)
    main = distributed.is_main()  # under a launcher, only the main process writes files and logs
    if main:  # the directory is claimed (locked, cleared or checked for --resume) by api.run_recipe
        out.mkdir(parents=True, exist_ok=True)
        loader.dump(cfg, out / "config.yaml")
    distributed.barrier()
    set_seed(cfg.train.seed)
    dev = hardware.device()
    dtype = hardware.resolve_dtype(cfg.model.precision, dev)
    earlier = continued.adapter_of(cfg) if cfg.model.continue_from else None  # refused before the slow load
    model, tokenizer, model_path = models.load(cfg.model, dev, head=head)
    chat_format.apply_template(tokenizer, cfg.data.chat_template)
    attaching.check(model, cfg.peft)
    if earlier is not None:  # from here until attach, the model is the earlier run's model
        _earlier_template(cfg, tokenizer, earlier)
        model = continued.load_previous(model, earlier)
        distributed.state().print(f"[forgetless] continuing {cfg.model.continue_from}: its model is the base")
    return Run(cfg, out, main, dev, dtype, model, tokenizer, model_path)


def _earlier_template(cfg: Config, tokenizer, earlier: Path) -> None:
    """A continuation renders prompts as the earlier run did: its saved chat template (another one named
    in data.chat_template was refused by continued.adapter_of)."""
    theirs = saved.adapter_template(earlier)
    if theirs is not None and cfg.data.chat_template is None and theirs != tokenizer.chat_template:
        tokenizer.chat_template = theirs
        distributed.state().print(f"[forgetless] chat template: the one {cfg.model.continue_from} was trained with")


def general_rows(run: Run) -> tuple[list[dict], list[str]]:
    """Rehearsal rows (user-given or the base model's own answers, cached) when the controls use them."""
    fcfg = run.cfg.forgetting
    if not (fcfg.uses_rehearsal or fcfg.ewc.weight > 0):
        return [], []
    with distributed.state().main_process_first():  # generates the self-rehearsal cache once
        return rehearsal.general_rows(run.cfg, run.model, run.tokenizer, run.model_path, str(run.dtype))


def own_answers(run: Run) -> list:
    """On-policy replay's prompts: the general prompts with the base model's own answers (made by general_rows,
    read from its cache), and the earlier runs' training conversations named beside them."""
    with distributed.state().main_process_first():
        return rehearsal.own_answers(run.cfg, run.model, run.tokenizer, run.model_path, str(run.dtype))


def references(run: Run):
    """The base model's answers to the retention prompts (before any adapter exists)."""
    with distributed.state().main_process_first():
        return suite.references(run.cfg, run.model, run.tokenizer, run.model_path, run.dtype)


def cached_teacher(cfg: Config, rows: int) -> bool:
    """lwf.teacher, with auto resolved: cached when the run plans more than one pass over its rows.
    Making the cache costs one teacher forward per row; the online teacher costs one per row per pass.
    On-policy replay makes new rows during training, which no cache holds: online."""
    teacher, t = cfg.forgetting.lwf.teacher, cfg.train
    if teacher != "auto" or cfg.forgetting.rehearsal.on_policy_replay:
        return teacher == "cached"
    if t.max_steps is None:
        return t.epochs > 1
    return t.max_steps * t.batch_size * t.grad_accum * distributed.state().num_processes > rows


def teacher(run: Run, rows: list[dict]) -> TeacherCache | None:
    """lwf.teacher=cached: the base model's top-k log-probs for every training row, made once (before
    the adapters exist, so the model is the base) and kept in the run for resumes."""
    lwf = run.cfg.forgetting.lwf
    if not (run.cfg.forgetting.uses_lwf and cached_teacher(run.cfg, len(rows))):
        return None
    t0 = time.time()
    with distributed.state().main_process_first():
        path = run.out / "teacher_topk.safetensors"
        cache = topk.cached(run.model, rows, run.tokenizer.pad_token_id, lwf.top_k, lwf.temperature, path)
    run.say(
        f"lwf: cached teacher, top-{lwf.top_k} log-probs at {cache.idx.shape[0]:,} positions of {len(cache.keys)} "
        f"rows, {cache.nbytes() / 2**20:.1f} MiB ({time.time() - t0:.0f} s)"
    )
    return cache


def anchor(run: Run, model, general: list[dict]) -> Anchor | None:
    """θ₀ (and the EWC Fisher) when L2 or EWC is on; the Fisher is estimated once and cached in the run."""
    fcfg = run.cfg.forgetting
    if fcfg.l2 <= 0 and fcfg.ewc.weight <= 0:
        return None
    found = make_anchor(model)
    if fcfg.ewc.weight > 0:
        rows = random.Random(0).sample(general, min(fcfg.ewc.samples, len(general)))
        with distributed.state().main_process_first():  # estimated once, then read from the run
            path = run.out / "ewc_fisher.safetensors"
            found.fisher = fisher_cached(model, found, rows, run.tokenizer.pad_token_id, path)
    return found


def attach(run: Run, task_type: str = "CAUSAL_LM"):
    """The method on the base, seeded right before its initialisation: converting a GGUF on first use
    draws random numbers, and the initialisation must not depend on whether the cache was warm."""
    cfg = run.cfg
    if cfg.train.liger:
        speedups.apply_liger(run.model, run.dev)
    set_seed(cfg.train.seed)
    ckpt = speedups.use_grad_checkpointing(cfg.train.grad_checkpointing, run.dev)
    quantized = cfg.model.quantization != "none"
    if cfg.model.continue_from:
        model = attaching.prepare(run.model, quantized=quantized, grad_checkpointing=ckpt)
        model = continued.continue_training(model, continued.adapter_of(cfg))
    else:
        model = attaching.attach(
            run.model,
            cfg.peft,
            quantized=quantized,
            grad_checkpointing=ckpt,
            model_path=run.model_path,
            task_type=task_type,
        )
    dropout.share_masks(model)  # one LoRA dropout mask per shared input, drawn cheaply on CPU
    lora_output.fuse_outputs(model)  # LoRA's update added inside one addmm_, not two full-width passes
    trainable, total = attaching.count_parameters(model)
    run.say(
        f"{cfg.peft.method}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / total:.2f}%); "
        f"forgetting preset: {cfg.forgetting.preset}"
    )
    if cfg.peft.method == "full":
        gib = 4 * total * 4 / 2**30  # weights + gradients + AdamW's two moments (fp32), before activations
        run.say(
            f"full fine-tuning: about {gib:.1f} GiB for weights, gradients and optimizer state, plus a copy of "
            "the initial weights for the base view (LwF, retention); LoRA needs a fraction of this"
        )
    run.model, run.parameters = model, (trainable, total)
    return model


def fit(run: Run, model, batches, objective: Objective, resume: bool, on_oom: str | None = None, **hooks) -> dict:
    """The training loop, handed what every recipe hands it the same way: the train section with the
    resolved learning rate (and `on_oom` where a recipe's rows must stay whole), the run's folder, its
    mixed precision and the monitor (hooks: evaluate, on_best, last_validation, monitor=None for none)."""
    hooks.setdefault("monitor", monitor(run.cfg))
    settings = train_settings(run.cfg, **({"on_oom": on_oom} if on_oom else {}))
    return loop.fit(
        model, batches, objective, settings, run.out, resume=resume, mixed_precision=mixed_precision(run), **hooks
    )


def summary(run: Run, facts: dict, before: dict, after: dict, **counts) -> dict:
    """The loop's facts plus what every recipe's summary.json says the same way: the parameters
    trained, the recipe's own counts (rows, pairs, prompts, notes), the task scores before and after,
    retention and the evaluation's seconds."""
    trainable, total = run.parameters
    facts |= {"trainable_parameters": trainable, "total_parameters": total, **counts}
    facts |= {"task_before": before.get("task"), "task_after": after.get("task")}
    if run.eval_seconds:  # the recipes that score a base and a trained side (not the reward model)
        facts["retention"] = after.get("prompts")
        facts["eval_seconds"] = {"base": run.eval_seconds.get("base", 0.0), **run.eval_seconds}
    return facts


def train_settings(cfg: Config, **changes) -> TrainConfig:
    """The train section as the loop uses it: the learning rate resolved from the final method (Config.lr)."""
    return cfg.train.model_copy(update={"lr": cfg.lr, **changes})


def mixed_precision(run: Run) -> str:

    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(run.dtype, "no")


def check_data(run: Run) -> None:
    """`forgetless data check` on the training files against the validation files: data_check.json,
    a section of the report, and its warnings in the log (training goes on: `pipeline` with
    data_check.strict is the place to stop on them)."""
    if not run.main:
        return
    cfg = run.cfg
    found = check.check(cfg.data.train, cfg.data.validation, tokenizer=run.tokenizer, max_length=cfg.data.max_length)
    files.write_json(run.out / DATA_CHECK, found)
    for warning in found["warnings"]:
        run.say(f"data check: {warning}")


def finish(run: Run, evaluation: dict, summary: dict) -> dict:
    """eval.json, summary.json (with the wall time), the report, and the MLflow run when asked for."""
    out, cfg = run.out, run.cfg
    files.write_json(out / "eval.json", evaluation)
    summary |= {"output_dir": str(out), "recipe": cfg.recipe, "model": cfg.model.name, "model_path": run.model_path}
    summary["wall_seconds"] = round(time.time() - run.started, 1)
    files.write_json(out / "summary.json", summary)
    if cfg.eval.report:
        report.write([out], out)
    if cfg.train.mlflow:
        print(f"[forgetless] logged to MLflow as run {tracking.log_run(out, cfg.train.mlflow_tracking_uri)}")
    return summary


def save_result(run: Run, model) -> None:
    """adapter/: the trained result and the tokenizer beside it (chat, serve, merge and eval read both),
    written beside and renamed into place. A scale that tune-scale chose for the adapter before (a
    resumed run) does not apply to the new one: its record goes."""
    with files.replacing(run.out / "adapter") as tmp:
        saved.save(model, tmp, run.cfg.peft, run.cfg.model.name)
        models.save_tokenizer(run.tokenizer, tmp)
    stale = run.out / TUNE_SCALE
    if stale.is_file():
        stale.unlink()
        run.say("the adapter was saved again at its trained scale: the earlier tune-scale choice no longer applies")


def score_finetuned(run: Run, compute) -> dict:
    """The trained model's scores (main process, all cores); the seconds they took go to the summary."""
    started = time.time()
    print("[forgetless] evaluating the fine-tuned model ...")
    with distributed.all_cores():
        after = compute()
    run.eval_seconds["finetuned"] = round(time.time() - started, 1)
    return after


def score_base(run: Run, compute, what: str = "", shared: str | None = None) -> dict:
    """The base model's scores (main process, all cores): kept in the run for --resume and, with
    `shared` (a eval/base_cache file name), reused across runs; the seconds go to the summary."""
    if not run.main:
        return {}  # only the main process evaluates
    started = time.time()
    found = base_cache.lookup(shared) if shared is not None else None
    if found is not None:
        print(f"[forgetless] base model scores: reused {found} (same model, eval set, settings)")
    else:
        print(f"[forgetless] evaluating the base model{f' ({what})' if what else ''} ...")
    settings = shared or eval_settings(run.cfg)  # a shared file's name holds the key of its settings
    with distributed.all_cores():
        before = cached(
            run.out / "eval_before.json",
            lambda: base_cache.reuse(shared, compute)[0] if shared else compute(),
            settings,
        )
    run.eval_seconds["base"] = round(time.time() - started, 1)
    return before


def monitor(cfg: Config) -> Monitor:
    """Early stopping (train.early_stopping) and the forgetting budget (eval.max_kl) as the loop checks them."""
    es = cfg.train.early_stopping
    return Monitor(es.patience, es.enabled, cfg.eval.max_kl, cfg.eval.on_max_kl == "stop")
