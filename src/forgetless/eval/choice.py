"""Multiple-choice benchmarks scored by log-likelihood, from local JSONL files.

File format, one question per line:
    {"question": "What is 2 + 3?", "choices": ["4", "5", "6"], "answer": 1}
`answer` is a 0-based index or a letter ("B"). Rows with "fewshot": true are not scored; they
are shown, in file order, before every scored question as worked examples.

Each choice is scored as the sum of the log-probabilities of " " + choice after the prompt
    [few-shot blocks "Question: ...\\nAnswer: <correct choice>\\n\\n"] "Question: <q>\\nAnswer:"
(plain text, no chat template, as lm-evaluation-harness does). Two accuracies are reported:
raw (highest sum) and length-normalised (highest sum per UTF-8 byte of the choice, which stops
long choices from losing only because they have more tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from forgetless.data.formats import resolve_path
from forgetless.errors import UserError
from forgetless.eval import stats
from forgetless.model.forward import cache_argument, logits_of, virtual_tokens
from forgetless.model.prefix import cache_of, copies
from forgetless.model.shared_heads import common_prefix


@dataclass(frozen=True)
class Item:
    where: str
    question: str
    choices: tuple[str, ...]
    answer: int


def _answer_index(value, n: int, where: str) -> int:
    if isinstance(value, str) and len(value.strip()) == 1 and value.strip().isalpha():
        value = ord(value.strip().upper()) - ord("A")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < n:
        raise UserError(f"{where}: 'answer' must be a choice index 0..{n - 1} or a letter, got {value!r}")
    return value


def read_items(ref: str, limit: int | None = None) -> tuple[list[Item], list[Item]]:
    """(scored items, few-shot examples) of a benchmark file; a malformed row is an error. `limit`
    (eval.max_questions): that many items, picked evenly through the file (every row is still checked)."""
    path = resolve_path(ref)
    items, shots = [], []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: not valid JSON ({e.msg})") from None
        q, choices = row.get("question"), row.get("choices")
        if not isinstance(q, str) or not q.strip():
            raise UserError(f"{where}: 'question' must be a non-empty string")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise UserError(f"{where}: 'choices' must be a list of at least two non-empty strings")
        item = Item(where, q, tuple(choices), _answer_index(row.get("answer"), len(choices), where))
        (shots if row.get("fewshot") else items).append(item)
    if not items:
        raise UserError(f"{path}: no questions to score")
    return stats.spread(items, limit), shots


def prompt(item: Item, shots: list[Item]) -> str:
    blocks = [f"Question: {s.question}\nAnswer: {s.choices[s.answer]}\n\n" for s in shots]
    return "".join(blocks) + f"Question: {item.question}\nAnswer:"


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], int]:
    """Token ids of context + continuation (encoded separately) and how many belong to the continuation."""
    ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    return ctx + cont, len(cont)


@torch.no_grad()
def shared_prefix_logprobs(
    model, tokenizer, items: list[Item], shots: list[Item], batch_size: int = 16
) -> list[list[float]]:
    """The same sums, with no prompt token run twice. The tokens every prompt starts with (the few-shot
    examples: about two thirds of the bundled benchmark's prompts) run once; each question's own tokens
    run once after them, `batch_size` questions at a time; the KV cache is then copied for each choice,
    which runs only its own few tokens. A question at a time, the forward passes were too small to keep
    a CPU's matrix units busy. Equal to `choice_logprobs` up to float rounding (tested on the tiny model;
    the same answers on the embedded model's benchmark, benchmarks/eval_cost.py)."""
    ctxs = [tokenizer(prompt(it, shots), add_special_tokens=True)["input_ids"] for it in items]
    conts = [[tokenizer(" " + c, add_special_tokens=False)["input_ids"] for c in it.choices] for it in items]
    shared = common_prefix(ctxs)
    head = None
    if shared:
        head = cache_of(model(input_ids=torch.tensor([shared], device=model.device), use_cache=True, logits_to_keep=1))
    out: list[list[float]] = []
    starts = range(0, len(items), batch_size)
    for s in tqdm(starts, desc="eval: multiple choice", unit="batch", disable=len(starts) < 2):
        own = [c[len(shared) :] for c in ctxs[s : s + batch_size]]
        scored = _question_batch(model, head, len(shared), own, conts[s : s + batch_size])
        if scored is None:  # a cache type that cannot be copied per question or choice
            return choice_logprobs(model, tokenizer, items, shots)
        out += scored
    return out


def _question_batch(model, head, shared: int, own: list[list[int]], conts: list[list[list[int]]]):
    """`shared_prefix_logprobs` for one batch of questions: `own`, each question's prompt tokens after
    the `shared` ones (whose cache is `head`, or None). None when the model's cache cannot be copied."""
    dev, arg = model.device, cache_argument(model)
    width = max(len(c) for c in own)
    ids = torch.zeros((len(own), width), dtype=torch.long)  # left-padded: every prompt ends at the last position
    mine = torch.zeros_like(ids)
    for q, c in enumerate(own):
        ids[q, width - len(c) :], mine[q, width - len(c) :] = torch.tensor(c), 1
    extra = {}
    if head is not None:
        if not hasattr(head, "reorder_cache"):
            return None
        extra = {arg: copies(head, len(own), dev)}  # one copy of the head per question
    mask = torch.cat([torch.ones((len(own), shared), dtype=torch.long), mine], 1)
    first = model(
        input_ids=ids.to(dev),
        attention_mask=mask.to(dev),
        position_ids=(shared + mine.cumsum(-1) - 1).clamp(min=0).to(dev),  # padding moves no position
        use_cache=True,
        logits_to_keep=1,
        **extra,
    )
    logp0 = F.log_softmax(first.logits[:, -1].float(), -1)  # predicts every choice's first token
    scores = [[float(logp0[q, c[0]]) for c in cs] for q, cs in enumerate(conts)]
    # the choices of more than one token run their other tokens (most choices are one token)
    rows = [(q, k, c) for q, cs in enumerate(conts) for k, c in enumerate(cs) if len(c) > 1]
    if not rows:
        return scores
    cache = cache_of(first)
    if not hasattr(cache, "reorder_cache"):
        return None
    before = [shared + len(c) for c in own]  # prompt tokens before each question's choices
    return _choice_tails(model, cache, mask, before, rows, scores)


def _choice_tails(model, cache, mask, before: list[int], rows: list, scores: list[list[float]]) -> list[list[float]]:
    """`scores` with the log-probabilities of the choices' tokens after their first: `rows` are (question,
    choice index, tokens) of the choices of more than one token, `cache` and `mask` their questions' prompts."""
    dev, width = model.device, mask.shape[1]
    owner = torch.tensor([q for q, _, _ in rows])
    cache.reorder_cache(owner.to(dev))  # one copy of its question's prompt per choice
    rest = max(len(c) for _, _, c in rows) - 1
    ids = torch.zeros((len(rows), rest), dtype=torch.long)  # the choices' other tokens, right-padded
    mask = torch.cat([mask[owner], torch.zeros((len(rows), rest), dtype=torch.long)], 1)
    for r, (_, _, c) in enumerate(rows):
        ids[r, : len(c) - 1] = torch.tensor(c[:-1])
        mask[r, width : width + len(c) - 1] = 1
    logits = model(
        input_ids=ids.to(dev),
        attention_mask=mask.to(dev),
        position_ids=(torch.tensor(before)[owner][:, None] + torch.arange(rest)).to(dev),
        use_cache=False,
        **{cache_argument(model): cache},
    ).logits
    logp = F.log_softmax(logits.float(), -1)
    for r, (q, k, c) in enumerate(rows):
        scores[q][k] += sum(float(logp[r, j - 1, c[j]]) for j in range(1, len(c)))
    return scores


@torch.no_grad()
def choice_logprobs(model, tokenizer, items: list[Item], shots: list[Item], batch_size: int = 16) -> list[list[float]]:
    """Sum of log-probabilities of every choice of every item (right-padded batches)."""
    pairs = [encode_pair(tokenizer, prompt(it, shots), " " + c) for it in items for c in it.choices]
    scores: list[float] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    starts = range(0, len(pairs), batch_size)
    for i in tqdm(starts, desc="eval: multiple choice", unit="batch", disable=len(starts) < 2):
        chunk = pairs[i : i + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (seq, _) in enumerate(chunk):
            ids[r, : len(seq)], mask[r, : len(seq)] = torch.tensor(seq), 1
        logp = F.log_softmax(logits_of(model, ids.to(model.device), mask.to(model.device)).float(), -1)
        for r, (seq, n_cont) in enumerate(chunk):
            positions = torch.arange(len(seq) - n_cont - 1, len(seq) - 1)
            targets = torch.tensor(seq[len(seq) - n_cont :])
            scores.append(float(logp[r, positions, targets.to(logp.device)].sum()))
    out, k = [], 0
    for it in items:
        out.append(scores[k : k + len(it.choices)])
        k += len(it.choices)
    return out


def score_items(model, tokenizer, items: list[Item], shots: list[Item]) -> dict:
    """Per-item 0/1 correctness (raw and length-normalised) plus the two accuracies."""
    was_training = model.training
    model.eval()
    try:
        # virtual tokens (prompt / prefix tuning) would be prepended twice with a cache: the plain way
        score = choice_logprobs if virtual_tokens(model) else shared_prefix_logprobs
        logps = score(model, tokenizer, items, shots)
    finally:
        model.train(was_training)
    raw, norm = [], []
    for it, lp in zip(items, logps, strict=True):
        per_byte = [s / len((" " + c).encode("utf-8")) for s, c in zip(lp, it.choices, strict=True)]
        raw.append(float(max(range(len(lp)), key=lp.__getitem__) == it.answer))
        norm.append(float(max(range(len(lp)), key=per_byte.__getitem__) == it.answer))
    return {"n": len(items), "acc": sum(raw) / len(raw), "acc_norm": sum(norm) / len(norm), "raw": raw, "norm": norm}
