"""`forgetless serve` beside llama.cpp's own OpenAI server (llama_cpp.server), in one run on one machine.

Three servers, each started once, warmed with one request, then loaded by 1, 8 and 32 concurrent clients
asking for 8 and 64 new tokens (greedy, the same four prompts, the chat template of the model):

  llama.cpp         `python -m llama_cpp.server` on the GGUF that `forgetless export` writes for the
                    embedded model (--quant, f16 by default as the export writes it), all cores
  forgetless        `forgetless serve`, the base model only (fp32 PyTorch)
  forgetless-mixed  `forgetless serve` with three LoRA adapters (r=8, random non-zero weights made by the
                    run), requests round-robin over the base and the three: every batch mixes adapters

Each setting sends max(8, 2 × clients) requests (at least 8 so that one client's percentiles mean something).
The targets of issue 40 are checked beside the table: mixed ≥ 5 requests/s at 8 clients × 8 tokens;
mixed ≥ llama.cpp's single-model requests/s at 8 clients for 8 and 64 tokens; one client's p50 latency
at most 2× llama.cpp's. llama.cpp is the wheel the Makefile builds (portable x86-64 + AVX2, no OpenMP):
on a CPU with AVX-512 a native build can be faster; the machine line says which CPU ran it.

Run: python benchmarks/serve_llamacpp.py [--out runs/serve_llamacpp.json] [--clients 1,8,32] [--tokens 8,64]
     [--quant f16] [--docs]   (--docs: docs/serve_llamacpp.json and the table in docs/deploy.md)
     python benchmarks/serve_llamacpp.py --report runs/serve_llamacpp.json [--docs]   (a saved run's table)
Needs llama-cpp-python's server packages: pip install -e ".[bench,gguf]".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import machine  # benchmarks/machine.py: the CPU the servers ran on
import outputs  # benchmarks/outputs.py: every file written whole
import serve_load  # benchmarks/serve_load.py: the load generator and the random adapters

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "deploy.md"
BEGIN, END = "<!-- llamacpp-table -->", "<!-- /llamacpp-table -->"
MODEL = "smollm2-135m-instruct"
SERVERS = ("llama.cpp", "forgetless", "forgetless-mixed")


def command(server: str, port: int, gguf: Path, adapters: list[str], threads: int) -> tuple[list[str], str]:
    """The server's command line and the path that answers once its model is loaded."""
    if server == "llama.cpp":
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
               "--n_ctx", "4096"]  # fmt: skip
        return cmd, "/v1/models"
    cmd = [sys.executable, "-m", "forgetless", "serve", "--port", str(port), "--api-key", serve_load.KEY,
           "--max-batch", "32", "--max-queue", "256"]  # fmt: skip
    for a in adapters if server == "forgetless-mixed" else []:
        cmd += ["--adapter", a]
    return cmd, "/health"


def run_server(server: str, gguf: Path, adapters: list[str], clients: list[int], tokens: list[int]) -> list[dict]:
    port = serve_load.free_port()
    cmd, health = command(server, port, gguf, adapters, os.cpu_count() or 1)
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    rows = []
    try:
        url = f"http://127.0.0.1:{port}"
        names = serve_load._wait_for(proc, url, health)
        serve_load.load(url, names, 1, 8, 1)  # the first request pays one-time costs (allocations, caches)
        for n_tokens in tokens:
            for n_clients in clients:
                row = {"server": server, **serve_load.load(url, names, n_clients, n_tokens, max(8, 2 * n_clients))}
                print({k: v for k, v in row.items() if k != "answers"}, flush=True)
                rows.append(row)
        peak = serve_load.peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return [{**r, "peak_rss_mb": peak} for r in rows]


