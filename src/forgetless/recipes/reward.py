"""A reward model from preference pairs: the base with LoRA and a scalar head, trained with the
Bradley-Terry loss −log σ(r_chosen − r_rejected) (Ouyang et al. 2022).

load (with a score head) -> pairs -> held-out accuracy of the untrained head -> attach LoRA
-> fit -> save (PEFT format; the head is saved with the adapter) -> held-out accuracy again.
`forgetless reward score` scores prompt/answer pairs with the result; `recipe: rlhf` trains a
policy against it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from forgetless import adapters, loop, planner
from forgetless import model as models
from forgetless.chat import adapter_dir, base_of
from forgetless.config import Config, ModelConfig
from forgetless.data.batching import Batches, collate
from forgetless.data.formats import Example
from forgetless.data.preference import build_pairs, collate_pairs
from forgetless.data.render import encode
from forgetless.errors import UserError
from forgetless.preference import reward_accuracy, reward_counts, reward_loss, reward_scores
from forgetless.recipes import common
from forgetless.recipes.dpo import fixed_pairs
from forgetless.recipes.sft import _monitor


def run(cfg: Config, resume: bool = False, overwrite: bool = False) -> dict:
    r = common.start(cfg, resume, overwrite, head="score")
    model, tokenizer, out, main = r.model, r.tokenizer, r.out, r.main
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

    model, trainable, total = common.attach(r, task_type="SEQ_CLS")
    summary = loop.fit(
        model,
        Batches(data.train, cfg.train.batch_size, cfg.train.seed, pad, collate_pairs),
        reward_loss,
        cfg.train.model_copy(update={"on_oom": "stop"}),  # splitting rows would separate pairs
        out,
        evaluate=(lambda m: {"val_accuracy": reward_accuracy(m, val)["accuracy"]}) if val else None,
        resume=resume,
        mixed_precision=common.mixed_precision(r),
        count_fn=reward_counts,
        monitor=_monitor(cfg),
        oom_advice=lambda: planner.advice(cfg),
    )
    if not main:
        return summary
    adapters.save(model, out / "adapter", cfg.peft, cfg.model.name)
    tokenizer.save_pretrained(out / "adapter")
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
    summary |= {
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_pairs": len(data.train),
        "validation_pairs": len(data.validation),
        "data_notes": data.notes,
        "task_before": before.get("task"),
        "task_after": after.get("task"),
    }
    return common.finish(r, evaluation, summary)


def load_reward_model(ref: str, dev: torch.device | None = None):
    """(reward model, tokenizer) from a reward run directory or its adapter directory."""
    from peft import PeftModel

    adapter = adapter_dir(ref)
    run_cfg = adapter.parent / "config.yaml"
    saved = yaml.safe_load(run_cfg.read_text(encoding="utf-8")) if run_cfg.is_file() else {}
    if saved.get("recipe", "reward") != "reward":
        raise UserError(f"{ref} is a {saved['recipe']} run, not a reward model (train one with recipe=reward)")
    name = base_of(adapter)
    if not name:
        raise UserError(f"{adapter}: no base model recorded")
    quant = (saved.get("model") or {}).get("quantization", "none")
    model, tokenizer, _ = models.load(ModelConfig(name=name, quantization=quant), dev, head="score")
    return PeftModel.from_pretrained(model, str(adapter)).eval(), tokenizer


@torch.no_grad()
def score(model, tokenizer, items: list[tuple[list[dict], str]], batch_size: int = 8) -> list[float]:
    """Rewards of (prompt messages, answer) items, rendered with the chat template as in training."""
    rows = [encode(tokenizer, Example("score", messages=(*p, {"role": "assistant", "content": a}))) for p, a in items]
    out: list[float] = []
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(model.device) for k, v in collate(rows[i : i + batch_size], tokenizer.pad_token_id).items()}
        out += reward_scores(model, batch).tolist()
    return out


def score_file(ref: str, path: Path) -> list[dict]:
    """`forgetless reward score --file`: every {prompt, answer} (or {prompt, chosen, rejected}) row scored."""
    from forgetless.data.formats import iter_rows, resolve_path
    from forgetless.data.preference import _answer, _prompt

    model, tokenizer = load_reward_model(ref)
    rows, items = [], []
    for line, row in iter_rows(resolve_path(str(path))):
        if not isinstance(row, dict) or "prompt" not in row:
            raise UserError(f"{path}:{line}: expected {{prompt, answer}} or {{prompt, chosen, rejected}}")
        keys = [k for k in ("answer", "chosen", "rejected") if k in row]
        if not keys:
            raise UserError(f"{path}:{line}: no 'answer' (or 'chosen'/'rejected') field to score")
        try:
            prompt = list(_prompt(row["prompt"]))
            items += [(prompt, _answer(row, k)) for k in keys]
        except ValueError as e:
            raise UserError(f"{path}:{line}: {e}") from None
        rows.append((row, keys))
    scores = iter(score(model, tokenizer, items))
    return [{**row, **{f"reward_{k}": next(scores) for k in keys}} for row, keys in rows]
