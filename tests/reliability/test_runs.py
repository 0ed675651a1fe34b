"""What a run does with the user's files when things go wrong: --overwrite never loses the old run to a
failed start, one run per output_dir, --resume only with the run's settings (more steps allowed),
Ctrl-C saves a checkpoint, bad rows skipped are counted, a BOM is read, a closed pipe is no error, a kill
while old checkpoints are removed breaks none."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import forgetless
from forgetless.cli import main
from forgetless.errors import UserError
from tests.conftest import ROWS, tiny_args, write_jsonl


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", ROWS)


def _snapshot(run) -> dict:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_overwrite_keeps_the_old_run_when_the_new_one_fails(tiny_dir, data, tmp_path, capsys):
    """Defect: `--overwrite` deleted the old run, then failed on a missing data file."""
    run = tmp_path / "victim"
    assert main(["train", *tiny_args(tiny_dir, data, run)]) == 0
    before = _snapshot(run)
    assert main(["train", *tiny_args(tiny_dir, tmp_path / "missing.jsonl", run), "--overwrite"]) == 2
    assert "data.train: file not found" in capsys.readouterr().err
    assert _snapshot(run) == before  # checked before the directory was touched
    bad = write_jsonl(tmp_path / "bad.jsonl", [*ROWS, {"instruction": "x", "output": None}])
    assert main(["train", *tiny_args(tiny_dir, bad, run), "--overwrite"]) == 2  # fails after the claim
    assert "the previous run in" in capsys.readouterr().out and _snapshot(run) == before
    assert not list(tmp_path.glob(".victim.*")), "no lock or moved-aside run is left behind"
    assert main(["train", *tiny_args(tiny_dir, data, run, "train.max_steps=1"), "--overwrite"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 1 and not list(tmp_path.glob(".victim.*"))


def test_one_run_per_output_dir_and_stale_locks_are_taken_over(tiny_dir, data, tmp_path, capsys):
    run = tmp_path / "run"
    lock = tmp_path / ".run.lock"
    lock.write_text(json.dumps({"pid": 1, "host": os.uname().nodename, "since": "earlier"}))  # PID 1 is alive
    assert main(["train", *tiny_args(tiny_dir, data, run)]) == 2
    assert "is in use by another forgetless run (PID 1" in capsys.readouterr().err
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "since": "earlier"}))
    assert main(["train", *tiny_args(tiny_dir, data, run)]) == 0
    assert "removing a stale lock" in capsys.readouterr().out and not lock.exists()


def test_resume_may_extend_the_run_and_cleans_up_killed_writes(tiny_dir, data, tmp_path, capsys):
    """Defect: --resume with a new max_steps trained at lr 0 from the restored schedule."""
    run = tmp_path / "run"
    assert main(["train", *tiny_args(tiny_dir, data, run)]) == 0
    stray = run / "checkpoints" / ".tmp-9-12345"
    stray.mkdir()
    assert main(["train", *tiny_args(tiny_dir, data, run, "train.max_steps=4"), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "2 -> 4 optimizer steps; the schedule is recomputed for 4" in out and not stray.exists()
    steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert [s["step"] for s in steps] == [1, 2, 3, 4] and steps[2]["lr"] > 0


def test_ctrl_c_saves_a_checkpoint_that_resume_continues(tiny_dir, data, tmp_path):
    """Defect: Ctrl-C said "resume with --resume" but saved nothing before the first save_every."""
    run = tmp_path / "run"
    # the quickstart's 60 tickets validated at each epoch's end: the slow step a Ctrl-C lands in, before its save
    validation = "data.validation=builtin:quickstart/test.jsonl"
    args = tiny_args(tiny_dir, data, run, "train.max_steps=100000", "train.save_every=100000", validation)
    proc = subprocess.Popen(  # SIGINT as in a terminal's foreground: `make test &` from a script would ignore it
        [sys.executable, "-m", "forgetless", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (
        (run / "metrics.jsonl").is_file() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    saved = sorted((run / "checkpoints").glob("step-*"))
    assert len(saved) == 1 and "interrupted: saved a checkpoint at step" in stdout
    step = int(saved[0].name.removeprefix("step-"))
    assert step >= 3
    assert main(["train", *tiny_args(tiny_dir, data, run, f"train.max_steps={step + 1}", validation), "--resume"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == step + 1


def test_skipped_rows_are_counted_and_a_bom_is_read(tiny_dir, tmp_path, capsys):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in ROWS).encode())
    with bom.open("ab") as f:
        f.write(b'{"instruction": "a", "output": "\xff"}\n')  # not UTF-8
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"\xef\xbb\xbfdata:\n  on_error: skip\n")
    summary = forgetless.train(str(cfg), tiny_args(tiny_dir, bom, tmp_path / "run"))
    notes = " ".join(summary["data_notes"])
    assert "skipped 1 bad row(s)" in notes and "bom.jsonl:9: not valid UTF-8" in notes
    assert summary["train_rows"] + summary["validation_rows"] == len(ROWS)


def test_no_base_evaluation_message_or_empty_table_without_before_after(tiny_dir, data, tmp_path, capsys):
    assert main(["train", *tiny_args(tiny_dir, data, tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "evaluating the base model" not in out and "task metric" not in out


def test_a_closed_pipe_is_no_error_and_debug_keeps_tracebacks(tmp_path):
    proc = subprocess.run(
        f"{sys.executable} -m forgetless train --help-config | head -1", shell=True, capture_output=True, text=True
    )
    assert proc.stdout.startswith("recipe = ") and proc.stderr == ""
    with pytest.raises(UserError, match="config file not found"):
        main(["--debug", "train", str(tmp_path / "nope.yaml")])


def _hold(out, log, go):
    """A child process: wait for the start signal, then hold the run directory's lock for a moment."""
    from forgetless.training import rundir

    go.wait(10)
    try:
        with rundir.locked(out):
            with open(log, "a") as f:
                f.write(f"in {time.monotonic()}\n")
            time.sleep(0.3)
            with open(log, "a") as f:
                f.write(f"out {time.monotonic()}\n")
    except forgetless.UserError:
        pass


