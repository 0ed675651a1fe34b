"""Preference data: validation with file:line errors, chat-shaped rows."""

from __future__ import annotations

import pytest

from forgetless.data.preference import read_preferences
from forgetless.errors import UserError
from tests.conftest import write_jsonl


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"chosen": "a", "rejected": "b"}, "field 'prompt' is missing"),
        ({"prompt": "q", "rejected": "b"}, "field 'chosen' is missing"),
        ({"prompt": "q", "chosen": "a", "rejected": 3}, "field 'rejected' must be a string or an assistant message"),
        ({"prompt": "q", "chosen": "same", "rejected": "same"}, "identical"),
        ({"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}, "end with a user turn"),
        ({"prompt": "q", "chosen": {"role": "user", "content": "a"}, "rejected": "b"}, "assistant message"),
    ],
)
def test_bad_preference_rows_name_file_line_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(UserError, match=f"p.jsonl:2: .*{message}"):
        read_preferences(str(path))


def test_chat_shaped_preferences_are_read(tmp_path):
    row = {
        "prompt": [{"role": "system", "content": "Be polite."}, {"role": "user", "content": "Hi"}],
        "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
        "rejected": {"role": "assistant", "content": "yo"},
    }
    (pair,) = read_preferences(str(write_jsonl(tmp_path / "p.jsonl", [row])))
    assert pair.prompt[0]["role"] == "system" and (pair.chosen, pair.rejected) == ("Hello.", "yo")
