"""θ₀ and the diagonal Fisher of the trainable weights: the references the L2 and EWC penalties pull
towards, taken from the base model once before training (the Fisher is saved in the run directory,
so a resumed run reuses it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from forgetless.data.batching import collate
from forgetless.model.forward import logits_of
from forgetless.model.likelihood import IGNORE


@dataclass
class Anchor:
    """θ₀ of the trainable weights (and their diagonal Fisher for EWC), for the L2/EWC penalties."""

    names: list[str]
    params: list[torch.nn.Parameter]
    initial: list[torch.Tensor]
    fisher: list[torch.Tensor] | None = None


def make_anchor(model) -> Anchor:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return Anchor([n for n, _ in named], [p for _, p in named], [p.detach().clone() for _, p in named])


def estimate_fisher(model, anchor: Anchor, rows: list[dict], pad_id: int) -> list[torch.Tensor]:
    """Empirical diagonal Fisher: mean over rows of the squared gradient of the row's mean
    answer log-likelihood, one row at a time (a batch gradient would average before squaring).

    With LoRA, B starts at zero, so the gradient (and the Fisher) of every A matrix is zero at
    initialisation: EWC then anchors the B matrices only. The docs say so.
    """
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in anchor.params]
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it is
    for row in tqdm(rows, desc="ewc: Fisher", unit="row"):
        batch = {k: v.to(model.device) for k, v in collate([row], pad_id).items()}
        logits = logits_of(model, batch["input_ids"], batch["attention_mask"])
        answer = batch["labels"][:, 1:] != IGNORE
        nll = F.cross_entropy(logits[:, :-1][answer].float(), batch["labels"][:, 1:][answer])
        grads = torch.autograd.grad(nll, anchor.params, allow_unused=True)
        for f, g in zip(fisher, grads, strict=True):
            if g is not None:
                f += g.detach().float() ** 2
    model.train(was_training)
    return [f / max(len(rows), 1) for f in fisher]


def fisher_cached(model, anchor: Anchor, rows: list[dict], pad_id: int, path: Path) -> list[torch.Tensor]:
    """The Fisher is estimated once per run and saved with it, so a resumed run reuses it."""
    if path.exists():
        saved = load_file(str(path))
        return [saved[n].to(p.device) for n, p in zip(anchor.names, anchor.params, strict=True)]
    fisher = estimate_fisher(model, anchor, rows, pad_id)
    save_file({n: f.contiguous().cpu() for n, f in zip(anchor.names, fisher, strict=True)}, str(path))
    return fisher
