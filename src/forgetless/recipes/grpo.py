"""GRPO: reinforcement learning with verifiable rewards. G sampled answers per prompt, each scored by
`grpo.rewards` against the row's reference answer, each answer's advantage its reward against its
group's, the clipped policy ratio and a KL to the base (the same model with the adapter off) as in
DeepSeekMath; `grpo.loss: dr_grpo` for Dr. GRPO's length-unbiased variant.

load -> rows (the last user turn is the prompt, the answer the reference) -> score the base's greedy
answers -> attach -> fit (rollouts, GRPO; with the forgetting controls, general rows beside each
micro-batch) -> save -> score again -> eval.json (held-out reward with its interval, KL on the task's
prompts, retention) + report.
"""

from __future__ import annotations

import hashlib
import json

from forgetless.config.schema import Config
from forgetless.data.build import build
from forgetless.data.formats import Example
from forgetless.errors import UserError
from forgetless.eval import base_cache, stats, suite
from forgetless.eval.task import task_eval
from forgetless.model.chat_format import with_system
from forgetless.model.generate import generate
from forgetless.objectives import forgetting, grpo
from forgetless.objectives.reward_model import load_reward_model
from forgetless.objectives.rewards import BUILTIN, Rewards, Rollout
from forgetless.recipes import runtime


def prompt_rows(examples: list[Example], system_prompt: str | None) -> list[tuple[str, list[dict], str]]:
    """(where, conversation up to the last answer, that answer) of each chat row; the answer is the
    reference the rewards check, so a row without one is an error naming it."""
    out = []
    for ex in examples:
        messages = with_system(ex.messages, system_prompt)
        if not messages or messages[-1]["role"] != "assistant":
            raise UserError(f"{ex.where}: a GRPO row is a conversation ending with the reference answer")
        out.append((ex.where, messages[:-1], messages[-1]["content"]))
    return out


def reward_scores(model, tokenizer, rewards: Rewards, rows: list, cfg: Config) -> dict:
    """The greedy answers to the held-out prompts (kept under "answers"), their rewards (mean and each
    reward's), with samples."""
    prompts = [p for _, p, _ in rows]
    answers = generate(model, tokenizer, prompts, max_new_tokens=cfg.grpo.max_new_tokens, desc="eval: held-out answers")
    values, means = rewards([Rollout(w, p, a, ref) for (w, p, ref), a in zip(rows, answers, strict=True)])
    shown = zip(rows[: cfg.eval.samples], answers, strict=False)
    samples = [{"prompt": p[-1]["content"], "reference": ref, "answer": a} for (_, p, ref), a in shown]
    task = {"reward": sum(values) / len(values), **means, "n": len(values)}
    return {"task": task, "rewards": values, "grpo_samples": samples, "answers": answers}


def run(cfg: Config, resume: bool = False) -> dict:
    r = runtime.start(cfg)
    model, tokenizer, main, g = r.model, r.tokenizer, r.main, cfg.grpo
    data = build(cfg.data, tokenizer, cfg.train.seed)
    train = prompt_rows(data.train_examples, cfg.data.system_prompt)
    val = prompt_rows(data.validation_examples, cfg.data.system_prompt)[: cfg.eval.max_examples]
    r.say(f"data: {len(train)} training prompts, {len(val)} held-out prompts; {g.group_size} answers per prompt")
    general, notes = runtime.general_rows(r)
    for note in data.notes() + notes:
        r.say(note)
    rewards = Rewards(g.rewards, _reward_model(g, r.dev))
    refs = runtime.references(r)

    # eval.metric on the same held-out rows as an SFT run scores them (eval.before_after), beside the reward
    scored = data.validation_examples[: cfg.eval.max_examples] if cfg.eval.before_after else []

    # the rewards' greedy answers are eval.metric's answers too when both have the same length limit
    same_answers = cfg.eval.max_new_tokens == g.max_new_tokens

    def measure(m, references):
        rewarded = reward_scores(m, tokenizer, rewards, val, cfg)
        answers = rewarded.pop("answers")
        side = suite.measure(m, tokenizer, cfg, [] if same_answers else scored, data.validation, references)
        if same_answers and scored:
            side["task"] = task_eval(m, tokenizer, scored, cfg, answers) | side.get("task", {})
        return side | rewarded | {"task": side.get("task", {}) | rewarded["task"]}

    before = runtime.score_base(r, lambda: measure(model, None), shared=_shared_base(r, scored, data.validation, val))
    model = runtime.attach(r)
    fcfg = cfg.forgetting
    controls = forgetting.objective(fcfg, chunk=cfg.train.loss_chunk) if fcfg.uses_lwf or fcfg.uses_rehearsal else None
    per_batch = max(1, round(cfg.train.batch_size * fcfg.rehearsal.ratio)) if controls else 0
    args = (cfg.train.batch_size, cfg.train.seed, general if controls else None, per_batch)
    rollouts = grpo.GroupRollouts(model, tokenizer, rewards, train, g, *args)
    # on_oom=stop: a micro-batch's answers are one group's; no monitor: there is no validation loss to watch
    summary = runtime.fit(r, model, rollouts, grpo.objective(g, controls), resume, on_oom="stop", monitor=None)
    if not main:
        return summary
    runtime.save_result(r, model)
    after = runtime.score_finetuned(r, lambda: measure(model, refs))
    evaluation = suite.combine(before, after)
    if before.get("rewards"):  # the held-out reward with the interval of its change (paired over prompts)
        evaluation["task"]["reward"] = stats.compare(before["rewards"], after["rewards"])
    evaluation["grpo_samples"] = {"base": before.get("grpo_samples"), "finetuned": after.get("grpo_samples")}
    counts = {"train_prompts": len(train), "validation_prompts": len(val), "rollouts": rollouts.history}
    summary = runtime.summary(r, summary, before, after, forgetting_preset=fcfg.preset, **counts)
    return runtime.finish(r, evaluation, summary)


def _shared_base(r: runtime.Run, scored: list, rows: list[dict], val: list) -> str | None:
    """The eval/base_cache file of this base side, shared by every run that scores the same base on the
    same rows with the same rewards; None when a reward is a user's function or a model (their code or
    weights are not part of the key, so a cached score could be stale)."""
    g = r.cfg.grpo
    if any(s.kind not in BUILTIN for s in g.rewards):
        return None
    k = base_cache.key(r.cfg, r.model_path, str(r.dtype), r.dev.type, scored, rows)
    settings = {"rewards": [s.model_dump(mode="json") for s in g.rewards], "tokens": g.max_new_tokens, "rows": val}
    k = hashlib.sha256((k + json.dumps(settings, sort_keys=True, ensure_ascii=False)).encode()).hexdigest()[:16]
    return base_cache.file_name(r.cfg, f"grpo-{k}")


def _reward_model(g, dev):
    """(model, tokenizer) of the `reward_model` reward's run, loaded once; None when no reward names one."""
    runs = {s.run for s in g.rewards if s.kind == "reward_model"}
    if not runs:
        return None
    if len(runs) > 1:
        raise UserError("grpo.rewards: one reward_model per run (several name different runs)")
    return load_reward_model(runs.pop(), dev)
