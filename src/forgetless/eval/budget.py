"""A forgetting budget (forgetting.budget) kept: the controller's probe during training, the check after
it, and the dial that scales a LoRA adapter down when the trained model is still over the budget.

During training, every `budget.every` steps the probe measures the KL to the base per token on
`budget.probe_prompts` held-out general prompts picked evenly through them (retention.probe_of), and the
controller (objectives/forgetting.py) moves the steered weight; both go to metrics.jsonl, from which a
resumed run takes the weight back.

After training the retention evaluation measures the budget's numbers on every held-out prompt (and
multiple-choice question). Over budget, a LoRA adapter is scaled down (the tune-scale dial: s·ΔW, s = 1
trained, s = 0 the base) to the largest scale that meets it, found by bisection on those same numbers;
the scale is saved with the adapter as `forgetless tune-scale` saves it, so merge, serve and every export
use it. The verdict opens the report.
"""

from __future__ import annotations

from pathlib import Path

from peft.tuners.lora import LoraLayer

from forgetless import files
from forgetless.adapters import layer_scales
from forgetless.config.schema import Config
from forgetless.eval import choice
from forgetless.eval.retention import kl_to_base, probe_of
from forgetless.objectives.forgetting import Controller, Weights
from forgetless.training import checkpoint
from forgetless.training.rundir import TUNE_SCALE

PROBE_KL = "budget_probe_kl"
BISECTIONS = 5  # the scale found to 1/32 of the trained one


def probe(cfg: Config, tokenizer, refs, weights: Weights, metrics: Path | None = None):
    """The loop's `adjust` hook holding the KL budget (None without one): every `budget.every` steps the
    probe's KL moves the steered weight; `metrics` (a resumed run's metrics.jsonl) gives the weight back, as
    it was at the checkpoint the run resumes from."""
    fcfg = cfg.forgetting
    steered, b = fcfg.steered, fcfg.budget
    if steered is None or not refs:
        return None
    control = Controller(b.kl, getattr(weights, steered), b.horizon, lookahead=b.lookahead, hold=b.hold)
    key = f"{steered}_weight"
    if metrics is not None and metrics.is_file():
        upto = checkpoint.latest_step(metrics.parent)  # probes after it belong to the lost future (not yet cut)
        for row in files.read_jsonl_records(metrics):
            if key in row and row.get("step", 0) <= upto:
                control.weight = row[key]
                control.engaged = control.engaged or row.get(PROBE_KL, 0) >= b.kl
                control.last = row.get(PROBE_KL, control.last)
        setattr(weights, steered, control.weight)
    shown, held = probe_of(refs, b.probe_prompts), []  # the base's side of the probe's KL never changes: measured once

    def adjust(model, step: int) -> dict | None:
        if step % b.every:
            return None
        measured = kl_to_base(model, tokenizer, shown, base_logits=held)
        setattr(weights, steered, control.update(measured, b.every))
        return {PROBE_KL: measured, key: control.weight}

    return adjust


def numbers(before: dict, after: dict) -> dict:
    """The budget's measures of a trained side: KL to the base per token, and the largest multiple-choice
    accuracy drop over the benchmarks (None when not measured)."""
    kl = (after.get("prompts") or {}).get("kl_per_token")
    drops = [
        before["benchmarks"][name]["acc"] - scored["acc"]
        for name, scored in (after.get("benchmarks") or {}).items()
        if name in (before.get("benchmarks") or {})
    ]
    return {"kl": kl, "mc_drop": max(drops) if drops else None}


def within(cfg: Config, measured: dict) -> bool:
    """Whether the measured numbers are within every bound the budget sets (an unmeasured one is not)."""
    b = cfg.forgetting.budget
    for key, limit in (("kl", b.kl), ("mc_drop", b.mc_drop)):
        if limit is not None and (measured[key] is None or measured[key] > limit):
            return False
    return True


def scalable(model) -> bool:
    return any(isinstance(m, LoraLayer) for m in model.modules())


