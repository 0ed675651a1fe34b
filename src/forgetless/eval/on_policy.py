"""On-policy replay (forgetting.rehearsal.source: on_policy): the model being trained answers general
prompts, and after --continue-from the earlier tasks' training prompts, every few steps, and the answers
that stay close to the reference are replayed as SFT rows.

On-Policy Replay (arXiv 2605.29495) replays the current model's own filtered rollouts on earlier
prompts: they are what the model does now, so learning them costs little task gain, and the filter keeps
only those that have not drifted. Here the reference is the model with the adapter off (the base, or
after --continue-from the earlier stage), and the filter is the answer's KL to it per token: an answer
at most `on_policy.max_kl` away is replayed in the rehearsal share of the micro-batches that follow, ahead
of the pool's own order (data/mixture.py: `replay_next`), and replaces that prompt's row in the rehearsal
pool for later draws (the pool starts as the base model's own answers, the on-policy answers of step 0,
and the earlier runs' real training rows named beside on_policy in the sources); the others are dropped
and the pool keeps the row it had. Replayed rows train with cross-entropy (`replay` rows, weight 1 under
every preset) and, under LwF, the KL to the reference. Fresh answers go first because the paper replays
the rollouts it has just made: put back into a pool of hundreds drawn one row per step, a kept answer
seldom came up at all in a run of a few dozen steps (measured: docs/forgetting.md).

Every answer is recorded in RUN/on_policy.jsonl with its origin (step; prompt index and, as `from`, the
prompt's file and line, an earlier run's prefixed), its KL, whether it was kept and, if so, the
rehearsal stream position it is replayed at (`replay_at`); a resumed run puts the kept ones back into
the pool and at those positions from there (rounds after the checkpoint it resumes from are dropped: they
run again). No answers are made after the last step: nothing would replay them. Measured here because the
filter is the retention measure (eval/retention.py); the data stream is data/mixture.py's.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from forgetless import files
from forgetless.data.formats import Example
from forgetless.data.mixture import MixedBatches
from forgetless.data.render import encode
from forgetless.eval.retention import answer_stats
from forgetless.model.generate import generate
from forgetless.model.likelihood import IGNORE
from forgetless.training import checkpoint, distributed

LOG = "on_policy.jsonl"


def prompt_key(row: dict) -> tuple[int, ...]:
    """A token row's prompt: its ids before the first answer token (the pool's rows are found by it)."""
    first = next((i for i, label in enumerate(row["labels"]) if label != IGNORE), len(row["labels"]))
    return tuple(row["input_ids"][:first])


class OnPolicy:
    """The loop's `adjust` hook that refreshes the rehearsal pool (`batches.general`, changed in place) from
    the current model every `every` steps and has `batches` replay the kept answers next."""

    def __init__(
        self, settings, tokenizer, batches: MixedBatches, examples: list[Example], out: Path, resume: bool, last: int
    ):
        self.s, self.tokenizer, self.examples, self.log = settings, tokenizer, examples, out / LOG
        self.last = last  # the run's last optimizer step: answers made after it would never be replayed
        self.batches, self.pool = batches, batches.general
        self.where = {prompt_key(r): i for i, r in enumerate(self.pool)}  # general rows and earlier runs' rows
        if resume and self.log.is_file():
            # rounds after the checkpoint the run resumes from belong to the lost future: they run again
            upto = checkpoint.latest_step(out)
            records = [r for r in files.read_jsonl_records(self.log) if r["step"] <= upto]
            if distributed.is_main():
                files.write_text(self.log, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            for record in records:
                if record["kept"]:
                    i = self._replace(self._row(record["prompt"], record["answer"], record["step"]))
                    if i is not None and "replay_at" in record:
                        batches.replay[record["replay_at"]] = i
        elif self.log.exists() and distributed.is_main():
            self.log.unlink()  # a fresh run in a reused directory: the old records describe another run

    def _row(self, index: int, answer: str, step: int) -> dict:
        messages = (*self.examples[index].messages[:-1], {"role": "assistant", "content": answer})
        row = encode(self.tokenizer, Example(f"on_policy:step {step}:prompt {index}", messages=messages))
        return {**row, "rehearsal": True, "replay": True, "origin": f"on_policy:step {step}:prompt {index}"}

    def _replace(self, row: dict) -> int | None:
        """The pool index whose row `row` replaced (None: its prompt has no row in the pool)."""
        i = self.where.get(prompt_key(row))
        if i is not None:
            self.pool[i] = row
        return i

    def __call__(self, model, step: int) -> dict | None:
        if step % self.s.every or step >= self.last:
            return None
        picked = random.Random(step).sample(range(len(self.examples)), min(self.s.prompts, len(self.examples)))
        prompts = [list(self.examples[i].messages[:-1]) for i in picked]
        answers = generate(model, self.tokenizer, prompts, self.s.max_new_tokens)
        rows = [self._row(i, a, step) for i, a in zip(picked, answers, strict=True)]
        per_row: list = []  # each answer's (KL sum, tokens) to the adapter-off model, from the rows just made
        plain = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows]  # answer_stats skips rehearsal
        answer_stats(model, plain, self.tokenizer.pad_token_id, desc="eval: retention KL", per_row=per_row)
        records, replaced = [], []
        for i, answer, row, (total, n) in zip(picked, answers, rows, per_row, strict=True):
            kl = total / max(n, 1)
            at = self._replace(row) if answer.strip() and kl <= self.s.max_kl else None
            origin = {"step": step, "prompt": i, "from": self.examples[i].where}
            records.append(origin | {"answer": answer, "kl_per_token": kl, "kept": at is not None})
            replaced += [at] if at is not None else []
        kept = [r for r in records if r["kept"]]
        for record, position in zip(kept, self.batches.replay_next(replaced), strict=True):
            record["replay_at"] = position
        if distributed.is_main():  # every process refreshes its pool alike (greedy answers); one records them
            with self.log.open("a", encoding="utf-8") as f:  # appended whole lines; a torn last line is skipped
                f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        return {"on_policy_answers": len(rows), "on_policy_kept": len(kept)}
