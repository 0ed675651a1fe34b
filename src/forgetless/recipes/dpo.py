"""Direct preference optimisation: prefer the chosen answer over the rejected one, against the
same model with its adapters off as the reference (no second copy).

load -> pairs (+ general rows) -> score the base -> attach -> fit (DPO loss) -> save -> score again
-> eval.json (pair scores, behaviour rate, retention) + report.

The held-out scores: reward accuracy (share of pairs whose implicit reward β·log π/π_ref is
higher for the chosen answer; the base, with all rewards 0, is at 0.5), the mean margin, the share
of pairs whose chosen answer is likelier per token, and, with eval.behaviour_pattern, the share of
greedy answers to held-out prompts that show the preferred behaviour.
"""

from __future__ import annotations

from forgetless.config.schema import Config
from forgetless.data.batching import Batches
from forgetless.data.mixture import MixedBatches
from forgetless.data.preference import build_pairs, collate_pairs, fixed_pairs
from forgetless.eval import suite
from forgetless.eval.preference import measure
from forgetless.eval.retention import kl_to_base, probe_of
from forgetless.objectives.preference import dpo_objective, dpo_scores
from forgetless.recipes import runtime


def run(cfg: Config, resume: bool = False) -> dict:
    r = runtime.start(cfg)
    model, tokenizer, main = r.model, r.tokenizer, r.main
    data = build_pairs(cfg.data, tokenizer, cfg.train.seed)
    r.say(f"data: {len(data.train)} training pairs, {len(data.validation)} held-out pairs")
    general, more = runtime.general_rows(r)
    notes = data.notes + more
    for note in notes:
        r.say(note)

    pad = tokenizer.pad_token_id
    val = fixed_pairs(data.validation, cfg.train.batch_size, pad)
    prompts = [p.prompt for p in data.validation_pairs][: cfg.eval.max_examples]
    refs = runtime.references(r)
    before = runtime.score_base(r, lambda: measure(model, tokenizer, cfg, val, prompts, refs, False))

    model = runtime.attach(r)
    fcfg = cfg.forgetting
    args = (cfg.train.batch_size, cfg.train.seed, pad)
    if fcfg.uses_rehearsal:
        batches = MixedBatches(data.train, general, args[0], fcfg.rehearsal.ratio, *args[1:], collate_pairs)
        r.say(batches.describe())
    else:
        batches = Batches(data.train, *args, collate_pairs)
    evaluate = _in_training_eval(cfg, tokenizer, val, refs)
    # on_oom=stop: splitting a micro-batch's rows would separate pairs
    summary = runtime.fit(r, model, batches, dpo_objective(cfg.dpo, fcfg), resume, on_oom="stop", evaluate=evaluate)
    if not main:
        return summary
    runtime.save_result(r, model)
    after = runtime.score_finetuned(r, lambda: measure(model, tokenizer, cfg, val, prompts, refs, True))
    evaluation = suite.combine(before, after)
    evaluation["behaviour_samples"] = {
        "base": before.get("behaviour_samples"),
        "finetuned": after.get("behaviour_samples"),
    }
    counts = {"train_pairs": len(data.train), "validation_pairs": len(data.validation), "general_rows": len(general)}
    summary = runtime.summary(r, summary, before, after, forgetting_preset=fcfg.preset, **counts, data_notes=notes)
    return runtime.finish(r, evaluation, summary)


def _in_training_eval(cfg: Config, tokenizer, val: list[dict], refs):
    """Held-out DPO loss (for early stopping) and the retention probe."""
    probe = probe_of(refs or [], cfg.eval.probe_prompts)

    def evaluate(m) -> dict[str, float]:
        result = {}
        if val:
            scores = dpo_scores(m, val, cfg.dpo.beta, reference=True)
            result |= {"val_loss": scores["dpo_loss"], "val_reward_accuracy": scores["reward_accuracy"]}
        if probe:
            result["retention_kl"] = kl_to_base(m, tokenizer, probe)
        return result

    return evaluate if val or probe else None