def targets(rows: list[dict]) -> list[dict]:
    """Issue 40's serving targets, each with what was measured."""

    def at(server: str, clients: int, tokens: int) -> dict | None:
        key = (server, clients, tokens)
        return next((r for r in rows if (r["server"], r["clients"], r["new_tokens"]) == key), None)

    out = []
    mixed = at("forgetless-mixed", 8, 8)
    if mixed:
        out.append({"target": "base + 3 adapters mixed, 8 clients × 8 tokens: requests/s", "goal": ">= 5",
                    "measured": mixed["requests_per_s"], "met": mixed["requests_per_s"] >= 5})  # fmt: skip
    for n in (8, 64):
        mixed, llama = at("forgetless-mixed", 8, n), at("llama.cpp", 8, n)
        if mixed and llama:
            ratio = mixed["requests_per_s"] / llama["requests_per_s"]
            out.append({"target": f"mixed vs llama.cpp (one model), 8 clients × {n} tokens: requests/s ratio",
                        "goal": ">= 1", "measured": round(ratio, 2), "met": ratio >= 1})  # fmt: skip
    for server in ("forgetless", "forgetless-mixed"):
        mine, llama = at(server, 1, 8), at("llama.cpp", 1, 8)
        if mine and llama:
            ratio = mine["p50_s"] / llama["p50_s"]
            out.append({"target": f"{server}, one client × 8 tokens: p50 latency vs llama.cpp's", "goal": "<= 2",
                        "measured": round(ratio, 2), "met": ratio <= 2})  # fmt: skip
    return out


def same_answers(rows: list[dict]) -> dict[str, float]:
    """Per setting, the share of forgetless's base-model answers equal to llama.cpp's (same prompts, greedy):
    a check that the two serve the same model with the same template (f16 against fp32 may part late)."""
    out = {}
    for r in rows:
        if r["server"] != "forgetless":
            continue
        llama = next(x for x in rows if x["server"] == "llama.cpp" and x["clients"] == r["clients"]
                     and x["new_tokens"] == r["new_tokens"])  # fmt: skip
        pairs = list(zip(r["answers"], llama["answers"], strict=True))
        out[f"{r['clients']}x{r['new_tokens']}"] = round(sum(a == b for a, b in pairs) / len(pairs), 2)
    return out


def table(report: dict) -> list[str]:
    lines = [
        f"`python benchmarks/serve_llamacpp.py --docs` ({machine.line(report['machine'])}; llama.cpp on the "
        f"{report['quant']} GGUF `forgetless export` writes; greedy; max(8, 2 × clients) requests per setting):",
        "",
        "| new tokens | clients | server | requests/s | tokens/s | p50 s | p95 s | errors | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(report["rows"], key=lambda r: (r["new_tokens"], r["clients"], SERVERS.index(r["server"]))):
        lines.append(
            f"| {r['new_tokens']} | {r['clients']} | {r['server']} | {r['requests_per_s']} | {r['tokens_per_s']} | "
            f"{r['p50_s']} | {r['p95_s']} | {r['errors']} | {r['peak_rss_mb']} |"
        )
    lines += ["", "| target | goal | measured | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['goal']} | {t['measured']} | {'yes' if t['met'] else 'no'} |"
              for t in report["targets"]]  # fmt: skip
    shown = ", ".join(f"{k}: {v:.0%}" for k, v in report["same_answers"].items())
    return [*lines, "", f"forgetless's base-model answers equal to llama.cpp's (clients × tokens): {shown}."]


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/serve_llamacpp.json")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--tokens", default="8,64")
    ap.add_argument("--quant", default="f16", help="the GGUF llama.cpp serves (forgetless export --quant)")
    ap.add_argument("--docs", action="store_true", help="docs/serve_llamacpp.json and the table in docs/deploy.md")
    ap.add_argument("--report", default=None, help="a JSON this script wrote: its table (and --docs), nothing rerun")
    args = ap.parse_args(argv)
    report = json.loads(Path(args.report).read_text(encoding="utf-8")) if args.report else measure(args)
    lines = table(report)
    if args.docs:
        outputs.write_json(ROOT / "docs" / "serve_llamacpp.json", report)
        outputs.fill_section(DOC, BEGIN, "\n".join(lines), END)
    print("\n".join(lines))


def measure(args) -> dict:
    """Every server, one after the other, at every setting; the report is saved to --out at once."""
    clients, tokens = [int(x) for x in args.clients.split(",")], [int(x) for x in args.tokens.split(",")]
    from forgetless import api  # torch: after the arguments are read

    with tempfile.TemporaryDirectory() as tmp:
        gguf = Path(tmp) / "gguf" / api.export(MODEL, "gguf", Path(tmp) / "gguf", args.quant)["file"]
        adapters = serve_load.make_adapters(Path(tmp))
        rows = [row for server in SERVERS for row in run_server(server, gguf, adapters, clients, tokens)]
    report = {"machine": machine.describe(), "quant": args.quant, "rows": rows}
    report["targets"], report["same_answers"] = targets(rows), same_answers(rows)
    outputs.write_json(Path(args.out), report)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
