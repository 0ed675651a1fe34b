"""Atomic checkpoints and exact resume.

A checkpoint is a directory `checkpoints/step-NNNNNNN/` holding the trainable weights
(safetensors), optimizer and scheduler state, RNG states and the data position. It is written
under a temporary name and renamed into place, so a crash mid-write never leaves a directory
that looks like a valid checkpoint.
"""

from __future__ import annotations

import errno
import math
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from forgetless.errors import UserError

PREFIX = "step-"
# how numpy pickles an array (numpy 2 keeps it in numpy._core, 1.26 in numpy.core): allowed in state.pt
_RECONSTRUCT = (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct


@dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    micro: int = 0  # micro-batches of the current epoch already consumed
    tokens: int = 0  # non-padding input tokens processed
    targets: int = 0  # tokens that carried the loss
    elapsed: float = 0.0  # seconds spent in training steps
    planned: int = 0  # the run's total optimizer steps when this was saved (a resume may change it)
    max_lr: float = 0.0  # the highest learning rate a step has used: 0 means the weights never moved


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def save(out_dir: Path, model, optimizer, scheduler, prog: Progress, keep: int) -> Path:
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{prog.step:07d}"
    if final.exists():  # already saved at this step (epoch end and save_every coincide)
        return final
    tmp = root / f".tmp-{prog.step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        torch.save(state | {"progress": asdict(prog), "rng": rng_state()}, tmp / "state.pt")
        _fsync_dir(tmp)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        last = latest(out_dir)
        kept = f"the last good checkpoint, {last}, is intact (--resume continues from it)" if last else "no checkpoint"
        raise UserError(f"no space left on the device writing the checkpoint of step {prog.step} in {root}; {kept}; "
                        "free space and resume") from None  # fmt: skip
    for old in sorted(root.glob(f"{PREFIX}*"))[:-keep]:
        # out of the checkpoints' names first: a kill inside rmtree left a step folder with some of its files
        # gone (found by tests/reliability/test_kill_resume.py); a stray .tmp- folder is cleared at the next start
        trash = root / f".tmp-old-{old.name}-{os.getpid()}"
        try:
            os.replace(old, trash)
        except OSError:  # (as before: an old checkpoint that cannot be removed stays, and costs only space)
            continue
        shutil.rmtree(trash, ignore_errors=True)
    return final


def remove_strays(out_dir: Path) -> None:
    """Temporary folders of checkpoint writes that were killed half-way (never a valid checkpoint)."""
    for tmp in (Path(out_dir) / "checkpoints").glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def latest(out_dir: Path) -> Path | None:
    found = sorted((Path(out_dir) / "checkpoints").glob(f"{PREFIX}*"))
    return found[-1] if found else None


def latest_step(out_dir: Path) -> int:
    """The optimizer step of the checkpoint a resumed run starts from (0: none)."""
    found = latest(out_dir)
    return int(found.name.removeprefix(PREFIX)) if found else 0


def load_state(path: Path) -> dict:
    """state.pt without running its pickle: a run directory may have been copied from anywhere, and
    torch.load(weights_only=False) would execute whatever the file says. Only tensors, plain values
    and numpy's RNG state (an array of the global generator) are read; anything else is an error."""
    with torch.serialization.safe_globals([_RECONSTRUCT, np.ndarray, np.dtype, type(np.dtype(np.uint32))]):
        return torch.load(path, weights_only=True)


def restore(out_dir: Path, model, optimizer, scheduler) -> Progress:
    ckpt = latest(out_dir)
    if ckpt is None:
        raise UserError(f"--resume: no checkpoint in {Path(out_dir) / 'checkpoints'}; start without --resume")
    try:
        weights = load_file(str(ckpt / "trainable.safetensors"))
        state = load_state(ckpt / "state.pt")
    except Exception as e:  # a damaged file: checkpoints are written atomically, so a disk or copy problem
        raise UserError(f"--resume: {ckpt} cannot be read ({str(e).splitlines()[0][:160]})") from None
    expected = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    found = {n: tuple(w.shape) for n, w in weights.items()}
    if found != expected:
        differ = sorted(n for n in set(found) | set(expected) if found.get(n) != expected.get(n))
        raise UserError(
            f"--resume: {ckpt} does not match this model's trainable parameters ({len(differ)} differ, e.g. "
            f"{differ[0]}: saved {found.get(differ[0])}, now {expected.get(differ[0])}); "
            "was the config (peft.*, model.*) changed since the run started?"
        )
    model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    print(f"[forgetless] resumed from {ckpt} (step {state['progress']['step']})")
    # a checkpoint from before max_lr was kept: its steps are taken to have moved the weights
    return Progress(**({"max_lr": math.inf} | state["progress"]))
