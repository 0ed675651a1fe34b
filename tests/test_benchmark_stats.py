"""benchmarks/speed.py's statistics by hand: one statistic (the median) for step time and tokens/s."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _speed():
    path = Path(__file__).parents[1] / "benchmarks" / "speed.py"
    spec = importlib.util.spec_from_file_location("speed_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_disturbed_step_moves_neither_median():
    """Steps after a 1-step warm-up: 1024 tokens each in 10, 10, 11, 40 (disturbed), 10 s. Median step
    10 s; per-step tokens/s 102.4, 102.4, 93.1, 25.6, 102.4 -> median 102.4 (a mean of tokens over
    time would say 5120 / 81 = 63.2 and contradict the step time)."""
    r = {"step_s": [99, 10, 10, 11, 40, 10], "tokens": [1024] * 6, "peak_gb": 1.0}
    m = _speed().measured(r, warmup=1, params=1000, peak_gflops=1.0)
    assert m["step_s"] == 10 and m["tokens_per_s"] == 102.4
    assert m["step_s_spread"] == [10, 10, 40] and m["tokens_per_s_spread"] == [25.6, 102.4, 102.4]
    assert m["steps_measured"] == 5
