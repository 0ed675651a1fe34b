"""Peak training memory, estimated from a model's shape and a training setup.

The estimate is a sum of parts a user can reason about: frozen or trained weights, gradients,
optimizer state, adapters (their weights, gradients and optimizer state), activations kept for
the backward pass, and a fixed framework overhead. Sizes are in GB = 1e9 bytes, the unit the
published tables use. `benchmarks/memory.py` checks the estimate against measured peaks.

Bytes per parameter, as forgetless trains (weights stay in the compute dtype, no fp32 master copy):
  full fine-tuning  weights b + gradients b + AdamW m, v 2b (b = 4 fp32, 2 fp16/bf16); 8-bit AdamW: 2
  LoRA adapters     fp32 (PEFT upcasts them): 4 + 4 + AdamW 8 = 16 (8-bit AdamW: 4 + 4 + 2 = 10)
  QLoRA base        NF4 4 bits + double-quantized block scales (8 bits per 64 weights, plus fp32
                    per 256 blocks) = 4.127 bits on every attention/MLP linear; embeddings, norms
                    and the output layer stay in the compute dtype
  8-bit base        1 byte per linear weight (+ one fp32 scale per row)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from forgetless.errors import UserError
from forgetless.model.families import family

GB = 1e9
NF4_BYTES = (4 + 8 / 64 + 32 / (64 * 256)) / 8
# CUDA context, cuBLAS workspace and allocator slack; on CPU: Python, torch, transformers, tokenizer.
OVERHEAD_GB = {"cuda": 0.8, "cpu": 0.55}


@dataclass(frozen=True)
class Shape:
    """What memory depends on in a decoder-only transformer (gated MLP, grouped-query attention,
    optionally a mixture of experts)."""

    vocab: int
    hidden: int
    layers: int
    intermediate: int  # MLP width (of one expert in a mixture of experts)
    heads: int
    kv_heads: int
    tied: bool = False
    head_dim: int | None = None  # None: hidden // heads (Qwen3 and Gemma use larger heads)
    experts: int = 0  # 0: a dense MLP; else experts per layer (Mixtral: 8)
    active_experts: int = 0  # experts each token passes through (Mixtral: 2)
    extra: int = 0  # parameters outside the decoder that load with it (Gemma-3's vision tower)

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.head_size * self.kv_heads

    @property
    def mlp_width(self) -> int:
        """MLP values per token: every expert's width a token passes through."""
        return self.intermediate * max(1, self.active_experts)

    def layer_linears(self) -> list[tuple[int, int]]:
        """(in, out) of each adapted linear in one block: q, k, v, o, then gate, up, down of every expert."""
        h, q, kv, i = self.hidden, self.head_size * self.heads, self.kv_dim, self.intermediate
        mlp = [(h, i), (h, i), (i, h)] * max(1, self.experts)
        return [(h, q), (h, kv), (h, kv), (q, h), *mlp]

    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.layer_linears())

    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        norms = self.hidden * (2 * self.layers + 1)
        router = self.layers * self.hidden * self.experts
        return self.linear_params() + embeddings + norms + router + self.extra

    def lora_params(self, r: int) -> int:
        return self.layers * sum(r * (a + b) for a, b in self.layer_linears())


def _per_layer_inputs(cfg: dict) -> int:
    """Gemma-4's per-layer input embeddings: a second token table as wide as every layer's slice together,
    the projection of the hidden state onto it, and each layer's gate and projection back (the table alone
    is vocabulary x layers x width: 262144 x 35 x 256 = 2.3B parameters in E2B's config)."""
    width, layers = cfg.get("hidden_size_per_layer_input") or 0, cfg["num_hidden_layers"]
    table = cfg.get("vocab_size_per_layer_input", cfg["vocab_size"]) * layers * width
    return table + cfg["hidden_size"] * layers * width * 3 + width


def shape_from_config(cfg: dict) -> Shape:
    known = family(cfg.get("model_type"))
    # a family's record says where its decoder's shape is; an unknown vision-language model keeps it in text_config too
    where = known.shape_in if known else ("text_config" if "text_config" in cfg else "config")
    if where == "text_config":
        if "text_config" not in cfg:
            raise UserError(f"model config of {cfg.get('model_type')} has no text_config (the decoder's shape)")
        cfg = cfg["text_config"]
    try:
        heads = cfg["num_attention_heads"]
        experts = cfg.get("num_local_experts") or cfg.get("num_experts") or 0
        return Shape(
            extra=_per_layer_inputs(cfg),
            vocab=cfg["vocab_size"],
            hidden=cfg["hidden_size"],
            layers=cfg["num_hidden_layers"],
            intermediate=(cfg.get("moe_intermediate_size") if experts else None) or cfg["intermediate_size"],
            heads=heads,
            kv_heads=cfg.get("num_key_value_heads") or heads,
            tied=bool(cfg.get("tie_word_embeddings", False)),
            head_dim=cfg.get("head_dim"),
            experts=experts,
            active_experts=cfg.get("num_experts_per_tok") or 0 if experts else 0,
        )
    except KeyError as e:
        raise UserError(f"model config has no {e}; the estimator knows decoder-only (Llama-style) models") from None


