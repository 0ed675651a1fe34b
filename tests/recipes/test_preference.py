"""Preference tuning: DPO, the Bradley-Terry reward model and PPO — losses against hand-computed
values, preference data validation, and short runs of each recipe on the tiny model."""

from __future__ import annotations

import json

import pytest

import forgetless
from forgetless.adapters import saved
from forgetless.config import loader
from forgetless.errors import UserError
from tests.conftest import write_jsonl


def _pairs(n: int) -> list[dict]:
    return [{"prompt": f"Rate item {i}.", "chosen": f"Good item {i}. Yes", "rejected": f"Bad {i} no"} for i in range(n)]


@pytest.fixture
def pref_overrides(tiny_overrides, tmp_path) -> list[str]:
    path = write_jsonl(tmp_path / "pairs.jsonl", _pairs(12))
    keep = [o for o in tiny_overrides if not o.startswith(("data.train=", "train.lr="))]
    return [*keep, f"data.train={path}", "train.lr=5e-3", "train.max_steps=6", "train.grad_accum=1"]


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
    assert (run / "report.md").is_file() and saved.method_of(run / "adapter") == "lora"


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
    from forgetless.objectives.reward_model import score_file

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
        loader.load(None, overrides)
