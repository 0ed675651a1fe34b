"""Shared fixtures: the real tokenizer of the embedded model and a tiny random Llama built from a config.

The tiny model has the embedded model's tokenizer and chat template, so data and masking code
paths are real, while a training step takes milliseconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from forgetless.adapters import attaching
from forgetless.config.schema import PeftConfig
from forgetless.model import loader as models
from forgetless.model.likelihood import IGNORE

# `make test` runs two pytest workers (pytest-xdist), one per core: each keeps to one thread, so
# the two do not fight over the cores (tiny-model tests are mostly Python, not matmuls). The
# environment carries the same limit to the programs a test starts (the CLI, benchmarks, killed
# runs): a child with two OpenMP threads beside the other worker's busy core spins for a core it
# cannot get (the CLI smoke test: 271 s in the suite with two threads, 108 s with one).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"


def pytest_collection_modifyitems(items):
    """The files marked `pytest.mark.seconds(n)` first, the longest first; the rest keep their order.

    `make test` hands whole files to two workers (xdist's loadfile, with --no-loadscope-reorder so this
    order is the one they are handed out in). Handed out by their number of tests, as xdist does by
    default, the long single-test files (the GPU check, the killed runs, the browser) came last, and one
    worker ran them while the other had finished; longest first, the files left at the end are short
    ones and both workers end together (longest-processing-time-first scheduling). The marks are rough
    costs on a 2-core machine: a wrong one costs only balance, never a result."""

    def cost(item) -> float:
        mark = item.get_closest_marker("seconds")
        return -mark.args[0] if mark else 0.0

    items.sort(key=cost)  # stable: a file's tests, and unmarked files, keep their collected order


ROWS = [
    {
        "instruction": "Triage this ticket.",
        "input": f"My order {n} is late.",
        "output": f"category: shipping | order: {n}",
    }
    for n in (11111, 22222, 33333, 44444, 55555, 66666, 77777, 88888)
]


@pytest.fixture(scope="session")
def embedded_dir() -> str:
    """The embedded SmolLM2-135M-Instruct as a cached safetensors directory (converted once)."""
    return models.resolve("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    return models.load_tokenizer(embedded_dir)


TINY = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "initializer_range": 0.3,
}


def save_tiny(out: Path, config_class, tokenizer, **traits) -> str:
    """A tiny random model of `config_class` (seed 0) with the tokenizer's vocabulary, saved with it in `out`."""
    cfg = config_class(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **(TINY | traits))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    models.save_tokenizer(tokenizer, out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer) -> str:
    return save_tiny(
        tmp_path_factory.mktemp("tiny-llama"),
        LlamaConfig,
        tokenizer,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def tiny_args(tiny_dir: str, data: Path, out: Path, *more: str) -> list[str]:
    """Overrides of a seconds-long run of the tiny model: 2 steps, a checkpoint every step, no evaluation."""
    return [
        f"model.name={tiny_dir}",
        f"data.train={data}",
        "data.validation_split=0.25",
        f"output_dir={out}",
        "eval.before_after=false",
        "eval.retention=false",
        "forgetting.preset=none",
        "train.batch_size=2",
        "train.grad_accum=1",
        "train.max_steps=2",
        "train.save_every=1",
        "peft.r=4",
        *more,
    ]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def train_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", ROWS)


@pytest.fixture
def tiny_overrides(tiny_dir, train_file, tmp_path) -> list[str]:
    """Overrides for a seconds-long training run of the tiny model."""
    return [
        f"model.name={tiny_dir}",
        f"data.train={train_file}",
        "data.validation_split=0.25",
        f"output_dir={tmp_path / 'run'}",
        "eval.before_after=false",
        "eval.retention=false",
        "forgetting.preset=none",
        "train.batch_size=2",
        "train.grad_accum=2",
        "train.lr=1e-2",
        "train.max_steps=6",
        "train.eval_every=3",
        "train.save_every=3",
        "peft.r=4",
    ]


def lora_model(tiny_dir: str, seed: int = 0, targets: list[str] | None = None):
    """The tiny model with LoRA (r=4; on `targets`, else all linear layers) whose B matrices are moved off
    zero, so the adapter changes the output and the base view differs from the adapted model."""
    torch.manual_seed(seed)
    peft = PeftConfig(r=4, target_modules=targets or "all-linear")
    model = attaching.attach(
        AutoModelForCausalLM.from_pretrained(tiny_dir), peft, quantized=False, grad_checkpointing=False
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


def token_rows(lengths: list[int], start: int = 0, rehearsal: bool = False) -> list[dict]:
    """Token rows of the given lengths: prompt tokens masked, the last third as the answer."""
    out = []
    for j, n in enumerate(lengths):
        ids = [(7 * (start + j) + 3 * t) % 900 + 10 for t in range(n)]
        cut = n - max(1, n // 3)
        out.append({"input_ids": ids, "labels": [IGNORE] * cut + ids[cut:], "rehearsal": rehearsal})
    return out


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module; the folder is on sys.path while it loads, as when the script runs
    from there (scripts import their neighbours: tasks.py, speed.py)."""
    bench = Path(__file__).parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_benchmark", bench / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    return module
