"""How an answer's text is read when it is checked against a reference: its last number and its
whitespace- and case-folded form. GRPO's rewards (objectives/rewards.py) and the metrics of every
run (eval/metrics.py) read answers through these, so a GRPO run is rewarded as runs are scored."""

from __future__ import annotations

import re

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number in `text` (thousands commas ignored: "1,200" is 1200), or None."""
    found = NUMBER.findall(text.replace(",", ""))
    return float(found[-1]) if found else None


def fold(text: str) -> str:
    """Runs of whitespace made one space, case folded."""
    return " ".join(text.split()).casefold()
