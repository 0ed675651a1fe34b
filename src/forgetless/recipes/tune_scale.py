"""`forgetless tune-scale RUN`: a dial between the base model and the fine-tuned one, set after training.

A LoRA adapter adds s·ΔW to each adapted weight; s = 1 is the trained model, s = 0 the base. Scaling it
down interpolates between them in weight space (WiSE-FT, Wortsman et al. 2022, does the same for full
fine-tuning), trading task gain for retention. This scores the run's held-out rows (its task metric by
generation) and the retention probe (KL to the base per token on the held-out general prompts) at each
scale of a grid, picks a scale that meets the budget, and saves it with the adapter:

  --max-kl X    the largest scale whose KL to the base is at most X (most task gain within the budget);
  --min-task Y  the smallest scale whose task score is at least Y (least drift that still does the task).

--per-layer (with --max-kl) also searches separate scales for the bottom, middle and top thirds of the
layers and for attention and MLP (adapters/layer_scales.py): the uniform scale is bisected to the budget,
then for each of those five parts the part at twice the rest's scale, the rest bisected until the budget
holds; the candidate with the highest task score within the budget is kept (the uniform one on a tie).
(A part at full scale with the rest dialled down, tried first, left the rest near 0 and the task at 0 on
the quickstart at 10% of plain LoRA's KL: one part at full scale spends the whole budget.)

The scale is saved where every tool that loads the adapter reads it: lora_alpha (and alpha_pattern) in
RUN/adapter/adapter_config.json become s × the trained values, so merge, serve, export, vLLM and
llama.cpp all use the scaled adapter (per-layer scales: an alpha_pattern entry per adapted module);
RUN/tune_scale.json keeps the trained values (a second tune-scale
starts from them, scales never compound) and the curve, which the run's report shows.
"""

from __future__ import annotations

import json
from pathlib import Path

from peft import PeftModel

from forgetless.adapters import continued, layer_scales, saved
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
RATIO = 2.0  # --per-layer: a favoured part's scale over the rest's


def run(
    cfg: Config, run_dir: Path, max_kl: float | None, min_task: float | None, grid=GRID, per_layer: bool = False
) -> dict:
    if (max_kl is None) == (min_task is None):
        raise UserError("tune-scale: give one budget, --max-kl X (KL to base per token) or --min-task Y (task score)")
    if per_layer and max_kl is None:
        raise UserError("tune-scale --per-layer searches within a KL budget: give --max-kl X")
    if not grid or any(not 0 < s <= 2 for s in grid):
        raise UserError(f"tune-scale --grid {','.join(map(str, grid))}: scales in (0, 2], e.g. 0.25,0.5,0.75,1")
    adapter = run_dir / "adapter"
    with rundir.locked(run_dir):  # a training run (--resume) or a second tune-scale in it waits
        return _run(cfg, run_dir, adapter, (max_kl, min_task), grid, per_layer)


# one piece: load, score the grid, choose, save: the command's steps in order
def _run(cfg: Config, run_dir: Path, adapter: Path, limits, grid, per_layer: bool) -> dict:
    max_kl, min_task = limits
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
    dial = layer_scales.Dial(model)
    metric, points = cfg.eval.metric, []
    held: list = []  # the base's side of the KL, measured once: every point differs in the adapter's scale only

    def measured_kl() -> float:
        return kl_to_base(model, tokenizer, refs, base_logits=held)

    def score(scales, label: str) -> dict:
        dial.set(scales)
        task = task_eval(model, tokenizer, examples, cfg).get(metric)
        kl = measured_kl() if refs else None
        print(f"[forgetless] tune-scale: {label}: task {metric} {report.fmt(task)}, KL {report.fmt(kl, '.4f')}")
        return {"task": task, "kl_per_token": kl}

    for s in sorted(set(grid)):
        points.append({"scale": s} | score(s, f"scale {s:.2f}"))
    record = {"metric": metric, "points": points, "max_kl": max_kl, "min_task": min_task}
    record["trained"] = {k: config.get(k) for k in ("lora_alpha", "alpha_pattern")}
    if per_layer:
        record |= _per_layer(dial, measured_kl, score, max_kl)
    else:
        record["chosen"] = choose(points, max_kl, min_task)
    budget.save_scale(run_dir, adapter, config, record, list(dial.trained))
    report.write([run_dir], run_dir)
    return record


