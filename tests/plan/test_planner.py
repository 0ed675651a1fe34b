"""The memory estimator against the published table, the planner's rules at their boundaries,
the written config, and the out-of-memory fallback with an injected error."""

import subprocess
import sys

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from forgetless import api
from forgetless.adapters import attaching
from forgetless.cli import main
from forgetless.config.schema import ForgettingConfig, PeftConfig, TrainConfig
from forgetless.data.batching import Batches
from forgetless.errors import OutOfMemory, UserError
from forgetless.objectives.objective import Objective
from forgetless.objectives.sft import objective
from forgetless.plan import memory, planner, shapes
from forgetless.plan.memory import Setup
from forgetless.training import loop


@pytest.mark.parametrize(
    ("size", "fp32", "fp16"), [("llama-2-7b", 28, 14), ("llama-2-13b", 52, 26), ("llama-2-70b", 280, 140)]
)
def test_full_fine_tuning_weights_match_the_reference_table(size, fp32, fp16):
    """Weights of full fine-tuning: 7B 28/14 GB, 13B 52/26, 70B 280/140 (fp32/fp16), within 15%."""
    assert memory.estimate(shapes.KNOWN[size].shape, Setup("full", 4))["weights"] == pytest.approx(fp32, rel=0.15)
    assert memory.estimate(shapes.KNOWN[size].shape, Setup("full", 2))["weights"] == pytest.approx(fp16, rel=0.15)


@pytest.mark.parametrize(("size", "gb"), [("llama-2-7b", 6), ("llama-2-70b", 48)])
def test_qlora_peak_matches_the_reference_table(size, gb):
    """QLoRA about 6 GB for 7B and 48 GB for 70B: batch 1, 2048 tokens, checkpointing, r=8, bf16."""
    setup = Setup("qlora", 2, batch_size=1, seq_len=2048, grad_checkpointing=True)
    assert memory.estimate(shapes.KNOWN[size].shape, setup)["total"] == pytest.approx(gb, rel=0.15)


def test_parameter_count_from_config_equals_the_real_model(tiny_dir):
    shape, source = shapes.resolve_shape(tiny_dir)
    real = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_dir).parameters())
    assert shape.params() == real and source.endswith("config.json")


def test_hand_computed_parts():
    """Tiny shape: V=10, H=4, L=1, I=8, 2 heads, 1 kv head (kv_dim 2), untied.
    linears: q 16 + k 8 + v 8 + o 16 + gate 32 + up 32 + down 32 = 144; embeddings 2·40 = 80; norms 3·4 = 12
    -> 236 parameters. Full fp32 AdamW: weights 944 B, gradients 944 B, optimizer 1888 B.
    LoRA r=1: Σ(in+out) = 8+6+6+8+12+12+12 = 64 adapter parameters × 16 B = 1024 B."""
    s = memory.Shape(vocab=10, hidden=4, layers=1, intermediate=8, heads=2, kv_heads=1)
    assert s.params() == 236 and s.lora_params(1) == 64
    full = memory.estimate(s, Setup("full", 4, seq_len=2, device="cpu"))
    assert (full["weights"], full["gradients"], full["optimizer"]) == pytest.approx((944e-9, 944e-9, 1888e-9), abs=1e-3)
    lora = memory.estimate(s, Setup("lora", 4, r=1, seq_len=2, device="cpu"))
    assert lora["adapters"] == pytest.approx(1024e-9, abs=1e-3) and lora["gradients"] == 0


def test_sharding_divides_per_device_memory():
    one = memory.estimate(shapes.KNOWN["llama-2-70b"].shape, Setup("full", 2, grad_checkpointing=True))
    fsdp = memory.estimate(
        shapes.KNOWN["llama-2-70b"].shape, Setup("full", 2, grad_checkpointing=True, processes=8, sharding="fsdp")
    )
    zero2 = memory.estimate(
        shapes.KNOWN["llama-2-70b"].shape, Setup("full", 2, grad_checkpointing=True, processes=8, sharding="zero2")
    )
    assert fsdp["weights"] < one["weights"] / 6 and fsdp["optimizer"] == pytest.approx(one["optimizer"] / 8, rel=1e-3)
    assert zero2["weights"] == one["weights"] and zero2["gradients"] == pytest.approx(one["gradients"] / 8, rel=1e-3)


