"""Process roles under `accelerate launch` / `torchrun` (one process per device; gloo on CPU).

Every process builds the same model and data; only the main process writes files (run
directory, caches, checkpoints, evaluation and report), and the others wait where they need
what it wrote. With one process all of this is a no-op.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from accelerate import PartialState


def state() -> PartialState:
    """The process group (created on first call from the launcher's environment variables)."""
    return PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    return state().is_main_process


def barrier() -> None:
    state().wait_for_everyone()


@contextmanager
def all_cores():
    """On CPU, launchers give each process one thread (OMP_NUM_THREADS=1). While the main process
    evaluates alone and the others wait, let it use every core."""
    before = torch.get_num_threads()
    if state().num_processes > 1 and not torch.cuda.is_available():
        torch.set_num_threads(os.cpu_count() or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)