def _per_layer(dial: layer_scales.Dial, kl, score, max_kl: float) -> dict:
    """The uniform scale u bisected to the budget (on the KL alone), then for each favoured part its split:
    the part at RATIO × the rest's scale (at most 1), the rest bisected in [u / RATIO, u] (at u / RATIO no
    group is above u, so the KL is about within; at u the favoured part is above it, so about over).
    Each candidate is scored on the task; the best one within the budget is kept (the uniform one on a tie).
    The record's fields: chosen (u), layer_scales (the best split, None when the uniform scale scores as
    high) and layer_points (every candidate)."""

    def within(scales) -> bool:
        dial.set(scales)
        return kl() <= max_kl

    def largest(make, low: float, high: float) -> float:  # the largest x in [low, high] within the budget
        for _ in range(budget.BISECTIONS):
            mid = (low + high) / 2
            low, high = (mid, high) if within(make(mid)) else (low, mid)
        return low

    groups = layer_scales.GROUPS
    print("[forgetless] tune-scale: bisecting the uniform scale to the budget ...")
    u = largest(lambda x: dict.fromkeys(groups, x), 0.0, 1.0)
    if u == 0.0:  # even 1/32 of the adapter is over: saving scale 0 would be a null adapter
        dial.set(dict.fromkeys(groups, 0.5**budget.BISECTIONS))
        raise UserError(
            f"tune-scale --per-layer: no scale keeps KL to base ≤ {max_kl} (at 1/{2**budget.BISECTIONS} it is "
            f"{kl():.4f}); allow a larger --max-kl"
        )
    found = [{"favoured": "uniform", "scales": dict.fromkeys(groups, u)}]
    for label, favoured in layer_scales.FAVOURED.items():
        print(f"[forgetless] tune-scale: bisecting the rest with {label} at {RATIO:g}x its scale ...")
        make = lambda x, f=favoured: {g: min(1.0, RATIO * x) if g in f else x for g in groups}  # noqa: E731
        found.append({"favoured": label, "scales": make(largest(make, u / RATIO, u))})
    for p in found:
        p |= score(p["scales"], f"{p['favoured']}: {_short(p['scales'])}")
    inside = [p for p in found if p["kl_per_token"] is not None and p["kl_per_token"] <= max_kl] or found[:1]
    best = max(inside, key=lambda p: (float("-inf") if p["task"] is None else p["task"], p["favoured"] == "uniform"))
    split = best["favoured"] != "uniform"
    return {"chosen": u, "layer_scales": best["scales"] if split else None, "layer_points": found} | {
        "layers": dial.layers
    }


def _short(scales: dict[str, float]) -> str:
    return " ".join(f"{g}={s:.3f}" for g, s in scales.items())


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
    """RUN/tune_scale.json when it describes the adapter saved now (its alpha and alpha_pattern are the ones
    the record wrote). After `train --resume` saved the adapter again at the trained values, the record is
    stale: dividing by its scales again would scale the adapter by 1/old choice."""
    path = run_dir / RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text(encoding="utf-8"))
    trained = record["trained"]
    # what budget.save_scale wrote (kept in the record; older records: lora_alpha × the one scale)
    wrote = record.get("saved") or {"lora_alpha": trained["lora_alpha"] * record["chosen"]}
    if all(config.get(k) == v for k, v in wrote.items()):
        return record
    if all(config.get(k) == trained.get(k) for k in wrote):
        print(f"[forgetless] tune-scale: {path} describes an earlier save of the adapter; starting from this one")
        return None
    raise UserError(
        f"tune-scale: {run_dir}/adapter/adapter_config.json has lora_alpha {config.get('lora_alpha')}, neither the "
        f"trained {trained['lora_alpha']} nor the {wrote['lora_alpha']} that {path} saved (alpha_pattern likewise); "
        "set them back to the trained values and run tune-scale again"
    )


def _at_trained_scale(model: PeftModel, earlier: dict | None) -> PeftModel:
    """The loaded adapter at scale 1: an earlier dial saved each module's alpha × its scale."""
    if earlier is not None:
        for name, m in layer_scales.modules(model).items():
            f = layer_scales.factor(earlier, name)
            m.scaling.update({k: v / f for k, v in m.scaling.items()})
    return model
