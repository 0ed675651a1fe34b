"""Preference tuning: DPO, the Bradley-Terry reward model and PPO — losses against hand-computed
values, preference data validation, and short runs of each recipe on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

import forgetless
from forgetless import adapters, config
from forgetless.config import PeftConfig, RlhfConfig
from forgetless.data.preference import collate_pairs, read_preferences
from forgetless.errors import UserError
from forgetless.losses import bradley_terry_loss, dpo_loss, gae, ppo_losses
from forgetless.preference import dpo_scores

from .conftest import write_jsonl


def test_dpo_loss_by_hand():
    """π(c)=−1, π(r)=−2, π_ref(c)=π_ref(r)=−1.5, β=0.1: h = 0.5 − (−0.5) = 1;
    sigmoid: −log σ(0.1) = log(1 + e^−0.1) = 0.6443967; rewards β·0.5 = 0.05 and β·(−0.5) = −0.05;
    ipo: (1 − 1/(2·0.1))² = (1 − 5)² = 16."""
    args = [torch.tensor([x]) for x in (-1.0, -2.0, -1.5, -1.5)]
    loss, chosen, rejected = dpo_loss(*args, beta=0.1)
    assert loss.item() == pytest.approx(0.6443967, abs=1e-6)
    assert (chosen.item(), rejected.item()) == pytest.approx((0.05, -0.05))
    assert dpo_loss(*args, beta=0.1, kind="ipo")[0].item() == pytest.approx(16.0)


def test_bradley_terry_by_hand():
    """r_c = 2, r_r = 0: −log σ(2) = log(1 + e^−2) = 0.126928; equal rewards give log 2."""
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0])).item() == pytest.approx(0.126928, abs=1e-6)
    assert bradley_terry_loss(torch.tensor([1.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2))


def test_gae_by_hand():
    """rewards [0, 1], values [0.5, 0.2], γ = 1: δ1 = 1 − 0.2 = 0.8, δ0 = 0 + 0.2 − 0.5 = −0.3;
    λ = 1: A = [−0.3 + 0.8, 0.8] = [0.5, 0.8], returns A + V = [1, 1]; λ = 0.5: A0 = −0.3 + 0.4 = 0.1.
    A masked-out position (padding after the answer) neither gets nor passes on advantage."""
    r, v, m = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.2]]), torch.tensor([[1.0, 1.0]])
    adv, ret = gae(r, v, m, 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.8]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0]]))
    assert gae(r, v, m, 1.0, 0.5)[0][0, 0].item() == pytest.approx(0.1)
    adv, _ = gae(torch.tensor([[1.0, 5.0]]), torch.tensor([[0.5, 9.0]]), torch.tensor([[1.0, 0.0]]), 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.0]]))


def test_ppo_losses_by_hand():
    """ρ = 1: policy loss = −ΣA = −(2 − 1) = −1. ρ = 2, ε = 0.2: A=2 → −min(4, 2.4) = −2.4; A=−1 →
    −min(−2, −1.2) = 2; sum −0.4. Value V=1, V_old=0, R=2, ε_v=0.2: ½·max((1−2)², (0.2−2)²) = 1.62."""
    adv, mask = torch.tensor([[2.0, -1.0]]), torch.ones(1, 2)
    zero = torch.zeros(1, 2)
    policy, _ = ppo_losses(zero, zero, adv, zero, zero, zero, mask)
    assert policy.item() == pytest.approx(-1.0)
    policy, _ = ppo_losses(zero + math.log(2), zero, adv, zero, zero, zero, mask)
    assert policy.item() == pytest.approx(-0.4, abs=1e-6)
    one = torch.ones(1, 1)
    _, value = ppo_losses(one * 0, one * 0, one * 0, one, one * 0, one * 2, one)
    assert value.item() == pytest.approx(1.62)


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


def _pairs(n: int) -> list[dict]:
    return [{"prompt": f"Rate item {i}.", "chosen": f"Good item {i}. Yes", "rejected": f"Bad {i} no"} for i in range(n)]


@pytest.fixture
def pref_overrides(tiny_overrides, tmp_path) -> list[str]:
    path = write_jsonl(tmp_path / "pairs.jsonl", _pairs(12))
    keep = [o for o in tiny_overrides if not o.startswith(("data.train=", "train.lr="))]
    return [*keep, f"data.train={path}", "train.lr=5e-3", "train.max_steps=6", "train.grad_accum=1"]


def test_dpo_reference_is_the_adapter_free_model(tiny_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from forgetless.data.preference import Preference, encode_pair
    from forgetless.data.render import RenderReport

    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    rows = [
        encode_pair(tokenizer, Preference("t", ({"role": "user", "content": "q"},), "yes", "no"), 64, RenderReport())
    ]
    batch = collate_pairs(rows, tokenizer.pad_token_id)
    model = adapters.attach(
        AutoModelForCausalLM.from_pretrained(tiny_dir), PeftConfig(r=4), quantized=False, grad_checkpointing=False
    )
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)  # a trained adapter
    with torch.no_grad(), adapters.base_view(model) as ref:
        torch.testing.assert_close(
            ref(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
            base(**{k: batch[k] for k in ("input_ids", "attention_mask")}).logits,
        )
    assert dpo_scores(model, [batch], 0.1, reference=True)["margin"] != 0
    assert dpo_scores(base, [batch], 0.1, reference=False)["reward_accuracy"] == 0.5  # all rewards 0: a tie


def test_dpo_steps_raise_the_margin_and_report(pref_overrides, tmp_path):
    summary = forgetless.train({}, [*pref_overrides, "recipe=dpo", "forgetting.preset=lwf", "dpo.sft_weight=0.1"])
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    margins = [x["margin"] for x in lines if "margin" in x]
    steps = [x for x in lines if "margin" in x]
    assert len(margins) == 6 and margins[-1] > margins[0] and {"dpo", "sft", "lwf", "reward_accuracy"} <= set(steps[-1])
    ev = json.loads((run / "eval.json").read_text())
    assert ev["task"]["reward_accuracy"]["base"] == 0.5
    assert summary["task_after"]["margin"] > 0
    assert (run / "report.md").is_file() and adapters.method_of(run / "adapter") == "lora"


def test_dpo_with_rehearsal_rows(pref_overrides, tmp_path):
    retention = ["eval.retention=true", "eval.retention_max_prompts=3", "eval.retention_max_new_tokens=4"]
    summary = forgetless.train(
        {}, [*pref_overrides, "recipe=dpo", "forgetting.preset=full", "train.max_steps=2", *retention]
    )
    assert summary["steps"] == 2 and "lwf" in summary["final"]
    assert summary["retention"]["kl_per_token"] >= 0  # measured against the adapters-off model


def test_reward_model_beats_chance_and_scores(pref_overrides, tmp_path, capsys):
    """Easy synthetic preferences: the chosen answer always says 'Good ... Yes', the rejected 'Bad ... no'."""
    path = write_jsonl(tmp_path / "many.jsonl", _pairs(40))
    out = tmp_path / "reward"
    overrides = [o for o in pref_overrides if not o.startswith(("data.train=", "output_dir=", "train.max_steps"))]
    summary = forgetless.train(
        {},
        [
            *overrides,
            "recipe=reward",
            f"data.train={path}",
            f"output_dir={out}",
            "train.max_steps=20",
            "data.validation_split=0.25",
            "train.batch_size=4",
        ],
    )
    assert summary["task_after"]["accuracy"] >= 0.8 and summary["validation_pairs"] == 10
    from forgetless.recipes.reward import score_file

    scored = score_file(
        str(out),
        write_jsonl(
            tmp_path / "s.jsonl", [{"prompt": "Rate item 99.", "chosen": "Good item 99. Yes", "rejected": "Bad 99 no"}]
        ),
    )
    assert scored[0]["reward_chosen"] > scored[0]["reward_rejected"]
    from forgetless.cli import main

    assert (
        main(
            [
                "reward",
                "score",
                "--run",
                str(out),
                "--prompt",
                "Rate item 98.",
                "--answer",
                "Good item 98. Yes",
                "--answer",
                "Bad 98 no",
            ]
        )
        == 0
    )
    good, bad = (float(line.split()[0]) for line in capsys.readouterr().out.strip().splitlines()[-2:])
    assert good > bad
    assert main(["reward", "score", "--run", str(out)]) == 2
    assert "give --prompt P --answer A" in capsys.readouterr().err


def test_ppo_step_changes_only_trainable_parameters_and_starts_at_zero_kl(tiny_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from forgetless import loop
    from forgetless.config import TrainConfig
    from forgetless.rl import Rollouts, add_value_head, make_ppo_loss, ppo_counts

    torch.manual_seed(0)
    model = adapters.attach(
        AutoModelForCausalLM.from_pretrained(tiny_dir), PeftConfig(r=4), quantized=False, grad_checkpointing=False
    )
    add_value_head(model)
    cfg = RlhfConfig(reward_model="unused", rollout_prompts=4, ppo_epochs=2, max_new_tokens=6)
    prompts = [({"role": "user", "content": f"Say something {i}."},) for i in range(8)]

    def scorer(ps, answers):  # reward: longer answers are better
        return [float(len(a)) / 10 for a in answers]

    stream = Rollouts(model, tokenizer, scorer, prompts, cfg, batch_size=2, seed=0)
    first = next(stream.epoch(0))
    assert first["kl"].abs().max().item() < 1e-5  # the policy is the reference before any update
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("value_head") for n in trainable)
    summary = loop.fit(
        model,
        stream,
        make_ppo_loss(cfg),
        TrainConfig(max_steps=2, grad_accum=2, lr=1e-2),
        tmp_path,
        count_fn=ppo_counts,
    )
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable and summary["steps"] == 2
    assert {"policy", "value", "reward", "kl", "clip_fraction"} <= set(summary["final"])


def test_rlhf_recipe_runs_against_a_reward_run(pref_overrides, tmp_path):
    reward = tmp_path / "reward"
    base = [o for o in pref_overrides if not o.startswith(("output_dir=", "train.max_steps"))]
    forgetless.train({}, [*base, "recipe=reward", f"output_dir={reward}", "train.max_steps=3"])
    summary = forgetless.train(
        {},
        [
            *base,
            "recipe=rlhf",
            f"rlhf.reward_model={reward}",
            "rlhf.rollout_prompts=4",
            "rlhf.max_new_tokens=4",
            f"output_dir={tmp_path / 'rl'}",
            "train.max_steps=2",
            "train.batch_size=2",
            "train.grad_accum=2",
            "eval.retention=true",
            "eval.retention_max_prompts=3",
            "eval.retention_max_new_tokens=4",
        ],
    )
    assert summary["steps"] == 2 and len(summary["rollouts"]) >= 1
    assert "kl_to_reference" in summary["task_after"] and "mean_reward" in summary["task_before"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["recipe=rlhf"], "recipe rlhf needs rlhf.reward_model"),
        (["recipe=reward", "peft.method=ia3"], "recipe reward trains LoRA or DoRA adapters"),
        (["dpo.loss=hinge"], "dpo.loss"),
    ],
)
def test_bad_preference_settings(overrides, message):
    with pytest.raises(UserError, match=message):
        config.load(None, overrides)
