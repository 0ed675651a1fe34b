"""The preference objectives on the tiny model: the DPO/IPO terms and their units, the reward model's
accuracy counting, and PPO's rollouts leaving the shared tokenizer as they found it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from forgetless.adapters import attaching, views
from forgetless.config.preference import DpoConfig, RlhfConfig
from forgetless.config.schema import ForgettingConfig, PeftConfig
from forgetless.data.preference import Preference, collate_pairs, encode_pair
from forgetless.data.render import RenderReport
from forgetless.objectives.losses import sequence_logps
from forgetless.objectives.ppo import Rollouts
from forgetless.objectives.preference import REWARD, dpo_objective, dpo_scores, reward_accuracy


def _pairs(tokenizer):
    prefs = [
        Preference("t", ({"role": "user", "content": "q"},), "a long polite answer here", "no"),
        Preference("t", ({"role": "user", "content": "r"},), "yes", "a longer rejected answer"),
    ]
    rows = [encode_pair(tokenizer, p, 64, RenderReport()) for p in prefs]
    return collate_pairs(rows, tokenizer.pad_token_id)


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_sft_term_is_the_token_mean_nll_of_the_chosen_answers(tiny_dir, tokenizer, loss):
    """Defect: with loss=ipo the SFT term used the length-averaged log-probs and divided by the
    chosen-token count again (about 1/length too weak). It is −Σ log p(chosen tokens) / their count
    for both losses."""
    model = attaching.attach(
        AutoModelForCausalLM.from_pretrained(tiny_dir), PeftConfig(r=4), quantized=False, grad_checkpointing=False
    )
    batch = _pairs(tokenizer)
    obj = dpo_objective(DpoConfig(loss=loss, sft_weight=1.0), ForgettingConfig(preset="none"))
    counts = obj.count(batch)
    terms, _ = obj.loss(model, batch, {k: float(v) for k, v in counts.items()})
    with torch.no_grad():
        logps, n = sequence_logps(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"]
        )
    assert counts["chosen_tokens"] == int(n[0::2].sum())
    expected = -logps[0::2].sum() / n[0::2].sum()
    assert terms["sft"].item() == pytest.approx(expected.item(), rel=1e-5)


class Scores(torch.nn.Module):
    """A stand-in reward model that returns fixed scores, one per row."""

    device = torch.device("cpu")

    def __init__(self, scores: list[float]):
        super().__init__()
        self.scores = torch.tensor(scores).unsqueeze(-1)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.scores)


def test_reward_accuracy_counts_a_tie_as_half_in_training_and_evaluation():
    """Defect: ties counted as losses in the training metric but as halves in evaluation.
    Rows (chosen, rejected): (1, 1) a tie = ½, (2, 0) a win = 1, (0, 3) a loss = 0 -> 1.5 / 3 = 0.5."""
    model = Scores([1.0, 1.0, 2.0, 0.0, 0.0, 3.0])
    batch = {"input_ids": torch.zeros(6, 2, dtype=torch.long), "attention_mask": torch.ones(6, 2)}
    counts = REWARD.count(batch)
    _, metrics = REWARD.loss(model, batch, {k: float(v) for k, v in counts.items()})
    assert counts["pairs"] == 3
    assert metrics["accuracy"].item() == pytest.approx(0.5)
    assert reward_accuracy(model, [batch])["accuracy"] == pytest.approx(0.5)


class Broken:
    """A policy whose device cannot be read: the rollout fails right after the tokenizer is switched."""

    training = False

    def eval(self):
        return self

    @property
    def device(self):
        raise RuntimeError("device lost")


def test_a_failed_rollout_restores_the_tokenizers_padding_side(tokenizer):
    """Defect: Rollouts.rollout switched tokenizer.padding_side to left and left it so on error."""
    before = tokenizer.padding_side
    cfg = RlhfConfig(reward_model="unused", rollout_prompts=2, max_new_tokens=2)
    stream = Rollouts(Broken(), tokenizer, None, [({"role": "user", "content": "hi"},)], cfg, batch_size=1, seed=0)
    with pytest.raises(RuntimeError, match="device lost"):
        stream.rollout([({"role": "user", "content": "hi"},)])
    assert tokenizer.padding_side == before


def test_dpo_reference_is_the_adapter_free_model(tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from forgetless.data.preference import Preference, encode_pair
    from forgetless.data.render import RenderReport

    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    rows = [
        encode_pair(tokenizer, Preference("t", ({"role": "user", "content": "q"},), "yes", "no"), 64, RenderReport())
    ]
    batch = collate_pairs(rows, tokenizer.pad_token_id)
    model = attaching.attach(
        AutoModelForCausalLM.from_pretrained(tiny_dir), PeftConfig(r=4), quantized=False, grad_checkpointing=False
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)  # a trained adapter
    with torch.no_grad(), views.base_view(model) as ref:
        torch.testing.assert_close(
            ref(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
            base(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
        )
    assert dpo_scores(model, [batch], 0.1, reference=True)["margin"] != 0
    assert dpo_scores(base, [batch], 0.1, reference=False)["reward_accuracy"] == 0.5  # all rewards 0: a tie
