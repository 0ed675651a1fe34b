"""Text similarity for data checks: exact and near duplicates, leakage between files, diversity.

Texts are compared as sets of character n-grams of their normalised form (NFKC, lower case, one
space): 5-grams, and 3-grams for Japanese, whose characters carry more per character (no spaces
between words), so both languages need no word splitter. Near-duplicate candidates come
from MinHash LSH (datasketch), tuned looser than the threshold so that it seldom misses a pair, and
are then confirmed with the exact Jaccard similarity of the shingle sets, so LSH's false positives
never reach a report or a removal.
"""

from __future__ import annotations

import re
import unicodedata

from datasketch import MinHash, MinHashLSH
from tqdm.auto import tqdm

SHINGLE = {"ja": 3}  # characters per shingle by language; 5 for the others
PERMUTATIONS = 128
_SPACE = re.compile(r"\s+")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff\uff66-\uff9f]")
_LATIN = re.compile(r"[A-Za-z]")


def normalize(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().lower()


def shingles(text: str, k: int | None = None) -> set[str]:
    t = normalize(text)
    k = k or SHINGLE.get(language(t), 5)
    return {t[i : i + k] for i in range(max(1, len(t) - k + 1))}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _minhash(sh: set[str]) -> MinHash:
    m = MinHash(num_perm=PERMUTATIONS, seed=1)
    m.update_batch([s.encode("utf-8") for s in sh])
    return m


def near_pairs(texts: list[str], others: list[str] | None, threshold: float) -> list[tuple[int, int, float]]:
    """(i, j, similarity) with Jaccard ≥ threshold: i indexes `others` (or `texts` when None, then
    i > j), j indexes `texts`. Exact-text matches are included (similarity 1.0)."""
    sets = [shingles(t) for t in texts]
    # Candidates from a looser LSH weighted against misses; the exact Jaccard below keeps precision.
    lsh = MinHashLSH(threshold=max(0.3, threshold - 0.15), num_perm=PERMUTATIONS, weights=(0.2, 0.8))
    quiet = len(texts) + len(others or []) < 5000  # a bar only where it takes seconds
    for j, sh in enumerate(tqdm(sets, desc="similarity: index", unit="row", disable=quiet)):
        lsh.insert(j, _minhash(sh))
    queries = sets if others is None else [shingles(t) for t in others]
    out = []
    for i, sh in enumerate(tqdm(queries, desc="similarity: compare", unit="row", disable=quiet)):
        for j in lsh.query(_minhash(sh)):
            if others is None and j >= i:
                continue
            sim = jaccard(sh, sets[j])
            if sim >= threshold:
                out.append((i, j, sim))
    return sorted(out)


def exact_groups(texts: list[str]) -> list[list[int]]:
    """Rows whose normalised texts are equal, in groups of two or more, largest first."""
    groups: dict[str, list[int]] = {}
    for i, text in enumerate(texts):
        groups.setdefault(normalize(text), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def clusters(n: int, pairs: list[tuple[int, int, float]]) -> list[list[int]]:
    """Groups of rows joined by near-duplicate pairs (union-find), largest first; singletons left out."""
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j, _ in pairs:
        parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for x in range(n):
        groups.setdefault(root(x), []).append(x)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def language(text: str) -> str:
    """ja when kana/kanji make up a fifth of the letters, en when Latin letters dominate, else other."""
    cjk, latin = len(_CJK.findall(text)), len(_LATIN.findall(text))
    letters = cjk + latin
    if letters and cjk / letters >= 0.2:
        return "ja"
    return "en" if letters and latin / letters >= 0.8 else "other"


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct word (Japanese: character) n-grams over all n-grams: 1.0 when nothing repeats."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        units = list(normalize(t)) if language(t) == "ja" else normalize(t).split()
        grams += [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
