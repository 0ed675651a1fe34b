"""Where an LwF + rehearsal step's time goes, against a plain LoRA step: `train.profile_steps` per case.

Same rows, model and settings as benchmarks/speed.py (the embedded SmolLM2-135M-Instruct, LoRA r 8,
batch 4, max length 256; the `uniform` and `longtail` mixes) and the quickstart itself (`quickstart`: its
own rows, 4 short tickets plus one rehearsal row a step). Each case trains 1 + N steps, the N
after the first under torch.profiler (`train.profile_steps=N`), and the table gives each labelled
region's milliseconds per step (training/profile.py: forward, ce, teacher_forward, kl, backward,
optimizer; `loss` holds the first four). Profiling adds its own overhead to every operator, so
compare the cases with each other, not with speed.py's step times.

Cases: lora (forgetting.preset=none), lwf_rehearsal (preset full: online teacher), lwf_pos25 (the same
with the KL on a random 25% of its positions, forgetting.lwf.positions=0.25), lwf_rehearsal_cached
(the cached top-k teacher: no teacher forward).

Run: python benchmarks/step_profile.py [--steps 3] [--mixes uniform,longtail,quickstart]  -> docs/step_profile.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import outputs  # benchmarks/outputs.py: every file written whole
import speed  # benchmarks/speed.py: the rows and the forgetless run

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "lora": ("lora", ()),
    "lwf_rehearsal": ("lwf_rehearsal", ()),
    "lwf_pos25": ("lwf_rehearsal", ("forgetting.lwf.positions=0.25",)),
    "lwf_rehearsal_cached": ("lwf_rehearsal_cached", ()),
}
REGIONS = ("step", "loss", "forward", "ce", "teacher_forward", "kl", "backward", "optimizer")


def profile_case(case: str, data_file: Path | None, out: Path, steps: int) -> dict:
    base, extra = CASES[case]
    run = speed.run_forgetless(base, data_file, out, 1 + steps, extra=(*extra, f"train.profile_steps={steps}"))
    found = json.loads((out / "profile" / "regions.json").read_text())
    return {"ms": found["ms_per_step"], "tokens": sum(run["tokens"][1:]) / steps}


def table(mix: str, results: dict[str, dict]) -> list[str]:
    names = list(results)
    lines = [
        f"### {mix}",
        "",
        "| region (ms / step) | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for region in REGIONS:
        cells = [f"{results[n]['ms'].get(region, 0.0):.0f}" for n in names]
        lines.append(f"| {region} | " + " | ".join(cells) + " |")
    lines.append("| tokens / step | " + " | ".join(f"{results[n]['tokens']:.0f}" for n in names) + " |")
    lora = results.get("lora")
    if lora:
        ratio = [f"{results[n]['ms']['step'] / lora['ms']['step']:.2f}" for n in names]
        lines.append("| step / LoRA step | " + " | ".join(ratio) + " |")
        # What the arithmetic allows: LoRA's step scaled to the case's tokens (its rehearsal rows), plus
        # the teacher's forward over them; everything above that is the KL term and the rest.
        floor = [
            (lora["ms"]["step"] * results[n]["tokens"] / lora["tokens"] + results[n]["ms"].get("teacher_forward", 0.0))
            / lora["ms"]["step"]
            for n in names
        ]
        lines.append("| floor: LoRA × tokens + teacher / LoRA step | " + " | ".join(f"{f:.2f}" for f in floor) + " |")
    return [*lines, ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--mixes", default="uniform,longtail,quickstart")
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    results: dict[str, dict[str, dict]] = {}
    lines = [f"{platform.processor() or platform.machine()}, {args.steps} profiled steps after 1 warm-up step", ""]
    with tempfile.TemporaryDirectory() as tmp:
        for mix in args.mixes.split(","):
            data_file = None if mix == "quickstart" else Path(tmp) / f"{mix}.jsonl"
            if data_file:
                speed.write_rows(mix, data_file, n=4 * (1 + args.steps) + 8)
            cases = args.cases.split(",")
            results[mix] = {c: profile_case(c, data_file, Path(tmp) / mix / c, args.steps) for c in cases}
            lines += table(mix, results[mix])
    print("\n".join(lines))
    outputs.write_json(ROOT / "docs" / "step_profile.json", results, indent=1)


if __name__ == "__main__":
    main()
