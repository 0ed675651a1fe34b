"""Process roles under `accelerate launch` / `torchrun` (one process per device; gloo on CPU).

Every process builds the same model and data; only the main process writes files (run
directory, caches, checkpoints, evaluation and report), and the others wait where they need
what it wrote. With one process all of this is a no-op. `forgetless train --launch N` starts the
processes with `launch_command`.
"""

from __future__ import annotations

import os
import socket
import sys
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


def launch_command(processes: int, argv: list[str]) -> list[str]:
    """`accelerate launch` with `processes` local processes running `forgetless ARGV` (ARGV: the whole
    command line, global flags and `train` included).

    accelerate's multi-process launcher (`--multi_gpu`) also serves CPU-only machines: each process
    then trains on the CPU and they talk over gloo. The port is chosen free so that two runs can coexist.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1"]
    options = ["--num_processes", str(processes), "--main_process_port", str(port), "--mixed_precision", "no"]
    return [*launcher, *options, "--dynamo_backend", "no", "-m", "forgetless", *argv]


def without_launch(argv: list[str]) -> list[str]:
    """The `forgetless train` arguments as the user typed them, less `--launch N` (every other flag,
    --auto and --debug included, reaches the launched processes)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--launch":
            skip = True
        elif not a.startswith("--launch="):
            out.append(a)
    return out
