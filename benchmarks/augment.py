"""Does augmentation help here? A small training set, the same set plus augmented variants, and three
times as many real rows, trained with the same steps; task score and retention of each.

English: the quickstart's help-desk triage (the first 100 training rows; 300 real rows), held-out
test.jsonl. Japanese: the keigo pairs used as SFT (prompt -> polite answer; the first 44 rows; all
134 real rows), held-out keigo/test.jsonl. Augmented sets: `forgetless data augment` with synonyms
(WordNet / Sudachi, n=2) and, for English, paraphrase by the embedded model (n=2; its Japanese is
too weak to paraphrase or translate, which data augment's filters show by rejecting nearly all).

    python benchmarks/augment.py --steps 30 --out docs/augment.json

Every run: embedded SmolLM2-135M-Instruct, LoRA r=8, lr 1e-3, batch 4, forgetting.preset=none
(the question is the data, not the forgetting controls), the same seed and steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import outputs  # benchmarks/outputs.py: every file written whole

from forgetless import api
from forgetless.data import augment
from forgetless.data.formats import builtin_path
from forgetless.reference import paraphrase

TASKS = {
    "en": {"train": "quickstart/train.jsonl", "test": "quickstart/test.jsonl", "small": 100, "large": 300},
    "ja": {"train": "keigo/train.jsonl", "test": "keigo/test.jsonl", "small": 44, "large": 134},
}
METHODS = {"en": ["synonyms", "paraphrase"], "ja": ["synonyms"]}


def _rows(ref: str) -> list[dict]:
    rows = [json.loads(x) for x in builtin_path(ref).read_text(encoding="utf-8").splitlines() if x.strip()]
    # keigo is preference data: its polite answer is the SFT target
    return [{"input": r["prompt"], "output": r["chosen"]} if "chosen" in r else r for r in rows]


def _write(path: Path, rows: list[dict]) -> str:
    outputs.write_jsonl(path, rows)
    return str(path)


def train(name: str, train_file: str, test_file: str, steps: int, root: Path) -> dict:
    overrides = [
        f"data.train={train_file}",
        f"data.validation={test_file}",
        f"train.max_steps={steps}",
        f"train.eval_every={steps}",
        f"train.save_every={steps}",
        "forgetting.preset=none",
        "eval.samples=0",
        f"output_dir={root / name}",
    ]
    t0 = time.time()
    summary = api.train("quickstart-long", overrides, overwrite=True)
    ev = json.loads((root / name / "eval.json").read_text(encoding="utf-8"))
    task, prompts = ev["task"], ev["retention"]["prompts"]
    return {
        "run": name,
        "train_rows": summary["train_rows"],
        "exact_match": task["exact_match"]["finetuned"],
        "exact_match_base": task["exact_match"]["base"],
        "chrf": task["chrf"]["finetuned"],
        "chrf_base": task["chrf"]["base"],
        "kl_to_base": prompts["kl_per_token"],
        "agreement": prompts["agreement"],
        "seconds": round(time.time() - t0, 1),
    }


def cpu() -> str:
    """The CPU model and whether it has AVX-512 (machines of one kind differ about 2x in speed)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((x.split(":", 1)[1].strip() for x in info.splitlines() if x.startswith("model name")), "")
    avx = "AVX-512" if "avx512" in info else "AVX2, no AVX-512" if "avx2" in info else "no AVX2"
    return f"{name or platform.processor()}, {os.cpu_count()} cores, {avx}"


def table(result: dict) -> str:
    """The markdown table docs/data.md shows."""
    lines = [
        "| task | training rows | train rows used | exact match (base → tuned) | chrF (base → tuned) "
        "| KL to base / token | unchanged answers | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lang in ("en", "ja"):
        for r in result.get(lang, {}).get("runs", []):
            lines.append(
                f"| {lang} | {r['run']} | {r['train_rows']} | {r['exact_match_base']:.3f} → {r['exact_match']:.3f} "
                f"| {r['chrf_base']:.1f} → {r['chrf']:.1f} | {r['kl_to_base']:.4f} | {r['agreement']:.3f} "
                f"| {r['seconds']:.0f} |"
            )
    lines += ["", "| task | method | rows | candidates | written | rejected |", "|---|---|---|---|---|---|"]
    for lang in ("en", "ja"):
        for method, a in result.get(lang, {}).get("augmentation", {}).items():
            rejected = ", ".join(f"{k} {v}" for k, v in a["rejected"].items()) or "none"
            lines.append(f"| {lang} | {method} | {a['rows']} | {a['candidates']} | {a['written']} | {rejected} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--render", action="store_true", help="only print the table of an earlier --out file")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--languages", nargs="+", default=["en", "ja"])
    ap.add_argument("--root", default="runs/bench-augment")
    ap.add_argument("--out", default="docs/augment.json")
    args = ap.parse_args()
    if args.render:
        print(table(json.loads(Path(args.out).read_text(encoding="utf-8"))))
        return
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    result = {"command": f"python benchmarks/augment.py --steps {args.steps}", "cpu": cpu()}
    for lang in args.languages:
        t = TASKS[lang]
        rows = _rows(t["train"])
        test = _write(root / f"{lang}-test.jsonl", _rows(t["test"]))
        small = _write(root / f"{lang}-small.jsonl", rows[: t["small"]])
        runs = [train(f"{lang}-small", small, test, args.steps, root)]
        augmented = {}
        for method in METHODS[lang]:
            out = root / f"{lang}-small-{method}.jsonl"
            stats = paraphrase.augment_file(small, out, augment.Settings(method, n=2, seed=0))
            augmented[method] = {k: stats[k] for k in ("rows", "candidates", "written", "rejected")}
            runs.append(train(f"{lang}-small+{method}", str(out), test, args.steps, root))
        large = _write(root / f"{lang}-large.jsonl", rows[: t["large"]])
        runs.append(train(f"{lang}-real-x3", large, test, args.steps, root))
        result[lang] = {"runs": runs, "augmentation": augmented}
        outputs.write_json(args.out, result)
    print(table(result))


if __name__ == "__main__":
    main()
