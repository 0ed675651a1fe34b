"""A reward model from preference pairs: the base with LoRA and a scalar head, trained with the
Bradley-Terry loss −log σ(r_chosen − r_rejected) (Ouyang et al. 2022).

load (with a score head) -> pairs -> held-out accuracy of the untrained head -> attach LoRA
-> fit -> save (PEFT format; the head is saved with the adapter) -> held-out accuracy again.
`forgetless reward score` scores prompt/answer pairs with the result; `recipe: rlhf` trains a
policy against it.
"""

from __future__ import annotations

from forgetless.config.schema import Config
from forgetless.data.batching import Batches
from forgetless.data.preference import build_pairs, collate_pairs, fixed_pairs
from forgetless.objectives.preference import REWARD, reward_accuracy
from forgetless.recipes import runtime


def run(cfg: Config, resume: bool = False) -> dict:
    r = runtime.start(cfg, head="score")
    model, tokenizer, main = r.model, r.tokenizer, r.main
    data = build_pairs(cfg.data, tokenizer, cfg.train.seed)
    r.say(f"data: {len(data.train)} training pairs, {len(data.validation)} held-out pairs")
    for note in data.notes:
        r.say(note)
    if cfg.forgetting.preset != "none":
        r.say("reward model: it scores answers and generates nothing, so the forgetting controls do not apply")
    pad = tokenizer.pad_token_id
    val = fixed_pairs(data.validation, cfg.train.batch_size, pad)
    # The head is random before training: its accuracy is the chance level of this held-out set.
    before = {"task": reward_accuracy(model, val)} if val else {}

    model = runtime.attach(r, task_type="SEQ_CLS")
    batches = Batches(data.train, cfg.train.batch_size, cfg.train.seed, pad, collate_pairs)
    evaluate = (lambda m: {"val_accuracy": reward_accuracy(m, val)["accuracy"]}) if val else None
    # on_oom=stop: splitting rows would separate pairs
    summary = runtime.fit(r, model, batches, REWARD, resume, on_oom="stop", evaluate=evaluate)
    if not main:
        return summary
    runtime.save_result(r, model)
    after = {"task": reward_accuracy(model, val)} if val else {}
    evaluation = {
        "task": {
            k: {"base": before["task"][k], "finetuned": after["task"][k], "diff": after["task"][k] - before["task"][k]}
            for k in ("accuracy", "margin")
        }
        if val
        else {},
        "retention": {},
    }
    counts = {"train_pairs": len(data.train), "validation_pairs": len(data.validation), "data_notes": data.notes}
    summary = runtime.summary(r, summary, before, after, **counts)
    return runtime.finish(r, evaluation, summary)
