"""The runs under a folder, as the UI shows them: status, progress, curves; and starting, stopping and
resuming a training process.

No Gradio here: the UI pages call these functions, and tests call them directly.

A run started from the UI is `forgetless train ...` in its own process (ui/worker.py), in its own
session, so it survives a closed tab and a stopped UI. What the UI keeps of it lies outside the run
directory, in RUNS/.ui/ (its command line, log and exit code), so the run directory holds exactly what a
CLI run leaves. Runs started from the command line appear too; their status comes from the run
directory alone (the lock file a live run holds, summary.json, checkpoints).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from forgetless import files
from forgetless.errors import UserError
from forgetless.training import checkpoint, rundir

UI_DIR = ".ui"  # beside the runs: records of the processes the UI started, their logs, uploads


@dataclass
class RunInfo:
    name: str
    dir: Path
    status: str  # running | finished | stopped | failed | incomplete
    step: int = 0
    max_steps: int | None = None
    eta_s: float | None = None
    error: str = ""
    phase: str = ""  # the last line the process printed (while running)
    summary: dict = field(default_factory=dict)


def ui_dir(root: Path) -> Path:
    return Path(root) / UI_DIR


def _record(root: Path, name: str) -> dict:
    """What the UI wrote when it started the run (pid, argv), and the exit code the worker wrote at the
    end (two files, so that neither write can undo the other)."""
    try:
        rec = json.loads((ui_dir(root) / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    try:
        rec["rc"] = int((ui_dir(root) / f"{name}.exit").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass  # still running, or killed before it could write one
    return rec


def log_path(root: Path, name: str) -> Path:
    return ui_dir(root) / f"{name}.log"


def is_run(path: Path) -> bool:
    """A run directory: what `forgetless train` writes first (config.yaml), or a live run's lock."""
    return path.is_dir() and ((path / "config.yaml").is_file() or _lock_holder(path) is not None)


def _lock_holder(run: Path) -> int | None:
    """The PID of the live process that holds the run's lock, if any."""
    lock = run.parent / f".{run.name}.lock"
    try:
        pid = int(json.loads(lock.read_text(encoding="utf-8")).get("pid", 0))
    except (OSError, ValueError):
        return None
    return pid if pid and _alive(pid) else None


def _alive(pid: int) -> bool:
    if not rundir.alive(pid):
        return False
    # a finished child of this process (the worker) stays a zombie until waited for: not alive
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: it exists
        return True
    return done == 0


def metrics(run: Path) -> list[dict]:
    """metrics.jsonl; a line being written at this moment is skipped, not an error."""
    out = []
    try:
        lines = files.jsonl_lines((run / "metrics.jsonl").read_text(encoding="utf-8"))
    except OSError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _max_steps(run: Path) -> int | None:
    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    return (cfg.get("train") or {}).get("max_steps")


