"""The LwF teacher, cached: the base model's top-k next-token log-probabilities per training row.

`forgetting.lwf.teacher: cached` runs the base model once over every training row (task and
rehearsal rows) before the adapters exist, keeps at each position the k most likely tokens'
log-probabilities at the LwF temperature plus the log of the remaining (tail) mass, and saves
them with the run (`teacher_topk.safetensors`: k × 6 + 4 bytes per token). Training then needs
no teacher forward pass; the KL is taken between the coarsened distributions
(`losses.kl_topk_sum`). Rows are found by a hash of their token ids, so the cache serves padded
and packed batches, any order, and a resumed run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from forgetless.data.batching import collate
from forgetless.model.forward import logits_of
from forgetless.model.likelihood import soften


def row_key(ids) -> str:
    data = torch.as_tensor(ids, dtype=torch.int32).cpu().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=12).hexdigest()


@dataclass
class TeacherCache:
    keys: dict[str, int]  # row hash -> row number
    offsets: torch.Tensor  # (R + 1,) first entry of each row in the flat tensors
    idx: torch.Tensor  # (N, k) int32 token ids
    logp: torch.Tensor  # (N, k) float16 log-probabilities
    tail: torch.Tensor  # (N,) float32 log of 1 - Σ top-k
    k: int
    temperature: float

    def row(self, ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = row_key(ids)
        if key not in self.keys:
            # `cached` rebuilds a cache that does not cover the rows, so this is a bug, not bad input.
            raise KeyError(
                "a training row is missing from the cached teacher; delete the run's teacher_topk.safetensors"
            )
        r = self.keys[key]
        a, b = int(self.offsets[r]), int(self.offsets[r + 1])
        return self.idx[a:b], self.logp[a:b], self.tail[a:b]

    def lookup(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T-1, k) ids and log-probs and (B, T-1) tail aligned with the batch's shifted positions
        (position t predicts token t+1); positions of no row stay zero (the loss masks skip them)."""
        ids = batch["input_ids"].cpu()
        shape = (ids.shape[0], ids.shape[1] - 1)
        out_idx = torch.zeros((*shape, self.k), dtype=torch.int32)
        out_logp = torch.zeros((*shape, self.k), dtype=torch.float16)
        out_tail = torch.zeros(shape, dtype=torch.float32)
        for b, start, n in _segments(batch):
            t_idx, t_logp, t_tail = self.row(ids[b, start : start + n])
            out_idx[b, start : start + n - 1] = t_idx
            out_logp[b, start : start + n - 1] = t_logp
            out_tail[b, start : start + n - 1] = t_tail
        device = batch["input_ids"].device
        return out_idx.to(device), out_logp.to(device), out_tail.to(device)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.idx, self.logp, self.tail, self.offsets))


def _segments(batch: dict[str, torch.Tensor]):
    """(sequence, start, length) of every row in a padded or packed batch."""
    lengths = batch["attention_mask"].sum(-1).tolist()
    if "position_ids" not in batch:
        yield from ((b, 0, int(n)) for b, n in enumerate(lengths))
        return
    pos, mask = batch["position_ids"].cpu(), batch["attention_mask"].cpu()
    for b in range(pos.shape[0]):
        starts = ((pos[b] == 0) & (mask[b] == 1)).nonzero().flatten().tolist()
        ends = starts[1:] + [int(lengths[b])]  # real tokens come first; padding follows the last row
        yield from ((b, s, e - s) for s, e in zip(starts, ends, strict=True))


@torch.no_grad()
def build(model, rows: list[dict], pad_id: int, k: int, temperature: float, batch_size: int = 8) -> TeacherCache:
    """Top-k log-probabilities of `model` (the base, no adapters yet) at every position of every row."""

    unique: dict[str, list[int]] = {}
    for r in rows:
        unique.setdefault(row_key(r["input_ids"]), r["input_ids"])
    keys = list(unique)
    ordered = sorted(range(len(keys)), key=lambda i: len(unique[keys[i]]))
    parts: dict[int, tuple] = {}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for s in tqdm(range(0, len(ordered), batch_size), desc="lwf: caching the teacher", unit="batch"):
        chunk = ordered[s : s + batch_size]
        batch = collate([{"input_ids": unique[keys[i]], "labels": unique[keys[i]]} for i in chunk], pad_id)
        logits = logits_of(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        logp = F.log_softmax(soften(logits[:, :-1], temperature), dim=-1)
        top, top_idx = logp.topk(k, dim=-1)
        tail = torch.log1p(-top.exp().sum(-1).clamp(max=1 - 1e-7))
        for j, i in enumerate(chunk):
            n = len(unique[keys[i]]) - 1
            parts[i] = (top_idx[j, :n].int().cpu(), top[j, :n].half().cpu(), tail[j, :n].cpu())
    model.train(was_training)
    sizes = [parts[i][0].shape[0] for i in range(len(keys))]
    offsets = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()], dtype=torch.long)
    cat = [torch.cat([parts[i][c] for i in range(len(keys))]) for c in range(3)]
    return TeacherCache({key: i for i, key in enumerate(keys)}, offsets, *cat, k=k, temperature=temperature)


def save(cache: TeacherCache, path: Path) -> None:
    tensors = {"offsets": cache.offsets, "idx": cache.idx, "logp": cache.logp, "tail": cache.tail}
    meta = {"keys": json.dumps(list(cache.keys)), "k": str(cache.k), "temperature": repr(cache.temperature)}
    save_file({n: t.contiguous() for n, t in tensors.items()}, str(path), metadata=meta)


def load(path: Path) -> TeacherCache:

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    t = load_file(str(path))
    keys = {key: i for i, key in enumerate(json.loads(meta["keys"]))}
    return TeacherCache(keys, t["offsets"], t["idx"], t["logp"], t["tail"], int(meta["k"]), float(meta["temperature"]))


def cached(model, rows: list[dict], pad_id: int, k: int, temperature: float, path: Path) -> TeacherCache:
    """The run's cache: read when it exists with the same k and temperature (and covers the rows), else built."""
    if path.exists():
        cache = load(path)
        covered = all(row_key(r["input_ids"]) in cache.keys for r in rows)
        if cache.k == k and cache.temperature == temperature and covered:
            return cache
    cache = build(model, rows, pad_id, k, temperature)
    save(cache, path)
    return cache
