"""SIGKILL a real `forgetless train` at seeded random moments (checkpoints are written every step, so
many kills land inside a checkpoint write), resume each time, and require: every checkpoint left on
disk loads, and the final adapter is bit-identical to the one an uninterrupted run writes."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from forgetless import cli
from forgetless.training import checkpoint
from tests.conftest import ROWS, tiny_args, write_jsonl

pytestmark = pytest.mark.seconds(75)  # the longest files start first (tests/conftest.py)

STEPS = 14


def _cmd(tiny_dir, data, out, *flags) -> list[str]:
    # LwF on: the KL term and its teacher pass are part of what must resume exactly
    more = ["eval.report=false", "forgetting.preset=lwf", "train.grad_accum=2", f"train.max_steps={STEPS}"]
    args = tiny_args(tiny_dir, data, out, *more, "train.eval_every=5")
    return [sys.executable, "-m", "forgetless", "train", *args, *flags]


def _steps_logged(out) -> int:
    # read while the run writes: `--overwrite` clears the folder between a check and a read
    try:
        text = (out / "metrics.jsonl").read_text()
    except FileNotFoundError:
        return 0
    return sum('"loss"' in line for line in text.splitlines())


def _all_checkpoints_load(out) -> int:
    found = sorted((out / "checkpoints").glob("step-*"))
    for ckpt in found:
        load_file(str(ckpt / "trainable.safetensors"))
        checkpoint.load_state(ckpt / "state.pt")
    return len(found)


@pytest.mark.slow
def test_killed_runs_resume_to_the_same_adapter(tiny_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS * 2)
    ref = tmp_path / "ref"
    assert cli.main(_cmd(tiny_dir, data, ref)[3:]) == 0  # the uninterrupted run, in this process: one start fewer
    out, rng, kills = tmp_path / "killed", random.Random(20261129), []
    for _ in range(3):
        has_run = (out / "checkpoints").is_dir() and any((out / "checkpoints").glob("step-*"))
        flags = ["--resume"] if has_run else (["--overwrite"] if out.exists() else [])
        start = _steps_logged(out)
        proc = subprocess.Popen(_cmd(tiny_dir, data, out, *flags), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and _steps_logged(out) <= start:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.25))  # somewhere in the next steps, often inside a checkpoint write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills.append(_steps_logged(out))
        assert _all_checkpoints_load(out) >= 1 or not has_run
    subprocess.run(_cmd(tiny_dir, data, out, "--resume"), check=True, capture_output=True, timeout=600)
    assert _all_checkpoints_load(out) >= 1 and not list((out / "checkpoints").glob(".tmp-*"))
    assert any(k < STEPS for k in kills), f"every kill came after the end: {kills}"
    final, expected = (p / "adapter" / "adapter_model.safetensors" for p in (out, ref))
    assert final.read_bytes() == expected.read_bytes(), f"kills at logged steps {kills}"
