"""Loopback load test of `forgetless serve`: one request at a time against batched decoding, in one run.

For each setting (server --max-batch 1, then --max-batch N) x (concurrent clients) x (new tokens), a
fresh server is started as a subprocess on a free 127.0.0.1 port with three adapters plus the base,
the official openai client sends chat requests round-robin across the four models, and the run
reports requests/s, generated tokens/s, latency p50/p99, errors (non-200 answers) and the server's
peak resident memory (VmHWM). Adapters: --adapter NAME=DIR (repeat), or three LoRA adapters (r=8,
random non-zero weights: the cost of a LoRA row does not depend on its values) made for the run on the
embedded model.

Run: python benchmarks/serve_load.py [--adapter NAME=DIR ...] [--clients 8,32] [--tokens 8,64]
     [--batch 32] [--requests-per-client 1] [--out docs/serve_load.json]
     -> with --out docs/serve_load.json, also the table in docs/deploy.md (--render: the table only)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import outputs  # benchmarks/outputs.py: every file written whole

PROMPTS = [
    "My parcel is late, order 12345. Please help.",
    "What is the capital of France?",
    "Give me one tip for writing clear emails.",
    "Triage: the app crashes when I open settings.",
]
KEY = "load-test"
ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "deploy.md"
BEGIN, END = "<!-- serve-table -->", "<!-- /serve-table -->"


def make_adapters(root: Path) -> list[str]:
    import torch

    from forgetless.adapters import attaching
    from forgetless.config.schema import ModelConfig, PeftConfig
    from forgetless.model import loader as models

    out = []
    for i, name in enumerate(("support", "legal", "medical")):
        model, _, _ = models.load(ModelConfig(name="smollm2-135m-instruct"))
        torch.manual_seed(i)
        tuned = attaching.attach(model, PeftConfig(r=8), quantized=False, grad_checkpointing=False)
        with torch.no_grad():
            for n, p in tuned.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.002)
        tuned.save_pretrained(root / name)
        facts = json.loads((root / name / "adapter_config.json").read_text())
        facts["base_model_name_or_path"] = "smollm2-135m-instruct"
        outputs.write_json(root / name / "adapter_config.json", facts)
        out.append(f"{name}={root / name}")
    return out


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_setting(adapters: list[str], batch: int, clients: int, tokens: int, requests: int) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "forgetless", "serve", "--port", str(port), "--api-key", KEY,
           "--max-batch", str(batch), "--max-queue", str(4 * clients)]  # fmt: skip
    for a in adapters:
        cmd += ["--adapter", a]
    server = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        found = load(url, _wait_for(server, url), clients, tokens, requests)
        rss = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {"max_batch": batch, **found, "peak_rss_mb": rss}


def load(url: str, names: list[str], clients: int, tokens: int, requests: int) -> dict:
    """`requests` chat requests from `clients` threads at once (models round-robin over `names`, prompts over
    PROMPTS, greedy) against the OpenAI server at `url`: throughput, latency percentiles, errors, answers."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=900)

    def one(i: int) -> tuple[int, float, int, str]:
        t0 = time.perf_counter()
        try:
            r = client.chat.completions.create(
                model=names[i % len(names)],
                messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                max_tokens=tokens,
                temperature=0,
            )
            return 200, time.perf_counter() - t0, r.usage.completion_tokens, r.choices[0].message.content or ""
        except openai.APIStatusError as e:
            return e.status_code, time.perf_counter() - t0, 0, ""
        except openai.APIConnectionError:
            return 0, time.perf_counter() - t0, 0, ""

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    lat = sorted(t for _, t, _, _ in results)

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)

    return {
        "clients": clients,
        "new_tokens": tokens,
        "requests": requests,
        "errors": sum(s != 200 for s, _, _, _ in results),
        "wall_s": round(wall, 1),
        "requests_per_s": round(requests / wall, 2),
        "tokens_per_s": round(sum(n for _, _, n, _ in results) / wall, 1),
        "p50_s": pct(0.5),
        "p95_s": pct(0.95),
        "p99_s": pct(0.99),
        "answers": [a for _, _, _, a in results],
    }


def _wait_for(server: subprocess.Popen, url: str, health: str = "/health") -> list[str]:
    """The served model names, once the server answers `health` (it loads the model first): forgetless's
    /health lists them; for another server (/v1/models) the OpenAI model list's ids."""
    deadline = time.time() + 300
    while True:
        try:
            found = json.loads(urllib.request.urlopen(f"{url}{health}").read())
            return found["models"] if "models" in found else [m["id"] for m in found["data"]]
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit("the server did not start") from None
            time.sleep(0.5)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--clients", default="8,32")
    ap.add_argument("--tokens", default="8,64")
    ap.add_argument("--batch", type=int, default=32, help="--max-batch of the batched server")
    ap.add_argument("--requests-per-client", type=int, default=1)
    ap.add_argument("--out", default=None)
    ap.add_argument("--render", action="store_true", help="only rewrite docs/deploy.md's table from --out")
    args = ap.parse_args(argv)
    if args.render:
        render(json.loads(Path(args.out).read_text(encoding="utf-8")))
        return
    with tempfile.TemporaryDirectory() as tmp:
        adapters = args.adapter or make_adapters(Path(tmp))
        rows = []
        for tokens in (int(x) for x in args.tokens.split(",")):
            for clients in (int(x) for x in args.clients.split(",")):
                for batch in (1, args.batch):
                    row = one_setting(adapters, batch, clients, tokens, clients * args.requests_per_client)
                    del row["answers"]
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    report = {
        "machine": f"{platform.machine()} {_cpu()}",
        "adapters": [a.split("=")[0] for a in adapters] if args.adapter else "3 random LoRA r=8 (made by the run)",
        "requests_per_client": args.requests_per_client,
        "rows": rows,
    }
    if args.out:
        outputs.write_json(args.out, report)
        if Path(args.out).resolve() == ROOT / "docs" / "serve_load.json":
            render(report)


def render(report: dict) -> None:
    """The table in docs/deploy.md, from the report (one row per setting, one-at-a-time first)."""
    lines = [
        f"`python benchmarks/serve_load.py --out docs/serve_load.json` ({report['machine']}; adapters: "
        f"{report['adapters']}; base + 3 adapters round-robin; greedy; each client sends "
        f"{report['requests_per_client']} request(s), all clients at once):",
        "",
        "| new tokens | clients | --max-batch | requests/s | tokens/s | p50 s | p99 s | errors | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['new_tokens']} | {r['clients']} | {r['max_batch']} | {r['requests_per_s']} | {r['tokens_per_s']} | "
            f"{r['p50_s']} | {r['p99_s']} | {r['errors']} | {r['peak_rss_mb']} |"
        )
    outputs.fill_section(DOC, BEGIN, "\n".join(lines), END)


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main(sys.argv[1:])
