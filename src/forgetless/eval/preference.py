"""What a preference-tuned model is measured by: pair scores (objectives/preference.dpo_scores) and,
with eval.behaviour_pattern, the share of greedy answers to held-out prompts that show the preferred
behaviour; with the retention suite, one side (base or tuned) of a DPO run's eval.json.
"""

from __future__ import annotations

import re

from forgetless.config.schema import Config
from forgetless.eval import suite
from forgetless.model.generate import generate
from forgetless.objectives.preference import dpo_scores


def behaviour(model, tokenizer, cfg: Config, prompts: list) -> dict | None:
    """Share of greedy answers to held-out prompts that match eval.behaviour_pattern, with samples."""
    if not cfg.eval.behaviour_pattern or not prompts:
        return None
    pattern = re.compile(cfg.eval.behaviour_pattern)
    answers = generate(model, tokenizer, [list(p) for p in prompts], max_new_tokens=cfg.eval.max_new_tokens)
    hits = [bool(pattern.search(a)) for a in answers]
    shown = [
        {"prompt": p[-1]["content"], "answer": a} for p, a in zip(prompts[: cfg.eval.samples], answers, strict=False)
    ]
    return {"rate": sum(hits) / len(hits), "n": len(hits), "samples": shown}


def measure(model, tokenizer, cfg: Config, val: list[dict], prompts: list, refs, reference: bool) -> dict:
    """One side of the evaluation: pair scores, behaviour rate, and the retention suite."""
    side = {"task": dpo_scores(model, val, cfg.dpo.beta, reference) if val else {}}
    rate = behaviour(model, tokenizer, cfg, prompts)
    if rate is not None:
        side["task"]["behaviour_rate"] = rate["rate"]
        side["behaviour_samples"] = rate["samples"]
    # The base side passes no references: its KL to itself is 0 by definition.
    return side | suite.measure(model, tokenizer, cfg, [], [], refs if reference else None)
