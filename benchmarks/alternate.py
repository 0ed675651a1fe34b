"""Run one measurement at a git ref and at the working tree, alternating (before, now, before, now, ...), so
that a machine that slows down during a benchmark slows both sides (eval_before.py, train_before.py)."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sides(before: str, rounds: int, run: Callable[[Path, Path], dict], show: Callable[[dict], str]) -> dict:
    """{"before": [...], "now": [...]}: `run(src, out)` per side and round, `src` the side's source folder (a
    git worktree of `before`, or the working tree's) and `out` a fresh folder; `show` prints each result."""
    found: dict[str, list[dict]] = {"before": [], "now": []}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), before], check=True, cwd=ROOT)
        try:
            for i in range(rounds):
                for side, src in (("before", tree / "src"), ("now", ROOT / "src")):
                    found[side].append(run(src, Path(tmp) / f"{side}{i}"))
                    print(side, i, show(found[side][-1]), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT)
    return found


def commit(ref: str) -> str:
    """The short hash of `ref`."""
    done = subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip()
