"""A trained reward model in use: load it from its run, score answers (`forgetless reward score`, and
the RLHF recipe's scorer)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from peft import PeftModel

from forgetless.adapters.saved import adapter_dir, base_of
from forgetless.config.schema import ModelConfig
from forgetless.data.batching import collate
from forgetless.data.formats import Example, iter_rows, resolve_path
from forgetless.data.preference import answer_of, prompt_of
from forgetless.data.render import encode
from forgetless.errors import UserError
from forgetless.model import loader as models
from forgetless.objectives.preference import reward_scores


def load_reward_model(ref: str, dev: torch.device | None = None):
    """(reward model, tokenizer) from a reward run directory or its adapter directory."""
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
    model, tokenizer = load_reward_model(ref)
    rows, items = [], []
    for line, row in iter_rows(resolve_path(str(path))):
        if not isinstance(row, dict) or "prompt" not in row:
            raise UserError(f"{path}:{line}: expected {{prompt, answer}} or {{prompt, chosen, rejected}}")
        keys = [k for k in ("answer", "chosen", "rejected") if k in row]
        if not keys:
            raise UserError(f"{path}:{line}: no 'answer' (or 'chosen'/'rejected') field to score")
        try:
            prompt = list(prompt_of(row["prompt"]))
            items += [(prompt, answer_of(row, k)) for k in keys]
        except ValueError as e:
            raise UserError(f"{path}:{line}: {e}") from None
        rows.append((row, keys))
    scores = iter(score(model, tokenizer, items))
    return [{**row, **{f"reward_{k}": next(scores) for k in keys}} for row, keys in rows]
