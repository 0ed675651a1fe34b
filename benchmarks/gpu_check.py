"""The GPU check: one command, unattended, nothing downloaded, about 8 minutes on one GPU.

1. The CUDA tests (tests/training/test_gpu.py runs them where a GPU is present).
2. The embedded model with everything a GPU user turns on: bf16, 4-bit QLoRA, paged 8-bit AdamW,
   gradient checkpointing, packing, SDPA (and FlashAttention-2 when flash-attn is installed).
3. Speed and memory against TRL's SFTTrainer + PEFT + SDPA at matched settings (LoRA r=8 on every
   linear layer, bf16, batch 4 × 512 tokens, paged 8-bit AdamW, gradient checkpointing) on
   random-weight models of real shapes: Llama-3.2-1B and Qwen2.5-1.5B (plan/shapes.py), with the
   embedded model's tokenizer (token ids stay below every vocabulary) so that nothing is fetched.
   Cases: LoRA and QLoRA, forgetless with and without LwF (TRL has no LwF), each in its own process
   so that the CUDA peak is the run's own; the planner's estimate beside each measured peak.

Writes docs/gpu_check.json and docs/gpu_check.md. `--smoke` runs the same code on CPU with a tiny
shape and 2 steps (tests/test_gpu_check.py), so the script is known to work before a GPU runs it.

Run: python benchmarks/gpu_check.py [--steps 20] [--smoke]   (needs: pip install -e ".[dev,bench]")
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import outputs  # benchmarks/outputs.py: every file written whole
import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"llama-3.2-1b": "LlamaConfig", "qwen2.5-1.5b": "Qwen2Config"}
BATCH, SEQ, LR = 4, 512, 2e-4
SMOKE_SEQ = 128  # --smoke: short rows, the same code paths
SMOKE_DEVICE = "cpu (smoke)"
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"}
CASES = {  # name -> (quantized, forgetless LwF)
    "lora": (False, False),
    "qlora": (True, False),
    "lora+lwf": (False, True),
    "qlora+lwf": (True, True),
}


def sh(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def cuda_tests(smoke: bool) -> dict:
    if smoke:
        return {"skipped": "smoke run"}
    proc = sh([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/training/test_gpu.py"], 300)
    return {"exit": proc.returncode, "summary": (proc.stdout.strip().splitlines() or [""])[-1]}


def random_model(name: str, out: Path, smoke: bool) -> Path:
    """A random-weight model of the shape's sizes, saved in bf16 with the embedded tokenizer."""
    import transformers

    from forgetless.model import loader as models
    from forgetless.plan import shapes

    s = shapes.KNOWN[name].shape
    sizes = dict(hidden_size=s.hidden, intermediate_size=s.intermediate, num_hidden_layers=s.layers)
    if smoke:
        sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
    tok = models.load_tokenizer(models.resolve("smollm2-135m-instruct"))
    config = getattr(transformers, SHAPES[name])(
        vocab_size=s.vocab,
        num_attention_heads=s.heads if not smoke else 4,
        num_key_value_heads=s.kv_heads if not smoke else 2,
        tie_word_embeddings=s.tied,
        max_position_embeddings=4096,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        **sizes,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def rows_file(out: Path, n: int, seq: int) -> Path:
    """Instruction rows of about `seq` tokens, answer included: the same file for forgetless and TRL."""
    words = "the parcel with order number arrived late and the customer asks for a refund today".split()
    rows = []
    for i in range(n):
        body = " ".join(words[(i + j) % len(words)] for j in range(seq * 3 // 5))
        rows.append({"instruction": f"Summarise ticket {i}.", "input": body, "output": " ".join(words[: seq // 16])})
    return outputs.write_jsonl(out, rows)


def forgetless_run(model: Path, data: Path, case: str, steps: int, out: Path, smoke: bool, *extra: str) -> dict:
    quantized, lwf = CASES[case]
    cmd = [sys.executable, "-m", "forgetless", "train", f"model.name={model}", f"data.train={data}"]
    seq = SMOKE_SEQ if smoke else SEQ
    # no held-out rows: a validation pass after the last step measures nothing here
    cmd += ["data.validation=[]", "data.validation_split=0", f"data.max_length={seq}", "data.packing=true"]
    cmd += [f"output_dir={out}"]
    cmd += [f"train.max_steps={steps}", f"train.batch_size={BATCH}", "train.grad_accum=1", f"train.lr={LR}"]
    cmd += ["train.save_every=100000", "train.eval_every=100000", "eval.before_after=false", "eval.retention=false"]
    cmd += ["eval.report=false", "peft.r=8", "peft.alpha=16", "peft.dropout=0.05", "--overwrite"]
    cmd += ["forgetting.preset=lwf" if lwf else "forgetting.preset=none", "forgetting.lwf.teacher=online"]
    if not smoke:
        cmd += ["model.precision=bf16", "train.optimizer=paged_adamw_8bit", "train.grad_checkpointing=true"]
    cmd += [*(["model.quantization=4bit"] if quantized else []), *extra]
    proc = sh(cmd, 900)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    lines = [x for x in lines if "tokens_per_s" in x]
    summary = json.loads((out / "summary.json").read_text())
    elapsed = [x["tokens"] / x["tokens_per_s"] for x in lines]  # the log's tokens/s is cumulative
    first = 1 if len(lines) > 1 else 0  # the first step (allocator and kernel warm-up) left out
    tokens_per_s = (lines[-1]["tokens"] - (lines[0]["tokens"] if first else 0)) / (elapsed[-1] - elapsed[0] * first)
    return {
        "tokens_per_s": round(tokens_per_s, 1),
        "peak_gb": summary.get("peak_memory_gb"),
        "loss_first_last": [round(lines[0]["loss"], 3), round(lines[-1]["loss"], 3)],
    }


def trl_model(model: str, quantized: bool, gpu: bool):
    """The model TRL trains: bf16 on a GPU (fp32 on CPU), NF4 with double quantization for QLoRA."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict = {"dtype": torch.bfloat16 if gpu else torch.float32, "attn_implementation": "sdpa"}
    if quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
        )
        kwargs["device_map"] = {"": 0} if gpu else "cpu"
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(model, **kwargs)


def trl_config(out: str, steps: int, smoke: bool, gpu: bool):
    """TRL's settings for the same run as forgetless's: batch, steps, learning rate, packed rows."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(Path(out) / "trl"),
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        learning_rate=LR,
        max_length=SMOKE_SEQ if smoke else SEQ,
        packing=True,
        bf16=gpu,
        use_cpu=not gpu,
        optim="paged_adamw_8bit" if gpu else "adamw_torch",
        gradient_checkpointing=gpu,
        include_num_input_tokens_seen=True,
        save_strategy="no",
        report_to=[],
        logging_steps=1,
        disable_tqdm=True,
    )


def trl_worker(model: str, data: str, case: str, steps: int, out: str, smoke: bool) -> None:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTTrainer

    gpu = torch.cuda.is_available()
    net = trl_model(model, CASES[case][0], gpu)
    rows = [json.loads(x) for x in Path(data).read_text().splitlines()]
    chats = [
        {"prompt": [{"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"}],
         "completion": [{"role": "assistant", "content": r["output"]}]}
        for r in rows
    ]  # fmt: skip
    args = trl_config(out, steps, smoke, gpu)
    trainer = SFTTrainer(model=net, args=args, train_dataset=Dataset.from_list(chats), peft_config=LoraConfig(**LORA))
    marks: list[tuple[float, int]] = []  # (time, tokens seen) at each step's end, as forgetless logs them

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if gpu:
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), state.num_input_tokens_seen))

    trainer.add_callback(Clock())
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    losses = [x["loss"] for x in trainer.state.log_history if "loss" in x]
    (t0, n0), (t1, n1) = marks[0], marks[-1]  # the first step (warm-up) left out, as for forgetless
    result = {
        "tokens_per_s": round((n1 - n0) / (t1 - t0), 1),
        "peak_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3) if gpu else None,
        "loss_first_last": [round(losses[0], 3), round(losses[-1], 3)] if losses else None,
    }
    outputs.write_json(Path(out) / "trl.json", result)


def trl_run(model: Path, data: Path, case: str, steps: int, out: Path, smoke: bool) -> dict:
    if importlib.util.find_spec("trl") is None:
        return {"error": "TRL is not installed (pip install -e '.[bench]')"}
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--worker", case, "--model", str(model), "--data", str(data)]
    cmd += ["--steps", str(steps), "--out", str(out)] + (["--smoke"] if smoke else [])
    proc = sh(cmd, 900)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads((out / "trl.json").read_text())


def planned_gb(name: str, case: str, smoke: bool) -> float | None:
    from forgetless.plan import memory, shapes

    if smoke:
        return None
    quantized, lwf = CASES[case]
    setup = memory.Setup("qlora" if quantized else "lora", 2, "paged_adamw_8bit", BATCH, SEQ, True, lwf=lwf)
    return memory.estimate(shapes.KNOWN[name].shape, setup)["total"]


def embedded_run(data: Path, steps: int, work: Path, smoke: bool) -> dict:
    """The embedded model with every GPU option on (FlashAttention-2 when installed)."""
    attention = "flash_attention_2" if importlib.util.find_spec("flash_attn") and not smoke else "sdpa"
    from forgetless.model import loader as models

    model = Path(models.resolve("smollm2-135m-instruct"))
    result = forgetless_run(model, data, "qlora+lwf", steps, work / "embedded", smoke, f"model.attention={attention}")
    return {"attention": attention, **result}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, 2 steps: checks the script itself")
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--worker")
    ap.add_argument("--model")
    ap.add_argument("--data")
    args = ap.parse_args(argv)
    if args.worker:
        trl_worker(args.model, args.data, args.worker, args.steps, args.out, args.smoke)
        return 0
    if not torch.cuda.is_available() and not args.smoke:
        print("gpu_check: no CUDA GPU here; run it on a GPU machine (or --smoke to check the script on CPU)")
        return 2
    steps = 2 if args.smoke else args.steps
    started = time.time()
    res: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else SMOKE_DEVICE}
    res["cuda_tests"] = cuda_tests(args.smoke)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = rows_file(work / "rows.jsonl", 8 if args.smoke else BATCH * args.steps, SMOKE_SEQ if args.smoke else SEQ)
        res["embedded"] = embedded_run(data, steps, work, args.smoke)
        res["models"] = []
        # the smoke run: one shape, one case with TRL and one with LwF (every code path, in minutes)
        for name in list(SHAPES)[:1] if args.smoke else SHAPES:
            model = random_model(name, work / name, args.smoke)
            for case in ["lora", "qlora+lwf"] if args.smoke else CASES:
                row = {"model": name, "case": case, "planned_gb": planned_gb(name, case, args.smoke)}
                row["forgetless"] = forgetless_run(model, data, case, steps, work / f"{name}-{case}", args.smoke)
                if not CASES[case][1]:  # TRL has no LwF
                    row["trl"] = trl_run(model, data, case, steps, work / f"{name}-{case}-trl", args.smoke)
                res["models"].append(row)
                print(json.dumps(row))
    res["seconds"] = round(time.time() - started)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "gpu_check_smoke" if args.smoke else "gpu_check"
    outputs.write_json(out / f"{stem}.json", res)
    outputs.write_text(out / f"{stem}.md", table(res))
    print(table(res))
    return 0


def _cell(r: dict | None, key: str) -> str:
    if not r:
        return "-"
    return f"error: {r['error']}" if "error" in r else str(r.get(key))


def table(res: dict) -> str:
    lines = [
        f"# GPU check on {res['device']} ({res['seconds']} s; `python benchmarks/gpu_check.py`)",
        "",
        *(
            ["Smoke run: CPU, tiny shapes, 2 steps. It checks the script; its numbers measure nothing.", ""]
            if res["device"] == SMOKE_DEVICE
            else []
        ),
        f"CUDA tests: {res['cuda_tests']}",
        "",
        f"Embedded model, QLoRA + LwF, bf16, paged 8-bit AdamW, checkpointing, packing: {res['embedded']}",
        "",
        "| model | case | forgetless tokens/s | TRL tokens/s | forgetless peak GB | TRL peak GB | planned GB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["models"]:
        f, t = r["forgetless"], r.get("trl")
        lines.append(
            f"| {r['model']} | {r['case']} | {_cell(f, 'tokens_per_s')} | {_cell(t, 'tokens_per_s')} | "
            f"{_cell(f, 'peak_gb')} | {_cell(t, 'peak_gb')} | {r['planned_gb']} |"
        )
    ratios = [
        r["forgetless"]["tokens_per_s"] / r["trl"]["tokens_per_s"]
        for r in res["models"]
        if r.get("trl") and "tokens_per_s" in r["trl"] and "tokens_per_s" in r["forgetless"]
    ]
    if ratios:
        lines += ["", f"forgetless / TRL tokens/s, median over the matched cases: {statistics.median(ratios):.2f}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