def dial(cfg: Config, model, tokenizer, refs, before: dict) -> dict:
    """The largest adapter scale in (0, 1] whose KL (and MC drop) meets the budget, by bisection; the
    model is left at that scale. Returns {"scale", "points"}; when even 1/32 does not meet it, the scale is
    1/32, the closest point measured."""
    trained = {m: dict(m.scaling) for m in model.modules() if isinstance(m, LoraLayer)}
    b, points, held = cfg.forgetting.budget, [], []  # held: the base's side of the KL, measured once

    def measure(s: float) -> bool:
        for m, scaling in trained.items():
            m.scaling.update({k: v * s for k, v in scaling.items()})
        side = {"prompts": {"kl_per_token": kl_to_base(model, tokenizer, refs, base_logits=held)}}
        if b.mc_drop is not None:
            limit = cfg.eval.max_questions  # the questions the base side was scored on
            side["benchmarks"] = {n: choice.score_items(model, tokenizer, *choice.read_items(ref, limit)) for n, ref in
                                  benchmark_names(cfg).items()}  # fmt: skip
        found = numbers(before, side)
        points.append({"scale": s, "task": None, "kl_per_token": found["kl"], "mc_drop": found["mc_drop"]})
        drop = "" if found["mc_drop"] is None else f", multiple-choice drop {found['mc_drop']:.3f}"
        print(f"[forgetless] budget: adapter scale {s:.3f}: KL {found['kl']:.4f}{drop}")
        return within(cfg, found)

    low, high = 0.0, 1.0  # the base (scale 0) is within any budget; the trained adapter (1) is not
    for _ in range(BISECTIONS):
        mid = (low + high) / 2
        low, high = (mid, high) if measure(mid) else (low, mid)
    chosen = low or high  # nothing met: the smallest scale measured, the closest point (never a null adapter)
    for m, scaling in trained.items():
        m.scaling.update({k: v * chosen for k, v in scaling.items()})
    return {"scale": chosen, "points": sorted(points, key=lambda p: p["scale"])}


def benchmark_names(cfg: Config) -> dict[str, str]:
    """eval.benchmarks by the name the evaluation files them under."""
    return {Path(ref.removeprefix("builtin:")).name: ref for ref in cfg.eval.benchmarks}


def verdict(cfg: Config, before: dict, trained: dict, after: dict, scale: float | None) -> dict:
    """summary.json's `budget`: the limits, what the saved model measures, whether it is met, the adapter
    scale the dial chose (None: not dialled) and the share of the trained adapter's task gain kept."""
    b, metric = cfg.forgetting.budget, cfg.eval.metric
    out = {"kl": b.kl, "mc_drop": b.mc_drop, "measured": numbers(before, after), "scale": scale}
    out["trained"] = numbers(before, trained)
    out["met"] = within(cfg, out["measured"])
    base, full, kept = (s.get("task", {}).get(metric) for s in (before, trained, after))
    if None not in (base, full, kept) and full != base:
        out["gain_kept"] = (kept - base) / (full - base)
    return out


def save_scale(run_dir: Path, adapter: Path, config: dict, record: dict, names: list[str] | None = None) -> None:
    """The chosen scale saved with the adapter: lora_alpha (and alpha_pattern) × the scale in
    adapter_config.json, or with per-layer scales (record["layer_scales"]) an alpha_pattern entry for each
    adapted module of `names`; the record (trained and saved values, points) in RUN/tune_scale.json. Each
    file whole or not at all (a kill between the two is named by the next tune-scale)."""
    if record.get("layer_scales"):
        pattern = layer_scales.alpha_pattern(config, names or [], record["layer_scales"], record["layers"])
        scaled = dict(config, alpha_pattern=pattern)
    else:
        s = record["chosen"]
        scaled = dict(config, lora_alpha=config["lora_alpha"] * s)
        if config.get("alpha_pattern"):
            scaled["alpha_pattern"] = {k: v * s for k, v in config["alpha_pattern"].items()}
    record["saved"] = {k: scaled.get(k) for k in ("lora_alpha", "alpha_pattern")}
    files.write_json(adapter / "adapter_config.json", scaled)
    files.write_json(run_dir / TUNE_SCALE, record)


def headline(budget: dict, metric: str) -> str:
    """The report's first line for a run with a budget."""
    limits = [f"{k.replace('_', ' ')} ≤ {budget[k]}" for k in ("kl", "mc_drop") if budget[k] is not None]
    got = budget["measured"]
    shown = ", ".join(f"{k.replace('_', ' ')} {got[k]:.4f}" for k in ("kl", "mc_drop") if got[k] is not None)
    dialled = f"; adapter scaled to {budget['scale']:.3f}" if budget["scale"] is not None else ""
    kept = f", task gain ({metric}) kept {100 * budget['gain_kept']:.0f}%" if "gain_kept" in budget else ""
    if budget["met"]:
        return f"budget met: {shown} within {', '.join(limits)}{dialled}{kept}"
    return f"budget not met: {shown} against {', '.join(limits)}{dialled}{kept}; the closest point is saved"
