"""Answer-only masks with each family's real tokenizer and chat template: the labelled tokens are
exactly each answer plus the template's end-of-turn marker, with or without a system message and
over several turns."""

from __future__ import annotations

import pytest

from forgetless.data.formats import Example
from forgetless.data.render import encode
from forgetless.model.chat_format import answer_spans, prompt_text
from tests.data.test_render import labelled_text
from tests.families.conftest import FAMILIES, family_tokenizer

# what each template writes after an answer (Phi-3 and Mistral end the last answer with EOS too)
END = {
    "llama3": "<|eot_id|>",
    "mistral": "</s>",
    "mixtral": "</s>",
    "qwen2": "<|im_end|>\n",
    "qwen3": "<|im_end|>\n",
    "phi3": "<|end|>\n",
    "gemma": "<end_of_turn>\n",
    "gemma3": "<end_of_turn>\n",
    "gemma4": "<turn|>\n",
}
LAST = {"phi3": "<|endoftext|>"}  # Phi-3.5's template appends EOS after the conversation
THINK = "<think>\n\n</think>\n\n"  # Qwen3's template puts an empty reasoning block before the last answer

SYSTEM = {"role": "system", "content": "You triage support tickets."}
TURNS = [
    {"role": "user", "content": "My order 4411 is late."},
    {"role": "assistant", "content": "category: shipping | order: 4411"},
    {"role": "user", "content": "注文 5522 が届きません。"},
    {"role": "assistant", "content": "category: shipping | order: 5522"},
]


def expected(family: str, answers: list[str], prefixed_last: bool) -> list[str]:
    out = [a + END[family] for a in answers]
    out[-1] += LAST.get(family, "")
    if family == "qwen3" and prefixed_last:
        out[-1] = THINK + out[-1]
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("system", [False, True], ids=["no-system", "system"])
@pytest.mark.parametrize("turns", [1, 2], ids=["one-turn", "two-turns"])
def test_the_mask_is_each_answer_and_its_end_of_turn(family_tokenizers, family, system, turns):
    tok = family_tokenizer(family_tokenizers, family)
    messages = ([SYSTEM] if system else []) + TURNS[: 2 * turns]
    row = encode(tok, Example("t:1", messages=tuple(messages)))
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    # Qwen3 renders earlier answers without the reasoning block, so two turns are located in the text
    # and the last answer's empty block stays on the prompt side; one turn takes it from the template.
    # spaces compared away: sentencepiece vocabularies decode a space around special tokens
    got = [t.replace(" ", "") for t in labelled_text(tok, row)]
    assert got == [t.replace(" ", "") for t in expected(family, answers, prefixed_last=turns == 1)]
    text = tok.decode(row["input_ids"])
    assert ("You triage support tickets." in text) == system
    assert text.count("My order 4411 is late.") == 1


@pytest.mark.parametrize(
    ("family", "first_turn"),
    [
        # Gemma's template raises on a system message
        ("gemma", "<start_of_turn>user\nYou triage support tickets.\n\nMy order 4411 is late.<end_of_turn>"),
        # Mistral-Nemo's writes it only into a last user turn that is the last message: gone from training rows
        ("mistral", "[INST]You triage support tickets.\n\nMy order 4411 is late.[/INST]"),
    ],
)
def test_a_template_that_refuses_or_drops_the_system_role_gets_it_in_the_first_user_turn(
    family_tokenizers, family, first_turn
):
    tok = family_tokenizer(family_tokenizers, family)
    for conversation in ([SYSTEM, *TURNS], [SYSTEM, *TURNS[:3]]):  # training row, generation prompt
        last = conversation[-1]["role"]
        text = prompt_text(tok, conversation) if last == "user" else answer_spans(tok, conversation)[0]
        assert first_turn in text and text.count("You triage support tickets.") == 1


def test_a_row_is_the_prompt_the_model_is_served_plus_its_answer(family_tokenizers):
    """Gemma-4's generation prompt ends with an empty thought channel that answered turns drop: the
    last answer is trained after that prompt, as it is generated after it."""
    tok = family_tokenizer(family_tokenizers, "gemma4")
    for messages in ([SYSTEM, *TURNS[:2]], [SYSTEM, *TURNS]):
        text, spans = answer_spans(tok, messages)
        prompt = prompt_text(tok, messages[:-1])
        assert prompt.endswith("<|turn>model\n<|channel>thought\n<channel|>")
        assert text == prompt + messages[-1]["content"] + "<turn|>\n"
        assert spans[-1] == (len(prompt), len(text)) and len(spans) == len(messages) // 2
