"""What happens between the loop's optimizer steps: the metrics line, validation (with early stopping
and the forgetting budget), the checkpoint, the save on Ctrl-C, and the state a resumed run starts from.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from forgetless.config.schema import TrainConfig
from forgetless.training import checkpoint
from forgetless.training.checkpoint import Progress
from forgetless.training.metrics_log import MetricsLog
from forgetless.training.monitor import Monitor, task_loss

EvalFn = Callable[[torch.nn.Module], dict[str, float]]
AdjustFn = Callable[[torch.nn.Module, int], "dict[str, float] | None"]


@dataclass
class Bookkeeping:
    """What happens between optimizer steps: the metrics line, validation (with early stopping and
    the forgetting budget), and the checkpoint."""

    acc: Accelerator
    cfg: TrainConfig
    steps: int
    out_dir: Path
    log: MetricsLog
    evaluate: EvalFn | None
    monitor: Monitor | None
    on_best: Callable[[torch.nn.Module], None] | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    last_validation: bool = True
    adjust: AdjustFn | None = None  # a forgetting budget's controller (eval/budget.py): what it moved is logged
    stopped: str | None = None
    saved: int = -1  # the step of the last checkpoint this run wrote

    def after_step(self, model, prog: Progress, last: dict[str, float]) -> None:
        cfg, acc, final = self.cfg, self.acc, prog.step == self.steps
        if prog.step % cfg.log_every == 0 or final:
            self.log.write(prog.step, last)
        if self.monitor is not None:
            self.monitor.train_loss(task_loss(last))
        if self.adjust is not None:
            started = time.perf_counter()
            moved = validate(model, lambda m: self.adjust(m, prog.step), acc)
            if moved:  # with its cost: outside train_seconds, and what on-policy replay or a budget adds
                self.log.write(prog.step, moved | {"adjust_seconds": round(time.perf_counter() - started, 3)})
        epoch_end = prog.micro == 0
        due = prog.step % cfg.eval_every == 0 or epoch_end or final
        if self.evaluate and due and (self.last_validation or not final):
            result = validate(model, self.evaluate, acc)
            self.log.write(prog.step, result)
            if self.monitor is not None:
                improved, self.stopped = self.monitor.update(prog.step, result)
                if improved and self.on_best is not None and acc.is_main_process:
                    self.on_best(acc.unwrap_model(model))
        if self.stopped or prog.step % cfg.save_every == 0 or epoch_end or final:
            self.save(model, prog)

    def save(self, model, prog: Progress) -> None:
        if self.acc.is_main_process:
            unwrapped = self.acc.unwrap_model(model)
            checkpoint.save(self.out_dir, unwrapped, self.optimizer, self.scheduler, prog, self.cfg.keep_checkpoints)
        self.acc.wait_for_everyone()
        self.saved = prog.step

    def interrupted(self, model, prog: Progress) -> None:
        """Ctrl-C: save the last finished step (atomically, as always), so that --resume has it."""
        if prog.step == 0 or prog.step == self.saved or not self.acc.is_main_process:
            return
        unwrapped = self.acc.unwrap_model(model)
        checkpoint.save(self.out_dir, unwrapped, self.optimizer, self.scheduler, prog, self.cfg.keep_checkpoints)
        self.saved = prog.step
        print(f"\n[forgetless] interrupted: saved a checkpoint at step {prog.step}")


def validate(model, evaluate: EvalFn, acc: Accelerator) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        result = evaluate(acc.unwrap_model(model))
    model.train()
    return result


def resume(out_dir: Path, model, optimizer, scheduler, steps: int) -> Progress:
    """The checkpoint's state; when the run's length changed (train.max_steps or epochs), the learning
    rate follows the schedule recomputed for the new length from the next step on."""
    prog = checkpoint.restore(out_dir, model, optimizer, scheduler)
    if prog.planned and prog.planned != steps:
        scheduler.last_epoch -= 1  # step() recomputes this step's rate from the new length's schedule
        scheduler.step()
        print(f"[forgetless] resume: {prog.planned} -> {steps} optimizer steps; the schedule is recomputed for {steps}")
    prog.planned = steps
    return prog
