"""Training speed and memory: forgetless against TRL's SFTTrainer + PEFT, measured in one run.

Both train the embedded SmolLM2-135M-Instruct with LoRA r=8 (alpha 16, dropout 0.05, all linear
layers), batch 4, max length 256, lr 1e-3, no gradient checkpointing, on the very same token
rows (forgetless renders them; TRL gets the token ids and completion masks), alternating runs,
each in its own process (so that peak memory is the run's own). Two length mixes: `uniform`
(every row 256 tokens) and `longtail` (log-normal lengths, median ~90 tokens, clipped to 24-256,
like instruction data). Cases: LoRA, QLoRA (4-bit NF4), and forgetless's LoRA + LwF + rehearsal
(online teacher; online with the KL on a random quarter of the positions, as the quickstart has it;
online with the KL on the general rows only, a forgetting budget's default; and the cached top-k
teacher). TRL runs in benchmarks/speed_trl.py, the report is benchmarks/speed_report.py. `--before REF`
also runs forgetless at a git ref (a worktree), to measure what a change bought.

Reported per run: median step time, tokens/s (real tokens, padding excluded), peak memory (RSS
on CPU, CUDA max allocated on GPU), the padding share, and model FLOPs utilisation: 4 × parameters
× tokens per second (forward 2, backward through the frozen weights 2) over the fp32 matmul peak
this script measures on the same machine, before and after the runs. The targets are ratios.

Run: make bench   (or python benchmarks/speed.py [--steps 5] [--warmup 1] [--mixes uniform,longtail]
     [--before REF])   -> docs/performance.json and the table in docs/performance.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import machine  # benchmarks/machine.py: the CPU, its vector extensions, the cores
import outputs  # benchmarks/outputs.py: every file written whole
import torch
from speed_report import table, targets, write  # benchmarks/speed_report.py: targets and the table

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "src" / "forgetless" / "configs" / "quickstart-long.yaml"  # the 60-step settings
MAX_LEN, BATCH, LR = 256, 4, 1e-3
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"}
CASES = {  # forgetless overrides of each case (the quickstart config underneath)
    "lora": ["forgetting.preset=none"],
    "qlora": ["forgetting.preset=none", "model.quantization=4bit"],
    "lwf_rehearsal": ["forgetting.preset=full"],
    "lwf_rehearsal_positions25": ["forgetting.preset=full", "forgetting.lwf.positions=0.25"],
    # the KL on the general rows alone (a forgetting budget's default tokens): the teacher runs on those rows only
    "lwf_rehearsal_general_kl": ["forgetting.preset=full", "forgetting.lwf.tokens=[rehearsal]"],
    "lwf_rehearsal_cached": ["forgetting.preset=full", "forgetting.lwf.teacher=cached"],
    # the cached teacher's remaining cost is the head at the KL positions: a quarter of them
    "lwf_rehearsal_cached_positions25": [
        "forgetting.preset=full",
        "forgetting.lwf.teacher=cached",
        "forgetting.lwf.positions=0.25",
    ],
    # the online teacher's forward under bf16 autocast where the CPU multiplies bf16 in hardware (auto: fp32
    # on AVX2-only machines, where this case is lwf_rehearsal again)
    "lwf_rehearsal_bf16": ["forgetting.preset=full", "forgetting.lwf.teacher_precision=auto"],
    "lwf_rehearsal_positions25_bf16": [
        "forgetting.preset=full",
        "forgetting.lwf.positions=0.25",
        "forgetting.lwf.teacher_precision=auto",
    ],
    "lora_padded": ["forgetting.preset=none", "data.packing=false"],
}


# ---------------------------------------------------------------- the machine's matmul peak
def matmul_peak(seconds: float = 3.0) -> float:
    """Best fp32 GFLOP/s of square matmuls (1024-2048) on this machine's torch threads."""
    best = 0.0
    for n in (1024, 1536, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


# ---------------------------------------------------------------- data: two length mixes
def lengths(mix: str, n: int, seed: int = 0) -> list[int]:
    if mix == "uniform":
        return [MAX_LEN] * n
    rng = random.Random(seed)
    return [min(MAX_LEN, max(24, round(rng.lognormvariate(math.log(90), 0.6)))) for _ in range(n)]


def write_rows(mix: str, path: Path, n: int) -> None:
    """Instruction rows whose rendered length follows the mix: text windows of real tokens (the
    bundled general answers and quickstart rows), two thirds prompt and one third answer; rows
    rendered longer than 256 tokens are truncated by forgetless (data.max_length)."""
    from forgetless.model import loader as models

    tok = models.load_tokenizer(models.resolve("smollm2-135m-instruct"))
    assets = ROOT / "src/forgetless/assets"
    text = " ".join(
        v
        for f in sorted(assets.glob("*/*.jsonl"))
        for line in f.read_text(encoding="utf-8").splitlines()
        for v in json.loads(line).values()
        if isinstance(v, str)
    )
    stream = tok(text, add_special_tokens=False)["input_ids"]
    overhead = len(tok.apply_chat_template([{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]))
    at, rows = 0, []
    for target in lengths(mix, n):
        body = max(8, target - overhead + (64 if mix == "uniform" else 0))  # uniform: overshoot, then truncate
        p = body * 2 // 3
        if at + body > len(stream):
            at = 0
        rows.append({"instruction": tok.decode(stream[at : at + p]), "output": tok.decode(stream[at + p : at + body])})
        at += body
    outputs.write_jsonl(path, rows)


def rendered(data_file: Path) -> list[dict]:
    """The token rows forgetless trains on (same seed and split): what TRL gets too."""
    from forgetless import api
    from forgetless.data.build import build
    from forgetless.model import loader as models

    cfg = api.load_config(QUICKSTART, data_overrides(data_file))
    tok = models.load_tokenizer(models.resolve(cfg.model.name))
    return build(cfg.data, tok, cfg.train.seed).train


def data_overrides(data_file: Path) -> list[str]:
    return [f"data.train={data_file}", "data.validation=[]", "data.validation_split=0", f"data.max_length={MAX_LEN}"]


# ---------------------------------------------------------------- one forgetless run (the CLI)
def run_forgetless(
    case: str, data_file: Path | None, out: Path, steps: int, src: Path | None = None, extra: tuple[str, ...] = ()
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "forgetless",
        "train",
        str(QUICKSTART),  # a path: forgetless at an older --before ref knows no recipe names
        *(data_overrides(data_file) if data_file else []),  # None: the quickstart's own rows
    ]
    cmd += [f"train.max_steps={steps}", f"train.batch_size={BATCH}", "train.grad_accum=1", f"train.lr={LR}"]
    cmd += ["train.save_every=100000", "train.eval_every=100000", "train.grad_checkpointing=false"]
    cmd += ["eval.before_after=false", "eval.retention=false", "eval.benchmarks=[]", "eval.report=false"]
    cmd += [*CASES[case], *extra, f"output_dir={out}", "--overwrite"]
    env = os.environ | ({"PYTHONPATH": str(src)} if src else {})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"forgetless {case} failed:\n{proc.stderr[-3000:]}")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    lines = [x for x in lines if "tokens_per_s" in x]
    elapsed = [x["tokens"] / x["tokens_per_s"] for x in lines]
    step_s = [b - a for a, b in zip([0.0, *elapsed], elapsed, strict=False)]
    tokens = [b - a for a, b in zip([0, *[x["tokens"] for x in lines]], [x["tokens"] for x in lines], strict=False)]
    summary = json.loads((out / "summary.json").read_text())
    return {
        "step_s": step_s,
        "tokens": tokens,
        "peak_gb": summary["peak_memory_gb"],
        "padding_share": summary.get("padding_share"),
    }


def run_trl(case: str, rows_file: Path, out: Path, steps: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    settings = {"batch": BATCH, "max_length": MAX_LEN, "lr": LR, "lora": LORA}
    worker = Path(__file__).with_name("speed_trl.py")
    cmd = [sys.executable, str(worker), str(rows_file), case, str(steps), str(out), json.dumps(settings)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"TRL {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "trl.json").read_text())


# ---------------------------------------------------------------- numbers
def spread(values: list[float], digits: int) -> list[float]:
    return [round(min(values), digits), round(statistics.median(values), digits), round(max(values), digits)]


def measured(r: dict, warmup: int, params: int, peak_gflops: float) -> dict:
    """One statistic for both numbers: the median over the steps after the warm-up, of the step time
    and of each step's own tokens/s (a mean of tokens over time would let one disturbed step pull
    the two apart); min/median/max beside them show how steady the machine was."""
    step_s, tokens = r["step_s"][warmup:], r["tokens"][warmup : len(r["step_s"])]
    per_step = [t / s for t, s in zip(tokens, step_s, strict=True)]
    tps = statistics.median(per_step)
    return {
        "step_s": round(statistics.median(step_s), 3),
        "step_s_spread": spread(step_s, 3),
        "tokens_per_s": round(tps, 1),
        "tokens_per_s_spread": spread(per_step, 1),
        "tokens_per_step": round(sum(tokens) / len(tokens), 1),
        "peak_gb": r["peak_gb"],
        "padding_share": r.get("padding_share"),
        "mfu": round(4 * params * tps / (peak_gflops * 1e9), 3),
        "steps_measured": len(step_s),
    }


def planner_estimate(case: str, mix_rows: int) -> float:
    """The planner's peak estimate (GB) for the run's settings on this CPU."""
    from forgetless.plan import memory, shapes

    shape, _ = shapes.resolve_shape("smollm2-135m-instruct")
    lwf = case.startswith("lwf")
    setup = memory.Setup(
        method="qlora" if case == "qlora" else "lora",
        dtype_bytes=4,
        batch_size=mix_rows,
        seq_len=MAX_LEN,
        lwf=lwf,
        device="cpu",
    )
    return memory.estimate(shape, setup)["total"]


def busy_share(seconds: float = 1.0) -> float:
    """Share of the CPU time other processes used over `seconds` (called while none of ours runs)."""

    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    (t0, i0), _, (t1, i1) = sample(), time.sleep(seconds), sample()
    return 1 - (i1 - i0) / max(t1 - t0, 1)


def run_mix(mix: str, args, work: Path, before_src: Path | None, params: int, peak: float, warnings: list) -> dict:
    """Every planned run on one length mix, on the same rows (forgetless renders them, TRL gets the
    token ids); a run started while other work used the cores adds a warning."""
    total = args.warmup + args.steps
    data_file, rows_file = work / f"{mix}.jsonl", work / f"{mix}.tokens.jsonl"
    write_rows(mix, data_file, n=BATCH * total * 2)
    token_rows = rendered(data_file)
    rows = [{"input_ids": r["input_ids"], "completion_mask": [int(x != -100) for x in r["labels"]]} for r in token_rows]
    outputs.write_jsonl(rows_file, rows)
    lens = sorted(len(r["input_ids"]) for r in token_rows)
    plan = []
    for case in args.cases.split(","):
        plan.append(("forgetless", case, None))
        if case in args.trl.split(","):
            plan.append(("trl", case, None))
        if before_src is not None and case in ("lora", "lwf_rehearsal"):
            plan.append(("before", case, before_src))
    runs: dict = {}
    for tool, case, src in plan:
        name = f"{tool}:{case}"
        busy = busy_share()
        if busy > 0.25:  # another job shares the cores: this run's numbers are not comparable
            warnings.append(f"{mix} {name}: the CPU was {busy:.0%} busy with other work before the run")
        print(f"[speed] {mix} {name} ...", flush=True)
        out = work / mix / tool / case
        raw = (
            run_trl(case, rows_file, out, total) if tool == "trl" else run_forgetless(case, data_file, out, total, src)
        )
        runs[name] = measured(raw, args.warmup, params, peak)
        if tool == "forgetless":
            rows_per_batch = BATCH + (1 if case.startswith("lwf") else 0)  # quickstart: 1 rehearsal row
            runs[name]["planner_gb"] = planner_estimate(case, rows_per_batch)
        print(f"[speed] {mix} {name}: {json.dumps(runs[name])}", flush=True)
    return {
        "rows": len(lens),
        "length_p50": lens[len(lens) // 2],
        "length_p90": lens[int(0.9 * len(lens))],
        "length_max": lens[-1],
        "runs": runs,
    }


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="measured optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=1, help="steps not measured at the start of each run")
    ap.add_argument("--mixes", default="uniform,longtail")
    ap.add_argument(
        "--cases",
        default="lora,qlora,lwf_rehearsal,lwf_rehearsal_positions25,lwf_rehearsal_general_kl,lwf_rehearsal_cached,"
        "lwf_rehearsal_cached_positions25,lwf_rehearsal_bf16,lwf_rehearsal_positions25_bf16,lora_padded",
    )
    ap.add_argument("--trl", default="lora,qlora", help="cases also run through TRL SFTTrainer + PEFT")
    ap.add_argument("--before", default=None, help="a git ref: also run forgetless's lora and lwf cases there")
    ap.add_argument("--out", default="docs/performance.md")
    args = ap.parse_args(argv)
    from forgetless.plan import shapes

    params = shapes.resolve_shape("smollm2-135m-instruct")[0].params()  # = the loaded model's count (tested)
    peak = [matmul_peak()]
    work = Path(tempfile.mkdtemp(prefix="forgetless-speed-"))
    before_src = checkout(args.before, work) if args.before else None
    results: dict = {"mixes": {}}
    warnings: list[str] = []
    for mix in args.mixes.split(","):
        results["mixes"][mix] = run_mix(mix, args, work, before_src, params, peak[0], warnings)
    peak.append(matmul_peak())
    if abs(peak[1] - peak[0]) > 0.15 * max(peak):
        warnings.append(f"the matmul peak moved from {peak[0]:.0f} to {peak[1]:.0f} GFLOP/s during the runs")
    for w in warnings:
        print(f"[speed] WARNING: {w}", flush=True)
    results |= {
        "warnings": warnings,
        "matmul_peak_gflops": round(max(peak), 1),
        "matmul_peak_gflops_runs": [round(p, 1) for p in peak],
        "model_parameters": params,
        "settings": {"batch": BATCH, "max_length": MAX_LEN, "lr": LR, "lora": LORA, "steps": args.steps},
        "warmup": args.warmup,
        "before": args.before,
        "machine": machine.describe(),
        "targets": targets(results["mixes"], max(peak)),
    }
    outputs.write_json(Path(args.out).with_suffix(".json"), results)
    text = table(results)
    print(text)
    write(Path(args.out), text)


def checkout(ref: str, work: Path) -> Path:
    """A worktree of `ref`; its src/ goes first on PYTHONPATH for the `before` runs."""
    tree = work / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), ref], check=True, cwd=ROOT, capture_output=True)
    return tree / "src"


if __name__ == "__main__":
    main(sys.argv[1:])
