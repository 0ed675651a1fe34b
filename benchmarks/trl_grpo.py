"""forgetless's GRPO against TRL's GRPOTrainer in one run: the same task (the shipped arithmetic rows),
model (SmolLM2-135M-Instruct), LoRA (r 8, alpha 16, dropout 0.05, all linear layers), rewards (the last
number right: 1, an answer of at most 20 characters: 0.1, as configs/grpo.yaml), group size 4, 4 prompts
per optimizer step, answers of at most 16 tokens, sampling temperature 0.8, β 0.04, learning rate 3e-4,
and number of steps; optimizer steps per second (training time only, model loading and evaluation
excluded) and the mean reward of every step's rollouts, side by side.

Run: python benchmarks/trl_grpo.py [--steps 20] [--seed 1] [--out runs/trl_grpo] [--docs docs]
     (needs TRL: pip install 'forgetless[bench]')
Writes DOCS/trl_grpo.json (both curves and timings), DOCS/trl_grpo.png (the reward curves) and the table
between the <!-- trl-grpo --> markers of DOCS/performance.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import machine  # benchmarks/machine.py: the CPU both ran on
import outputs  # benchmarks/outputs.py: every file written whole

MARK = "<!-- trl-grpo -->"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def ours(steps: int, seed: int, out: Path) -> dict:
    run = out / f"forgetless-seed{seed}"
    cmd = [sys.executable, "-m", "forgetless", "train", "grpo", f"train.max_steps={steps}", f"train.seed={seed}"]
    cmd += [f"output_dir={run}", "--overwrite", "train.log_every=1", "eval.retention=false", "eval.before_after=false"]
    print("[trl_grpo] " + " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    rewards = [x["reward"] for x in lines if "reward" in x and "policy" in x]
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    return {"rewards": rewards, "train_seconds": summary["train_seconds"], "steps": summary["steps"]}


def _reward(completions, answer, **_) -> list[float]:
    """The same two rewards as configs/grpo.yaml: numeric (1) and an answer of at most 20 characters (0.1)."""
    out = []
    for completion, ref in zip(completions, answer, strict=True):
        text = completion[0]["content"] if isinstance(completion, list) else completion
        found = NUMBER.findall(text.replace(",", ""))
        right = bool(found) and float(found[-1]) == float(ref)
        out.append(float(right) + 0.1 * float(len(text.strip()) <= 20))
    return out


def trl(steps: int, seed: int, out: Path) -> dict:
    from datasets import Dataset  # TRL's input type
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from forgetless.config.schema import ModelConfig
    from forgetless.data.formats import builtin_path
    from forgetless.model import loader as models

    rows = [json.loads(x) for x in builtin_path("arithmetic/train.jsonl").read_text(encoding="utf-8").splitlines()]
    data = Dataset.from_list([{"prompt": [r["messages"][0]], "answer": r["messages"][1]["content"]} for r in rows])
    model, tokenizer, _ = models.load(ModelConfig(name="smollm2-135m-instruct"))
    cfg = GRPOConfig(
        output_dir=str(out / "trl"), max_steps=steps, learning_rate=3e-4, lr_scheduler_type="constant",
        warmup_steps=0, per_device_train_batch_size=8, gradient_accumulation_steps=2, num_generations=4,
        max_completion_length=16, temperature=0.8, beta=0.04, loss_type="grpo", logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, seed=seed, bf16=False,
        gradient_checkpointing=False,  # on by default in TRL's GRPOConfig; forgetless does not checkpoint on CPU
    )  # fmt: skip
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(
        model=model, reward_funcs=_reward, args=cfg, train_dataset=data, processing_class=tokenizer, peft_config=lora
    )

    class Clock(TrainerCallback):
        started = 0.0

        def on_train_begin(self, *a, **k):
            Clock.started = time.perf_counter()

    trainer.add_callback(Clock)
    trainer.train()
    seconds = time.perf_counter() - Clock.started
    rewards = [x["reward"] for x in trainer.state.log_history if "reward" in x]
    return {"rewards": rewards, "train_seconds": round(seconds, 2), "steps": trainer.state.global_step}


def chart(result: dict, path: Path) -> None:
    import matplotlib  # plotting only here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for name in ("forgetless", "trl"):
        r = result[name]["rewards"]
        ax.plot(range(1, len(r) + 1), r, marker="o", ms=3, label=f"{name} ({result[name]['steps_per_s']:.3f} steps/s)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean reward of the step's rollouts")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    outputs.save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="runs/trl_grpo")
    ap.add_argument("--docs", default="docs")
    args = ap.parse_args()
    out, docs = Path(args.out), Path(args.docs)
    result = {"machine": machine.describe(), "steps": args.steps, "seed": args.seed}
    result["forgetless"] = ours(args.steps, args.seed, out)
    result["trl"] = trl(args.steps, args.seed, out)
    for name in ("forgetless", "trl"):
        r = result[name]
        r["steps_per_s"] = r["steps"] / r["train_seconds"]
        r["mean_reward_last_5"] = sum(r["rewards"][-5:]) / max(len(r["rewards"][-5:]), 1)
    ratio = result["forgetless"]["steps_per_s"] / result["trl"]["steps_per_s"]
    rows = [
        "| | steps | training s | steps/s | reward, first step | reward, mean of the last 5 |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("forgetless", "trl"):
        r = result[name]
        rows.append(
            f"| {name} | {r['steps']} | {r['train_seconds']:.0f} | {r['steps_per_s']:.3f} | "
            f"{r['rewards'][0]:.3f} | {r['mean_reward_last_5']:.3f} |"
        )
    text = (
        f"Machine: {machine.line(result['machine'])}; seed {args.seed}; `python benchmarks/trl_grpo.py --steps "
        f"{args.steps}` ([raw](trl_grpo.json), [curves](trl_grpo.png)). forgetless/TRL steps per second: "
        f"{ratio:.2f}×.\n\n" + "\n".join(rows)
    )
    outputs.write_json(docs / "trl_grpo.json", result)
    chart(result, docs / "trl_grpo.png")
    outputs.fill_section(docs / "performance.md", MARK, text)
    print(text)


if __name__ == "__main__":
    main()
