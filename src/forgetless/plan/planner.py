"""`forgetless plan`: method, precision and batch settings from the hardware, the goal and the model.

The decision rules are data (the tables below), each row citing where it comes from; the
memory estimator (memory.py) then decides what actually fits, and the plan steps down
(smaller micro-batch with more accumulation, gradient checkpointing, 4-bit, shorter
sequences) until it does, saying why at each step. Forgetting controls stay on in every plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from forgetless.errors import UserError
from forgetless.model import hardware
from forgetless.plan import memory, shapes
from forgetless.plan.memory import Setup, Shape

# By GPU memory: (at least GB, method, what else is feasible). Source: the product brief's
# decision table, "by GPU memory, 4-8 GB -> QLoRA / 4-bit; 16 GB -> LoRA + bf16; 24-48 GB ->
# DPO + LoRA is feasible; 80 GB and up -> RLHF feasible" (issue 6, Build 3).
MEMORY_TIERS = [
    (80.0, "lora", "RLHF (reward model + PPO) is feasible"),  # "80 GB and up -> RLHF feasible"
    (24.0, "lora", "DPO with LoRA is feasible"),  # "24-48 GB -> DPO + LoRA is feasible"
    (8.0, "lora", "LoRA in bf16/fp16"),  # "16 GB -> LoRA + bf16" (from 8 GB up the estimator decides)
    (0.0, "qlora", "QLoRA: 4-bit base"),  # "4-8 GB -> QLoRA / 4-bit"
]

# By goal. Source: "by goal, new capability -> RLHF, improving existing behaviour -> DPO, weak GPU
# or short deadline -> DPO" (issue 6, Build 3; issue 7's choice of DPO versus RLHF).
GOALS = {"sft": "sft", "improve": "dpo", "new-capability": "rlhf"}
RLHF_MIN_GB = 80.0  # below it the GPU is "weak" for RLHF: DPO instead ("weak GPU -> DPO")

# By need. Source: "several tasks -> adapters, inference speed -> IA3, strengthening existing
# prompts -> prefix tuning, very small memory -> QLoRA" (issue 6, Build 3; issue 5's choice matrix).
NEEDS = {
    "several-tasks": "adapter",
    "fast-inference": "ia3",
    "strengthen-prompts": "prefix",
    "tiny-memory": "qlora",
}

FITS_SHARE = 0.9  # plan to use at most 90% of the memory: the rest absorbs fragmentation and spikes


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    memory_gb: float  # one GPU's memory, or the machine's RAM on CPU
    bf16: bool = False
    capability: float | None = None  # CUDA compute capability, e.g. 8.0
    name: str = ""


def detect() -> Hardware:
    found = hardware.gpus()
    if found:
        g = found[0]
        return Hardware("cuda", g["memory_gb"], g["bf16"], float(g["capability"]), g["name"])
    total, available = hardware.ram_gb()
    return Hardware("cpu", available, name=f"CPU ({total} GB RAM)")


def given(memory_gb: float, bf16: bool = True) -> Hardware:
    """A GPU described by its memory (`--gpu-memory`); bf16 assumed unless told otherwise."""
    return Hardware("cuda", memory_gb, bf16, 8.0 if bf16 else 7.5, f"GPU with {memory_gb:g} GB")


def precision(hw: Hardware) -> tuple[str, str]:
    """bf16 where supported (A100, H100, L40 class), fp16 where it is missing, fp32 on CPU and old GPUs."""
    if hw.device == "cpu":
        return "fp32", "CPU: fp32 (bf16 matmul is several times slower than fp32 on CPUs)"
    if hw.bf16:
        return "bf16", "the GPU supports bf16 (compute capability 8.0+): bf16, no loss scaling needed"
    if hw.capability is not None and hw.capability < 7.0:
        return "fp32", f"compute capability {hw.capability:g} has no fast fp16 tensor cores: fp32"
    return "fp16", "no bf16 on this GPU: fp16 with loss scaling"


@dataclass
class Plan:
    model: str
    shape_source: str
    hardware: Hardware
    method: str  # the memory setup: lora (full-precision base), qlora (4-bit), lora_8bit
    recipe: str
    precision: str
    setup: Setup
    grad_accum: int
    estimate: dict[str, float]
    fits: bool
    reasons: list[str] = field(default_factory=list)
    peft_method: str = "lora"  # what trains on that base: lora, ia3, prefix or adapter
    budget_kl: float | None = None  # forgetting.budget.kl the plan's config holds

    def overrides(self) -> list[str]:
        """Config overrides that realise this plan (the training data must suit the recipe: pairs for DPO)."""
        quant = {"qlora": "4bit", "lora_8bit": "8bit"}.get(self.method, "none")
        return [
            f"recipe={self.recipe}",
            *(["rlhf.reward_model=runs/reward"] if self.recipe == "rlhf" else []),
            f"model.name={self.model}",
            f"model.precision={self.precision}",
            f"model.quantization={quant}",
            f"peft.method={self.peft_method}",
            *([f"peft.r={self.setup.r}"] if self.peft_method == "lora" else []),
            f"data.max_length={self.setup.seq_len}",
            f"train.batch_size={self.setup.batch_size}",
            f"train.grad_accum={self.grad_accum}",
            f"train.grad_checkpointing={str(self.setup.grad_checkpointing).lower()}",
            f"train.optimizer={self.setup.optimizer}",
            "forgetting.preset=full",  # forgetting controls stay on in every plan
            *([f"forgetting.budget.kl={self.budget_kl}"] if self.budget_kl is not None else []),
        ]


def _tier(memory_gb: float) -> tuple[str, str]:
    for floor, method, note in MEMORY_TIERS:
        if memory_gb >= floor:
            return method, note
    raise AssertionError("the last tier starts at 0 GB")


def choose(hw: Hardware, goal: str, need: str | None, short_deadline: bool) -> tuple[str, str, list[str]]:
    """(method, recipe, reasons) from the rule tables, before checking what fits."""
    if goal not in GOALS:
        raise UserError(f"--goal {goal}: choose one of {', '.join(GOALS)}")
    if need is not None and need not in NEEDS:
        raise UserError(f"--need {need}: choose one of {', '.join(NEEDS)}")
    method, note = _tier(hw.memory_gb) if hw.device == "cuda" else ("lora", "CPU: LoRA in fp32")
    reasons = [f"{hw.memory_gb:g} GB on {hw.name or hw.device}: {note}"]
    if need is not None:
        method = NEEDS[need]
        reasons.append(f"need '{need}': {method}")
    recipe = GOALS[goal]
    reasons.append(f"goal '{goal}': {recipe.upper()}")
    if recipe == "rlhf" and (hw.device != "cuda" or hw.memory_gb < RLHF_MIN_GB):
        recipe = "dpo"
        reasons.append(f"under {RLHF_MIN_GB:g} GB RLHF (policy, value head, reward model) is too heavy: DPO instead")
    elif recipe == "rlhf" and short_deadline:
        recipe = "dpo"
        reasons.append("short deadline: DPO (no reward model to train first)")
    if recipe == "rlhf":
        reasons.append("RLHF needs a reward model first: forgetless train configs/reward.yaml output_dir=runs/reward")
    return method, recipe, reasons


def _fits(est: dict[str, float], hw: Hardware) -> bool:
    return est["total"] <= FITS_SHARE * hw.memory_gb


def step_down(shape: Shape, setup: Setup, grad_accum: int, hw: Hardware) -> tuple[Setup, int, list[str]]:
    """Shrink until the estimate fits: micro-batch (same effective batch), checkpointing, 4-bit, length."""
    reasons: list[str] = []

    def need(s: Setup) -> str:
        return f"{memory.estimate(shape, s)['total']:.1f} GB > {FITS_SHARE * hw.memory_gb:.1f} GB usable"

    while not _fits(memory.estimate(shape, setup), hw):
        est = memory.estimate(shape, setup)
        static = est["total"] - est["activations"]
        if static > FITS_SHARE * hw.memory_gb and setup.method in ("lora", "lora_8bit"):
            # Smaller batches cannot help when the weights alone do not fit.
            reasons.append(f"weights, adapters and overhead alone take {static:.1f} GB: 4-bit base (QLoRA)")
            setup = replace(setup, method="qlora")
        elif setup.batch_size > 1:
            reasons.append(
                f"{need(setup)}: micro-batch {setup.batch_size} -> {setup.batch_size // 2}, "
                f"grad_accum {grad_accum} -> {grad_accum * 2} (same effective batch)"
            )
            setup, grad_accum = replace(setup, batch_size=setup.batch_size // 2), grad_accum * 2
        elif not setup.grad_checkpointing:
            reasons.append(f"{need(setup)}: gradient checkpointing on (recompute activations; ~30% slower)")
            setup = replace(setup, grad_checkpointing=True)
        elif setup.method in ("lora", "lora_8bit"):
            reasons.append(f"{need(setup)}: 4-bit base (QLoRA)")
            setup = replace(setup, method="qlora")
        elif setup.seq_len > 256:
            reasons.append(f"{need(setup)}: sequences {setup.seq_len} -> {setup.seq_len // 2} tokens")
            setup = replace(setup, seq_len=setup.seq_len // 2)
        else:
            break
    return setup, grad_accum, reasons


def plan(
    model: str,
    hw: Hardware,
    goal: str = "sft",
    need: str | None = None,
    seq_len: int = 1024,
    batch_size: int = 4,
    grad_accum: int = 4,
    r: int = 8,
    short_deadline: bool = False,
    processes: int = 1,
    sharding: str = "ddp",
    budget_kl: float | None = None,
) -> Plan:
    """The plan for one device of `processes` (memory per device under `sharding`: ddp, zero2, fsdp, zero3);
    `budget_kl`: a forgetting budget (KL to the base per token) the planned SFT run holds."""
    shape, source = shapes.resolve_shape(model)
    method, recipe, reasons = choose(hw, goal, need, short_deadline)
    if budget_kl is not None:
        reasons.append(_budget_reason(budget_kl, goal, recipe))
    # The memory estimator models base precision x LoRA; IA3, prefix and adapters train fewer
    # parameters than LoRA r=8, so LoRA's estimate on the same base bounds theirs.
    peft_method, method = (method, "lora") if method in ("ia3", "prefix", "adapter") else ("lora", method)
    prec, why = precision(hw)
    reasons.append(why)
    setup = Setup(
        method=method,
        dtype_bytes=4 if prec == "fp32" else 2,
        batch_size=batch_size,
        seq_len=seq_len,
        grad_checkpointing=hw.device == "cuda" and method == "qlora",
        r=r,
        lwf=True,  # the default forgetting controls: LwF's teacher logits are part of the peak
        device=hw.device,
        processes=processes,
        sharding=sharding,
    )
    setup, grad_accum, more = step_down(shape, setup, grad_accum, hw)
    reasons += more
    method = setup.method
    est = memory.estimate(shape, setup)
    fits = _fits(est, hw)
    if not fits:
        needed = math.ceil(est["total"] / FITS_SHARE)
        reasons.append(
            f"does not fit even at micro-batch 1, 4-bit, checkpointing and {setup.seq_len} tokens: needs about "
            f"{needed} GB; use a larger GPU, several GPUs with FSDP (see docs/scaling.md) or a smaller model"
        )
    return Plan(model, source, hw, method, recipe, prec, setup, grad_accum, est, fits, reasons, peft_method, budget_kl)


def _budget_reason(budget_kl: float, goal: str, recipe: str) -> str:
    if recipe != "sft":
        raise UserError(f"--budget-kl: a forgetting budget is held by SFT runs; goal {goal} plans {recipe}")
    return f"forgetting budget: LwF's weight is steered to keep KL to the base ≤ {budget_kl} per token"


def render(p: Plan) -> str:
    """The plan as a user reads it: choice, memory breakdown, reasons."""
    s = p.setup
    lines = [
        f"model     {p.model} ({shapes.resolve_shape(p.model)[0].params() / 1e9:.2f} B parameters; shape from "
        f"{p.shape_source})",
        f"hardware  {p.hardware.name or p.hardware.device}: {p.hardware.memory_gb:g} GB"
        + (f" per device, {s.processes} devices with {s.sharding.upper()}" if s.processes > 1 else ""),
        f"plan      {p.recipe.upper()} with {_method_name(p)}, {p.precision}, micro-batch {s.batch_size} x "
        f"grad_accum {p.grad_accum}, {s.seq_len} tokens, gradient checkpointing "
        f"{'on' if s.grad_checkpointing else 'off'}, forgetting preset full (LwF + rehearsal)"
        + (f", budget KL ≤ {p.budget_kl}" if p.budget_kl is not None else ""),
        f"fits      {'yes' if p.fits else 'NO'}: estimated peak {p.estimate['total']:.2f} GB of "
        f"{p.hardware.memory_gb:g} GB",
        "",
        "| part | GB |",
        "|---|---|",
        *[f"| {k} | {v:.3f} |" for k, v in p.estimate.items()],
        "",
        "why:",
        *[f"  - {r}" for r in p.reasons],
    ]
    return "\n".join(lines)


def plan_for(cfg) -> Plan:
    """The plan for a training config on the detected hardware, from its model, length, batch and rank."""
    return plan(
        cfg.model.name,
        detect(),
        seq_len=cfg.data.max_length,
        batch_size=cfg.train.batch_size,
        grad_accum=cfg.train.grad_accum,
        r=cfg.peft.r,
    )


def advice(cfg) -> str:
    """What to change after an out-of-memory stop: the plan for this config on the detected hardware."""
    p = plan_for(cfg)
    if not p.fits:
        return p.reasons[-1]
    keep = [o for o in p.overrides() if not o.startswith(("model.name=", "peft.method=", "recipe=", "rlhf."))]
    return f"the planner (forgetless plan) suggests: {' '.join(keep)}"


def _method_name(p: Plan) -> str:
    if p.peft_method == "lora":
        return f"{p.method.upper()} (r={p.setup.r})"
    base = {"qlora": ", 4-bit base", "lora_8bit": ", 8-bit base"}.get(p.method, "")
    return f"{p.peft_method.upper()}{base}"
