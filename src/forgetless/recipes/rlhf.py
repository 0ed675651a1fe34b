"""RLHF: PPO of the policy (base + LoRA + a value head) against a reward model, with a per-token KL
penalty to the reference (the same model with adapters off).

load -> prompts -> reward model -> score the base's greedy answers -> attach + value head -> fit
(rollouts, PPO) -> save -> score again -> eval.json (mean reward, KL to the reference, retention).
Prompts come from data.train: preference rows ({prompt, ...}), prompt files or SFT rows (their
answers are ignored); data.validation (or a seeded split) gives the held-out prompts.
"""

from __future__ import annotations

from safetensors.torch import save_file

from forgetless.config.schema import Config
from forgetless.data.build import split
from forgetless.data.formats import Example, read_prompts
from forgetless.errors import UserError
from forgetless.eval import suite
from forgetless.eval.retention import kl_to_base
from forgetless.model.generate import generate
from forgetless.objectives.ppo import VALUE_HEAD, Rollouts, add_value_head, ppo_objective
from forgetless.objectives.reward_model import load_reward_model, score
from forgetless.recipes import runtime


def prompts_of(refs: list[str]) -> list[tuple]:
    return [p for ref in refs for _, p in read_prompts(ref)]


def policy_scores(model, tokenizer, scorer, prompts: list, cfg: Config, reference: bool) -> dict:
    """Mean reward of the greedy answers to held-out prompts and (with adapters) their KL to the reference."""
    answers = generate(model, tokenizer, [list(p) for p in prompts], max_new_tokens=cfg.rlhf.max_new_tokens)
    rewards = scorer([list(p) for p in prompts], answers)
    out = {"mean_reward": sum(rewards) / len(rewards)}
    if reference:
        own = [
            Example("rlhf", messages=(*p, {"role": "assistant", "content": a or "-"}))
            for p, a in zip(prompts, answers, strict=True)
        ]
        out["kl_to_reference"] = kl_to_base(model, tokenizer, own)
    samples = [
        {"prompt": p[-1]["content"], "answer": a} for p, a in zip(prompts[: cfg.eval.samples], answers, strict=False)
    ]
    return {"task": out, "rlhf_samples": samples}


def _prompts(cfg: Config) -> tuple[list, list]:
    """Training and held-out prompts (held out: data.validation, else a data.validation_split share)."""
    train = prompts_of(cfg.data.train)
    val = prompts_of(cfg.data.validation) if cfg.data.validation else []
    if not cfg.data.validation:
        train, val = split(train, cfg.data.validation_split, cfg.train.seed)
    if not train:
        raise UserError("data.train has no prompts: give preference, prompt or SFT files")
    return train, val[: cfg.eval.max_examples]


def measure(model, tokenizer, scorer, prompts: list, cfg: Config, refs) -> dict:
    """One side of the evaluation: rewards of greedy answers, and the retention suite against `refs`
    (None on the base side: its KL to itself is 0)."""
    return policy_scores(model, tokenizer, scorer, prompts, cfg, refs is not None) | suite.measure(
        model, tokenizer, cfg, [], [], refs
    )


def run(cfg: Config, resume: bool = False) -> dict:
    r = runtime.start(cfg)
    model, tokenizer, out, main = r.model, r.tokenizer, r.out, r.main
    train, val = _prompts(cfg)
    r.say(f"data: {len(train)} training prompts, {len(val)} held-out prompts")
    if cfg.forgetting.preset != "none":
        r.say("rlhf: the KL penalty to the reference (rlhf.kl_coef) is the forgetting control, not forgetting.preset")
    reward_model, reward_tok = load_reward_model(cfg.rlhf.reward_model, r.dev)

    def scorer(prompts, answers):
        return score(reward_model, reward_tok, [(p, a or "-") for p, a in zip(prompts, answers, strict=True)])

    refs = runtime.references(r)
    before = runtime.score_base(r, lambda: measure(model, tokenizer, scorer, val, cfg, None))

    model = runtime.attach(r)
    add_value_head(model)
    rollouts = Rollouts(model, tokenizer, scorer, train, cfg.rlhf, cfg.train.batch_size, cfg.train.seed)
    # on_oom=stop: rollouts are whole micro-batches; no monitor: PPO has no validation loss to watch
    summary = runtime.fit(r, model, rollouts, ppo_objective(cfg.rlhf), resume, on_oom="stop", monitor=None)
    if not main:
        return summary
    runtime.save_result(r, model)  # the policy: a plain PEFT adapter
    head = getattr(model, VALUE_HEAD)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}, str(out / "value_head.safetensors")
    )
    after = runtime.score_finetuned(r, lambda: measure(model, tokenizer, scorer, val, cfg, refs))
    evaluation = suite.combine(before, after)
    evaluation["rlhf_samples"] = {"base": before.get("rlhf_samples"), "finetuned": after.get("rlhf_samples")}
    counts = {"train_prompts": len(train), "validation_prompts": len(val), "rollouts": rollouts.history}
    summary = runtime.summary(r, summary, before, after, **counts)
    return runtime.finish(r, evaluation, summary)
