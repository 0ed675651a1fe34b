"""Loopback load test of `forgetless serve` through the official openai client.

Starts the server as a subprocess on a free 127.0.0.1 port with the given adapters, sends
`--requests` chat requests from `--concurrency` client threads (models chosen round-robin
among the served ones), and reports status counts, latency percentiles and throughput.

Run: python benchmarks/serve_load.py --adapter support=runs/compare/full --adapter plain=runs/compare/none
     [--requests 500] [--concurrency 8] [--max-tokens 8] [--out docs/serve_load.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPTS = [
    "My parcel is late, order 12345. Please help.",
    "What is the capital of France?",
    "Give me one tip for writing clear emails.",
    "Triage: the app crashes when I open settings.",
]


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import openai

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = "load-test"
    cmd = [sys.executable, "-m", "forgetless", "serve", "--port", str(port), "--api-key", key]
    for a in args.adapter:
        cmd += ["--adapter", a]
    server = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 300
        while True:
            try:
                models = json.loads(urllib.request.urlopen(f"{url}/health").read())["models"]
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.5)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)

        def one(i: int) -> tuple[int, float]:
            t0 = time.perf_counter()
            try:
                client.chat.completions.create(
                    model=models[i % len(models)],
                    messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    max_tokens=args.max_tokens,
                    temperature=0,
                )
                status = 200
            except openai.APIStatusError as e:
                status = e.status_code
            except openai.APIConnectionError:
                status = 0
            return status, time.perf_counter() - t0

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - t0
        server_metrics = json.loads(urllib.request.urlopen(f"{url}/metrics").read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    lat = sorted(t for _, t in results)
    statuses: dict[str, int] = {}
    for s, _ in results:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    report = {
        "models": models,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "statuses": statuses,
        "wall_s": round(wall, 1),
        "requests_per_s": round(args.requests / wall, 2),
        "latency_s": {
            q: round(lat[min(len(lat) - 1, int(p * len(lat)))], 3)
            for q, p in (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
        },
        "server": server_metrics,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