def test_a_stale_lock_is_taken_over_by_one_run_only(tmp_path):
    """Eight runs start at once on a directory whose lock names a dead process: with PIDs alone each
    could judge it stale, remove it and create its own (two runs in one directory; seen in about a third
    of such rounds). Over six rounds, the holders' times never overlap."""
    import multiprocessing

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ctx = multiprocessing.get_context("fork")
    for round_ in range(6):
        out, log = tmp_path / f"run{round_}", tmp_path / f"holders{round_}.log"
        lock = tmp_path / f".run{round_}.lock"
        lock.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
        go = ctx.Event()
        procs = [ctx.Process(target=_hold, args=(out, log, go)) for _ in range(8)]
        for p in procs:
            p.start()
        go.set()
        for p in procs:
            p.join(30)
        events = [line.split() for line in log.read_text().splitlines()]
        depth = peak = 0
        for kind, _ in sorted(events, key=lambda e: float(e[1])):
            depth += 1 if kind == "in" else -1
            peak = max(peak, depth)
        assert peak == 1 and sum(kind == "in" for kind, _ in events) >= 1, events
        assert not lock.exists()


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_at_a_checkpoint_keeps_the_last_good_one_and_ends_in_one_line(
    tiny_dir, data, tmp_path, capsys, monkeypatch
):
    """tiny_args writes a checkpoint every step; the disk fills while step 2's is written."""
    from forgetless.training import checkpoint

    run = tmp_path / "run"
    real_save, calls = checkpoint.torch.save, []

    def save(obj, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            _no_space()
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    assert main(["train", *tiny_args(tiny_dir, data, run, "train.max_steps=3")]) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # (progress bars come before it)
    assert "Traceback" not in err and last.startswith("forgetless: error: no space left on the device writing the ")
    assert "checkpoint of step 2" in last
    assert "step-0000001" in last and "is intact" in last
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000001"]  # no half-written folder
    checkpoint.load_state(run / "checkpoints" / "step-0000001" / "state.pt")
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert main(["train", *tiny_args(tiny_dir, data, run, "train.max_steps=3"), "--resume"]) == 0


def test_a_full_disk_while_writing_a_file_keeps_the_previous_one(tmp_path, monkeypatch):
    """Every file the program writes (reports, eval.json, summaries, exports' records) goes through
    files.write_text: the previous file stays whole and the error names the path."""
    from pathlib import Path

    from forgetless import files

    target = tmp_path / "report.md"
    target.write_text("the previous report", encoding="utf-8")
    monkeypatch.setattr(Path, "write_text", _no_space)
    with pytest.raises(UserError, match=r"no space left on the device writing .*report.md; free space"):
        files.write_text(target, "a new report")
    monkeypatch.undo()
    assert target.read_text(encoding="utf-8") == "the previous report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temporary file left


def test_a_kill_while_an_old_checkpoint_is_removed_leaves_no_broken_checkpoint(tmp_path, monkeypatch):
    """Keeping the last 2 checkpoints removes older ones; a run that dies inside that removal (here the
    removal stops after its first file) leaves every step folder whole: the old one leaves the checkpoints'
    names before any file of it goes, and the next start clears what is left of it."""
    from forgetless.training import checkpoint

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for step in (1, 2):
        checkpoint.save(tmp_path, model, optimizer, scheduler, checkpoint.Progress(step=step), keep=2)

    real_rmtree = checkpoint.shutil.rmtree

    def dies_half_way(path, ignore_errors=False):
        if not Path(path).is_dir() or not any(Path(path).glob("*.safetensors")):  # (the save's own clean-up)
            return real_rmtree(path, ignore_errors=ignore_errors)
        next(p for p in sorted(Path(path).iterdir())).unlink()
        raise KeyboardInterrupt  # the process is gone before the rest of the folder

    monkeypatch.setattr(checkpoint.shutil, "rmtree", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, model, optimizer, scheduler, checkpoint.Progress(step=3), keep=2)
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    steps = sorted(p.name for p in root.glob("step-*"))
    assert steps == ["step-0000002", "step-0000003"]
    for name in steps:  # each loads whole
        checkpoint.load_state(root / name / "state.pt")
        assert (root / name / "trainable.safetensors").is_file()
    checkpoint.remove_strays(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == steps
