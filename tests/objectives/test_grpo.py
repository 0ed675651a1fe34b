"""GRPO's maths against hand-computed values, the rewards (each built-in, the weighted sum, a user's
function, bad rewards as one-line errors naming the row), and the config's refusals."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from forgetless.config import loader
from forgetless.config.preference import RewardSpec
from forgetless.data.answers import last_number
from forgetless.errors import UserError
from forgetless.objectives.grpo import group_advantages
from forgetless.objectives.losses import grpo_losses
from forgetless.objectives.rewards import Rewards, Rollout


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0])  # two groups of 3
    plain = group_advantages(r, 3, scale=False)
    torch.testing.assert_close(plain, torch.tensor([2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3]))  # means 1/3, 5/3
    scaled = group_advantages(r, 3, scale=True)
    std = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)  # the group's sample std (n - 1)
    torch.testing.assert_close(scaled[:3], torch.tensor([2 / 3, -1 / 3, -1 / 3]) / (std + 1e-4))
    assert torch.equal(group_advantages(torch.ones(4), 2, scale=True), torch.zeros(4))  # no signal, no push


def test_grpo_losses_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.2, 0.2]]))
    old = torch.log(torch.tensor([[0.25, 0.25], [0.2, 0.4]]))
    ref = torch.log(torch.tensor([[0.5, 0.5], [0.1, 0.2]]))
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # the second answer has one token
    policy, kl = grpo_losses(logp, old, ref, adv, mask, clip=0.2, per_row_tokens=mask.sum(-1))
    # row 0: ratios 2 (clipped to 1.2 for A=+1: min(2, 1.2) = 1.2) and 1 -> -(1.2 + 1) / 2
    # row 1: ratio 1 on its one token, A=-1 -> -min(-1, -1) = 1
    assert policy.item() == pytest.approx(-1.1 + 1.0)
    k3 = lambda p, r: r / p - math.log(r / p) - 1  # noqa: E731  exp(ref - logp) - (ref - logp) - 1
    assert kl.item() == pytest.approx((k3(0.5, 0.5) + k3(0.25, 0.5)) / 2 + k3(0.2, 0.1))
    # Dr. GRPO: token sums over a constant
    policy_dr, _ = grpo_losses(logp, old, ref, adv, mask, clip=0.2, per_row_tokens=4.0)
    assert policy_dr.item() == pytest.approx((-2.2 + 1.0) / 4)


def _roll(answer: str, reference: str = "42", where: str = "t.jsonl:3") -> Rollout:
    return Rollout(where, [{"role": "user", "content": "q"}], answer, reference)


def test_builtin_rewards():
    cases = {
        "exact_match": ({}, ["  42 ", "The answer is 42"], [1.0, 0.0]),
        "numeric": ({"tolerance": 0.5}, ["so 42.4", "41", "none"], [1.0, 0.0, 0.0]),
        "regex": ({"pattern": r"-?\d+"}, ["42", "42 apples"], [1.0, 0.0]),
        "json_schema": (
            {"json_schema": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}},
            ['{"n": 3}', '{"n": "3"}', "not json"],
            [1.0, 0.0, 0.0],
        ),
        "length": ({"min_chars": 2, "max_chars": 4}, ["4", "42", "12345"], [0.0, 1.0, 0.0]),
    }
    for kind, (settings, answers, expected) in cases.items():
        values, means = Rewards([RewardSpec(kind=kind, **settings)])([_roll(a) for a in answers])
        assert values == expected, kind
        assert means == {f"reward.{kind}": sum(expected) / len(expected)}
    assert last_number("1,200 or 3.5") == 3.5


def reward_fn(prompt, answer, reference):
    """A user's reward (module:function): the answer's length in words, or a bad value on request."""
    if answer == "boom":
        raise ValueError("cannot score")
    if answer == "nan":
        return float("nan")
    if answer == "text":
        return "high"
    return len(answer.split())


def test_weighted_sum_and_a_users_function():
    specs = [RewardSpec(kind="numeric", weight=2.0), RewardSpec(kind=f"{__name__}:reward_fn", weight=0.5)]
    values, means = Rewards(specs)([_roll("it is 42"), _roll("7")])
    assert values == [2.0 + 0.5 * 3, 0.0 + 0.5 * 1]
    assert means == {"reward.numeric": 0.5, f"reward.{__name__}:reward_fn": 2.0}


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ("boom", "t.jsonl:3: reward tests.objectives.test_grpo:reward_fn raised ValueError: cannot score"),
        ("nan", "t.jsonl:3: reward tests.objectives.test_grpo:reward_fn returned nan, not a finite number"),
        ("text", "t.jsonl:3: reward tests.objectives.test_grpo:reward_fn returned 'high', not a finite number"),
    ],
)
def test_a_bad_reward_is_one_line_naming_the_row(answer, said):
    assert __name__ in sys.modules
    with pytest.raises(UserError) as e:
        Rewards([RewardSpec(kind=f"{__name__}:reward_fn")])([_roll("42", where="a.jsonl:1"), _roll(answer)])
    assert str(e.value).startswith(said) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (["grpo.rewards=[{kind: regex}]"], "reward kind regex needs pattern"),
        (["grpo.rewards=[{kind: vibes}]"], "reward kind 'vibes': choose exact_match, numeric"),
        (["forgetting.preset=lwf"], "recipe grpo: its KL to the base on the task's prompts is grpo.kl_coef"),
        (["peft.method=full"], "recipe grpo trains LoRA or DoRA adapters"),
        (["grpo.group_size=1"], "grpo.group_size"),
    ],
)
def test_config_refusals_name_the_key(overrides, said):
    with pytest.raises(UserError, match=said):
        loader.validate({"recipe": "grpo"}, overrides)
    with pytest.raises(UserError, match="cannot load 'no_such_module:f'"):
        Rewards([RewardSpec(kind="no_such_module:f")])
