"""Bootstrap confidence intervals, so that a user can tell noise from forgetting.

Accuracies on a few dozen items move by several points from sampling alone; every accuracy
forgetless reports carries a 95% percentile-bootstrap interval, and a base → fine-tuned
difference carries a *paired* interval (the same resampled items for both models).
"""

from __future__ import annotations

import random


def spread(rows: list, n: int | None) -> list:
    """`n` of `rows` picked evenly from first to last, in order (all of them when n is None or not smaller):
    a cap that keeps a file's mix (the bundled questions are English, then Japanese)."""
    if n is None or n >= len(rows):
        return rows
    return [rows[i * len(rows) // n] for i in range(n)]


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _percentiles(samples: list[float], level: float) -> tuple[float, float]:
    samples = sorted(samples)
    lo = samples[int((1 - level) / 2 * (len(samples) - 1))]
    hi = samples[int((1 + level) / 2 * (len(samples) - 1))]
    return lo, hi


def bootstrap_ci(values: list[float], n: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of per-item scores (e.g. 0/1 correctness)."""
    if not values:
        return 0.0, 0.0
    rng = random.Random(seed)
    k = len(values)
    return _percentiles([mean([values[rng.randrange(k)] for _ in range(k)]) for _ in range(n)], level)


def paired_diff_ci(
    before: list[float], after: list[float], n: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Interval of mean(after) − mean(before), resampling items jointly."""
    if len(before) != len(after):
        raise ValueError("paired scores need the same items")
    if not before:
        return 0.0, 0.0
    rng = random.Random(seed)
    k = len(before)
    diffs = []
    for _ in range(n):
        idx = [rng.randrange(k) for _ in range(k)]
        diffs.append(mean([after[i] - before[i] for i in idx]))
    return _percentiles(diffs, level)


def compare(before: list[float], after: list[float]) -> dict:
    """base → fine-tuned with the difference, each with its 95% interval."""
    return {
        "base": mean(before),
        "base_ci": bootstrap_ci(before),
        "finetuned": mean(after),
        "finetuned_ci": bootstrap_ci(after),
        "diff": mean(after) - mean(before),
        "diff_ci": paired_diff_ci(before, after),
    }


def single(values: list[float]) -> dict:
    """One model only (nothing to compare with): the accuracy and its interval."""
    return {
        "base": None,
        "base_ci": None,
        "finetuned": mean(values),
        "finetuned_ci": bootstrap_ci(values),
        "diff": None,
        "diff_ci": None,
    }
