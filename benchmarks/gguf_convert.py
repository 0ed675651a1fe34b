"""The first run's GGUF conversion, with gguf's reader over numpy's memmap and over a plain view of the mapped
file (model/gguf_read.plain_view): parsing the embedded model's metadata alone, and the whole conversion.

Both ways alternate, `--rounds` times, in this process (the conversion is written to a temporary folder);
the parse is gguf's GGUFReader on the file, the conversion `loader._convert_gguf` with `plain_view` switched
off for the memmap side.

    python benchmarks/gguf_convert.py [--rounds 2] [--out docs/gguf_convert.json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import machine  # benchmarks/machine.py: the CPU beside every time
import outputs  # benchmarks/outputs.py: every file written whole

from forgetless.model import gguf_read
from forgetless.model import loader as models


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return round(time.perf_counter() - started, 2)


def main() -> None:
    import gguf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="docs/gguf_convert.json")
    args = ap.parse_args()
    source = models.alias_gguf("smollm2-135m-instruct")
    plain = gguf_read.plain_view
    found = {side: {"parse": [], "convert": []} for side in ("memmap", "plain")}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for side in ("memmap", "plain"):
                reader = gguf.GGUFReader if side == "memmap" else plain(gguf.GGUFReader)
                found[side]["parse"].append(timed(lambda reader=reader: reader(source)))
                gguf_read.plain_view = plain if side == "plain" else (lambda cls: cls)
                out = Path(tmp) / f"{side}{i}"
                found[side]["convert"].append(timed(lambda out=out: models._convert_gguf(source, out, "hub/id")))
                gguf_read.plain_view = plain
                print(side, i, {k: v[-1] for k, v in found[side].items()}, flush=True)
    median = {side: {k: statistics.median(v) for k, v in parts.items()} for side, parts in found.items()}
    result = {
        "command": f"python benchmarks/gguf_convert.py --rounds {args.rounds}",
        "machine": machine.describe(),
        "median_seconds": median,
        "runs": found,
    }
    outputs.write_json(args.out, result)
    print(median)


if __name__ == "__main__":
    main()
