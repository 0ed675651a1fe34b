"""The optimizer and its schedule: AdamW (8-bit paged AdamW on CUDA) with weight decay on matrices
only, a linear warm-up then cosine / linear / constant, and the number of optimizer steps a run takes.
"""

from __future__ import annotations

import math

import torch
from transformers import get_scheduler

from forgetless.config.schema import TrainConfig
from forgetless.data.batching import Batches
from forgetless.errors import UserError


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay only on matrices (not on biases and norms), as in GPT-2/nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("the model has no trainable parameters; check peft settings")
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The rate is resolved once, from the final method, by Config.lr (recipes/runtime.train_settings).
    if cfg.lr is None:
        raise ValueError("train.lr is unresolved: pass recipes.runtime.train_settings(cfg), which sets Config.lr")
    lr = cfg.lr
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if not torch.cuda.is_available():
        raise UserError(f"train.optimizer={cfg.optimizer} needs a CUDA GPU; use train.optimizer=adamw on CPU")
    import bitsandbytes as bnb  # 8-bit optimizers: CUDA only, checked above

    cls = bnb.optim.PagedAdamW8bit if cfg.optimizer == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(groups, lr=lr)


def make_scheduler(optimizer, cfg: TrainConfig, steps: int):
    """Linear warm-up over train.warmup_ratio of the steps, then cosine, linear or constant."""
    warmup = math.ceil(cfg.warmup_ratio * steps)
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=steps)


def total_steps(cfg: TrainConfig, batches: Batches, processes: int = 1) -> int:
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = math.ceil(len(batches) / (cfg.grad_accum * processes))
    return max(1, math.ceil(cfg.epochs * per_epoch))
