"""benchmarks/speed.py's statistics by hand: one statistic (the median) for step time and tokens/s."""

from __future__ import annotations

from tests.conftest import load_benchmark


def _speed():
    return load_benchmark("speed")


def test_one_disturbed_step_moves_neither_median():
    """Steps after a 1-step warm-up: 1024 tokens each in 10, 10, 11, 40 (disturbed), 10 s. Median step
    10 s; per-step tokens/s 102.4, 102.4, 93.1, 25.6, 102.4 -> median 102.4 (a mean of tokens over
    time would say 5120 / 81 = 63.2 and contradict the step time)."""
    r = {"step_s": [99, 10, 10, 11, 40, 10], "tokens": [1024] * 6, "peak_gb": 1.0}
    m = _speed().measured(r, warmup=1, params=1000, peak_gflops=1.0)
    assert m["step_s"] == 10 and m["tokens_per_s"] == 102.4
    assert m["step_s_spread"] == [10, 10, 40] and m["tokens_per_s_spread"] == [25.6, 102.4, 102.4]
    assert m["steps_measured"] == 5


def test_step_profile_table_by_hand():
    """LoRA: 1000 ms for 1000 tokens. LwF: 2000 ms for 1100 tokens with a 500 ms teacher forward.
    Ratio 2.00; floor = (1000 × 1100/1000 + 500) / 1000 = 1.60 (LoRA 1.00)."""
    module = load_benchmark("step_profile")
    results = {
        "lora": {"ms": {"step": 1000.0, "backward": 400.0}, "tokens": 1000},
        "lwf": {"ms": {"step": 2000.0, "teacher_forward": 500.0, "kl": 300.0}, "tokens": 1100},
    }
    lines = module.table("uniform", results)
    assert "| step / LoRA step | 1.00 | 2.00 |" in lines
    assert "| floor: LoRA × tokens + teacher / LoRA step | 1.00 | 1.60 |" in lines
    assert "| teacher_forward | 0 | 500 |" in lines and "| tokens / step | 1000 | 1100 |" in lines
