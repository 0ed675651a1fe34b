"""`forgetless tune-scale RUN`: a dial between the base model and the fine-tuned one, set after training.

A LoRA adapter adds s·ΔW to each adapted weight; s = 1 is the trained model, s = 0 the base. Scaling it
down interpolates between them in weight space (WiSE-FT, Wortsman et al. 2022, does the same for full
fine-tuning), trading task gain for retention. This scores the run's held-out rows (its task metric by
generation) and the retention probe (KL to the base per token on the held-out general prompts) at each
scale of a grid, picks a scale that meets the budget, and saves it with the adapter:

  --max-kl X    the largest scale whose KL to the base is at most X (most task gain within the budget);
  --min-task Y  the smallest scale whose task score is at least Y (least drift that still does the task).

The scale is saved where every tool that loads the adapter reads it: lora_alpha (and alpha_pattern) in
RUN/adapter/adapter_config.json become s × the trained values, so merge, serve, export, vLLM and
llama.cpp all use the scaled adapter; RUN/tune_scale.json keeps the trained values (a second tune-scale
starts from them, scales never compound) and the curve, which the run's report shows.
"""

from __future__ import annotations

import json
from pathlib import Path

from peft import PeftModel
from peft.tuners.lora import LoraLayer

from forgetless.adapters import continued, saved
from forgetless.config.schema import Config
from forgetless.data.build import held_out
from forgetless.errors import UserError
from forgetless.eval import budget, report, suite
from forgetless.eval.retention import kl_to_base
from forgetless.eval.task import task_eval
from forgetless.model import chat_format, hardware
from forgetless.model import loader as models
from forgetless.training import rundir

RECORD = rundir.TUNE_SCALE
GRID = (0.25, 0.5, 0.75, 1.0)


def run(cfg: Config, run_dir: Path, max_kl: float | None, min_task: float | None, grid=GRID) -> dict:
    if (max_kl is None) == (min_task is None):
        raise UserError("tune-scale: give one budget, --max-kl X (KL to base per token) or --min-task Y (task score)")
    if not grid or any(not 0 < s <= 2 for s in grid):
        raise UserError(f"tune-scale --grid {','.join(map(str, grid))}: scales in (0, 2], e.g. 0.25,0.5,0.75,1")
    adapter = run_dir / "adapter"
    with rundir.locked(run_dir):  # a training run (--resume) or a second tune-scale in it waits
        return _run(cfg, run_dir, adapter, max_kl, min_task, grid)


def _run(cfg: Config, run_dir: Path, adapter: Path, max_kl: float | None, min_task: float | None, grid) -> dict:
    config, earlier = _trained_config(run_dir, adapter)
    cfg = continued.on_original_base(cfg)  # a continued run's dial runs from the original base (scale 0) to it
    if not cfg.eval.retention and max_kl is not None:
        raise UserError("tune-scale --max-kl needs the retention probe: eval.retention=true")
    dev = hardware.device()
    model, tokenizer, model_path = models.load(cfg.model, dev)
    chat_format.apply_template(tokenizer, cfg.data.chat_template)
    saved.use_adapter_templates(tokenizer, [adapter])
    examples = held_out(cfg.data, tokenizer, cfg.train.seed).validation_examples
    if not examples:
        raise UserError(f"tune-scale: {run_dir} has no held-out rows to score the task on (data.validation)")
    refs = suite.references(cfg, model, tokenizer, model_path, hardware.resolve_dtype(cfg.model.precision, dev))
    model = _at_trained_scale(PeftModel.from_pretrained(model, str(adapter)), earlier)
    trained = {m: dict(m.scaling) for m in model.modules() if isinstance(m, LoraLayer)}
    metric, points = cfg.eval.metric, []
    for s in sorted(set(grid)):
        for m, scaling in trained.items():
            m.scaling.update({k: v * s for k, v in scaling.items()})
        task = task_eval(model, tokenizer, examples, cfg).get(metric)
        kl = kl_to_base(model, tokenizer, refs) if refs else None
        points.append({"scale": s, "task": task, "kl_per_token": kl})
        print(f"[forgetless] tune-scale: scale {s:.2f}: task {metric} {report.fmt(task)}, KL {report.fmt(kl, '.4f')}")
    chosen = choose(points, max_kl, min_task)
    record = {"metric": metric, "points": points, "chosen": chosen, "max_kl": max_kl, "min_task": min_task}
    record["trained"] = {k: config.get(k) for k in ("lora_alpha", "alpha_pattern")}
    budget.save_scale(run_dir, adapter, config, record)
    report.write([run_dir], run_dir)
    return record


def choose(points: list[dict], max_kl: float | None, min_task: float | None) -> float:
    """The scale the budget picks from the measured points (pure: tested on made-up curves)."""
    by_kl = max_kl is not None
    key = "kl_per_token" if by_kl else "task"
    scored = [p for p in points if p[key] is not None]
    ok = [p["scale"] for p in scored if (p[key] <= max_kl if by_kl else p[key] >= min_task)]
    if ok:
        return max(ok) if by_kl else min(ok)
    near = (min if by_kl else max)(scored, key=lambda p: p[key])
    if by_kl:
        raise UserError(
            f"tune-scale: no scale keeps KL to base ≤ {max_kl} (the least, {near[key]:.4f}, is at scale "
            f"{near['scale']}); allow a larger --max-kl or add smaller scales with --grid"
        )
    raise UserError(
        f"tune-scale: no scale reaches task {min_task} (the best, {near[key]:.3f}, is at scale {near['scale']}); "
        "lower --min-task"
    )


def _trained_config(run_dir: Path, adapter: Path) -> tuple[dict, dict | None]:
    """The adapter's config with the trained alpha, and the earlier tune-scale's record when it still
    describes this adapter (its config then holds alpha × the chosen scale)."""
    path = adapter / "adapter_config.json"
    if not path.is_file():
        raise UserError(f"tune-scale: {run_dir} has no adapter/adapter_config.json; give a finished run directory")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA" or config.get("use_dora"):
        raise UserError(f"tune-scale: {run_dir} holds a {config.get('peft_type')} adapter; the dial scales LoRA only")
    earlier = current_record(run_dir, config)
    if earlier is not None:
        config |= earlier["trained"]
    return config, earlier


def current_record(run_dir: Path, config: dict) -> dict | None:
    """RUN/tune_scale.json when it describes the adapter saved now (its lora_alpha is the one the record
    wrote). After `train --resume` saved the adapter again at the trained alpha, the record is stale:
    dividing by its scale again would scale the adapter by 1/old choice."""
    path = run_dir / RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    trained = record["trained"]["lora_alpha"]
    alpha, saved_alpha = config.get("lora_alpha"), trained * record["chosen"]  # what budget.save_scale wrote
    if alpha == saved_alpha:
        return record
    if alpha == trained:
        print(f"[forgetless] tune-scale: {path} describes an earlier save of the adapter; starting from this one")
        return None
    raise UserError(
        f"tune-scale: {run_dir}/adapter/adapter_config.json has lora_alpha {alpha}, neither the trained "
        f"{trained} nor the {saved_alpha} that {path} saved; set it back to the trained "
        "value and run tune-scale again"
    )


def _at_trained_scale(model: PeftModel, earlier: dict | None) -> PeftModel:
    """The loaded adapter at scale 1: an earlier tune-scale saved alpha × its chosen scale."""
    if earlier is not None:
        for m in model.modules():
            if isinstance(m, LoraLayer):
                m.scaling.update({k: v / earlier["chosen"] for k, v in m.scaling.items()})
    return model
