"""Data-parallel training: 2 CPU processes (gloo) under `forgetless train --launch 2`.

Two processes with grad_accum=1 must compute the same updates as one process with
grad_accum=2 (same effective batch): same losses, same adapter. The run uses LwF and
rehearsal, so the teacher (adapters disabled inside DDP) and the mixing are covered too.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import forgetless
from forgetless.data.mixture import MixedBatches
from forgetless.training.checkpoint import Progress
from forgetless.training.distributed import launch_command
from forgetless.training.loop import next_window, parts, shard
from tests.conftest import write_jsonl

pytestmark = pytest.mark.seconds(45)  # the longest files start first (tests/conftest.py)

GENERAL = [{"instruction": f"Name a colour number {i}.", "output": f"Colour {i} is blue."} for i in range(5)]


def _rows(n: int) -> list[dict]:
    return [{"input_ids": [i, i, i], "labels": [-100, i, i]} for i in range(n)]


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_each_row_once_per_epoch_and_exact_rehearsal_in_every_shard(processes):
    """Across the processes' shards of every window, each task row appears exactly once per epoch,
    and every micro-batch a process trains on carries exactly the configured general rows."""
    general = [{"input_ids": [900 + i], "labels": [900 + i], "rehearsal": True} for i in range(7)]
    batches = MixedBatches(_rows(10), general, batch_size=2, ratio=0.4, seed=1, pad_id=0)
    prog, seen, dummies = Progress(), [], 0
    while prog.epoch == 0:
        window = next_window(batches, prog, size=2 * processes)
        for rank in range(processes):
            mine, weight = shard(window, rank, processes)
            if weight == 0:
                dummies += 1
                continue
            for task, gen in mine:
                seen += task["input_ids"][:, 0].tolist()
                assert int(gen["rehearsal"].sum()) == batches.n_general == len(gen["input_ids"])
        prog.micro += len(window)
        if prog.micro >= len(batches):
            prog.epoch, prog.micro = 1, 0
    assert sorted(seen) == list(range(10))
    last = len(batches) % (2 * processes) or 2 * processes  # micro-batches in the epoch's last window
    assert dummies == max(0, processes - last)
    assert len(parts(window)) == 2 * len(window)  # [task batch, general batch] per micro-batch


def test_short_last_window_gives_idle_process_a_zero_weight_batch():
    assert shard(["a", "b", "c"], 0, 2) == (["a", "c"], 1.0)
    assert shard(["a", "b", "c"], 1, 2) == (["b"], 1.0)
    assert shard(["a"], 1, 2) == (["a"], 0.0)


def test_launch_command_starts_accelerate_with_n_processes():
    cmd = launch_command(2, ["train", "cfg.yaml", "train.lr=1e-3"])
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[-5:] == ["-m", "forgetless", "train", "cfg.yaml", "train.lr=1e-3"]


def _launch(args: list[str]) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "forgetless", "train", "--launch", "2", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _losses(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "loss" in x]


def _assert_same_training(a: Path, b: Path) -> None:
    la, lb = _losses(a), _losses(b)
    assert [x["step"] for x in la] == [x["step"] for x in lb] == list(range(1, len(la) + 1))
    for x, y in zip(la, lb, strict=True):
        for term in ("loss", "ce", "ce_rehearsal", "lwf"):
            assert x[term] == pytest.approx(y[term], rel=1e-4, abs=1e-6), (x["step"], term)
    wa = load_file(str(a / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(b / "adapter" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)


def test_two_processes_match_one_process_and_resume(tiny_overrides, tmp_path):
    general = write_jsonl(tmp_path / "general.jsonl", GENERAL)
    common = [
        *tiny_overrides,
        "forgetting.preset=full",
        f"forgetting.rehearsal.source=[{general}]",
        "forgetting.rehearsal.ratio=0.3",
        "forgetting.rehearsal.weight=0.5",  # CE on the rehearsal rows too (off by default under full)
        "peft.dropout=0",  # each process draws its own dropout masks; the update must not depend on that
        "train.batch_size=2",
        "train.max_steps=8",
        "train.save_every=4",
        "train.eval_every=4",
        "train.keep_checkpoints=10",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    summary = forgetless.train({}, [*common, "train.grad_accum=2", f"output_dir={one}"])
    assert summary["processes"] == 1 and summary["effective_batch"] == 4

    # The CLI's default base config is the quickstart: start from the 1-process run's config instead.
    common = [str(one / "config.yaml"), "train.grad_accum=1", f"output_dir={two}"]
    out = _launch(common)
    assert "effective batch 4 = batch_size 2 × grad_accum 1 × 2 process(es)" in out
    saved = json.loads((two / "summary.json").read_text())
    assert saved["processes"] == 2 and saved["effective_batch"] == 4 and saved["steps"] == 8
    assert saved["tokens"] == summary["tokens"]  # every row seen once per epoch across processes
    _assert_same_training(one, two)
    # One writer: each step logged once (above), checkpoints complete, no temporary directories left.
    # 3 micro-batches per epoch: epochs end at steps 2, 4, 6, 8 and save there too.
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == [f"step-000000{i}" for i in (2, 4, 6, 8)]

    # Resume under 2 processes from the step-4 checkpoint (what a crash after it leaves behind).
    for step in (6, 8):
        shutil.rmtree(two / "checkpoints" / f"step-000000{step}")
    for name in ("adapter", "summary.json", "eval.json"):
        path = two / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    out = _launch([*common, "--resume"])
    assert "resumed from" in out
    _assert_same_training(one, two)
