"""Data tools: similarity by hand, and `data check | dedup | decontaminate` finding what is planted
(English and Japanese) without inventing what is not."""

from __future__ import annotations

import json

import pytest

from forgetless.cli import main
from forgetless.data import check, similarity
from tests.conftest import write_jsonl

EN = [
    {
        "instruction": "Summarise the meeting notes about the Q3 budget review and list the decisions taken.",
        "output": "Budget approved.",
    },
    {
        "instruction": "Translate the greeting 'good morning, dear colleagues' into French.",
        "output": "Bonjour, chers collègues.",
    },
    {"instruction": "List three uses of a paperclip besides holding paper.", "output": "Lock pick, hook, reset pin."},
    {"instruction": "Explain why the sky looks blue on a clear day.", "output": "Rayleigh scattering."},
    {"instruction": "Write a haiku about autumn leaves falling slowly.", "output": "Red leaves drift down..."},
    {"instruction": "Give a synonym for the word 'happy' that fits a formal letter.", "output": "Content."},
]
JA = [
    {
        "instruction": "昨日の営業会議の議事録を三行で要約し、決まったことと次の担当者を書いてください。",
        "output": "予算が承認されました。",
    },
    {
        "instruction": "東京から大阪までの新幹線の所要時間と、指定席の料金の目安を教えてください。",
        "output": "約二時間半です。",
    },
]


def test_shingle_jaccard_by_hand():
    """'abcdef' -> {abcde, bcdef}; 'abcdeg' -> {abcde, bcdeg}: one shared of three = 1/3."""
    assert similarity.shingles("ABCDEF") == {"abcde", "bcdef"}
    a, b = similarity.shingles("abcdef"), similarity.shingles("abcdeg")
    assert similarity.jaccard(a, b) == pytest.approx(1 / 3)
    assert similarity.normalize("  Ｈｅｌｌｏ\n  World ") == "hello world"  # NFKC, case, spaces


def test_language_and_diversity():
    assert similarity.language("会議の議事録を要約してください") == "ja"
    assert similarity.language("Summarise the notes") == "en" and similarity.language("12345 !!") == "other"
    assert similarity.distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)  # ab, bc, ab, bd


def test_check_finds_planted_duplicates_and_leakage(tmp_path):
    near = {  # one letter changed: s -> z
        "instruction": "Summarize the meeting notes about the Q3 budget review and list the decisions taken.",
        "output": "Budget approved.",
    }
    ja_near = {
        "instruction": "昨日の営業会議の議事録を三行で要約し、決まったことと次の担当者を書いて下さい。",
        "output": "予算が承認されました。",
    }
    train = write_jsonl(tmp_path / "train.jsonl", [*EN, EN[1], near, *JA, ja_near, {"instruction": "x"}])
    test = write_jsonl(
        tmp_path / "test.jsonl", [EN[3], {"instruction": "Name a prime number above 100.", "output": "101"}]
    )
    report = check.check([str(train)], [str(test)], near=0.85)
    assert report["rows"] == 12 and report["valid"] == 11 and report["errors"]["count"] == 1
    assert report["exact_duplicates"]["rows"] == 1
    assert report["exact_duplicates"]["groups"] == [[f"{train}:2", f"{train}:7"]]
    assert report["near_duplicates"]["rows"] == 2  # the English and the Japanese near copy
    assert report["languages"] == {"en": 8, "ja": 3}
    leak = report["leakage"][str(test)]
    assert leak["rows"] == 1 and leak["of"] == 2 and f"{train}:4" in leak["examples"][0]
    assert all(v["rows"] == 0 for k, v in report["leakage"].items() if k.startswith("builtin:"))
    assert any("appear in training" in w for w in report["warnings"])


