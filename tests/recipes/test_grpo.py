"""`forgetless train` with recipe grpo on the tiny model: the loop's terms and the rollouts' rewards are
logged, eval.json holds the held-out reward with the interval of its change, the adapter is a plain
LoRA, a resumed run continues from its checkpoint, and the forgetting controls put general rows
beside every micro-batch."""

from __future__ import annotations

import json

import forgetless
from forgetless.adapters import saved
from tests.conftest import write_jsonl


def _sums(n: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"{i} + {i} = ?"}, {"role": "assistant", "content": str(2 * i)}]}
        for i in range(n)
    ]


def _overrides(tiny_overrides, tmp_path) -> list[str]:
    keep = [o for o in tiny_overrides if not o.startswith(("data.train=", "train.max_steps", "train.lr"))]
    path = write_jsonl(tmp_path / "sums.jsonl", _sums(12))
    grpo = ["grpo.group_size=2", "grpo.prompts_per_step=2", "grpo.max_new_tokens=4", "eval.max_examples=3"]
    return [*keep, f"data.train={path}", "recipe=grpo", "train.max_steps=2", "train.lr=1e-2", *grpo]


def test_grpo_trains_logs_and_reports(tiny_overrides, tmp_path):
    summary = forgetless.train({}, _overrides(tiny_overrides, tmp_path))
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "policy" in x]
    assert len(steps) == 2 and {"policy", "kl", "reward", "kl_to_base"} <= set(steps[-1])
    assert len(summary["rollouts"]) == 2 and {"reward", "reward.numeric", "groups_with_signal"} <= set(
        summary["rollouts"][0]
    )
    ev = json.loads((run / "eval.json").read_text())
    reward = ev["task"]["reward"]
    assert {"base", "finetuned", "diff", "diff_ci"} <= set(reward) and reward["diff_ci"][0] <= reward["diff_ci"][1]
    assert len(ev["grpo_samples"]["finetuned"]) == 3 and "reference" in ev["grpo_samples"]["finetuned"][0]
    assert saved.method_of(run / "adapter") == "lora" and (run / "report.md").is_file()
    # --resume with a longer run continues from the checkpoint at step 2
    again = forgetless.train({}, [*_overrides(tiny_overrides, tmp_path), "train.max_steps=3"], resume=True)
    assert again["steps"] == 3 and len(again["rollouts"]) == 1


def test_grpo_with_rehearsal_puts_general_rows_beside_each_micro_batch(tiny_overrides, tmp_path):
    general = write_jsonl(tmp_path / "general.jsonl", _sums(4))
    controls = ["forgetting.preset=full", f"forgetting.rehearsal.source=[{general}]", "forgetting.rehearsal.weight=1"]
    forgetless.train({}, [*_overrides(tiny_overrides, tmp_path), *controls])
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [x for x in lines if "policy" in x][-1]
    assert {"policy", "kl", "ce_rehearsal", "lwf"} <= set(last)


def test_grpo_trains_a_qlora_adapter(tiny_overrides, tmp_path):
    """QLoRA: the reference is the 4-bit base with the adapter off, as for LoRA."""
    summary = forgetless.train(
        {}, [*_overrides(tiny_overrides, tmp_path), "model.quantization=4bit", "train.max_steps=1"]
    )
    assert summary["steps"] == 1 and saved.method_of(tmp_path / "run" / "adapter") == "lora"
