import json

import pytest

from forgetless.data.formats import ReadReport, read_file
from forgetless.errors import UserError
from tests.conftest import write_jsonl

INSTR = {"instruction": "Say hi", "input": "to Bob", "output": "Hi Bob"}
CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye"},
    ]
}


def test_formats_are_detected_and_normalised(tmp_path):
    ex = read_file(str(write_jsonl(tmp_path / "a.jsonl", [INSTR])))[0]
    assert ex.messages == ({"role": "user", "content": "Say hi\n\nto Bob"}, {"role": "assistant", "content": "Hi Bob"})
    ex = read_file(str(write_jsonl(tmp_path / "b.jsonl", [{"input": "2+2", "output": "4"}])))[0]
    assert [m["role"] for m in ex.messages] == ["user", "assistant"]
    ex = read_file(str(write_jsonl(tmp_path / "c.jsonl", [CHAT])))[0]
    assert len(ex.messages) == 5 and ex.messages[0]["role"] == "system"
    ex = read_file(str(write_jsonl(tmp_path / "d.jsonl", [{"text": "plain text"}])))[0]
    assert ex.text == "plain text" and not ex.messages


def test_json_csv_parquet_and_dataset_dir(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    (tmp_path / "a.json").write_text(json.dumps([INSTR, INSTR]))
    (tmp_path / "a.csv").write_text("instruction,input,output\nSay hi,to Bob,Hi Bob\nCount,,1 2 3\n")
    pq.write_table(pa.Table.from_pylist([INSTR] * 3), tmp_path / "a.parquet")
    Dataset.from_list([INSTR] * 4).save_to_disk(str(tmp_path / "ds"))
    assert len(read_file(str(tmp_path / "a.json"))) == 2
    rows = read_file(str(tmp_path / "a.csv"))
    assert len(rows) == 2 and rows[1].messages[0]["content"] == "Count"
    assert len(read_file(str(tmp_path / "a.parquet"))) == 3
    assert len(read_file(str(tmp_path / "ds"))) == 4


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('{"instruction": "x", "output": ', r"bad.jsonl:2: malformed JSON"),
        ({"instruction": "x"}, r"bad.jsonl:2: field 'output' is missing"),
        ({"instruction": "x", "output": "  "}, r"bad.jsonl:2: field 'output' is empty"),
        ({"instruction": "x", "output": 3}, r"bad.jsonl:2: field 'output' must be a string, got int"),
        (
            {"messages": [{"role": "assistant", "content": "a"}]},
            r"bad.jsonl:2: messages\[0\].role is 'assistant' but 'user'",
        ),
        (
            {"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "b"}]},
            r"bad.jsonl:2: messages\[0\].content must be a string, got list",
        ),
        ({"messages": [{"role": "user", "content": "a"}]}, r"bad.jsonl:2: the conversation must end with an assistant"),
        ({"messages": [{"role": "robot", "content": "a"}]}, r"bad.jsonl:2: messages\[0\].role is 'robot'; allowed"),
        ({"question": "x"}, r"bad.jsonl:2: field 'instruction' is missing"),  # format comes from the first row
    ],
)
def test_each_bad_row_names_file_line_and_field(tmp_path, row, message):
    good = (
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
        if isinstance(row, dict) and "messages" in row
        else INSTR
    )
    path = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(UserError, match=message):
        read_file(str(path))


def test_unknown_format_is_named(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "x", "answer": "y"}])
    with pytest.raises(UserError, match=r"q.jsonl:1: cannot tell the format from keys \['answer', 'question'\]"):
        read_file(str(path))


def test_empty_file_and_missing_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(UserError, match="e.jsonl: the file has no rows"):
        read_file(str(tmp_path / "e.jsonl"))
    with pytest.raises(UserError, match="data file not found"):
        read_file(str(tmp_path / "nope.jsonl"))
    with pytest.raises(UserError, match="unsupported file type '.txt'"):
        (tmp_path / "a.txt").write_text("x")
        read_file(str(tmp_path / "a.txt"))


def test_skip_mode_counts_every_bad_row(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [INSTR, "{broken", {"instruction": "x"}, INSTR])
    report = ReadReport()
    rows = read_file(str(path), on_error="skip", report=report)
    assert len(rows) == 2 and report.rows == 4 and len(report.skipped) == 2
    assert report.skipped[0].endswith(
        "mixed.jsonl:2: malformed JSON (Expecting property name enclosed in double quotes at column 2)"
    )


def test_builtin_quickstart_files_are_valid():
    assert len(read_file("builtin:quickstart/train.jsonl")) == 400
    assert len(read_file("builtin:quickstart/test.jsonl")) == 60
