"""Packing per family: rows packed into one sequence without padding (position ids restart at 0,
no attention mask) give each row the logits it gets alone. transformers builds the block-diagonal
mask from the position ids; each family's attention (sliding windows, soft-capping, fused qkv,
experts) must honour it."""

from __future__ import annotations

import pytest
import torch

from forgetless.config.schema import ModelConfig
from forgetless.data.formats import Example
from forgetless.data.packing import collate_packed
from forgetless.data.render import encode
from forgetless.model import forward
from forgetless.model import loader as models
from tests.families.conftest import FAMILIES, family_model_dir
from tests.families.test_masks import SYSTEM, TURNS


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_rows_have_the_logits_they_have_alone(family, family_model_dirs, family_tokenizers, tmp_path_factory):
    model_dir = family_model_dir(family_model_dirs, family_tokenizers, tmp_path_factory, family)
    model, tok, _ = models.load(ModelConfig(name=model_dir))
    rows = [
        encode(tok, Example("t:1", messages=(SYSTEM, *TURNS[:2]))),
        encode(tok, Example("t:2", messages=tuple(TURNS))),
    ]
    batch = collate_packed(rows, pad_id=tok.pad_token_id, capacity=4096)
    assert batch["input_ids"].shape[0] == 1  # both rows in one sequence
    with torch.no_grad():
        packed = forward.logits_of(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"])[0]
        at = 0
        for row in rows:
            n = len(row["input_ids"])
            alone = model(input_ids=torch.tensor([row["input_ids"]])).logits[0]
            torch.testing.assert_close(packed[at : at + n], alone, rtol=1e-4, atol=1e-4)
            at += n
