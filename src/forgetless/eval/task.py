"""Score a model on held-out conversations by generating answers (before/after training)."""

from __future__ import annotations

from forgetless.config.schema import Config
from forgetless.data.formats import Example
from forgetless.eval.metrics import score
from forgetless.model.generate import generate, split_prompt


def task_eval(model, tokenizer, examples: list[Example], cfg: Config, answers: list[str] | None = None) -> dict:
    """eval.metric and the other metrics of the model's greedy answers to the held-out chats; `answers`:
    those answers when the caller generated them already (GRPO's held-out rewards score the same ones)."""
    chats = [e for e in examples if e.messages][: cfg.eval.max_examples]
    if not chats:
        return {}
    pairs = [split_prompt(e.messages, cfg.data.system_prompt) for e in chats]
    if answers is None:
        answers = generate(
            model, tokenizer, [p for p, _ in pairs], max_new_tokens=cfg.eval.max_new_tokens, desc="eval: task answers"
        )
    elif len(answers) != len(pairs):
        raise ValueError(f"task_eval: {len(answers)} answers for {len(pairs)} held-out chats")
    refs = [r for _, r in pairs]
    samples = [
        {"prompt": p[-1]["content"], "reference": r, "answer": a}
        for (p, r), a in zip(pairs[: cfg.eval.samples], answers, strict=False)
    ]
    return {"n": len(chats), **score(answers, refs, cfg.eval.labels, cfg.eval.custom_metrics), "samples": samples}
