"""GGUF export of a trained run, checked in llama.cpp: file size per quantization type and how often
llama.cpp's greedy answers to the quickstart's held-out tickets agree with transformers' answers from
the merged model (the same prompt token ids on both sides).

Per type: the file's size, the share of tickets whose first 32 new tokens are identical (at least 30
equal in a row from the start counts, as the export issue asks for f16), the share whose first line
(the triage line) is identical, and llama.cpp's exact match against the reference answers beside
transformers'. Needs llama-cpp-python (pip install -e '.[gguf]') and a trained run.

Which tensors cost q8_0 its agreement: `--quant q8_0:f16=embed,attn` (forgetless export's own) keeps
those groups of tensors at f16 (embed: the embedding, which is also the output head when tied; attn:
the attention projections; ffn: the MLP), so each group's share is measured; choose on
`--split validation`.

Run: python benchmarks/gguf_export.py [--run runs/quickstart ...(one per seed)] [--quants f16,q8_0,q4_0,q4_k_m] [--n 60]
         [--split test|validation]   (types separated by ';' when one names groups: 'q8_0;q8_0:f16=embed')
     -> docs/gguf_export.json (test) or docs/gguf_export_validation.json, and the table in docs/deploy.md
     (--render rewrites the tables only)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import outputs  # benchmarks/outputs.py: every file written whole

ROOT = Path(__file__).resolve().parents[1]
OUTS = {"test": ROOT / "docs" / "gguf_export.json", "validation": ROOT / "docs" / "gguf_export_validation.json"}
DOC = ROOT / "docs" / "deploy.md"
MARKS = {
    "test": ("<!-- gguf-table -->", "<!-- /gguf-table -->"),
    "validation": ("<!-- gguf-val -->", "<!-- /gguf-val -->"),
}
NEW = 32


def tickets(n: int, split: str) -> list[dict]:
    from forgetless.data.formats import builtin_path

    return [json.loads(x) for x in builtin_path(f"quickstart/{split}.jsonl").read_text().splitlines()[:n]]


def conversation(row: dict) -> list[dict]:
    return [
        {"role": "system", "content": row["system"]},
        {"role": "user", "content": f"{row['instruction']}\n\n{row['input']}"},
    ]


def transformers_answers(run: str, prompts: list[list[int]]) -> list[list[int]]:
    import torch

    from forgetless.adapters import merge

    model, tokenizer, _ = merge.load_merged(run, None, "fp32")
    out = []
    with torch.no_grad():
        for ids in prompts:
            gen = model.generate(torch.tensor([ids]), max_new_tokens=NEW, do_sample=False)
            out.append(_until_eos(gen[0, len(ids) :].tolist(), tokenizer.eos_token_id))
    return out


def llama_cpp_answers(path: Path, prompts: list[list[int]], eos: int) -> list[list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=1024, n_threads=2, verbose=False)
    out = []
    for ids in prompts:
        tokens = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            if token == eos or len(tokens) == NEW:
                break
            tokens.append(token)
        out.append(tokens)
    return out


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


def agree(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", help="a trained run (repeat for seeds; default runs/quickstart)")
    ap.add_argument("--quants", default="f16,q8_0,q4_0,q4_k_m")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--split", choices=tuple(OUTS), default="test")
    ap.add_argument("--render", action="store_true", help="rewrite the tables from their JSON")
    args = ap.parse_args(argv)
    if args.render:
        for split, path in OUTS.items():
            if path.is_file():
                render(json.loads(path.read_text()), split)
        return
    runs = [measure(run, args) for run in args.run or [str(ROOT / "runs" / "quickstart")]]
    result = {
        "split": args.split,
        "tickets": runs[0]["tickets"],
        "new_tokens": NEW,
        "machine": f"{platform.machine()} {_cpu()}",
        "runs": runs,
        "types": [_spread([r["types"][i] for r in runs]) for i in range(len(runs[0]["types"]))],
        "transformers_exact": _mean_sd([r["transformers_exact"] for r in runs]),
    }
    outputs.write_json(OUTS[args.split], result)
    render(result, args.split)


def measure(run: str, args) -> dict:
    """One run: transformers' answers, then each type's file run in llama.cpp."""
    from forgetless.adapters import merge
    from forgetless.deploy import export
    from forgetless.model.chat_format import prompt_text

    rows = tickets(args.n, args.split)
    _, tokenizer, _ = merge.load_merged(run, None, "fp32")
    prompts = [tokenizer(prompt_text(tokenizer, conversation(r)), add_special_tokens=False)["input_ids"] for r in rows]
    started = time.time()
    ours = transformers_answers(run, prompts)
    seconds = round(time.time() - started)
    result: dict = {"run": os.path.relpath(run, ROOT), "tickets": len(rows), "transformers_s": seconds}
    first_line = lambda ids: tokenizer.decode(ids).split("\n")[0].strip()  # noqa: E731
    result["transformers_exact"] = _exact(rows, ours, tokenizer)
    result["types"] = []
    for spec in args.quants.split(";" if ":" in args.quants else ","):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            record = export.run(run, "gguf", Path(tmp) / "out", spec)
            seconds = time.time() - t0
            theirs = llama_cpp_answers(Path(tmp) / "out" / record["file"], prompts, tokenizer.eos_token_id)
        same = [agree(a, b) for a, b in zip(ours, theirs, strict=True)]
        row = {
            "quant": spec,
            "mb": round(record["bytes"] / 1e6, 1),
            "export_s": round(seconds, 1),
            "identical_32": round(sum(s >= min(30, len(a)) for s, a in zip(same, ours, strict=True)) / len(rows), 3),
            "same_first_line": round(
                sum(first_line(a) == first_line(b) for a, b in zip(ours, theirs, strict=True)) / len(rows), 3
            ),
            "exact_match": _exact(rows, theirs, tokenizer),
        }
        result["types"].append(row)
        print(json.dumps({"run": run, **row}))
    return result


def _mean_sd(values: list[float]) -> list[float]:
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return [round(mean, 3), round(sd, 3)]


def _spread(rows: list[dict]) -> dict:
    """One type over the runs: its size and, for each share, [mean, sd]."""
    seconds = round(_mean_sd([r["export_s"] for r in rows])[0], 1)
    out = {"quant": rows[0]["quant"], "mb": rows[0]["mb"], "export_s": seconds}
    for key in ("identical_32", "same_first_line", "exact_match"):
        out[key] = _mean_sd([r[key] for r in rows])
    return out


def _exact(rows: list[dict], answers: list[list[int]], tokenizer) -> float:
    hits = sum(tokenizer.decode(a).strip() == r["output"].strip() for r, a in zip(rows, answers, strict=True))
    return round(hits / len(rows), 3)


def _cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "")


def render(res: dict, split: str) -> None:
    n = len(res["runs"])
    runs = ", ".join(r["run"] for r in res["runs"])

    def share(v: list[float]) -> str:
        return f"{v[0]:.1%} ± {v[1]:.1%}" if n > 1 else f"{v[0]:.1%}"

    def score(v: list[float]) -> str:
        return f"{v[0]:.3f} ± {v[1]:.3f}" if n > 1 else f"{v[0]:.3f}"

    spread = " (mean ± sd over the runs)" if n > 1 else ""
    lines = [
        f"`python benchmarks/gguf_export.py --split {split}` on {runs} ({res['tickets']} {split} tickets each, greedy, "
        f"{res['new_tokens']} new tokens; {res['machine']}; transformers' exact match "
        f"{score(res['transformers_exact'])}){spread}:",
        "",
        "| type | file MB | export s | first 32 tokens identical (≥30 in a row) | same triage line | exact match |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {t['quant']} | {t['mb']} | {t['export_s']} | {share(t['identical_32'])} | {share(t['same_first_line'])} | "
        f"{score(t['exact_match'])} |"
        for t in res["types"]
    ]
    begin, end = MARKS[split]
    outputs.fill_section(DOC, begin, "\n".join(lines), end)


if __name__ == "__main__":
    main(sys.argv[1:])
