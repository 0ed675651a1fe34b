"""Task metrics on generated answers: numeric match, the metric SFT and GRPO runs share on number answers."""

from __future__ import annotations

import pytest

from forgetless.eval.metrics import score


def test_numeric_match_only_when_every_reference_is_a_number():
    assert score(["12 + 8 = 20", "21", "twenty"], ["20", "20", "20"])["numeric_match"] == pytest.approx(1 / 3)
    assert score(["-3.5", "x 4,000"], ["-3.5", "4000"])["numeric_match"] == 1.0
    assert "numeric_match" not in score(["20"], ["twenty"])
