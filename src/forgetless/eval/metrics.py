"""Task metrics on generated answers: exact match and ROUGE-L (F1), CJK-aware.

ROUGE-L tokenizes Latin text into lower-cased words and CJK text into single characters,
so Japanese answers are scored (rouge-score's default tokenizer drops non-ASCII text).
"""

from __future__ import annotations

import re

# Words of letters/digits, or any single CJK character (kana, kanji, full-width forms).
_TOKEN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uff66-\uff9f]|[^\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def tokens(text: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(text)]


def lcs_length(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    p, r = tokens(prediction), tokens(reference)
    if not p or not r:
        return float(p == r)
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


METRICS = {"exact_match": exact_match, "rouge_l": rouge_l}


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    n = max(len(references), 1)
    return {
        name: sum(fn(p, r) for p, r in zip(predictions, references, strict=True)) / n for name, fn in METRICS.items()
    }
