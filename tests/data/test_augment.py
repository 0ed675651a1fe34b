"""`forgetless data augment`: synonyms from WordNet and Sudachi, the filters by hand, origin records,
reproducibility, the model methods on a tiny model, and the check that reads augmented files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from forgetless.cli import main
from forgetless.data import augment, check, synonyms
from forgetless.data.formats import builtin_path
from forgetless.reference import paraphrase
from tests.conftest import write_jsonl

pytestmark = pytest.mark.seconds(50)  # the longest files start first (tests/conftest.py)

JA_ROWS = [
    {"instruction": "注文した商品がまだ届きません。注文番号は12345です。", "output": "配送"},
    {"instruction": "商品の返品を希望します。理由は色の違いです。", "output": "返品"},
    {"instruction": "パスワードを忘れたので、再設定の方法を教えてください。", "output": "アカウント"},
]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def test_wordnet_synonyms_are_the_first_synset_of_the_most_frequent_part_of_speech():
    """WordNet 3.0: 'quickly' (adverb, first synset 'quickly, rapidly, speedily, chop-chop, apace')."""
    assert synonyms.english_synonyms("quickly") == ("rapidly", "speedily", "apace")  # chop-chop: not a plain word
    assert synonyms.english_synonyms("the") == () and synonyms.english_synonyms("two") == ()  # stop / number words
    assert synonyms.english_synonyms("qwertyuiop") == ()


def test_english_replacement_never_touches_numbers_names_codes_or_answer_words():
    text = "Hello, my Echo speaker from order ORD-123 broke quickly after two days; refund it please."
    for seed in range(20):
        new, count = synonyms.replace_english(text, "category: refund", 1.0, random.Random(seed))
        for kept in ("Echo", "ORD-123", "two", "refund", "please"):
            assert kept in new
        assert count >= 1 and new != text


def test_sudachi_groups_give_japanese_synonyms_and_keep_numbers():
    new, count = synonyms.replace_japanese("注文番号は12345です。", "配送", 1.0, random.Random(0))
    assert "12345" in new and count >= 1
    assert new.startswith(("発注", "オーダー"))  # 注文's group in the Sudachi synonym data: 発注, オーダー


def test_synonym_augmentation_records_origins_keeps_answers_and_reproduces(tmp_path):
    src = tmp_path / "train.jsonl"
    lines = builtin_path("quickstart/train.jsonl").read_text(encoding="utf-8").splitlines()[:20]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "aug.jsonl"
    stats = paraphrase.augment_file(str(src), out, augment.Settings("synonyms", n=2, seed=3))
    rows = _lines(out)
    originals, new = rows[:20], rows[20:]
    assert originals == [json.loads(x) for x in lines]  # the originals first, unchanged, on the same lines
    assert stats["written"] == len(new) and stats["written"] + sum(stats["rejected"].values()) == 40
    for row in new:
        origin = rows[row["augmented_from"] - 1]
        assert row["method"] == "synonyms" and row["output"] == origin["output"]  # the label never changes
        assert row["input"] != origin["input"] or row["instruction"] != origin["instruction"]
    again = tmp_path / "again.jsonl"
    paraphrase.augment_file(str(src), again, augment.Settings("synonyms", n=2, seed=3))
    assert again.read_bytes() == out.read_bytes()  # --seed makes it reproducible
    report = check.check([str(out)], [])
    assert report["errors"]["count"] == 0 and report["augmented"]["rows"] == len(new)
    # variants of one row are alike by design: not reported as near duplicates of their original
    plain = check.check([str(src)], [])
    assert report["near_duplicates"]["rows"] <= plain["near_duplicates"]["rows"] + 0


def test_japanese_synonyms_from_the_cli(tmp_path, capsys):
    src = write_jsonl(tmp_path / "ja.jsonl", JA_ROWS)
    out = tmp_path / "ja.aug.jsonl"
    assert main(["data", "augment", str(src), "--out", str(out), "--method", "synonyms", "--n", "2"]) == 0
    new = _lines(out)[3:]
    assert new and all(r["method"] == "synonyms" and "augmented_from" in r for r in new)
    assert all("12345" in r["instruction"] for r in new if r["augmented_from"] == 1)
    assert "augment (synonyms): 3 row(s)" in capsys.readouterr().out


def test_filters_by_hand():
    old = "Please refund order 34364, the kettle broke after two days."
    assert augment.reject_reason("", old, "en") == "empty"
    assert augment.reject_reason("please  refund ORDER 34364, the kettle broke after two days.", old, "en") == (
        "unchanged"
    )
    assert augment.reject_reason("Refund 34364.", old, "en") == "length"
    assert augment.reject_reason("注文34364の返金をお願いします。二日で壊れたやかんです。", old, "en") == "language"
    assert augment.reject_reason("The weather is lovely today in the mountains near 34364.", old, "en") == "overlap"
    assert augment.reject_reason("Please refund the kettle, order 34365; it broke after two days.", old, "en") == (
        "numbers"
    )
    assert (
        augment.reject_reason("Please refund order 34364: the kettle stopped working after two days.", old, "en")
        is None
    )


@pytest.mark.parametrize("method", ["paraphrase", "backtranslate"])
def test_model_methods_run_on_a_tiny_model_and_account_for_every_candidate(tiny_dir, tmp_path, method):
    """A random tiny model writes nonsense: what matters here is that every candidate is either
    written with its origin or counted under a reason, and that the run is reproducible."""
    src = write_jsonl(tmp_path / "t.jsonl", [*JA_ROWS[:1], {"instruction": "Refund order 12 please.", "output": "x"}])
    settings = augment.Settings(method, n=2, model=tiny_dir, seed=1)
    stats = paraphrase.augment_file(str(src), tmp_path / "a.jsonl", settings)
    assert stats["candidates"] == 4 and stats["written"] + sum(stats["rejected"].values()) == 4
    assert stats["languages"] == {"ja": 1, "en": 1}
    assert len(_lines(tmp_path / "a.jsonl")) == 2 + stats["written"]
    again = paraphrase.augment_file(str(src), tmp_path / "b.jsonl", settings)
    assert again["rejected"] == stats["rejected"]


def test_paraphrase_keeps_a_faithful_rewrite_and_rejects_a_drifting_one(tiny_dir, tmp_path, monkeypatch):
    """The generation is replaced by fixed rewrites so that the filters see known text."""
    fixed = iter(["Please give me back the money for order 12.", "Tell me a joke about cats and dogs."])
    monkeypatch.setattr(paraphrase, "_generate", lambda m, t, asks, desc, temp: [next(fixed) for _ in asks])
    src = write_jsonl(tmp_path / "t.jsonl", [{"instruction": "Please refund the money for order 12.", "output": "x"}])
    stats = paraphrase.augment_file(
        str(src), tmp_path / "a.jsonl", augment.Settings("paraphrase", 2, tiny_dir, max_drift=99)
    )
    assert stats["written"] == 1 and stats["rejected"] == {"overlap": 1}
    assert _lines(tmp_path / "a.jsonl")[1]["instruction"] == "Please give me back the money for order 12."


def test_the_drift_filter_uses_the_answer_likelihood(tiny_dir, tmp_path, monkeypatch):
    fixed = iter(["Please return the money for order 12 now."] * 2)
    monkeypatch.setattr(paraphrase, "_generate", lambda m, t, asks, desc, temp: [next(fixed) for _ in asks])
    nll = iter([1.0, 1.7])  # original prompt, rewritten prompt: +0.7 nats per answer token
    monkeypatch.setattr(paraphrase, "answer_nll", lambda *a: next(nll))
    src = write_jsonl(tmp_path / "t.jsonl", [{"instruction": "Please refund the money for order 12.", "output": "x"}])
    stats = paraphrase.augment_file(
        str(src), tmp_path / "a.jsonl", augment.Settings("paraphrase", 1, tiny_dir, max_drift=0.5)
    )
    assert stats["rejected"] == {"drift": 1} and stats["written"] == 0


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--method", "summarise"], "unknown augmentation method 'summarise'"),
        (["--method", "synonyms", "--language", "fr"], "language 'fr'"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, capsys, args, expect):
    src = write_jsonl(tmp_path / "t.jsonl", JA_ROWS)
    assert main(["data", "augment", str(src), "--out", str(tmp_path / "o.jsonl"), *args]) == 2
    err = capsys.readouterr().err
    assert expect in err and err.count("\n") == 1


def test_a_row_in_another_language_is_named(tmp_path, capsys):
    src = write_jsonl(tmp_path / "t.jsonl", [{"instruction": "Привет, как дела?", "output": "x"}])
    assert main(["data", "augment", str(src), "--out", str(tmp_path / "o.jsonl"), "--method", "synonyms"]) == 2
    assert "t.jsonl:1: the row is in neither English nor Japanese" in capsys.readouterr().err


@pytest.mark.slow
def test_augmentation_on_the_embedded_model_in_both_languages(tmp_path):
    """The real instruct model paraphrases an English and a Japanese row (its Japanese is weak: a
    rejection is a valid outcome, as long as it is counted), and back-translates the English one."""
    rows = [
        {"instruction": "Please refund order 34364: the kettle broke after two days.", "output": "refund"},
        JA_ROWS[0],
    ]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    for method in ("paraphrase", "backtranslate"):
        out = tmp_path / f"{method}.jsonl"
        stats = paraphrase.augment_file(str(src), out, augment.Settings(method, n=1, seed=0))
        assert stats["languages"] == {"en": 1, "ja": 1}
        assert stats["written"] + sum(stats["rejected"].values()) == 2
        kept = _lines(out)[2:]
        assert all(
            r["augmented_from"] in (1, 2) and r["output"] == rows[r["augmented_from"] - 1]["output"] for r in kept
        )
        assert all("34364" in r["instruction"] for r in kept if r["augmented_from"] == 1)  # numbers survive


def test_augment_copies_rows_with_raw_line_separators_whole(tmp_path):
    """U+2028 / U+0085 inside a JSON string (json.dumps(ensure_ascii=False) writes them raw) are not
    line ends: the original stays one valid line, and augmented_from names the right line."""
    rows = [
        {"instruction": "Please read this note\u2028and the next part\u0085before you answer me.", "output": "ok"},
        *[{"instruction": r["instruction"], "output": r["output"]} for r in JA_ROWS[:1]],
        {"instruction": "My order has not arrived and I would like to know where it is now.", "output": "shipping"},
    ]
    src = tmp_path / "raw.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "aug.jsonl"
    paraphrase.augment_file(str(src), out, augment.Settings("synonyms", n=2, seed=1))
    lines = [x for x in out.read_text(encoding="utf-8").split("\n") if x]
    written = [json.loads(x) for x in lines]  # every line is valid JSON
    assert written[:3] == rows
    new = written[3:]
    assert new
    for row in new:
        assert row["output"] == rows[row["augmented_from"] - 1]["output"]