Method = Literal["full", "lora", "qlora", "lora_8bit"]


@dataclass(frozen=True)
class Setup:
    method: Method = "lora"
    dtype_bytes: int = 2  # compute dtype: 4 fp32 (CPU), 2 bf16/fp16
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    batch_size: int = 1
    seq_len: int = 512
    grad_checkpointing: bool = False
    r: int = 8
    lora_dropout: bool = True  # dropout > 0 keeps a dropped copy of every distinct adapted input
    lwf: bool = False  # the teacher's logits (adapters off) live next to the student's
    loss_chunk: int = 1024  # train.loss_chunk: positions whose logits exist at once
    attention: Literal["sdpa", "eager"] = "sdpa"  # eager keeps the heads × S × S scores
    device: Literal["cuda", "cpu"] = "cuda"
    processes: int = 1
    sharding: Literal["ddp", "fsdp", "zero2", "zero3"] = "ddp"


def _activations(shape: Shape, s: Setup) -> float:
    """Bytes alive at the start of the backward pass.

    Per block, what autograd saves (counted with saved-tensor hooks on the embedded model): the
    inputs of the norms, projections and MLP products (8H + 2·kv + 4I values per token); LoRA's
    dropout adds a dropped copy of every distinct adapted input and its mask (3H + I values, plus a
    byte each: q/k/v and gate/up share theirs, adapters/dropout.py), and its rank-r intermediates.
    The loss: the logits of at most loss_chunk positions in the compute dtype plus two float32
    copies (the cross-entropy runs in float32: the log-probabilities it saves, and the gradient its
    backward produces).
    """
    tokens = s.batch_size * s.seq_len
    h, kv, i, b = shape.hidden, shape.kv_dim, shape.mlp_width, s.dtype_bytes
    block = tokens * (8 * h + 2 * kv + 4 * i) * b  # i: the widths of the experts a token passes through
    if s.attention == "eager":
        block += 2 * s.batch_size * shape.heads * s.seq_len**2 * b
    if s.method != "full":
        block += tokens * 7 * s.r * b
        if s.lora_dropout:
            block += tokens * (3 * h + i) * (b + 1)
    kept = shape.layers * tokens * h * b + block if s.grad_checkpointing else shape.layers * block
    # The losses make vocabulary-wide logits for at most loss_chunk positions at a time (forward.py).
    logits = min(tokens, s.loss_chunk) * shape.vocab * (b + 2 * 4 + (b if s.lwf else 0))  # (+ the teacher's)
    return kept + logits


def estimate(shape: Shape, s: Setup) -> dict[str, float]:
    """Peak memory per device in GB, by part. Raises UserError for combinations that cannot train."""
    n, lin, b = shape.params(), shape.linear_params(), s.dtype_bytes
    eight_bit = s.optimizer != "adamw"
    if s.method == "full":
        weights = n * b
        grads = n * b
        optim = n * (2 if eight_bit else 2 * b)
        adapters = 0.0
        if s.lwf:
            weights += n * b  # a frozen teacher copy: full fine-tuning has no adapters to switch off
    else:
        rest = n - lin
        per_linear = {"lora": b, "qlora": NF4_BYTES, "lora_8bit": 1.0}[s.method]
        # On CPU the fp32 checkpoint read while quantizing is not counted: the loader lets its memory
        # map go once the quantized model owns its tensors (model/loader.release_checkpoint_pages).
        weights = lin * per_linear + rest * b
        grads = optim = 0.0
        adapters = shape.lora_params(s.r) * (10 if eight_bit else 16)
    # Spreading over processes: DDP replicates everything (and keeps a gradient bucket copy);
    # ZeRO-2 shards gradients and optimizer state; FSDP full shard and ZeRO-3 shard weights too,
    # gathering one block's weights at a time.
    p = s.processes
    if p > 1:
        if s.sharding == "ddp":
            grads += grads + adapters * 4 / 16  # the all-reduce buckets hold one more gradient copy
        elif s.sharding == "zero2":
            grads, optim = grads / p, optim / p
        else:
            block = sum(a * c for a, c in shape.layer_linears()) * (b if s.method == "full" else per_linear)
            weights, grads, optim = weights / p + 2 * block, grads / p, optim / p
            adapters /= p
    parts = {
        "weights": weights,
        "gradients": grads,
        "optimizer": optim,
        "adapters": adapters,
        "activations": _activations(shape, s),
    }
    out = {k: v / GB for k, v in parts.items()}
    out["overhead"] = OVERHEAD_GB[s.device]
    out["total"] = sum(out.values())
    return {k: round(v, 3) for k, v in out.items()}
