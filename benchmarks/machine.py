"""What machine a benchmark ran on, written into its JSON and tables: CPUs of one kind differ (AVX2
only, AVX-512, AMX) by about 1.8× in speed here, so numbers from different CPUs must never be mixed.

Imported by benchmarks/speed.py and benchmarks/quickstart_seeds.py.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")  # /proc/cpuinfo names, widest last


def describe() -> dict:
    """CPU model, its vector extensions, cores, and torch's version and threads (when torch is loaded)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((x.split(":", 1)[1].strip() for x in info.splitlines() if x.startswith("model name")), None)
    flags = next((set(x.split(":", 1)[1].split()) for x in info.splitlines() if x.startswith("flags")), set())
    out = {
        "cpu": model or platform.processor() or platform.machine(),
        "vector": [f for f in VECTOR_FLAGS if f in flags],
        "cores": os.cpu_count(),
    }
    try:
        import torch  # the benchmarks that train have it loaded already

        out |= {"torch": torch.__version__, "threads": torch.get_num_threads()}
    except ImportError:  # a benchmark without torch
        pass
    return out


def line(m: dict) -> str:
    """One line for a table's heading: 'AMD EPYC (avx2, avx512f), 2 cores, torch 2.13.0, 2 threads'."""
    text = f"{m['cpu']} ({', '.join(m['vector']) or 'no AVX2'}), {m['cores']} cores"
    return text + (f", torch {m['torch']}, {m['threads']} threads" if "torch" in m else "")
