"""The built-in shapes: each against its published parameter count, MoE memory, offline plans."""

import time

import pytest

from forgetless.cli import main
from forgetless.errors import UserError
from forgetless.plan import memory, planner, shapes
from forgetless.plan.memory import Setup


@pytest.mark.parametrize("name", list(shapes.KNOWN))
def test_each_shape_has_its_published_parameter_count(name):
    known = shapes.KNOWN[name]
    assert known.shape.params() == pytest.approx(known.published, rel=0.02)


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b"),
        ("meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b"),
        ("meta-llama/Meta-Llama-3-8B-Instruct", "llama-3.1-8b"),
        ("meta-llama/Llama-3.3-70B-Instruct", "llama-3.1-70b"),
        ("google/gemma-2-9b-it", "gemma-2-9b"),
        ("mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b"),
        ("mistralai/Mixtral-8x7B-Instruct-v0.1", "mixtral-8x7b"),
        ("microsoft/Phi-3.5-mini-instruct", "phi-3.5-mini"),
        ("Qwen/Qwen3-0.6B", "qwen3-0.6b"),
    ],
)
def test_hub_ids_find_their_row(model, name):
    assert shapes.lookup(model)[0] == name


@pytest.mark.parametrize("offline", ["1", None])
def test_a_size_in_an_unknown_name_is_never_a_shape_and_no_hub_is_waited_for(monkeypatch, offline):
    """Offline by setting (HF_HUB_OFFLINE=1) or by fact (this machine reaches no hub; with a network the
    hub answers 'unknown' quickly): the one-line error comes in seconds, not after huggingface_hub's
    five retries (~23 s per model before the reachability check)."""
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    for model in ("someone/my-finetune-7b", "7b", "acme/Qwen2.5-7B-medical"):
        with pytest.raises(UserError, match="no shape for model"):
            shapes.resolve_shape(model)
    assert time.monotonic() - start < 15


def test_moe_memory_counts_every_expert_but_only_the_active_experts_activations():
    mixtral = shapes.KNOWN["mixtral-8x7b"].shape
    dense = memory.Shape(32000, 4096, 32, 14336, 32, 8)  # Mistral-7B-like: one MLP per layer
    setup = Setup("qlora", 2, batch_size=1, seq_len=1024, grad_checkpointing=False, lora_dropout=False)
    moe, one = memory.estimate(mixtral, setup), memory.estimate(dense, setup)
    # weights: 8 experts' MLPs (quantized) ≈ 46.7B parameters at ~0.52 bytes, far above the dense model's
    assert moe["weights"] > 5 * one["weights"]
    # activations per block: 8H + 2kv + 4·(2 experts × I) values per token against 8H + 2kv + 4·I
    i, layers, tokens = 14336, 32, 1024
    extra = layers * tokens * 4 * i * 2 / 1e9
    assert moe["activations"] - one["activations"] == pytest.approx(extra, rel=0.01)


def test_plans_offline_for_the_tables_models(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["plan", "--model", "Qwen/Qwen2.5-7B-Instruct", "--gpu-memory", "16GB"]) == 0
    out = capsys.readouterr().out
    assert "7.62 B parameters; shape from the built-in table (qwen2.5-7b" in out and "fits      yes" in out
    p = planner.plan("mistralai/Mixtral-8x7B-Instruct-v0.1", planner.given(24))
    assert not p.fits and p.estimate["weights"] > 20  # 46.7B parameters do not fit 24 GB even in 4 bits
    assert planner.plan("mistralai/Mixtral-8x7B-Instruct-v0.1", planner.given(80)).fits