def test_dedup_and_decontaminate_write_kept_rows_and_a_log(tmp_path):
    rows = [
        *EN,
        EN[0],
        {
            "instruction": "Hello, translate the greeting 'good morning, dear colleagues' into French.",
            "output": "Bonjour, chers collègues.",
        },
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    kept, removed = check.dedup(str(train), tmp_path / "dedup.jsonl")
    assert (kept, removed) == (6, 2)
    assert [json.loads(x) for x in (tmp_path / "dedup.jsonl").read_text().splitlines()] == EN
    log = [json.loads(x) for x in (tmp_path / "dedup.removed.jsonl").read_text().splitlines()]
    assert [(x["line"], x["reason"], x["of_line"]) for x in log] == [
        (7, "exact duplicate", 1),
        (8, "near duplicate", 2),
    ]
    test = write_jsonl(tmp_path / "test.jsonl", [EN[2]])
    assert check.decontaminate(str(train), [str(test)], tmp_path / "clean.jsonl") == (7, 1)
    assert json.loads((tmp_path / "clean.removed.jsonl").read_text())["line"] == 3


def test_cli_strict_and_bad_input(tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", [*EN, EN[0]])
    assert main(["data", "check", str(train), "--json", str(tmp_path / "r.json")]) == 0
    assert "exact duplicates: 1 row(s)" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["exact_duplicates"]["rows"] == 1
    assert main(["data", "check", str(train), "--strict"]) == 2
    assert "data check --strict: 1 warning(s); first: 1 exact duplicates (14% of the rows)" in capsys.readouterr().err
    assert main(["data", "dedup", str(train), "--out", str(tmp_path / "o.jsonl"), "--near", "2"]) == 2
    assert "--near 2.0: give a Jaccard similarity in (0, 1]" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path / "missing.jsonl")]) == 2
    assert "data file not found" in capsys.readouterr().err


def test_bundled_quickstart_splits_are_disjoint_exactly_and_nearly():
    """The quickstart's validation and test tickets are no near copies of training tickets or of each
    other (the old test file held 5, a greeting added to a training ticket): the leakage check finds
    none, and neither does a brute-force Jaccard over every pair (the LSH cannot hide one)."""
    train, val, test = (f"builtin:quickstart/{s}.jsonl" for s in ("train", "validation", "test"))
    report = check.check([train], [val, test])
    assert report["leakage"][val]["rows"] == report["leakage"][test]["rows"] == 0
    assert check.check([val], [test])["leakage"][test]["rows"] == 0
    assert all(report["leakage"][ref]["rows"] == 0 for ref in check.RETENTION_SETS)
    assert report["exact_duplicates"]["rows"] == 0
    assert report["near_duplicates"]["rows"] == 30 and report["near_duplicates"]["cluster_count"] == 17
    sets = {s: [similarity.shingles(check.prompt_of(e)) for e in check.read([s]).examples] for s in (train, val, test)}
    assert (len(sets[train]), len(sets[val]), len(sets[test])) == (400, 60, 60)
    for held, against in ((val, [train]), (test, [train, val])):
        worst = max(similarity.jaccard(a, b) for a in sets[held] for ref in against for b in sets[ref])
        assert worst < 0.85


def _raw_jsonl(path, rows):
    """Rows as json.dumps(ensure_ascii=False) writes them: U+2028, U+2029 and U+0085 stay raw."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_dedup_numbers_lines_as_the_reader_does_with_raw_line_separators(tmp_path):
    """Row 1 holds U+2028 and U+0085 raw (JSON allows both); rows 2 and 3 are duplicates, row 4 unique.
    Splitting on those characters (str.splitlines) shifted every later line: the unique row was
    deleted, both duplicates kept, and "4 kept" was reported for 3 rows."""
    rows = [
        {"instruction": "First line\u2028second line\u0085third, of a note about paragraph\u2029marks.", "output": "a"},
        {"instruction": "Translate the greeting 'good morning, dear colleagues' into French.", "output": "b"},
        {"instruction": "Translate the greeting 'good morning, dear colleagues' into French.", "output": "b"},
        {"instruction": "Name the capital city of Australia and explain why it was chosen.", "output": "Canberra"},
    ]
    src = _raw_jsonl(tmp_path / "train.jsonl", rows)
    assert "\u2028" in src.read_text(encoding="utf-8")
    assert check.dedup(str(src), tmp_path / "out.jsonl") == (3, 1)
    text = (tmp_path / "out.jsonl").read_text(encoding="utf-8")
    assert [json.loads(x) for x in text.split("\n") if x] == [rows[0], rows[1], rows[3]]
    log = json.loads((tmp_path / "out.removed.jsonl").read_text(encoding="utf-8"))
    assert (log["line"], log["of_line"]) == (3, 2)
    test = write_jsonl(tmp_path / "test.jsonl", [rows[3]])
    assert check.decontaminate(str(src), [str(test)], tmp_path / "clean.jsonl") == (3, 1)
    clean = (tmp_path / "clean.jsonl").read_text(encoding="utf-8")
    assert [json.loads(x) for x in clean.split("\n") if x] == rows[:3]
