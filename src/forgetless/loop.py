"""The one training loop: every recipe (SFT now; DPO, RLHF later) trains through `fit`.

A recipe hands in the model, a `Batches` stream, and `loss_fn(model, batch, norm) -> {name: loss}`
whose terms are already divided by `norm` (the number of target units in the whole optimizer
step, per process). The loop owns accumulation, clipping, the schedule, validation, atomic
checkpoints, exact resume, NaN stops and logging. It runs on accelerate so that the same code
runs under `accelerate launch` / `torchrun`.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from itertools import islice
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from forgetless import checkpoint
from forgetless.checkpoint import Progress
from forgetless.config import TrainConfig
from forgetless.data.batching import Batches
from forgetless.errors import TrainingDiverged, UserError
from forgetless.losses import count_targets
from forgetless.metrics_log import MetricsLog

LossFn = Callable[[torch.nn.Module, dict, float], dict[str, torch.Tensor]]
EvalFn = Callable[[torch.nn.Module], dict[str, float]]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay only on matrices (not on biases and norms), as in GPT-2/nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("the model has no trainable parameters; check peft settings")
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if not torch.cuda.is_available():
        raise UserError(f"train.optimizer={cfg.optimizer} needs a CUDA GPU; use train.optimizer=adamw on CPU")
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if cfg.optimizer == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(groups, lr=cfg.lr)


def total_steps(cfg: TrainConfig, batches: Batches) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = math.ceil(len(batches) / cfg.grad_accum)
    return max(1, math.ceil(cfg.epochs * per_epoch))


def next_window(batches: Batches, prog: Progress, grad_accum: int) -> list[dict]:
    """The micro-batches of the next optimizer step; an epoch's last window may be shorter."""
    window = list(islice(batches.epoch(prog.epoch, prog.micro), grad_accum))
    if not window:
        prog.epoch, prog.micro = prog.epoch + 1, 0
        window = list(islice(batches.epoch(prog.epoch, 0), grad_accum))
    return window


def train_step(model, window, loss_fn: LossFn, acc: Accelerator, count_fn) -> dict[str, float]:
    """Forward/backward over one window; returns the step's loss terms (token-mean)."""
    local = sum(count_fn(b) for b in window)
    total = acc.reduce(torch.tensor(float(local), device=acc.device), "sum").item()
    # DDP averages gradients over processes, so each process normalises by its share of the total.
    norm = max(total, 1.0) / acc.num_processes
    terms: dict[str, float] = defaultdict(float)
    for i, batch in enumerate(window):
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        sync = nullcontext() if i == len(window) - 1 else acc.no_sync(model)
        with sync, acc.autocast():
            parts = loss_fn(model, batch, norm)
            acc.backward(sum(parts.values()))
        for name, value in parts.items():
            terms[name] += value.detach().float().item()
    reduced = acc.reduce(torch.tensor(list(terms.values()), device=acc.device), "mean").tolist()
    return dict(zip(terms, reduced, strict=True))


def fit(
    model,
    batches: Batches,
    loss_fn: LossFn,
    cfg: TrainConfig,
    out_dir: Path,
    *,
    evaluate: EvalFn | None = None,
    resume: bool = False,
    mixed_precision: str = "no",
    count_fn=lambda b: count_targets(b["labels"]),
) -> dict:
    acc = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    steps = total_steps(cfg, batches)
    optimizer = make_optimizer(model, cfg)
    warmup = math.ceil(cfg.warmup_ratio * steps)
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.scheduler]
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    model, optimizer = acc.prepare(model, optimizer)
    prog = Progress()
    if resume:
        prog = checkpoint.restore(out_dir, acc.unwrap_model(model), optimizer, scheduler)
    log = MetricsLog(out_dir, enabled=acc.is_main_process, resume_step=prog.step)
    model.train()
    bar = tqdm(total=steps, initial=prog.step, disable=not acc.is_main_process, desc="train", unit="step")
    last: dict[str, float] = {}
    try:
        while prog.step < steps:
            last = _one_step(model, batches, loss_fn, optimizer, scheduler, acc, cfg, prog, count_fn)
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}", tok_s=f"{last['tokens_per_s']:.0f}")
            if prog.step % cfg.log_every == 0 or prog.step == steps:
                log.write(prog.step, last)
            epoch_end = prog.micro == 0
            if evaluate and (prog.step % cfg.eval_every == 0 or epoch_end or prog.step == steps):
                log.write(prog.step, _validate(model, evaluate, acc))
            if prog.step % cfg.save_every == 0 or epoch_end or prog.step == steps:
                if acc.is_main_process:
                    checkpoint.save(out_dir, acc.unwrap_model(model), optimizer, scheduler, prog, cfg.keep_checkpoints)
                acc.wait_for_everyone()
    finally:
        bar.close()
        log.close()
    return {
        "steps": prog.step,
        "epochs_completed": prog.epoch + prog.micro / max(len(batches), 1),
        "tokens": prog.tokens,
        "target_tokens": prog.targets,
        "train_seconds": round(prog.elapsed, 2),
        "tokens_per_s": round(prog.tokens / max(prog.elapsed, 1e-9), 1),
        "final": last,
        "effective_batch": cfg.batch_size * cfg.grad_accum * acc.num_processes,
    }


def _one_step(model, batches, loss_fn, optimizer, scheduler, acc, cfg, prog: Progress, count_fn) -> dict:
    t0 = time.perf_counter()
    window = next_window(batches, prog, cfg.grad_accum)
    terms = train_step(model, window, loss_fn, acc, count_fn)
    loss = sum(terms.values())
    grad_norm = float(acc.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm))
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(
            f"loss became {loss} (grad norm {grad_norm}) at step {prog.step + 1}; the last good checkpoint in "
            "output_dir/checkpoints is intact. Lower train.lr, or check the data for broken rows."
        )
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    prog.step += 1
    prog.micro += len(window)
    if prog.micro >= len(batches):
        prog.epoch, prog.micro = prog.epoch + 1, 0
    prog.tokens += sum(int(b["attention_mask"].sum()) for b in window)
    prog.targets += sum(count_fn(b) for b in window)
    prog.elapsed += time.perf_counter() - t0
    return {
        "loss": loss,
        **({k: v for k, v in terms.items()} if len(terms) > 1 else {}),
        "lr": lr,
        "grad_norm": grad_norm,
        "epoch": prog.epoch + prog.micro / len(batches),
        "tokens_per_s": prog.tokens / max(prog.elapsed, 1e-9),
        **{"tokens": prog.tokens},
    }


def _validate(model, evaluate: EvalFn, acc: Accelerator) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        result = evaluate(acc.unwrap_model(model))
    model.train()
    return result