@pytest.mark.parametrize(("gb", "method"), [(7.9, "qlora"), (8.1, "lora")])
def test_memory_tier_boundary(gb, method):
    p = planner.plan("smollm2-135m-instruct", planner.given(gb))
    assert p.method == method and p.fits


@pytest.mark.parametrize(
    ("hw", "expected"),
    [
        (planner.Hardware("cuda", 24, bf16=True, capability=8.0), "bf16"),
        (planner.Hardware("cuda", 24, bf16=False, capability=7.5), "fp16"),
        (planner.Hardware("cuda", 24, bf16=False, capability=6.1), "fp32"),
        (planner.Hardware("cpu", 24), "fp32"),
    ],
)
def test_precision_rule(hw, expected):
    assert planner.precision(hw)[0] == expected


def test_goal_and_need_rules_with_their_reasons():
    method, recipe, why = planner.choose(planner.given(80), "new-capability", None, False)
    assert (method, recipe) == ("lora", "rlhf")
    assert "goal 'new-capability': RLHF" in why and "RLHF needs a reward model first" in why[-1]
    p = planner.plan("smollm2-135m-instruct", planner.given(80), goal="new-capability")
    assert {"recipe=rlhf", "rlhf.reward_model=runs/reward"} <= set(p.overrides())
    _, _, why = planner.choose(planner.given(40), "new-capability", None, False)
    assert any("RLHF (policy, value head, reward model) is too heavy: DPO" in r for r in why)
    _, _, why = planner.choose(planner.given(80), "new-capability", None, True)
    assert any("short deadline: DPO" in r for r in why)
    _, _, why = planner.choose(planner.given(24), "improve", None, False)
    assert "goal 'improve': DPO" in why
    method, _, why = planner.choose(planner.given(24), "sft", "fast-inference", False)
    assert method == "ia3" and "need 'fast-inference': ia3" in why
    p = planner.plan("smollm2-135m-instruct", planner.given(24), need="several-tasks")
    assert "peft.method=adapter" in p.overrides() and not any(o.startswith("peft.r=") for o in p.overrides())
    assert planner.choose(planner.given(24), "sft", "tiny-memory", False)[0] == "qlora"
    with pytest.raises(UserError, match="--goal fast: choose one of sft, improve, new-capability"):
        planner.choose(planner.given(24), "fast", None, False)


@pytest.mark.parametrize(
    ("size", "gb", "method", "fits"),
    [
        ("meta-llama/Llama-2-7b-hf", 8, "qlora", True),
        ("meta-llama/Llama-2-13b-chat-hf", 24, "qlora", True),
        ("meta-llama/Llama-2-70b-hf", 48, "qlora", True),
        ("meta-llama/Llama-2-70b-hf", 24, "qlora", False),
        ("meta-llama/Llama-2-7b-hf", 80, "lora", True),
    ],
)
def test_plans_across_tiers(size, gb, method, fits):
    p = planner.plan(size, planner.given(gb))
    assert (p.method, p.fits) == (method, fits)
    if fits:
        assert p.estimate["total"] <= 0.9 * gb
    else:
        assert "does not fit" in p.reasons[-1]


def test_step_down_keeps_the_effective_batch():
    p = planner.plan("meta-llama/Llama-2-7b-hf", planner.given(8), batch_size=4, grad_accum=4)
    assert p.setup.batch_size * p.grad_accum == 16 and p.setup.grad_checkpointing
    assert any("weights, adapters and overhead alone" in r for r in p.reasons)


