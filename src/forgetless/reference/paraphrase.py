"""The model side of `forgetless data augment`: an instruct model paraphrases or back-translates
the prompt fields (sampled, seeded), and the drift filter scores the answer's likelihood under the
original and the rewritten prompt. The rows, synonyms, filters and output are data/augment.py's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from forgetless.config.schema import ModelConfig
from forgetless.data import augment, similarity
from forgetless.data.batching import collate
from forgetless.data.formats import to_example
from forgetless.data.render import encode
from forgetless.model import loader as models
from forgetless.model.forward import logits_of
from forgetless.model.generate import generate
from forgetless.model.likelihood import ce_sum, count_targets


def augment_file(src: str, out: Path, s: augment.Settings) -> dict:
    """Write the originals and the kept variants to `out`; returns the counts (also in OUT.augment.json)."""
    s.check()
    rows, lines = augment.read_rows(src, s)
    if s.method == "synonyms":
        variants, nll = augment.rewrite_with_synonyms(rows, s), None
    else:
        model, tokenizer, _ = models.load(ModelConfig(name=s.model))
        variants = rewrite_with_model(rows, s, model, tokenizer)
        nll = lambda raw, fmt: answer_nll(model, tokenizer, raw, fmt)  # noqa: E731
    kept, rejected = augment.select(rows, variants, s, nll)
    return augment.write(src, out, s, rows, lines, kept, rejected)


@torch.no_grad()
def answer_nll(model, tokenizer, raw: dict, fmt: str) -> float:
    """Mean negative log-likelihood of the row's answer tokens given its prompt."""
    b = collate([encode(tokenizer, to_example(raw, fmt, "augment"))], tokenizer.pad_token_id)
    b = {k: v.to(model.device) for k, v in b.items()}
    return float(ce_sum(logits_of(model, b["input_ids"], b["attention_mask"]), b["labels"])) / max(
        count_targets(b["labels"]), 1
    )


def _generate(model, tokenizer, asks: list[tuple[str, str]], desc: str, temperature: float) -> list[str]:
    """Sampled answers to (prompt, original text) pairs, similar lengths batched together. The token
    budget is three times the original's tokens (a Japanese rendering takes more tokens) plus 16."""
    need = [3 * len(tokenizer(text)["input_ids"]) + 16 for _, text in asks]
    order = sorted(range(len(asks)), key=lambda i: need[i])
    out = [""] * len(asks)
    size = 16
    for start in tqdm(range(0, len(order), size), desc=desc, unit="batch", total=-(-len(order) // size)):
        idx = order[start : start + size]
        convs = [[{"role": "user", "content": asks[i][0]}] for i in idx]
        budget = min(384, max(need[i] for i in idx))
        answers = generate(model, tokenizer, convs, budget, len(idx), temperature=temperature, top_p=0.95)
        for i, a in zip(idx, answers, strict=True):
            out[i] = a
    return out


def rewrite_with_model(rows: list[augment.Row], s: augment.Settings, model, tokenizer) -> list[list[list[str]]]:
    """variants[row][k][field] for the model methods. A text that recurs (an instruction shared by
    every row) is rewritten once per k, not once per row: same variants, a fraction of the cost."""
    texts = list(dict.fromkeys((augment.get(r.raw, p), r.language) for r in rows for p in r.fields))
    jobs = [(t, lang) for t, lang in texts for _ in range(s.n)]
    torch.manual_seed(s.seed)
    if s.method == "paraphrase":
        asks = [(augment.ASK["paraphrase"][lang].format(text=t), t) for t, lang in jobs]
        new = _generate(model, tokenizer, asks, "augment: paraphrase", s.temperature)
    else:
        pivot = {"en": "ja", "ja": "en"}
        asks = [(augment.ASK["translate"].format(target=augment.NAMES[pivot[lang]], text=t), t) for t, lang in jobs]
        first = _generate(model, tokenizer, asks, "augment: translate", s.temperature)
        there = [augment.clean(x, t) for x, (t, _) in zip(first, jobs, strict=True)]
        # Only a real translation is worth translating back (and a failed one would be costly to).
        fine = [
            i for i, (x, (_, lang)) in enumerate(zip(there, jobs, strict=True)) if similarity.language(x) == pivot[lang]
        ]
        back = [
            (augment.ASK["translate"].format(target=augment.NAMES[jobs[i][1]], text=there[i]), jobs[i][0]) for i in fine
        ]
        new = [augment.PIVOT_FAILED] * len(jobs)
        for i, x in zip(fine, _generate(model, tokenizer, back, "augment: translate back", s.temperature), strict=True):
            new[i] = x
    variants = {
        (t, lang): [x if x == augment.PIVOT_FAILED else augment.clean(x, t) for x in new[i * s.n : (i + 1) * s.n]]
        for i, (t, lang) in enumerate(texts)
    }
    return [[[variants[(augment.get(r.raw, p), r.language)][k] for p in r.fields] for k in range(s.n)] for r in rows]
