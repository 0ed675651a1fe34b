"""Supervised instruction tuning: load -> data -> score before -> attach adapters -> fit -> save -> score after.

Read top to bottom; each step is one call into the module that owns it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from transformers import set_seed

from forgetless import adapters, config, hardware, loop
from forgetless import model as models
from forgetless.config import Config
from forgetless.data.batching import Batches, fixed_batches
from forgetless.data.build import build
from forgetless.errors import UserError
from forgetless.eval.task import task_eval
from forgetless.losses import ce_sum, count_targets


def sft_loss(model, batch: dict, norm: float) -> dict[str, torch.Tensor]:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return {"ce": ce_sum(out.logits, batch["labels"]) / norm}


@torch.no_grad()
def validation_loss(model, batches: list[dict]) -> float:
    total, n = 0.0, 0
    for b in batches:
        b = {k: v.to(model.device) for k, v in b.items()}
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        total += float(ce_sum(out.logits, b["labels"]))
        n += count_targets(b["labels"])
    return total / max(n, 1)


def prepare_output_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(
                f"output_dir {out} already holds a run; pass --resume to continue it, "
                "--overwrite to replace it, or choose another output_dir=..."
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _cached(path: Path, compute):
    """Reuse a before-training score on resume: the base model has not changed."""
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    value = compute()
    path.write_text(json.dumps(value, ensure_ascii=False, indent=2), encoding="utf-8")
    return value


def run(cfg: Config, resume: bool = False, overwrite: bool = False) -> dict:
    started = time.time()
    out = Path(cfg.output_dir)
    prepare_output_dir(out, resume, overwrite)
    config.dump(cfg, out / "config.yaml")
    set_seed(cfg.train.seed)
    dev = hardware.device()

    model, tokenizer, model_path = models.load(cfg.model, dev)
    data = build(cfg.data, tokenizer, cfg.train.seed)
    print(f"[forgetless] data: {len(data.train)} train rows, {len(data.validation)} validation rows")
    for note in data.notes():
        print(f"[forgetless] {note}")

    before = None
    if cfg.eval.before_after and data.validation_examples:
        print("[forgetless] scoring the base model on the held-out split ...")
        before = _cached(out / "eval_before.json", lambda: task_eval(model, tokenizer, data.validation_examples, cfg))

    # Seed right before the adapters are initialised: converting a GGUF on first use draws random
    # numbers, and the LoRA initialisation must not depend on whether the cache was warm.
    set_seed(cfg.train.seed)
    quantized = cfg.model.quantization != "none"
    ckpt = adapters.use_grad_checkpointing(cfg.train.grad_checkpointing, dev)
    model = adapters.attach(model, cfg.peft, quantized=quantized, grad_checkpointing=ckpt)
    trainable, total = adapters.count_parameters(model)
    print(
        f"[forgetless] {cfg.peft.method}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.2f}%)"
    )

    pad = tokenizer.pad_token_id
    batches = Batches(data.train, cfg.train.batch_size, cfg.train.seed, pad)
    val = fixed_batches(data.validation, cfg.train.batch_size, pad)
    evaluate = (lambda m: {"val_loss": validation_loss(m, val)}) if val else None
    dtype = hardware.resolve_dtype(cfg.model.precision, dev)
    mixed = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "no")
    summary = loop.fit(
        model, batches, sft_loss, cfg.train, out, evaluate=evaluate, resume=resume, mixed_precision=mixed
    )

    model.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    after = None
    if before is not None:
        print("[forgetless] scoring the fine-tuned model on the held-out split ...")
        after = task_eval(model, tokenizer, data.validation_examples, cfg)
    summary |= {
        "model": cfg.model.name,
        "model_path": model_path,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "train_rows": len(data.train),
        "validation_rows": len(data.validation),
        "data_notes": data.notes(),
        "task_before": before,
        "task_after": after,
        "wall_seconds": round(time.time() - started, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    return summary
