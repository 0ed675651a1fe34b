"""DPO, the reward model and RLHF on the bundled keigo preference set, with the embedded model.

Runs `forgetless train` on configs/dpo.yaml, configs/reward.yaml and configs/rlhf.yaml (the
last needs the second), each in its own process; a finished run with the same settings is
reused. Writes the results between the <!-- preference-table --> markers of docs/preference.md
and all numbers to docs/preference.json.
Run: python benchmarks/preference.py [--out docs/preference.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import outputs  # benchmarks/outputs.py: every file written whole

from forgetless import api
from forgetless.recipes import compare

CONFIGS = ["dpo", "reward", "rlhf"]
MARK = "<!-- preference-table -->"


def train(path: str) -> dict:
    cfg = api.load_config(path)
    out = Path(cfg.output_dir)
    if (out / "summary.json").is_file() and compare.same_run(out, cfg):
        print(f"[preference] reusing {out}")
    else:
        print(f"[preference] forgetless train {path}", flush=True)
        subprocess.run([sys.executable, "-m", "forgetless", "train", path, "--overwrite"], check=True)
    return json.loads((out / "summary.json").read_text(encoding="utf-8")) | {
        "eval": json.loads((out / "eval.json").read_text(encoding="utf-8"))
    }


def _pair(ev: dict, key: str, spec: str = ".3f") -> str:
    p = ev["task"].get(key) or {}
    if p.get("base") is None:
        return "–"
    return f"{p['base']:{spec}} → {p['finetuned']:{spec}}"


def _mc(ev: dict) -> str:
    bench = next(iter((ev.get("retention", {}).get("benchmarks") or {}).values()), None)
    return f"{bench['acc']['base']:.3f} → {bench['acc']['finetuned']:.3f}" if bench else "–"


def table(runs: dict[str, dict]) -> str:
    d, w, r = runs["dpo"], runs["reward"], runs["rlhf"]
    de, we, re_ = d["eval"], w["eval"], r["eval"]
    kl = lambda s: f"{s['retention']['kl_per_token']:.4f}" if s.get("retention") else "–"  # noqa: E731
    lines = [
        "| run | held-out result, base → trained | other | KL to base on general prompts | multiple choice | train s |",
        "|---|---|---|---|---|---|",
        f"| DPO (`configs/dpo.yaml`) | reward accuracy {_pair(de, 'reward_accuracy')} | polite answers "
        f"{_pair(de, 'behaviour_rate', '.2f')}; chosen likelier {_pair(de, 'likelier_chosen', '.2f')}; margin "
        f"{_pair(de, 'margin')} | {kl(d)} | {_mc(de)} | {d['train_seconds']:.0f} |",
        f"| reward model (`configs/reward.yaml`) | pairwise accuracy {_pair(we, 'accuracy')} | margin "
        f"{_pair(we, 'margin')} | – | – | {w['train_seconds']:.0f} |",
        f"| RLHF (`configs/rlhf.yaml`) | mean reward {_pair(re_, 'mean_reward')} | KL to reference on its own "
        f"answers {r['task_after'].get('kl_to_reference', 0):.4f} per token | {kl(r)} | {_mc(re_)} "
        f"| {r['train_seconds']:.0f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/preference.md")
    args = ap.parse_args(argv)
    runs = {Path(c).stem: train(c) for c in CONFIGS}
    text = table(runs)
    print(text)
    rollouts = runs["rlhf"].get("rollouts", [])
    outputs.write_json(Path(args.out).with_suffix(".json"), runs)
    per_rollout = ", ".join(f"{x['score']:+.2f}/{x['kl']:.2f}" for x in rollouts)
    body = f"{text}\n\nRLHF rollouts (mean reward / summed KL per answer, in order): {per_rollout}\n"
    outputs.fill_section(args.out, MARK, body)


if __name__ == "__main__":
    main(sys.argv[1:])
