"""Task metrics on generated answers.

exact match; ROUGE-1/2/L F1 and BLEU / chrF (sacrebleu); numeric match when every reference is a
number; accuracy and macro-F1 when the answers are labels; and user-defined metrics named as
`module:function`.

ROUGE is computed here, by rouge-score's definitions (n-gram overlap F1 with clipped counts; LCS F1;
an empty side scores 0), equal to rouge-score to the last digit (tests/eval/test_suite.py compares
them when it is installed): importing rouge-score pulls NLTK and SciPy in, 1.8 s of every training
process's start, for a stemmer forgetless never uses. Japanese works: rouge-score's default tokenizer
keeps only [a-z0-9] and so scores Japanese as empty; here Latin text is split into lower-cased words
and CJK text into single characters. sacrebleu's BLEU uses its 'char' tokenizer when the references
contain CJK characters, else its standard '13a'; chrF is character-based anyway.
"""

from __future__ import annotations

import re
from collections import Counter

from sacrebleu.metrics import BLEU, CHRF

from forgetless.config.user_code import load_callable
from forgetless.data.answers import NUMBER, last_number

_CJK = r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uff66-\uff9f]"
# Words of letters/digits, or any single CJK character (kana, kanji, half-width kana).
_TOKEN = re.compile(rf"{_CJK}|[^\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def numeric_match(prediction: str, reference: str) -> float:
    """The prediction's last number equals the reference's number ("12 + 8 = 20" for 20): GRPO's
    `numeric` reward at tolerance 0, so that SFT and RL runs are scored alike."""
    return float(last_number(prediction) == float(reference.strip()))


def tokens(text: str) -> list[str]:
    return [t.lower() for t in _TOKEN.findall(text)]


def _f1(overlap: int, predicted: int, reference: int) -> float:
    """F1 of an overlap between a prediction and a reference of these sizes (0 when either is empty)."""
    precision, recall = overlap / max(predicted, 1), overlap / max(reference, 1)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (one row of the dynamic-programming table at a time)."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # the previous row's value one column to the left
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge(prediction: str, reference: str) -> dict[str, float]:
    pred, ref = tokens(prediction), tokens(reference)
    out = {}
    for n in (1, 2):
        p, r = _ngrams(pred, n), _ngrams(ref, n)
        out[f"rouge{n}"] = _f1(sum((p & r).values()), sum(p.values()), sum(r.values()))
    return out | {"rouge_l": _f1(_lcs(pred, ref), len(pred), len(ref))}


def rouge_l(prediction: str, reference: str) -> float:
    return rouge(prediction, reference)["rouge_l"]


def bleu_chrf(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (0-100, sacrebleu's scale)."""
    cjk = any(re.search(_CJK, r) for r in references)
    bleu = BLEU(tokenize="char" if cjk else "13a", effective_order=True)
    return {
        "bleu": bleu.corpus_score(predictions, [references]).score,
        "chrf": CHRF().corpus_score(predictions, [references]).score,
    }


def extract_label(text: str, labels: list[str]) -> str | None:
    """The label mentioned first in a generated answer (case-insensitive, whole words), or None."""
    best = None
    for label in labels:
        m = re.search(rf"(?<!\w){re.escape(label)}(?!\w)", text, re.IGNORECASE)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), label)
    return best[1] if best else None


def classification(predictions: list[str], references: list[str], labels: list[str]) -> dict[str, float]:
    """Accuracy and macro-F1 over `labels`; an answer naming no label counts as wrong."""
    pred = [extract_label(p, labels) for p in predictions]
    gold = [extract_label(r, labels) or r.strip() for r in references]
    n = max(len(gold), 1)
    f1s = []
    for label in labels:
        tp = sum(p == label and g == label for p, g in zip(pred, gold, strict=True))
        fp = sum(p == label and g != label for p, g in zip(pred, gold, strict=True))
        fn = sum(p != label and g == label for p, g in zip(pred, gold, strict=True))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {
        "accuracy": sum(p == g for p, g in zip(pred, gold, strict=True)) / n,
        "macro_f1": sum(f1s) / max(len(f1s), 1),
        "unparsed": sum(p is None for p in pred) / n,
    }


def score(
    predictions: list[str], references: list[str], labels: list[str] | None = None, custom: list[str] | None = None
) -> dict[str, float]:
    """Every metric on the generated answers; custom metrics get (predictions, references) and
    return a number or a dict of numbers."""
    n = max(len(references), 1)
    out = {"exact_match": sum(exact_match(p, r) for p, r in zip(predictions, references, strict=True)) / n}
    per_row = [rouge(p, r) for p, r in zip(predictions, references, strict=True)]
    for key in ("rouge1", "rouge2", "rouge_l"):
        out[key] = sum(x[key] for x in per_row) / n
    out |= bleu_chrf(predictions, references)
    if references and all(NUMBER.fullmatch(r.strip()) for r in references):  # answers that are numbers
        out["numeric_match"] = sum(numeric_match(p, r) for p, r in zip(predictions, references, strict=True)) / n
    if labels:
        out |= classification(predictions, references, labels)
    for ref in custom or []:
        value = load_callable(ref, "eval.custom_metrics")(predictions, references)
        name = ref.partition(":")[2]
        out |= {f"{name}.{k}": float(v) for k, v in value.items()} if isinstance(value, dict) else {name: float(value)}
    return out
