"""What this machine can do: device, bf16/fp16 support, and the dtype a precision setting means."""

from __future__ import annotations

import functools
import logging
import os
import warnings

import psutil
import torch


def device() -> torch.device:
    """The device this process trains on: its local GPU under a launcher, else the first GPU, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def bf16_supported(dev: torch.device) -> bool:
    return dev.type == "cuda" and torch.cuda.is_bf16_supported()


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX-512 BF16 or AMX): there a bf16 matmul runs
    about twice as fast as fp32 (docs/performance.md); on AVX2-only CPUs it is emulated and slower."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # not Linux: say no rather than guess
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def resolve_dtype(precision: str, dev: torch.device) -> torch.dtype:
    """auto -> bf16 on Ampere+ GPUs, fp16 on older GPUs, fp32 on CPU (bf16 matmul is ~5x slower there)."""
    if precision == "auto":
        if dev.type != "cuda":
            return torch.float32
        return torch.bfloat16 if bf16_supported(dev) else torch.float16
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def gpus() -> list[dict]:
    """Every visible CUDA GPU: name, total and free memory (GB = 1e9 bytes), compute capability, bf16."""
    out = []
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        out.append(
            {
                "index": i,
                "name": props.name,
                "memory_gb": round(total / 1e9, 1),
                "free_gb": round(free / 1e9, 1),
                "capability": f"{props.major}.{props.minor}",
                # bf16 runs at full speed from Ampere (8.0) on: A100, H100, L40, RTX 30xx/40xx.
                "bf16": props.major >= 8,
            }
        )
    return out


def ram_gb() -> tuple[float, float]:
    """(total, available) system memory in GB."""

    vm = psutil.virtual_memory()
    return round(vm.total / 1e9, 1), round(vm.available / 1e9, 1)


def summary() -> dict:
    total, available = ram_gb()
    info = {
        "device": str(device()),
        "cpu_cores": os.cpu_count(),
        "ram_gb": total,
        "ram_available_gb": available,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": gpus(),
    }
    return info


def quiet_third_party_logs() -> None:
    """Silence expected noise before peft/transformers import bitsandbytes.

    On CPUs with AVX512-BF16, bitsandbytes tries to fetch an optional kernel from the hub at
    import and warns when it cannot; the built-in CPU path it falls back to is what we test.
    """

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
    warnings.filterwarnings("ignore", message=".*inputs will be cast.*")
