"""Masking with the embedded model's real chat template."""

from forgetless.data.formats import Example
from forgetless.data.render import RenderReport, encode, encode_all
from forgetless.model.likelihood import IGNORE


def labelled_text(tokenizer, row) -> list[str]:
    """Decode each maximal run of labelled tokens."""
    runs, cur = [], []
    for tok, lab in zip(row["input_ids"], row["labels"], strict=True):
        if lab != IGNORE:
            cur.append(tok)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tokenizer.decode(r) for r in runs]


def test_only_assistant_tokens_carry_loss(tokenizer):
    ex = Example("x:1", messages=({"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}))
    row = encode(tokenizer, ex)
    assert labelled_text(tokenizer, row) == ["4<|im_end|>\n"]
    assert tokenizer.decode(row["input_ids"]).startswith("<|im_start|>system\n")  # the template's default system


def test_every_assistant_turn_of_a_multi_turn_chat(tokenizer):
    ex = Example(
        "x:1",
        messages=(
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye"},
        ),
    )
    row = encode(tokenizer, ex)
    assert labelled_text(tokenizer, row) == ["Hello there<|im_end|>\n", "Goodbye<|im_end|>\n"]
    masked = tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab == IGNORE])
    assert "Hi" in masked and "Bye" in masked and "Be brief." in masked and "Hello" not in masked


def test_system_prompt_is_added_and_loss_on_all(tokenizer):
    ex = Example("x:1", messages=({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}))
    row = encode(tokenizer, ex, loss_on="all", system_prompt="You triage tickets.")
    assert "You triage tickets." in tokenizer.decode(row["input_ids"])
    assert row["labels"] == row["input_ids"]


def test_text_rows_learn_every_token(tokenizer):
    row = encode(tokenizer, Example("x:1", text="plain text"))
    assert row["labels"] == row["input_ids"] and row["input_ids"][-1] == tokenizer.eos_token_id


def test_overlong_rows_are_truncated_or_dropped_and_counted(tokenizer):
    long_user = Example(
        "f:1", messages=({"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"})
    )
    short = Example("f:2", messages=({"role": "user", "content": "hi"}, {"role": "assistant", "content": "a " * 100}))
    report = RenderReport()
    rows = encode_all(tokenizer, [long_user, short], max_length=64, overlong="truncate", report=report)
    # long_user loses its answer to truncation: dropped and said so; short keeps part of its answer
    assert len(rows) == 1 and report.truncated == 2 and len(rows[0]["input_ids"]) == 64
    assert report.dropped == ["f:1: no answer tokens left within data.max_length=64"]
    report = RenderReport()
    assert encode_all(tokenizer, [long_user, short], max_length=64, overlong="drop", report=report) == []
    assert len(report.dropped) == 2 and report.truncated == 0


def test_tokenizer_without_chat_template_gets_chatml(embedded_dir, tmp_path):
    from forgetless.model import loader as models

    tok = models.load_tokenizer(embedded_dir)
    tok.chat_template = None
    tok.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    plain = models.load_tokenizer(str(tmp_path))
    assert plain.chat_template == models.FALLBACK_CHAT_TEMPLATE
    ex = Example("x:1", messages=({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}))
    row = encode(plain, ex)
    assert plain.decode(row["input_ids"]).startswith("<|im_start|>user\nHi")
    assert labelled_text(plain, row) == ["Yo<|im_end|>\n"]
