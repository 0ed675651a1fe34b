"""`train.on_oom`: what the loop does when a step runs out of GPU memory.

retry: step down and run the same step again (same effective batch, same update); stop: stop at once
with advice (api.run_recipe adds the planner's for this config).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate.utils import extract_model_from_parallel

from forgetless.errors import OutOfMemory
from forgetless.model.speedups import enable_grad_checkpointing


@dataclass
class Oom:
    """`train.on_oom`: on an out-of-memory error, step down and retry the step, or stop with advice.

    The step-downs hold for the rest of the run: first halve the rows per forward pass (each
    micro-batch runs as row slices: same effective batch, same update), down to one row; then
    gradient checkpointing; then stop with the planner's advice.
    """

    retry: bool  # one process only: under DDP the other processes would wait in the all-reduce
    chunks: int = 1
    checkpointing: bool = False

    def escalate(self, model, rows: int) -> str | None:
        now = math.ceil(rows / self.chunks)
        if now > 1:
            self.chunks *= 2
            later = math.ceil(rows / self.chunks)
            return f"micro-batch {now} -> {later} rows with twice the accumulation (same effective batch)"
        if not self.checkpointing:
            enable_grad_checkpointing(extract_model_from_parallel(model))
            self.checkpointing = True
            return "gradient checkpointing on"
        return None

    def recover(self, error: torch.OutOfMemoryError, model, rows: int, optimizer, say: Callable[[str], None]) -> None:
        """After a step's forward/backward ran out of memory: drop its partial gradients and step down,
        so that the loop can run the step again with `chunks` row slices per micro-batch (`rows`: the
        most rows of any micro-batch); or stop with OutOfMemory when nothing is left to step down."""
        optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        change = self.escalate(model, rows) if self.retry else None
        if change is None:
            raise OutOfMemory(f"out of memory ({str(error).splitlines()[0][:120]})") from None
        say(f"[forgetless] out of memory: {change}; retrying the step")
