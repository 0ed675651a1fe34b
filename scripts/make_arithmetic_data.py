"""Write the shipped verifiable task: one-step arithmetic whose answer is a number a reward can check.

    python scripts/make_arithmetic_data.py      # -> src/forgetless/assets/arithmetic/{train,validation,test}.jsonl

Each row is a chat row (a user question, the assistant's answer: the number alone), so the same files
train SFT (the loss on the answer) and GRPO (the answer is the reference a reward checks). Problems are
drawn seeded (add, subtract, multiply, divide, small numbers: the embedded 135M model gets about a quarter
right greedily, so sampled groups hold right and wrong answers to learn from); a problem appears in one
split only (there are fewer than 2,900 distinct ones). Rerunning writes the same files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "forgetless" / "assets" / "arithmetic"
SPLITS = {"train": 400, "validation": 60, "test": 120}
ASK = "Calculate {a} {op} {b}. Reply with only the result."


def problem(rng: random.Random) -> tuple[str, int]:
    """One computation: add or subtract numbers up to 40, multiply or divide (exactly) within the tables."""
    op = rng.choice("+-*/")
    if op == "+":
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        return ASK.format(a=a, op=op, b=b), a + b
    if op == "-":
        a = rng.randint(4, 40)
        b = rng.randint(2, a - 1)
        return ASK.format(a=a, op=op, b=b), a - b
    if op == "*":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return ASK.format(a=a, op=op, b=b), a * b
    b, q = rng.randint(2, 9), rng.randint(2, 9)
    return ASK.format(a=b * q, op=op, b=b), q


def main() -> None:
    rng = random.Random(20261204)
    seen: set[str] = set()
    OUT.mkdir(parents=True, exist_ok=True)
    for split, n in SPLITS.items():
        rows = []
        while len(rows) < n:
            text, answer = problem(rng)
            if text in seen:
                continue
            seen.add(text)
            rows.append(
                {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": str(answer)}]}
            )
        tmp = OUT / f".{split}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(OUT / f"{split}.jsonl")
        print(f"{split}: {len(rows)} rows -> {OUT / f'{split}.jsonl'}")


if __name__ == "__main__":
    main()
