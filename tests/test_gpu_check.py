"""benchmarks/gpu_check.py runs unattended where no GPU has run it yet: its --smoke mode takes every
code path (the embedded model with the GPU options, a random-weight model of a real shape, forgetless
with and without LwF, TRL's SFTTrainer when installed) on CPU with tiny shapes."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.seconds(100)  # the longest files start first (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_end_to_end_in_smoke_mode(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((tmp_path / "gpu_check_smoke.json").read_text())
    assert res["embedded"]["tokens_per_s"] > 0 and res["embedded"]["attention"] == "sdpa"
    rows = {r["case"]: r for r in res["models"]}
    assert set(rows) == {"lora", "qlora+lwf"} and all(r["forgetless"]["tokens_per_s"] > 0 for r in rows.values())
    trl = rows["lora"]["trl"]
    if importlib.util.find_spec("trl"):
        assert trl["tokens_per_s"] > 0
    else:
        assert "TRL is not installed" in trl["error"]
    assert "its numbers measure nothing" in (tmp_path / "gpu_check_smoke.md").read_text()


def test_without_a_gpu_it_says_so(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2 and "no CUDA GPU here" in proc.stdout
