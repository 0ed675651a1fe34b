"""The run directory's lifecycle: one run at a time, nothing of an earlier run lost to a failed start.

`claim(out, cfg, resume, overwrite)` holds output_dir for one run:
- a lock file beside it (`.NAME.lock`, with the PID and host) for the run's lifetime; a lock left
  by a process that no longer exists is taken over;
- `--overwrite` moves the old run aside (`.NAME.replaced-PID`) instead of deleting it. The old run
  is deleted when the new one finishes, or when it fails after writing a checkpoint (it can then
  be resumed); a new run that fails before its first checkpoint is removed and the old one put back;
- `--resume` needs a run with a checkpoint, and the settings it was trained with: the keys in
  RESUMABLE may change (more steps, other evaluation settings), any other difference is refused
  with the keys named;
- stray `checkpoints/.tmp-*` folders of killed checkpoint writes are removed.
Only the main process claims (api.run_recipe); the others write nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from forgetless.config import loader
from forgetless.config.schema import Config
from forgetless.errors import UserError
from forgetless.training import checkpoint

PIPELINE_STATE = "pipeline.json"  # a pipeline's stage record beside its run does not make a run
DATA_CHECK = "data_check.json"  # nor does the report of its data stage
PREPARED_DATA = "data"  # nor the training files its data stage prepared
EXPORTED = "export"  # where a pipeline's export stage writes (after training: the run exists by then)
TUNE_SCALE = "tune_scale.json"  # the scale `tune-scale` chose for the run's adapter, and its curve
# Settings a resumed run may change: how long it trains and how it is evaluated, not what it trains.
RESUMABLE = (
    "output_dir",
    "train.max_steps",
    "train.epochs",
    "train.log_every",
    "train.eval_every",
    "train.save_every",
    "train.keep_checkpoints",
    "train.early_stopping.",
    "train.on_oom",
    "train.mlflow",
    "eval.",
)


@contextmanager
def claim(out: Path, cfg: Config, resume: bool, overwrite: bool) -> Iterator[None]:
    _make_parent(out)
    with locked(out):
        if resume:
            check_resume(out, cfg)
            aside = None
        else:
            aside = _clear(out, overwrite)
        try:
            yield
        except BaseException:
            if aside is not None:
                _after_failure(out, aside)
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def _make_parent(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(20, "it is a file")
    except OSError as e:
        raise UserError(
            f"output_dir {out} cannot be created ({e.strerror or e}); choose another output_dir=..."
        ) from None


def alive(pid: int) -> bool:
    """Whether a process with this PID exists (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """The lock file `.NAME.lock` beside `out`, held with flock(2) for the run's lifetime: the kernel
    releases it when the process dies, so taking over a dead run's lock is one atomic step (with PIDs
    alone, two runs could both judge a lock stale, each remove it and each take it). The file names its
    holder for the message others get; a holder named there that is alive on this host but holds no
    flock (a forgetless before this lock) still counts."""
    lock = out.parent / f".{out.name}.lock"
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    fd = _acquire(out, lock)
    try:
        holder = _read_lock(lock)
        if holder and holder.get("pid") != me["pid"]:
            if holder.get("host") != me["host"] or alive(int(holder.get("pid", 0))):
                raise _in_use(out, holder)
            print(f"[forgetless] removing a stale lock of a process that no longer runs ({lock})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        if _read_lock(lock).get("pid") == me["pid"]:
            lock.unlink(missing_ok=True)  # while still held: a waiter then finds its file gone and retries
        os.close(fd)


def _acquire(out: Path, lock: Path) -> int:
    """An open descriptor of `lock` holding its exclusive flock; a UserError when another process holds it."""
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as e:
            raise UserError(f"output_dir {out}: cannot write its lock file {lock} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _in_use(out, _read_lock(lock)) from None
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed the file between our open and our flock: take the new one


def _in_use(out: Path, holder: dict) -> UserError:
    return UserError(
        f"output_dir {out} is in use by another forgetless run (PID {holder.get('pid')} on "
        f"{holder.get('host')}, since {holder.get('since')}); wait for it, or choose another output_dir=..."
    )


def _read_lock(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # being written, or damaged: treated as held by an unknown process


def _clear(out: Path, overwrite: bool) -> Path | None:
    """Make `out` ready for a new run; an old run is moved aside (returned), never deleted here."""
    for stray in sorted(out.parent.glob(f".{out.name}.replaced-*")):
        print(
            f"[forgetless] note: {stray} holds a run an interrupted --overwrite moved aside; move it back or delete it"
        )
    if out.exists() and any(p.name not in (PIPELINE_STATE, DATA_CHECK, PREPARED_DATA) for p in out.iterdir()):
        if not overwrite:
            raise UserError(
                f"output_dir {out} already holds a run; pass --resume to continue it, "
                "--overwrite to replace it, or choose another output_dir=..."
            )
        aside = out.parent / f".{out.name}.replaced-{os.getpid()}"
        os.replace(out, aside)
        out.mkdir()
        return aside
    out.mkdir(exist_ok=True)
    return None


def _after_failure(out: Path, aside: Path) -> None:
    if checkpoint.latest(out) is not None:
        shutil.rmtree(aside, ignore_errors=True)
        print(
            f"[forgetless] the previous run in {out} was replaced: the new run has a checkpoint (--resume continues it)"
        )
        return
    shutil.rmtree(out, ignore_errors=True)
    os.replace(aside, out)
    print(f"[forgetless] the new run stopped before its first checkpoint: the previous run in {out} is restored")


def check_resume(out: Path, cfg: Config) -> None:
    """A run to resume exists, and only RESUMABLE settings differ from the ones it was trained with."""
    if checkpoint.latest(out) is None:
        raise UserError(
            f"--resume: {out} holds no run to resume (no checkpoint in {out / 'checkpoints'}); start without --resume"
        )
    checkpoint.remove_strays(out)
    saved = out / "config.yaml"
    if not saved.is_file():
        return
    try:
        before = loader.validate(yaml.safe_load(saved.read_text(encoding="utf-8")) or {})
    except UserError:
        return  # written by a version whose settings no longer exist: the checkpoint's shapes are checked instead
    old, new = loader.flat(loader.absolute(before)), loader.flat(loader.absolute(cfg))  # as config.yaml keeps them
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    refused = [k for k in changed if not k.startswith(RESUMABLE)]
    if refused:
        diffs = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in refused)
        raise UserError(
            f"--resume: {out} was trained with other settings ({diffs}); resume with the run's own settings, "
            "or start a new run (another output_dir, or --overwrite). A resumed run may change train.max_steps, "
            "train.epochs, the log/eval/save intervals and eval.*"
        )
    if changed:
        print(f"[forgetless] resume: changed {', '.join(f'{k} {old.get(k)!r} -> {new.get(k)!r}' for k in changed)}")