def test_plan_cli_writes_a_config_that_trains(tiny_dir, tiny_overrides, tmp_path, capsys):
    cfg_path = tmp_path / "planned.yaml"
    assert main(["plan", "--model", tiny_dir, "--seq-len", "128", "--write", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert "| total |" in out and "fits      yes" in out and "CPU: fp32" in out
    written = yaml.safe_load(cfg_path.read_text())
    assert written["model"]["precision"] == "fp32" and written["forgetting"]["preset"] == "full"
    rest = [o for o in tiny_overrides if not o.startswith("model.name=")]
    assert main(["train", str(cfg_path), *rest, "forgetting.preset=none"]) == 0
    assert (
        main(["plan", "--model", "meta-llama/Llama-2-70b-hf", "--gpu-memory", "24GB"]) == 1
    )  # does not fit: exit status says so
    assert main(["plan", "--model", "meta-llama/Llama-2-70b-hf", "--gpu-memory", "lots"]) == 2


def _tiny_lora(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    return attaching.attach(model, PeftConfig(r=4, dropout=0.0), quantized=False, grad_checkpointing=False)


def _train(tiny_dir, tmp_path, limit=None, on_oom="retry"):
    """Train 4 steps; `limit(model, batch)` raises an injected out-of-memory error when it returns True."""
    torch.manual_seed(0)
    model = _tiny_lora(tiny_dir)
    rows = [{"input_ids": [1, 2, 3, 4 + i, 5], "labels": [-100, 2, 3, 4 + i, 5]} for i in range(8)]
    base = objective(ForgettingConfig(preset="none")).loss

    def loss_fn(m, batch, norms):
        if limit is not None and limit(m, batch):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return base(m, batch, norms)

    cfg = TrainConfig(max_steps=4, batch_size=4, grad_accum=1, lr=1e-2, on_oom=on_oom)
    summary = loop.fit(model, Batches(rows, 4, 0, 0), Objective(loss_fn), cfg, tmp_path)
    return model, summary


def test_oom_fallback_halves_the_micro_batch_with_the_same_update(tiny_dir, tmp_path, capsys):
    reference, _ = _train(tiny_dir, tmp_path / "a")
    model, _ = _train(tiny_dir, tmp_path / "b", limit=lambda m, b: b["input_ids"].shape[0] > 1)
    out = capsys.readouterr().out
    assert "out of memory: micro-batch 4 -> 2 rows" in out and "micro-batch 2 -> 1 rows" in out
    for (name, a), (_, b) in zip(reference.named_parameters(), model.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_oom_fallback_turns_on_checkpointing_then_stops_with_advice(tiny_dir, tmp_path, capsys):
    _, summary = _train(tiny_dir, tmp_path / "a", limit=lambda m, b: not m.get_base_model().is_gradient_checkpointing)
    assert summary["steps"] == 4 and "out of memory: gradient checkpointing on" in capsys.readouterr().out
    with pytest.raises(OutOfMemory, match=r"out of memory \(CUDA out of memory.*\(injected\)\)"):
        _train(tiny_dir, tmp_path / "b", limit=lambda m, b: True)
    with pytest.raises(OutOfMemory):
        _train(tiny_dir, tmp_path / "c", limit=lambda m, b: b["input_ids"].shape[0] > 1, on_oom="stop")


def test_an_out_of_memory_stop_gets_the_planners_advice_at_the_api_door(tiny_overrides, tmp_path, monkeypatch):
    """The recipes do not ask the planner (it sits above them); api.run_recipe adds its advice."""

    def stopped(cfg, resume):
        raise OutOfMemory("out of memory (injected)")

    monkeypatch.setattr(api, "recipes", lambda: {"sft": stopped})
    cfg = api.load_config(None, [*tiny_overrides, f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(OutOfMemory, match=r"^out of memory \(injected\); the planner \(forgetless plan\) suggests: "):
        api.run_recipe(cfg)


def test_train_auto_plans_for_this_machine(tiny_overrides):
    done = subprocess.run(
        [sys.executable, "-m", "forgetless", "train", "--auto", *tiny_overrides, "forgetting.preset=none"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "plan      SFT with LORA" in done.stdout and "CPU: fp32" in done.stdout


def test_a_planned_budget_goes_into_the_config_and_only_sft_holds_one(tiny_dir):
    p = planner.plan(tiny_dir, planner.given(24), budget_kl=0.05)
    assert "forgetting.budget.kl=0.05" in p.overrides() and "budget KL ≤ 0.05" in planner.render(p)
    assert api.load_config({}, p.overrides()).forgetting.budget.kl == 0.05
    with pytest.raises(UserError, match="--budget-kl: a forgetting budget is held by SFT runs; goal improve"):
        planner.plan(tiny_dir, planner.given(24), goal="improve", budget_kl=0.05)
