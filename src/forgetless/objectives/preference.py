"""The preference objectives: DPO (policy vs its adapters-off reference) and the Bradley-Terry
reward model, as `loop.fit` objectives, plus the pair scores the evaluation reports.

A preference batch holds 2B rows, chosen answers at even rows and rejected at odd rows
(data/preference.py). Rehearsal batches (general rows, under forgetting presets with
rehearsal) get the forgetting terms alone (objectives/forgetting.py): the KL to the base on general text.
"""

from __future__ import annotations

import torch

from forgetless.adapters.views import base_view
from forgetless.config.schema import DpoConfig, ForgettingConfig
from forgetless.model.forward import logits_of
from forgetless.model.likelihood import IGNORE
from forgetless.objectives import forgetting
from forgetless.objectives.losses import bradley_terry_loss, dpo_loss, position_masks, sequence_logps
from forgetless.objectives.objective import Objective


def pair_counts(batch: dict, fcfg: ForgettingConfig) -> dict[str, int]:
    """Units of a step: pairs (DPO, rewards), chosen answer tokens (SFT term), KL positions."""
    if bool(batch["rehearsal"].all()):
        return forgetting.counts(batch, fcfg)
    chosen = batch["labels"][0::2, 1:] != IGNORE
    out = {"pairs": batch["input_ids"].shape[0] // 2, "chosen_tokens": int(chosen.sum()), "batches": 1}
    if fcfg.uses_lwf:
        masks = position_masks(batch["labels"], batch["attention_mask"], batch["rehearsal"])
        out["kl"] = int(forgetting.kl_positions(masks, [t for t in fcfg.kl_tokens if t == "context"]).sum())
    return out


def wins(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per pair: 1 when the chosen answer scores higher, 0 when lower, ½ on a tie (a model that scores
    everything alike, such as the base under DPO's implicit reward, is then at chance, not at 0).
    Training metrics and held-out evaluation both count with this."""
    return (chosen > rejected).float() + 0.5 * (chosen == rejected).float()


def _rewards(chosen: torch.Tensor, rejected: torch.Tensor, pairs: float) -> dict[str, torch.Tensor]:
    """Reward accuracy (`wins`), mean margin and mean rewards, each summed over pairs and divided by
    the step's pair count."""
    return {
        "reward_accuracy": wins(chosen, rejected).sum() / pairs,
        "margin": (chosen - rejected).sum() / pairs,
        "chosen_reward": chosen.sum() / pairs,
        "rejected_reward": rejected.sum() / pairs,
    }


def dpo_objective(cfg: DpoConfig, fcfg: ForgettingConfig) -> Objective:
    """DPO (or IPO) on the pairs, an optional SFT term on the chosen answers, the LwF KL on the prompt
    tokens; rehearsal batches get the SFT forgetting terms without the task CE."""
    rehearsal_loss, w = forgetting.objective(fcfg).loss, forgetting.Weights.of(fcfg)

    def loss_fn(model, batch: dict, norms: dict[str, float]):
        if bool(batch["rehearsal"].all()):  # general rows: the forgetting controls, no task CE
            return rehearsal_loss(model, batch, norms)
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        logits = logits_of(model, ids, mask)
        with torch.no_grad(), base_view(model) as base:
            ref_logits = logits_of(base, ids, mask)
        logps, n = sequence_logps(logits, labels)
        ref_logps, _ = sequence_logps(ref_logits, labels)
        pref, ref_pref = logps, ref_logps
        if cfg.loss == "ipo":  # IPO is defined on length-averaged log-probabilities
            pref, ref_pref = logps / n.clamp(min=1), ref_logps / n.clamp(min=1)
        loss, chosen, rejected = dpo_loss(pref[0::2], pref[1::2], ref_pref[0::2], ref_pref[1::2], cfg.beta, cfg.loss)
        terms = {"dpo": loss.sum() / norms["pairs"]}
        if cfg.sft_weight > 0:  # a token-mean NLL of the chosen answers: summed log-probs, not IPO's averages
            terms["sft"] = cfg.sft_weight * -logps[0::2].sum() / norms["chosen_tokens"]
        if fcfg.uses_lwf and "context" in fcfg.kl_tokens:  # the prompt tokens keep the base's predictions
            where = position_masks(labels, mask, batch["rehearsal"])["context"]
            terms["lwf"] = forgetting.lwf_on_logits(logits, ref_logits, where, batch, fcfg, w, norms)
        return terms, _rewards(chosen, rejected, norms["pairs"])

    return Objective(loss_fn, lambda batch: pair_counts(batch, fcfg))


def reward_scores(model, batch: dict) -> torch.Tensor:
    """(2B,) scalar rewards of a sequence-classification model, one per row."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()


def reward_loss(model, batch: dict, norms: dict[str, float]):
    """Bradley-Terry: −log σ(r_chosen − r_rejected), mean over the step's pairs."""
    r = reward_scores(model, batch)
    terms = {"bradley_terry": bradley_terry_loss(r[0::2], r[1::2]).sum() / norms["pairs"]}
    won = wins(r[0::2], r[1::2]).sum() / norms["pairs"]
    return terms, {"accuracy": won.detach(), "margin": (r[0::2] - r[1::2]).detach().sum() / norms["pairs"]}


def reward_counts(batch: dict) -> dict[str, int]:
    return {"pairs": batch["input_ids"].shape[0] // 2, "batches": 1}


REWARD = Objective(reward_loss, reward_counts)  # the reward model's objective: Bradley-Terry over pairs


@torch.no_grad()
def dpo_scores(model, batches: list[dict], beta: float, reference: bool) -> dict[str, float]:
    """Held-out pair scores of a policy: implicit-reward accuracy and margin against the reference
    (the adapters-off model; `reference=False` for the base itself, whose rewards are all 0), the
    share of pairs whose chosen answer has the higher mean token log-probability, and the DPO loss."""
    was_training = model.training
    model.eval()
    out = {"reward_accuracy": 0.0, "margin": 0.0, "chosen_reward": 0.0, "rejected_reward": 0.0}
    loss = likelier = pairs = 0.0
    for b in batches:
        b = {k: v.to(model.device) for k, v in b.items()}
        logps, n = sequence_logps(logits_of(model, b["input_ids"], b["attention_mask"]), b["labels"])
        ref = logps
        if reference:
            with base_view(model) as base:
                ref, _ = sequence_logps(logits_of(base, b["input_ids"], b["attention_mask"]), b["labels"])
        step, chosen, rejected = dpo_loss(logps[0::2], logps[1::2], ref[0::2], ref[1::2], beta)
        for k, v in _rewards(chosen, rejected, 1.0).items():
            out[k] += float(v)
        mean = logps / n.clamp(min=1)
        likelier += float((mean[0::2] > mean[1::2]).float().sum())
        loss += float(step.sum())
        pairs += step.numel()
    model.train(was_training)
    pairs = max(pairs, 1)
    return {k: v / pairs for k, v in out.items()} | {"likelier_chosen": likelier / pairs, "dpo_loss": loss / pairs}


@torch.no_grad()
def reward_accuracy(model, batches: list[dict]) -> dict[str, float]:
    """Held-out pairwise accuracy of a reward model (ties count half) and its mean margin."""
    model.eval()
    won = margin = pairs = 0.0
    for b in batches:
        r = reward_scores(model, {k: v.to(model.device) for k, v in b.items()})
        won += float(wins(r[0::2], r[1::2]).sum())
        margin += float((r[0::2] - r[1::2]).sum())
        pairs += r.shape[0] // 2
    pairs = max(pairs, 1)
    return {"accuracy": won / pairs, "margin": margin / pairs, "pairs": int(pairs)}