def last_line(path: Path, size: int = 4000) -> str:
    """The last thing a process printed: tqdm rewrites its line with \\r, so the last piece after one."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    pieces = [p.strip() for p in tail.replace("\r", "\n").split("\n") if p.strip()]
    return pieces[-1] if pieces else ""


def error_of(path: Path) -> str:
    """The one-line error a failed `forgetless` printed, or the last line of a traceback."""
    try:
        lines = [x.strip() for x in path.read_text(encoding="utf-8", errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith("forgetless: error:"):
            return line.removeprefix("forgetless: error:").strip()
    return lines[-1] if lines else ""


def info(root: Path, run: Path) -> RunInfo:
    rows = [m for m in metrics(run) if "loss" in m]
    r = RunInfo(run.name, run, "incomplete", step=rows[-1]["step"] if rows else 0, max_steps=_max_steps(run))
    rec, holder = _record(root, run.name), _lock_holder(run)
    failed = rec.get("rc") not in (None, 0, 130)  # 130: stopped with Ctrl-C (the stop button)
    if (run / "summary.json").is_file() and holder is None:
        r.status = "finished"
        try:
            r.summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):  # being written this moment: the next refresh reads it whole
            r.summary = {}
    elif holder is not None or (rec.get("pid") and "rc" not in rec and _alive(rec["pid"])):
        r.status = "running"
        r.phase = last_line(log_path(root, run.name)) if rec else ""
        r.eta_s = _eta(rows, r.max_steps, r.phase)
    elif checkpoint.latest(run) is not None:
        r.status = "stopped"  # interrupted, killed, or failed after a checkpoint: --resume continues
        r.error = error_of(log_path(root, run.name)) if failed else ""
    elif rec.get("rc") is not None:  # ended before its first checkpoint
        r.status, r.error = "failed", error_of(log_path(root, run.name))
    return r


def _eta(rows: list[dict], max_steps: int | None, phase: str = "") -> float | None:
    """Seconds left in the current phase: tqdm's own estimate when the process's output shows one;
    else (a run started elsewhere) the training time per step so far (tokens / tokens per second,
    which leaves out evaluation and checkpoints) times the steps left."""
    shown = re.search(r"<(?:(\d+):)?(\d+):(\d+)", phase)
    if shown:
        h, m, s = (int(x or 0) for x in shown.groups())
        return float(h * 3600 + m * 60 + s)
    if not rows or not max_steps or not rows[-1].get("tokens_per_s"):
        return None
    last = rows[-1]
    per_step = last["tokens"] / last["tokens_per_s"] / max(last["step"], 1)
    return max(0.0, per_step * (max_steps - last["step"]))


def scan(root: Path) -> list[RunInfo]:
    """Every run directory directly under root, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if not p.name.startswith(".") and is_run(p)]
    # a run the UI started that stopped before it made its directory (a refused config, say)
    runs += [root / r.stem for r in ui_dir(root).glob("*.json") if not (root / r.stem).exists()]
    runs.sort(key=lambda p: (p if p.exists() else ui_dir(root) / f"{p.name}.json").stat().st_mtime, reverse=True)
    return [info(root, p) for p in runs]


def run_dir(root: Path, name: str) -> Path:
    """The directory of run NAME under root; a name that would leave root is refused."""
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise UserError(f"run name '{name}': use letters, digits, '-' and '_' (it becomes a folder under the runs)")
    return Path(root).resolve() / name


def start(root: Path, name: str, config: str, overrides: list[str], resume: bool = False) -> int:
    """Start `forgetless train CONFIG OVERRIDES output_dir=ROOT/NAME` in its own process; its PID.

    The process outlives the UI (its own session); its output goes to RUNS/.ui/NAME.log."""
    out = run_dir(root, name)
    if _lock_holder(out) is not None:
        raise UserError(f"run {name} is running; stop it first")
    ui_dir(root).mkdir(parents=True, exist_ok=True)
    argv = ["train", config, *overrides, f"output_dir={out}"] + (["--resume"] if resume else [])
    exit_file = ui_dir(root) / f"{name}.exit"
    exit_file.unlink(missing_ok=True)
    log = log_path(root, name)
    with log.open("ab" if resume else "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "forgetless.ui.worker", str(exit_file), *argv],
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    files.write_json(ui_dir(root) / f"{name}.json", {"pid": proc.pid, "argv": argv, "started": time.time()})
    return proc.pid


def stop(root: Path, name: str) -> None:
    """Ctrl-C for a running run: it saves a checkpoint at the end of its step and exits (resumable)."""
    run = run_dir(root, name)
    rec = _record(root, name)
    if rec.get("pid") and "rc" not in rec and _alive(rec["pid"]):
        os.killpg(rec["pid"], signal.SIGINT)  # the worker's group: the training process and the worker
        return
    pid = _lock_holder(run)  # a run started from the command line
    if pid is None:
        raise UserError(f"run {name} is not running")
    os.kill(pid, signal.SIGINT)


def resume(root: Path, name: str) -> int:
    """Continue a stopped run from its last checkpoint with the settings it was started with."""
    run = run_dir(root, name)
    if checkpoint.latest(run) is None:
        raise UserError(f"run {name} has no checkpoint to resume from")
    rundir.check_resume(run, _saved_config(run))
    return start(root, name, str(run / "config.yaml"), [], resume=True)


def _saved_config(run: Path):
    # api reads YAML + overrides exactly as `forgetless train RUN/config.yaml --resume` will
    from forgetless import api  # imports the recipes' registry lazily, as the CLI does

    return api.load_config(run / "config.yaml", [f"output_dir={run}"])
