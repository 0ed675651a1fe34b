"""Seconds to load a saved tokenizer: saved by transformers' own `save_pretrained` against forgetless's
`save_tokenizer` (model/loader.py), which also keeps the added tokens in tokenizer_config.json. Without them
transformers 5 parses the whole tokenizer.json a second time in Python to find them.

The tokenizers: the embedded model's, and the model families' test tokenizers where `python -m
tests.families.fixtures` has made them (Gemma and Gemma-4 262k tokens, Llama-3 128k, Qwen 151k, ...).
Each is loaded once, saved both ways into a temporary folder, and each copy loaded `--reps` times (median).

Run: python benchmarks/tokenizer_load.py [--reps 3]   (about a minute on 2 CPU cores; prints, writes nothing)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import machine  # benchmarks/machine.py: the CPU the numbers come from

from forgetless.model import loader as models


def seconds(path: Path, reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        models.load_tokenizer(str(path))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    cache = Path(os.environ.get("FORGETLESS_CACHE", Path.home() / ".cache" / "forgetless"))
    sources = {"embedded (SmolLM2)": Path(models.resolve("smollm2-135m-instruct"))}
    sources |= {p.name: p for p in sorted((cache / "families").glob("*/tokenizers/*")) if p.is_dir()}
    print(f"machine: {machine.line(machine.describe())}")
    print("| tokenizer | vocabulary | save_pretrained: load s | save_tokenizer: load s | ratio |")
    print("|---|---|---|---|---|")
    for name, source in sources.items():
        tok = models.load_tokenizer(str(source))
        with tempfile.TemporaryDirectory() as tmp:
            plain, kept = Path(tmp) / "plain", Path(tmp) / "kept"
            tok.save_pretrained(plain)
            models.save_tokenizer(tok, kept)
            before, after = seconds(plain, args.reps), seconds(kept, args.reps)
        print(f"| {name} | {len(tok):,} | {before:.2f} | {after:.2f} | {before / after:.2f}x |")


if __name__ == "__main__":
    main()
